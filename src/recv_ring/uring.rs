//! The receive ring's own io_uring: how it is built, the requests it takes (a slot's
//! multishot receive, its cancel), the submit that must leave nothing queued (a queued
//! receive names its socket by descriptor number), and completions copied out to reap.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use io_uring::{IoUring, opcode, types};

/// The buffer group id of the ring's buffers (one group per ring).
const GROUP: u16 = 0;
/// `user_data` of cancel requests, whose own completions say nothing.
pub(super) const CANCEL: u64 = u64::MAX;
/// Tries of a submit the kernel refuses for want of resources (see [`Uring::submit`]).
const SUBMIT_TRIES: u32 = 1000;

/// A completion copied out of the queue: its `user_data` (a slot id, or [`CANCEL`]),
/// result and flags.
pub(super) type Completion = (u64, i32, u32);

/// The io_uring instance, used only from its worker's thread. Its requests refer to no
/// memory of ours but the provided buffers (see [`Uring::register_buf_ring`]).
pub(super) struct Uring {
    ring: RefCell<IoUring>,
    /// Completions a submit copied out of the completion queue to make room (see
    /// [`Uring::submit`]), oldest first: [`Uring::completions`] hands them over before any
    /// still in the queue, so they keep their order. Empty (no allocation) unless the
    /// kernel asked for room.
    parked: RefCell<VecDeque<Completion>>,
}

impl Uring {
    /// A ring whose completion queue has room for `buffers` buffers' completions, with
    /// cooperative task running only if `coop` (and the kernel has it). Fails where the
    /// kernel has no io_uring or no multishot receives.
    pub(super) fn new(buffers: u16, coop: bool) -> io::Result<Self> {
        // Cooperative task running, as the worker's monoio ring (`worker::build_uring`):
        // a completion's work waits for this thread's next entry into the kernel (or wakes
        // it if it sleeps) instead of interrupting it. Without it, every receive landing
        // while the thread runs cost an inter-processor interrupt (2.6% of the proxy's CPU
        // in `irqentry_exit_to_user_mode` at 100 x 64 B).
        let build = |cooperative: bool| {
            let mut b = IoUring::builder();
            // Every completion with data holds a buffer, so twice the buffers leaves room
            // for the ends; and the kernel wants at least the submission queue's 256.
            b.setup_cqsize((u32::from(buffers) * 2).max(256))
                .setup_single_issuer();
            if cooperative {
                b.setup_coop_taskrun();
            }
            b.build(256)
        };
        let ring = if coop {
            build(true).or_else(|_| build(false))
        } else {
            build(false)
        }?;
        // A multishot receive is `IORING_OP_RECV` with a flag, so probing its opcode says
        // nothing (5.19 has it, and buffer rings, but fails every multishot receive with
        // EINVAL). Both came in 6.0 with `IORING_OP_SEND_ZC`, which the probe does tell.
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        if !probe.is_supported(opcode::SendZc::CODE) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "no multishot receives (Linux 6.0)",
            ));
        }
        Ok(Self {
            ring: RefCell::new(ring),
            parked: RefCell::default(),
        })
    }

    /// Registers the buffer ring at `addr`, of `entries` entries, as the ring's buffer
    /// group (which only this ring's receives select from).
    ///
    /// # Safety
    /// `addr` is a page-aligned buffer ring of `entries` entries, which stays mapped while
    /// the kernel holds it (until [`Uring::unregister_buf_ring`] succeeds); the buffers its
    /// entries name stay mapped while a receive may fill them (until every receive has
    /// posted its last completion). The receives [`Uring::queue_recv`] queues select them.
    #[allow(unsafe_code)]
    pub(super) unsafe fn register_buf_ring(&self, addr: u64, entries: u16) -> io::Result<()> {
        // SAFETY: the caller's promise.
        unsafe { (self.ring.borrow().submitter()).register_buf_ring(addr, entries, GROUP) }
    }

    pub(super) fn unregister_buf_ring(&self) -> io::Result<()> {
        self.ring.borrow().submitter().unregister_buf_ring(GROUP)
    }

    /// The ring's descriptor (readable while completions wait).
    pub(super) fn fd(&self) -> RawFd {
        self.ring.borrow().as_raw_fd()
    }

    pub(super) fn cq_entries(&self) -> u32 {
        self.ring.borrow().params().cq_entries()
    }

    /// Copies up to `batch.len()` waiting completions into `batch` and says how many: the
    /// caller hands them over once the queue is let go (handing one over may queue a
    /// request, which needs the ring).
    pub(super) fn completions(&self, batch: &mut [Completion]) -> usize {
        let mut n = 0;
        {
            let mut parked = self.parked.borrow_mut();
            while n < batch.len()
                && let Some(c) = parked.pop_front()
            {
                batch[n] = c;
                n += 1;
            }
        }
        let mut ring = self.ring.borrow_mut();
        if ring.submission().cq_overflow() {
            // Completions the queue had no room for wait in the kernel; entering the ring
            // moves them into it.
            let _ = ring.submit_and_wait(0);
        }
        for (slot, c) in batch[n..].iter_mut().zip(ring.completion()) {
            *slot = (c.user_data(), c.result(), c.flags());
            n += 1;
        }
        n
    }

    /// Queues a multishot receive from `fd` for slot `id`, for the next submit.
    pub(super) fn queue_recv(&self, fd: RawFd, id: u32) -> io::Result<()> {
        let sqe = opcode::RecvMulti::new(types::Fd(fd), GROUP)
            .build()
            .user_data(u64::from(id));
        self.queue(&sqe)
    }

    /// Queues the cancel of slot `id`'s receive, for the next submit; its last completion
    /// follows.
    pub(super) fn queue_cancel(&self, id: u32) -> io::Result<()> {
        let sqe = opcode::AsyncCancel::new(u64::from(id))
            .build()
            .user_data(CANCEL);
        self.queue(&sqe)
    }

    /// Cancels slot `id`'s receive; its last completion follows. Requests are rare (a
    /// relay's start, a pause, a re-arm, an end): the messages themselves need none.
    pub(super) fn cancel(&self, id: u32) {
        if let Err(e) = self.queue_cancel(id).and_then(|()| self.submit()) {
            tracing::error!("receive ring: cancel: {e}");
        }
    }

    /// Hands everything queued to the kernel: `Ok` only once the submission queue is
    /// empty. A queued receive names its socket by descriptor number, which the kernel
    /// resolves only when it consumes the entry; one left in the queue after its relay
    /// closed the socket would read whichever later socket reuses the number. So an
    /// `io_uring_enter` that fails for want of resources (`EAGAIN`, `EBUSY`, `EINTR`) or
    /// consumes only part of the queue is retried, for up to [`SUBMIT_TRIES`] x 100 us.
    /// io_uring_enter(2) says what `EAGAIN` and `EBUSY` want: "wait for some completions
    /// and try again" (`EBUSY` when completions the queue had no room for cannot be moved
    /// into it). Nothing else here would reap them while this loop retries, so it copies
    /// the waiting completions out (parked, for the next reap) before each retry.
    pub(super) fn submit(&self) -> io::Result<()> {
        let mut ring = self.ring.borrow_mut();
        for _ in 0..SUBMIT_TRIES {
            match ring.submit() {
                Ok(_) if ring.submission().is_empty() => return Ok(()),
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EBUSY)) => {
                    let waiting = ring
                        .completion()
                        .map(|c| (c.user_data(), c.result(), c.flags()));
                    self.parked.borrow_mut().extend(waiting);
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(e),
            }
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
        Err(io::Error::other(
            "the kernel did not take the submission queue",
        ))
    }

    /// Makes sure the submission queue is empty (see [`Uring::submit`]), before a source's
    /// socket may be closed. If the kernel will not take it, the process stops: a receive
    /// left queued would read a later connection's socket and forward its bytes to the
    /// wrong peer, which no error a worker can return would undo.
    pub(super) fn flush(&self) {
        if self.ring.borrow_mut().submission().is_empty() {
            return;
        }
        if let Err(e) = self.submit() {
            tracing::error!(
                "receive ring: cannot hand a receive's end to the kernel ({e}); stopping \
                 before a closed socket's descriptor can be reused"
            );
            std::process::abort();
        }
    }

    /// [`Uring::submit`] where nobody waits for the answer: a failure is logged (the
    /// requests stay queued for the next submit).
    pub(super) fn submit_logged(&self) {
        if let Err(e) = self.submit() {
            tracing::error!("receive ring: submit: {e}");
        }
    }

    /// Submits what is queued and waits at most `wait` for a completion.
    pub(super) fn submit_and_wait_briefly(&self, wait: Duration) -> io::Result<()> {
        let wait = types::Timespec::from(wait);
        let args = types::SubmitArgs::new().timespec(&wait);
        let entered = self.ring.borrow().submitter().submit_with_args(1, &args);
        match entered {
            Err(e) if !matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => Err(e),
            _ => Ok(()),
        }
    }

    /// Queues one request (submitting what is queued first if the queue is full).
    #[allow(unsafe_code)]
    fn queue(&self, sqe: &io_uring::squeue::Entry) -> io::Result<()> {
        let mut ring = self.ring.borrow_mut();
        // SAFETY: the requests queued here (a multishot receive selecting from the
        // registered buffer group, a cancel) refer to no memory of ours but the provided
        // buffers, which stay mapped while a receive may fill them
        // (`Uring::register_buf_ring`'s contract).
        if unsafe { ring.submission().push(sqe) }.is_err() {
            ring.submit()?;
            // SAFETY: as above.
            unsafe { ring.submission().push(sqe) }
                .map_err(|_| io::Error::other("submission queue full"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Completions a submit parked to make room (`EAGAIN`/`EBUSY`) come out first, in
    /// their order, and before one still in the queue: a trim's "every completion naming a
    /// buffer was reaped" counts on the reap handing them all over.
    #[test]
    fn parked_completions_come_out_first_and_in_order() {
        let u = match Uring::new(16, false) {
            Ok(u) => u,
            Err(_) if std::env::var_os("WSLB_TEST_NO_RECV_RING").is_some_and(|v| v == "1") => {
                return;
            }
            Err(e) => panic!("no io_uring receive ring here ({e}); set WSLB_TEST_NO_RECV_RING=1"),
        };
        u.parked
            .borrow_mut()
            .extend([(7, 1, 0), (8, 2, 0), (9, 3, 0)]);
        let nop = opcode::Nop::new().build().user_data(42);
        // SAFETY: a NOP refers to no memory.
        #[allow(unsafe_code)]
        unsafe { u.ring.borrow_mut().submission().push(&nop) }.unwrap();
        u.submit_and_wait_briefly(Duration::from_millis(100))
            .unwrap();
        let mut batch = [(0, 0, 0); 2];
        assert_eq!(u.completions(&mut batch), 2);
        assert_eq!(batch, [(7, 1, 0), (8, 2, 0)]);
        assert_eq!(u.completions(&mut batch), 2);
        assert_eq!(batch, [(9, 3, 0), (42, 0, 0)]);
        assert_eq!(u.completions(&mut batch), 0);
    }
}
