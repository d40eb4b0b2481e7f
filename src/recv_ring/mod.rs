//! A worker's receive ring: a second io_uring, owned by wslb, that carries the multishot
//! receives of relay sockets into provided buffers.
//!
//! On monoio a relay direction pays three io_uring operations and three trips round the
//! event loop per message: a readiness poll, a read, a write. Here one multishot receive
//! (`IORING_OP_RECV` with `IORING_RECV_MULTISHOT` and `IOSQE_BUFFER_SELECT`) serves every
//! message of a socket while the relay lives: the kernel picks a buffer from the worker's
//! ring only when data arrives, so an idle connection still pins none, and the pump's only
//! operation per message is the write. monoio 0.2.4 does not expose multishot receives or
//! buffer rings, so this ring sits beside its driver: the worker's monoio loop polls this
//! ring's descriptor (readable while completions wait) and [`RecvRing::run`] reaps them
//! in batches, queues each buffer on its source's slot and wakes the relay's task.
//!
//! Only plain TCP sources use it, and only while their frames fit a provided buffer
//! (`recv_ring_buffer_bytes`): a direction that sees a larger frame stops its receive and
//! goes back to the relay's own buffers, which grow to take a whole frame per read and
//! write (`relay_buffer_max_bytes`). TLS sources and the epoll driver keep that path too.
//!
//! # Buffer ownership
//! See `provided.rs` for a buffer's life. A [`Chunk`] is a buffer out of the ring, with the
//! bytes one completion put in it: queued on its source's slot, then owned by the pump,
//! which moves it into the write op that forwards it (the kernel reads it until that
//! completes; a dropped write keeps it until then, monoio's rule for any buffer) and drops
//! it, which puts it back in the ring. A pump never waits on the ring holding a chunk.
//!
//! # Backpressure
//! A multishot receive keeps receiving while its pump waits for a slow destination. A
//! slot holding [`PAUSE_AT`] chunks has its receive cancelled (what arrived is kept) and
//! re-armed once its pump has taken them, so a slow peer's bytes wait in its socket, as
//! with a plain read, not in the worker's shared buffers. A receive that finds the ring
//! empty ends with `ENOBUFS`; its slot is re-armed as buffers come back.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::rc::Rc;
use std::task::Waker;

use std::sync::Arc;

use io_uring::{IoUring, cqueue, opcode};

use crate::metrics::{Event, WorkerStats};

mod provided;
mod source;
mod submit;
mod trim;
use provided::Provided;
pub use source::{Chunk, Source};

/// The buffer group id of the ring's buffers (one group per ring).
const GROUP: u16 = 0;
/// Chunks a slot may hold before its receive is paused (see "Backpressure").
const PAUSE_AT: u16 = 8;
/// Completions reaped per pass (on the stack: reaping allocates nothing).
const BATCH: usize = 64;
/// `user_data` of cancel requests, whose own completions say nothing.
const CANCEL: u64 = u64::MAX;
/// [`Slot::end`] of a source that has not ended.
const OPEN: i32 = 1;
/// End of a slot's chunk list.
const NIL: u16 = u16::MAX;

/// A worker's receive ring; cheap to clone (an `Rc`).
#[derive(Clone)]
pub struct RecvRing(Rc<Inner>);

impl std::fmt::Debug for RecvRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvRing")
            .field("buffers", &self.0.bufs.entries())
            .field("buffer_bytes", &self.0.bufs.size())
            .finish()
    }
}

struct Inner {
    ring: RefCell<IoUring>,
    bufs: Provided,
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<u32>>,
    /// Per buffer id: the bytes its completion brought, and the next chunk of its slot.
    chunks: RefCell<Vec<(u32, u16)>>,
    /// Slots whose receive ended with `ENOBUFS`, to re-arm as buffers come back.
    starved: RefCell<Vec<u32>>,
    /// Whether receives may be (re-)armed.
    phase: Cell<Phase>,
    /// Bytes received when the pages were last given back: while that is unchanged no
    /// buffer was filled since, and a trim has nothing to give back.
    trimmed_at: Cell<Option<u64>>,
    /// The worker's counters (starved, paused, large frames).
    stats: Arc<WorkerStats>,
}

/// Whether the ring's receives may be (re-)armed: one state, not two flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Receives are armed, re-armed after a starvation or an end the kernel chose.
    Running,
    /// A trim is ending every receive (see [`RecvRing::trim`]): nothing is re-armed until
    /// it is done, and it re-arms them all.
    Quiet,
    /// The worker is ending ([`RecvRing::retire`]): nothing is armed again, and a buffer
    /// given back now may come from a write the runtime dropped in flight.
    Retired,
}

/// What a slot's pump wants of its receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// Keep receiving.
    Run,
    /// Paused: re-arm once the pump has taken the chunks.
    Pause,
    /// Stop for good: the pump goes back to its own buffers.
    Stop,
    /// The relay closed its [`Source`]: the slot is freed once no receive is in flight.
    Closed,
}

struct Slot {
    waker: Option<Waker>,
    fd: RawFd,
    head: u16,
    tail: u16,
    queued: u16,
    want: Want,
    /// A receive is in flight (its last completion, without `IORING_CQE_F_MORE`, is not
    /// reaped yet).
    armed: bool,
    /// The source ended: 0 for its end of stream, or a negative errno; [`OPEN`] while it
    /// has not (a plain `i32`: with an `Option` the slot would not fit 32 bytes).
    end: i32,
}

/// What a source's next step is.
pub enum Next {
    Chunk(Chunk),
    /// End of stream (`Ok`) or a receive error.
    End(io::Result<()>),
    /// The receive stopped as asked ([`Source::stop`]): read the socket directly now.
    Stopped,
}

impl RecvRing {
    /// A ring of `buffers` (a power of two) buffers of `buffer_bytes` each. Fails where the
    /// kernel has no io_uring or no buffer rings (before 5.19) or multishot receives.
    pub fn new(buffers: u16, buffer_bytes: u32, stats: Arc<WorkerStats>) -> io::Result<Self> {
        Self::build(buffers, buffer_bytes, stats, true)
    }

    /// [`RecvRing::new`], with cooperative task running only if `coop` (and the kernel has
    /// it): the tests build the fallback too.
    #[allow(unsafe_code)]
    fn build(
        buffers: u16,
        buffer_bytes: u32,
        stats: Arc<WorkerStats>,
        coop: bool,
    ) -> io::Result<Self> {
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
        let bufs = Provided::new(buffers, buffer_bytes)?;
        // SAFETY: the buffer ring's memory is `bufs`' ring mapping, which must stay mapped
        // while the kernel holds it: `bufs` goes into the `Inner` built right below (if
        // this fails, nothing was registered), and `Drop for Inner` unregisters the ring
        // before its fields drop, or keeps the mapping if it cannot.
        unsafe {
            ring.submitter()
                .register_buf_ring(bufs.ring_addr(), buffers, GROUP)?;
        }
        Ok(Self(Rc::new(Inner {
            ring: RefCell::new(ring),
            chunks: RefCell::new(vec![(0, NIL); usize::from(buffers)]),
            bufs,
            slots: RefCell::default(),
            free: RefCell::default(),
            starved: RefCell::default(),
            phase: Cell::new(Phase::Running),
            trimmed_at: Cell::new(None),
            stats,
        })))
    }

    /// The largest frame (header included) a direction can keep receiving through the
    /// ring: one buffer.
    pub fn buffer_bytes(&self) -> u32 {
        self.0.bufs.size()
    }

    /// Bytes received since start: traffic, unlike the ring's own cancellations and
    /// re-arms (a trim's would look like traffic to the worker's idle trim).
    pub fn received(&self) -> u64 {
        self.0.stats.ring_bytes()
    }

    /// Starts receiving from `fd` (a connected TCP socket that stays open until the
    /// source is closed). `None` if the receive could not be queued. The receive goes to
    /// the kernel with the next [`RecvRing::submit`] (a relay opens both of its sources,
    /// then submits once).
    pub fn open(&self, fd: RawFd) -> Option<Source> {
        let free = self.0.free.borrow_mut().pop();
        let id = {
            let mut slots = self.0.slots.borrow_mut();
            match free {
                Some(id) => {
                    // A free slot is closed and has no receive in flight (its last
                    // completion was reaped): nothing of its old source can reach it.
                    let old = &slots[id as usize];
                    debug_assert!(old.want == Want::Closed && !old.armed);
                    slots[id as usize] = Slot::new(fd);
                    id
                }
                None => {
                    slots.push(Slot::new(fd));
                    (slots.len() - 1) as u32
                }
            }
        };
        if self.0.arm_deferred(id).is_err() {
            // Closed before it goes back to the free list, so that nothing re-arms it (a
            // trim re-arms open slots that want to run; its socket is read elsewhere now).
            self.0.slots.borrow_mut()[id as usize].want = Want::Closed;
            self.0.free.borrow_mut().push(id);
            return None;
        }
        Some(Source(
            std::num::NonZeroU32::new(id + 1).expect("slot ids stay below u32::MAX"),
        ))
    }

    /// Submits what is queued (see [`RecvRing::open`]).
    pub fn submit(&self) {
        self.0.submit_logged();
    }

    /// Reaps completions whenever the ring has some, for as long as the worker runs.
    #[allow(unsafe_code)]
    pub async fn run(self) {
        // The ring's descriptor is readable while completions wait. A duplicate, so that
        // the stream wrapping it (monoio waits on streams) closes only its own descriptor.
        // SAFETY: `dup` of a descriptor this ring owns; the new one is owned by `poller`.
        let fd = unsafe { libc::dup(self.0.ring.borrow().as_raw_fd()) };
        if fd < 0 {
            tracing::error!("receive ring: dup: {}", io::Error::last_os_error());
            return;
        }
        // SAFETY: `fd` is a fresh descriptor owned by nothing else. monoio only polls it
        // (`readable`): nothing reads or writes it as a socket.
        let std = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
        let poller = match monoio::net::UnixStream::from_std(std) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("receive ring: {e}");
                return;
            }
        };
        loop {
            self.0.reap();
            if let Err(e) = poller.readable(false).await {
                tracing::error!("receive ring: waiting for completions: {e}");
                return;
            }
        }
    }

    /// The worker is ending: every receive is ended for good (bytes not yet received stay
    /// in their sockets, which close with the worker), and none is armed again (a source
    /// opened from now on gets `None` and its relay reads for itself).
    pub fn retire(&self) {
        self.0.phase.set(Phase::Retired);
        if !self.0.end_every_receive() {
            tracing::warn!("receive ring: receives still in flight as the worker ends");
        }
    }

    /// Gives the buffers' pages back when none is out (the worker is idle), and says
    /// whether it did.
    ///
    /// A buffer in the ring belongs to the kernel: any armed receive may fill it at any
    /// time, since the task work that runs a receive may run at any return of this thread
    /// to user mode, the exit from an interrupt included (and by IPI at any time without
    /// `COOP_TASKRUN`), or on an io-wq thread. So a trim first takes the buffers out of
    /// the kernel's reach: it cancels every receive and waits for each one's last
    /// completion (no `IORING_CQE_F_MORE`), after which no request of this ring exists to
    /// select a buffer; it reaps what they received before ending; and only if every
    /// buffer is then back in the ring does it give their pages back. Then it re-arms
    /// every receive it ended. Each source's bytes not yet received wait in its socket
    /// meanwhile, as during a pause; none is lost, none is reordered. This costs a cancel
    /// and a re-arm per open source, once per idle spell of the worker (the worker trims
    /// only after a quiet spell, see `worker::trim_when_idle`).
    pub fn trim(&self) -> bool {
        self.0.trim()
    }
}

impl Slot {
    fn new(fd: RawFd) -> Self {
        Self {
            waker: None,
            fd,
            head: NIL,
            tail: NIL,
            queued: 0,
            want: Want::Run,
            armed: false,
            end: OPEN,
        }
    }
}

impl Inner {
    /// Takes every completion waiting and hands each to its slot, a batch of up to
    /// [`BATCH`] at a time copied out of the queue first (handing one over may queue a
    /// request, which needs the ring).
    fn reap(&self) {
        let mut batch = [(0u64, 0i32, 0u32); BATCH];
        loop {
            let n = {
                let mut ring = self.ring.borrow_mut();
                if ring.submission().cq_overflow() {
                    // Completions the queue had no room for wait in the kernel; entering
                    // the ring moves them into it.
                    let _ = ring.submit_and_wait(0);
                }
                let mut n = 0;
                for (slot, c) in batch.iter_mut().zip(ring.completion()) {
                    *slot = (c.user_data(), c.result(), c.flags());
                    n += 1;
                }
                n
            };
            if n == 0 {
                return;
            }
            for &(data, res, flags) in &batch[..n] {
                if data != CANCEL {
                    self.complete(data as u32, res, flags);
                }
            }
            self.rearm_starved();
        }
    }

    fn complete(&self, id: u32, res: i32, flags: u32) {
        let more = cqueue::more(flags);
        let mut slots = self.slots.borrow_mut();
        let s = &mut slots[id as usize];
        if let Some(bid) = cqueue::buffer_select(flags) {
            self.bufs.taken();
            if res > 0 {
                // (Bytes a closed source's last receive brought count too: they filled a
                // buffer, which the trim's "nothing received since" check relies on.)
                self.stats.ring_received(res as u64);
            }
            if s.want == Want::Closed || res <= 0 {
                self.bufs.give(bid);
            } else {
                let mut chunks = self.chunks.borrow_mut();
                chunks[usize::from(bid)] = (res as u32, NIL);
                if s.tail == NIL {
                    s.head = bid;
                } else {
                    chunks[usize::from(s.tail)].1 = bid;
                }
                s.tail = bid;
                s.queued += 1;
                if s.queued >= PAUSE_AT && s.want == Want::Run && more {
                    s.want = Want::Pause;
                    self.stats.count(Event::RecvPaused);
                    drop(chunks);
                    drop(slots);
                    self.cancel(id);
                    slots = self.slots.borrow_mut();
                }
            }
        }
        let s = &mut slots[id as usize];
        if !more {
            s.armed = false;
            if res == -libc::ENOBUFS {
                if s.want == Want::Run {
                    self.starved.borrow_mut().push(id);
                    self.stats.count(Event::RecvStarved);
                }
            } else if res == 0 {
                s.end = 0;
            } else if res < 0 && res != -libc::ECANCELED {
                s.end = res;
            } else if res > 0 && s.want == Want::Run && self.phase.get() == Phase::Running {
                // The kernel ended the receive for its own reasons (a full completion
                // queue): it carries on (after a trim, if one is ending every receive).
                drop(slots);
                if let Err(e) = self.arm(id) {
                    self.fail(id, &e);
                }
                slots = self.slots.borrow_mut();
            }
            let s = &mut slots[id as usize];
            if s.want == Want::Closed && !s.armed {
                drop(slots);
                self.free.borrow_mut().push(id);
                return;
            }
        }
        let waker = slots[id as usize].waker.take();
        drop(slots);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Buffer `bid` comes back from its chunk; a starved receive may go on.
    fn give(&self, bid: u16) {
        if self.phase.get() == Phase::Retired {
            // A chunk dropped as the worker ends may be the buffer of a write monoio's
            // driver abandoned in flight (it closes its ring without waiting), which the
            // kernel may still read: the buffers stay mapped for good.
            self.bufs.keep();
        }
        self.bufs.give(bid);
        self.rearm_starved();
    }

    /// Re-arms starved receives, one per buffer in the ring: each takes at least one at
    /// once (its socket has data waiting). Called as buffers come back and after every
    /// batch of completions, since a receive may starve (its `ENOBUFS` reaped) after the
    /// buffers it waited for came back. Entries that no longer apply (the source ended,
    /// closed, stopped or was re-armed since) are dropped.
    fn rearm_starved(&self) {
        if self.phase.get() != Phase::Running {
            // A trim is ending every receive, and re-arms these when done; or the worker
            // is ending.
            return;
        }
        let mut room = self.bufs.free();
        let mut armed = false;
        while room > 0 {
            let Some(id) = self.starved.borrow_mut().pop() else {
                break;
            };
            let due = {
                let s = &self.slots.borrow()[id as usize];
                s.want == Want::Run && !s.armed && s.end == OPEN
            };
            if !due {
                continue;
            }
            match self.arm_deferred(id) {
                Ok(()) => {
                    armed = true;
                    room -= 1;
                }
                Err(e) => self.fail(id, &e),
            }
        }
        if armed {
            self.submit_logged();
        }
    }

    /// Slot `id`'s receive could not be armed: its source ends with that error.
    fn fail(&self, id: u32, e: &io::Error) {
        let waker = {
            let mut slots = self.slots.borrow_mut();
            let s = &mut slots[id as usize];
            s.end = -e.raw_os_error().unwrap_or(libc::EIO);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl RecvRing {
    /// Takes the first chunk queued on slot `id`.
    fn pop(&self, id: u32) -> Option<Chunk> {
        let mut slots = self.0.slots.borrow_mut();
        let s = &mut slots[id as usize];
        if s.head == NIL {
            return None;
        }
        let bid = s.head;
        let (len, next) = self.0.chunks.borrow()[usize::from(bid)];
        s.head = next;
        if next == NIL {
            s.tail = NIL;
        }
        s.queued -= 1;
        Some(Chunk {
            ring: self.clone(),
            bid,
            len,
        })
    }

    /// Re-arms a paused slot.
    /// Re-arms a paused slot once its last receive has ended and its pump has taken every
    /// chunk (see "Backpressure"). A failed re-arm ends the source with its error.
    fn resume_if_drained(&self, id: u32) {
        let arm = {
            let mut slots = self.0.slots.borrow_mut();
            let s = &mut slots[id as usize];
            let drained = s.want == Want::Pause && !s.armed && s.queued == 0;
            if drained {
                s.want = Want::Run;
            }
            drained && s.end == OPEN
        };
        if arm && let Err(e) = self.0.arm(id) {
            self.0.fail(id, &e);
        }
    }
}

impl Drop for Inner {
    /// The buffers are unmapped only once no receive can fill one (every receive ended, as
    /// for a trim, and the buffer ring unregistered) and the ring was retired first. A ring
    /// dropped unretired (its worker panicked, or a test) may be going with a runtime whose
    /// abandoned writes still read its buffers: they stay mapped.
    fn drop(&mut self) {
        // The worker's runtime may be going away: no task is woken from here on.
        for s in self.slots.get_mut().iter_mut() {
            s.waker = None;
        }
        if self.phase.replace(Phase::Retired) != Phase::Retired {
            self.bufs.keep();
        }
        let ended = self.end_every_receive();
        let unregistered = self.ring.get_mut().submitter().unregister_buf_ring(GROUP);
        if !ended || unregistered.is_err() {
            tracing::warn!(
                "receive ring: receives still in flight at its end ({unregistered:?}): its \
                 buffers stay mapped"
            );
            self.bufs.keep();
        }
    }
}

/// Every relay direction on the ring has a slot: 9,900 idle connections hold 19,800.
const _: () = assert!(std::mem::size_of::<Slot>() <= 32);

#[cfg(test)]
mod tests;
