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
//!
//! # Files
//! Each owns its types and their impls; none reaches into another's fields.
//! - `mod.rs`: [`RecvRing`], the whole public API, and what joins the parts: reaping
//!   completions into the slots, pausing, starving and re-arming receives, the ring's
//!   phase (running, quiet for a trim, retired), the trim itself and the ring's drop.
//! - `source.rs`: what a relay pump holds: its [`Source`], the [`Chunk`]s it takes,
//!   [`Next`].
//! - `slots.rs`: the table of sources: per slot its socket, what its pump wants, whether
//!   a receive is in flight, how it ended, its queued chunks; the free and starved lists.
//!   Bookkeeping, no kernel.
//! - `uring.rs`: the ring's own io_uring: built, a receive or a cancel queued, the submit
//!   that leaves nothing queued, completions copied out.
//! - `provided.rs`: the buffers and the ring of their ids the kernel picks from.
//! - `quiet.rs`: ending every receive and waiting for their last completions (a trim, a
//!   retire, the ring's drop).
//! - `tests/`: against the real kernel; `tests/trim.rs` is the trim race (issue 19).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;

use io_uring::cqueue;

use crate::metrics::{Event, WorkerStats};

mod provided;
mod quiet;
mod slots;
mod source;
mod uring;
use provided::Provided;
use slots::{Ended, Queued, Slots};
pub use source::{Chunk, Next, Source};
use uring::{CANCEL, Completion, Uring};

/// Chunks a slot may hold before its receive is paused (see "Backpressure").
const PAUSE_AT: u16 = 8;
/// Completions reaped per pass (on the stack: reaping allocates nothing).
const BATCH: usize = 64;

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

/// The parts, and what joins them: reaping completions into the slots, pausing, starving
/// and re-arming receives, and the ring's phase.
struct Inner {
    /// Declared before `bufs`, so it drops first: belt and braces only. What keeps the
    /// kernel from writing into unmapped buffers is `Drop for Inner`, which unmaps only
    /// once every receive has ended and the buffer ring is unregistered (and otherwise
    /// keeps the mapping): the ring's file may outlive this `IoUring` (a dup'd descriptor
    /// monoio polls), and its teardown in the kernel is asynchronous.
    uring: Uring,
    bufs: Provided,
    slots: RefCell<Slots>,
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
        let uring = Uring::new(buffers, coop)?;
        let bufs = Provided::new(buffers, buffer_bytes)?;
        // SAFETY: the buffer ring's memory is `bufs`' ring mapping, which must stay mapped
        // while the kernel holds it, and its entries name `bufs`' buffers: `bufs` goes into
        // the `Inner` built right below (if this fails, nothing was registered), and `Drop
        // for Inner` ends every receive and unregisters the ring before its fields drop,
        // or keeps both mappings if it cannot.
        unsafe {
            uring.register_buf_ring(bufs.ring_addr(), buffers)?;
        }
        Ok(Self(Rc::new(Inner {
            uring,
            bufs,
            slots: RefCell::new(Slots::new(buffers)),
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
        let id = self.0.slots.borrow_mut().open(fd);
        if self.0.arm_deferred(id).is_err() {
            self.0.slots.borrow_mut().abandon(id);
            return None;
        }
        Some(Source::new(id))
    }

    /// Submits what is queued (see [`RecvRing::open`]).
    pub fn submit(&self) {
        self.0.uring.submit_logged();
    }

    /// Reaps completions whenever the ring has some, for as long as the worker runs.
    #[allow(unsafe_code)]
    pub async fn run(self) {
        // The ring's descriptor is readable while completions wait. A duplicate, so that
        // the stream wrapping it (monoio waits on streams) closes only its own descriptor.
        // SAFETY: `dup` of a descriptor this ring owns; the new one is owned by `poller`.
        let fd = unsafe { libc::dup(self.0.uring.fd()) };
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

    /// The next chunk of `src`, or how its receive ended.
    pub fn next<'a>(&'a self, src: &'a Source) -> impl Future<Output = Next> + 'a {
        let id = src.id();
        std::future::poll_fn(move |cx| {
            let chunk = self.pop(id);
            self.0.resume_if_drained(id);
            if let Some(c) = chunk {
                return Poll::Ready(Next::Chunk(c));
            }
            let (poll, old) = self.0.slots.borrow_mut().poll_end(id, cx.waker());
            drop(old);
            poll
        })
    }

    /// Stops `src`'s receive for good (a frame too large for the ring's buffers): chunks
    /// already received still come, then [`Next::Stopped`].
    pub fn stop(&self, src: &Source) {
        let id = src.id();
        let Some(cancel) = self.0.slots.borrow_mut().stop(id) else {
            return;
        };
        self.0.stats.count(Event::RecvLargeFrame);
        if cancel {
            self.0.uring.cancel(id);
        }
    }

    /// The relay is done with `src`: what is queued goes back to the ring, a receive still
    /// in flight is cancelled, and the slot is free once its last completion is reaped.
    pub fn close(&self, src: Source) {
        let id = src.id();
        while let Some(c) = self.pop(id) {
            drop(c);
        }
        let (cancel, waker) = self.0.slots.borrow_mut().close(id);
        drop(waker);
        if cancel {
            self.0.uring.cancel(id);
        }
        // The relay closes the socket next, so nothing naming its descriptor may stay in
        // the submission queue (see `Uring::submit`).
        self.0.uring.flush();
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
        let r = &self.0;
        r.reap();
        if r.bufs.free() != u32::from(r.bufs.entries()) {
            return false;
        }
        if r.trimmed_at.get() == Some(r.stats.ring_bytes()) {
            return true;
        }
        if r.phase.get() == Phase::Retired {
            return false;
        }
        r.phase.set(Phase::Quiet);
        let ended = r.end_every_receive();
        // SAFETY: `Provided::trim`'s contract: when `ended`, every receive of this ring has
        // posted its last completion and it was reaped (the request no longer exists, so
        // nothing can select or fill a buffer, io_uring's documented meaning of a
        // completion without `IORING_CQE_F_MORE`), and every completion naming a buffer
        // was reaped with them (a request posts its last completion after every other; the
        // reaps hand over any a submit parked first, and nothing parks one after the last).
        // Only this ring's requests use its buffer group. `Provided::trim` itself checks
        // that no buffer is out (no `Chunk` refers to one).
        #[allow(unsafe_code)]
        let trimmed = ended && unsafe { r.bufs.trim() };
        if trimmed {
            r.trimmed_at.set(Some(r.stats.ring_bytes()));
        }
        r.phase.set(Phase::Running);
        r.rearm_ended();
        trimmed
    }

    /// Takes the first chunk queued on slot `id`.
    fn pop(&self, id: u32) -> Option<Chunk> {
        let (bid, len) = self.0.slots.borrow_mut().pop(id)?;
        Some(Chunk::new(self.clone(), bid, len))
    }

    /// The bytes of a chunk (see [`Chunk::bytes`]): `len` bytes of buffer `bid`.
    fn chunk_bytes(&self, bid: u16, len: u32) -> &[u8] {
        self.0.bufs.bytes(bid, len)
    }

    /// A chunk is dropped: buffer `bid` goes back to the ring.
    fn give_back(&self, bid: u16) {
        self.0.give(bid);
    }

    /// The slots, for the tests to look at.
    #[cfg(test)]
    fn slots(&self) -> std::cell::Ref<'_, Slots> {
        self.0.slots.borrow()
    }
}

impl Inner {
    /// Takes every completion waiting and hands each to its slot, a batch of up to
    /// [`BATCH`] at a time copied out of the queue first (handing one over may queue a
    /// request, which needs the ring).
    fn reap(&self) {
        let mut batch: [Completion; BATCH] = [(0, 0, 0); BATCH];
        loop {
            let n = self.uring.completions(&mut batch);
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
        if let Some(bid) = cqueue::buffer_select(flags) {
            self.bufs.taken();
            if res > 0 {
                // (Bytes a closed source's last receive brought count too: they filled a
                // buffer, which the trim's "nothing received since" check relies on.)
                self.stats.ring_received(res as u64);
            }
            if res <= 0 {
                self.bufs.give(bid);
            } else {
                let queued = self.slots.borrow_mut().queue(id, bid, res as u32, more);
                match queued {
                    Queued::Closed => self.bufs.give(bid),
                    Queued::Yes => {}
                    Queued::Pause => {
                        self.stats.count(Event::RecvPaused);
                        self.uring.cancel(id);
                    }
                }
            }
        }
        if !more {
            let ended = self.slots.borrow_mut().ended(id, res);
            match ended {
                Ended::Starved => self.stats.count(Event::RecvStarved),
                Ended::Unasked if self.phase.get() == Phase::Running => {
                    // The kernel ended the receive for its own reasons (a full completion
                    // queue): it carries on (after a trim, if one is ending every receive).
                    if let Err(e) = self.arm(id) {
                        self.fail(id, &e);
                    }
                }
                Ended::Freed => return,
                Ended::Unasked | Ended::Other => {}
            }
        }
        let waker = self.slots.borrow_mut().take_waker(id);
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
            let Some(id) = self.slots.borrow_mut().pop_starved() else {
                break;
            };
            if !self.slots.borrow().due(id) {
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
            self.uring.submit_logged();
        }
    }

    /// Re-arms every receive a trim ended (and any starved one: every buffer is free).
    fn rearm_ended(&self) {
        let due = self.slots.borrow().all_due();
        for &id in &due {
            if let Err(e) = self.arm_deferred(id) {
                self.fail(id, &e);
            }
        }
        if !due.is_empty() {
            self.uring.submit_logged();
        }
    }

    /// Re-arms a paused slot once its last receive has ended and its pump has taken every
    /// chunk (see "Backpressure"). A failed re-arm ends the source with its error.
    fn resume_if_drained(&self, id: u32) {
        let arm = self.slots.borrow_mut().resume_if_drained(id);
        if arm && let Err(e) = self.arm(id) {
            self.fail(id, &e);
        }
    }

    /// Submits a multishot receive for slot `id`.
    fn arm(&self, id: u32) -> io::Result<()> {
        self.arm_deferred(id)?;
        self.uring.submit()
    }

    /// Queues a multishot receive for slot `id`, for the next submit.
    fn arm_deferred(&self, id: u32) -> io::Result<()> {
        if self.phase.get() == Phase::Retired {
            // Tasks still run after `retire` (a pump resuming, a relay opening its source):
            // none may arm a receive that could refill a buffer an abandoned write reads.
            return Err(io::Error::other("the receive ring is retired"));
        }
        let fd = self.slots.borrow_mut().arming(id);
        (self.uring.queue_recv(fd, id)).inspect_err(|_| self.slots.borrow_mut().not_armed(id))
    }

    /// Slot `id`'s receive could not be armed: its source ends with that error.
    fn fail(&self, id: u32, e: &io::Error) {
        let errno = e.raw_os_error().unwrap_or(libc::EIO);
        let waker = self.slots.borrow_mut().fail(id, errno);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Cancels every receive and waits for their last completions (see `quiet.rs`): true
    /// once none is in flight.
    fn end_every_receive(&self) -> bool {
        quiet::end_every_receive(&self.uring, &self.slots, || self.reap())
    }
}

impl Drop for Inner {
    /// The buffers are unmapped only once no receive can fill one (every receive ended, as
    /// for a trim, and the buffer ring unregistered) and the ring was retired first. A ring
    /// dropped unretired (its worker panicked, or a test) may be going with a runtime whose
    /// abandoned writes still read its buffers: they stay mapped.
    fn drop(&mut self) {
        // The worker's runtime may be going away: no task is woken from here on.
        self.slots.get_mut().forget_wakers();
        if self.phase.replace(Phase::Retired) != Phase::Retired {
            self.bufs.keep();
        }
        let ended = self.end_every_receive();
        let unregistered = self.uring.unregister_buf_ring();
        if !ended || unregistered.is_err() {
            tracing::warn!(
                "receive ring: receives still in flight at its end ({unregistered:?}): its \
                 buffers stay mapped"
            );
            self.bufs.keep();
        }
    }
}

#[cfg(test)]
mod tests;
