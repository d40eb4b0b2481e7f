//! Handing the ring's requests to the kernel: arming a slot's multishot receive,
//! cancelling it, and the submit that must leave nothing queued (a queued receive names
//! its socket by descriptor number).

use std::io;

use io_uring::{opcode, types};

use super::{CANCEL, GROUP, Inner, Phase};

/// Tries of a submit the kernel refuses for want of resources (see `Inner::submit`).
const SUBMIT_TRIES: u32 = 1000;

impl Inner {
    /// Submits a multishot receive for slot `id`.
    pub(super) fn arm(&self, id: u32) -> io::Result<()> {
        self.arm_deferred(id)?;
        self.submit()
    }

    /// Hands everything queued to the kernel: `Ok` only once the submission queue is
    /// empty. A queued receive names its socket by descriptor number, which the kernel
    /// resolves only when it consumes the entry; one left in the queue after its relay
    /// closed the socket would read whichever later socket reuses the number. So an
    /// `io_uring_enter` that fails for want of resources (`EAGAIN`, `EBUSY`, `EINTR`) or
    /// consumes only part of the queue is retried, for up to [`SUBMIT_TRIES`] x 100 us.
    pub(super) fn submit(&self) -> io::Result<()> {
        let mut ring = self.ring.borrow_mut();
        for _ in 0..SUBMIT_TRIES {
            match ring.submit() {
                Ok(_) if ring.submission().is_empty() => return Ok(()),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EAGAIN | libc::EBUSY | libc::EINTR)
                    ) => {}
                Err(e) => return Err(e),
            }
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
        Err(io::Error::other(
            "the kernel did not take the submission queue",
        ))
    }

    /// Makes sure the submission queue is empty (see [`Inner::submit`]), before a source's
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

    /// [`Inner::submit`] where nobody waits for the answer: a failure is logged (the
    /// requests stay queued for the next submit).
    pub(super) fn submit_logged(&self) {
        if let Err(e) = self.submit() {
            tracing::error!("receive ring: submit: {e}");
        }
    }

    /// Queues a multishot receive for slot `id`, for the next submit.
    pub(super) fn arm_deferred(&self, id: u32) -> io::Result<()> {
        if self.phase.get() == Phase::Retired {
            // Tasks still run after `retire` (a pump resuming, a relay opening its source):
            // none may arm a receive that could refill a buffer an abandoned write reads.
            return Err(io::Error::other("the receive ring is retired"));
        }
        let fd = {
            let mut slots = self.slots.borrow_mut();
            let s = &mut slots[id as usize];
            s.armed = true;
            s.fd
        };
        let sqe = opcode::RecvMulti::new(types::Fd(fd), GROUP)
            .build()
            .user_data(u64::from(id));
        self.queue(&sqe).inspect_err(|_| {
            self.slots.borrow_mut()[id as usize].armed = false;
        })
    }

    /// Cancels slot `id`'s receive; its last completion follows.
    pub(super) fn cancel(&self, id: u32) {
        let sqe = opcode::AsyncCancel::new(u64::from(id))
            .build()
            .user_data(CANCEL);
        if let Err(e) = self.push(&sqe) {
            tracing::error!("receive ring: cancel: {e}");
        }
    }

    /// Queues one request and submits it. Requests are rare (a relay's start, a pause, a
    /// re-arm, an end): the messages themselves need none.
    pub(super) fn push(&self, sqe: &io_uring::squeue::Entry) -> io::Result<()> {
        self.queue(sqe)?;
        self.submit()
    }

    /// Queues one request (submitting what is queued first if the queue is full).
    #[allow(unsafe_code)]
    pub(super) fn queue(&self, sqe: &io_uring::squeue::Entry) -> io::Result<()> {
        let mut ring = self.ring.borrow_mut();
        // SAFETY: the request refers to no memory of ours but the provided buffers, which
        // live as long as the ring (see `Drop`).
        if unsafe { ring.submission().push(sqe) }.is_err() {
            ring.submit()?;
            // SAFETY: as above.
            unsafe { ring.submission().push(sqe) }
                .map_err(|_| io::Error::other("submission queue full"))?;
        }
        Ok(())
    }
}
