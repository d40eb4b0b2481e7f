//! What the two pumps of one relay share, and the one way a pump waits: the relay's close
//! deadline, the closes owed between the pumps, the task waker, and the relay's place in
//! its worker's registry (keepalive, drain, retirement).

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Poll, Waker};

use super::Context;
use crate::buffers::BufferPool;
use crate::frame::{Rules, Side, Violation};
use crate::metrics::{ClosedBy, Event};
use crate::relay::registry::Attention;

/// How a wait of a pump ended (see [`Link::wait`]).
pub(super) enum Waited<T> {
    Done(T),
    /// The interruption given to the wait happened first.
    Interrupted,
    /// The relay's close deadline passed.
    Expired,
}

/// The state the two pumps of one connection share. Both run in the same task, so plain
/// `Cell`s suffice; nothing is borrowed across an await.
pub(super) struct Link<'e> {
    /// The relay's one close grace: `None` while frames flow; set (on the registry's
    /// 32-bit millisecond clock, see `Registry::deadline_in`) when closing begins: the first
    /// close sent either way, a close owed, or a side ended. Every wait of either pump is
    /// bounded by it from then on, so the relay is over by this deadline whatever the peers
    /// do.
    deadline: Cell<Option<u32>>,
    /// A close owed to the destination of the pump that reads `Side` (that destination
    /// broke the protocol), by [`Side::index`]: sent in place of the source's close reply,
    /// or when the source ends or the deadline passes. Only the code is stored: the reason
    /// follows from which side broke the protocol.
    owed: [Cell<Option<u16>>; 2],
    violation: Cell<Option<(Side, Violation)>>,
    /// Bytes and frames forwarded, by the side that sent them (for the access log; the
    /// worker's totals are counted alongside).
    bytes: [Cell<u64>; 2],
    frames: [Cell<u32>; 2],
    /// The first close frame of the connection: who sent it and its code.
    first_close: Cell<Option<(ClosedBy, Option<u16>)>>,
    /// The relay's task (both pumps run in it): woken when closing begins or a close is
    /// owed, and, through the worker's registry, when the instance drains, a keepalive is
    /// due or the backend was retired.
    task: Waker,
    env: &'e Context,
    key: u32,
    /// permessage-deflate was negotiated: RSV1 may mark a message's first frame.
    deflate: bool,
}

impl Drop for Link<'_> {
    fn drop(&mut self) {
        self.env.registry.unregister(self.key);
    }
}

impl<'e> Link<'e> {
    pub(super) fn new(task: Waker, env: &'e Context, backend: u32, deflate: bool) -> Self {
        Self {
            deadline: Cell::new(None),
            owed: Default::default(),
            violation: Cell::new(None),
            bytes: Default::default(),
            frames: Default::default(),
            first_close: Cell::new(None),
            key: env.registry.register(task.clone(), backend),
            task,
            env,
            deflate,
        }
    }

    pub(super) fn rules(&self, from: Side) -> &Rules {
        self.env.rules.rules(from, self.deflate)
    }

    pub(super) fn buffers(&self) -> &BufferPool {
        &self.env.buffers
    }

    pub(super) fn count(&self, e: Event) {
        self.env.stats.count(e);
    }

    /// `bytes` from `from` were forwarded, holding `frames` frame headers.
    #[inline]
    pub(super) fn relayed(&self, from: Side, bytes: usize, frames: u32) {
        let i = from.index();
        self.bytes[i].set(self.bytes[i].get() + bytes as u64);
        self.frames[i].set(self.frames[i].get().saturating_add(frames));
        self.env
            .stats
            .relayed(from, bytes as u64, u64::from(frames));
    }

    /// A close frame went out, sent by `by`.
    pub(super) fn closed(&self, by: ClosedBy, code: Option<u16>) {
        self.env.stats.close(by, code);
        if self.first_close.get().is_none() {
            self.first_close.set(Some((by, code)));
        }
    }

    /// What the relay moved, for its outcome.
    pub(super) fn traffic(&self) -> super::Traffic {
        super::Traffic {
            bytes: self.bytes.each_ref().map(Cell::get),
            frames: self.frames.each_ref().map(Cell::get),
            first_close: self.first_close.get(),
        }
    }

    /// Closing has begun: starts the close deadline unless it runs already.
    pub(super) fn start_closing(&self) {
        if self.deadline.get().is_none() {
            let grace = self.env.rules.close_grace;
            self.deadline
                .set(Some(self.env.registry.deadline_in(grace)));
            // The other pump may have been polled already in this turn of the task.
            self.task.wake_by_ref();
        }
    }

    /// The pump reading `from` broke nothing, but its destination did: it owes that
    /// destination `code`.
    pub(super) fn owe_close(&self, from: Side, code: u16) {
        self.owed[from.index()].set(Some(code));
        self.start_closing();
    }

    /// The close owed to the destination of the pump reading `from`, if any, with its
    /// reason; taken once.
    pub(super) fn take_owed(&self, from: Side) -> Option<(u16, &'static str)> {
        let code = self.owed[from.index()].take()?;
        // That destination is the offender: the backend for the pump reading the client.
        let reason = match from {
            Side::Client => "backend protocol error",
            Side::Backend => "client protocol error",
        };
        Some((code, reason))
    }

    pub(super) fn has_owed(&self, from: Side) -> bool {
        self.owed[from.index()].get().is_some()
    }

    /// Records the first protocol violation of the relay (for its outcome).
    pub(super) fn violated(&self, by: Side, v: Violation) {
        if self.violation.get().is_none() {
            self.violation.set(Some((by, v)));
        }
    }

    pub(super) fn violation(&self) -> Option<(Side, Violation)> {
        self.violation.get()
    }

    pub(super) fn heard(&self, from: Side) {
        self.env.registry.heard(self.key, from);
    }

    pub(super) fn pinged(&self, to: Side) {
        self.env.registry.pinged(self.key, to);
    }

    pub(super) fn awaits_pong(&self, from: Side) -> bool {
        self.env.registry.awaits_pong(self.key, from)
    }

    pub(super) fn pong_received(&self, from: Side) {
        self.env.registry.pong_received(self.key, from);
    }

    /// What the registry has due for the pump reading `from`. A going-away close is due
    /// only to a pump whose destination is still `open` (no close went there yet).
    #[inline]
    pub(super) fn attention(&self, from: Side, open: bool) -> Option<Attention> {
        match self.env.registry.attention(self.key, from)? {
            Attention::GoAway(..) if !open => None,
            a => Some(a),
        }
    }

    /// What ends a wait for the source's data: at a frame boundary, anything the registry
    /// has due for the pump reading `from` (a going-away close only while its destination
    /// is `open`); mid-frame, only the keepalive finding the source dead. The registry
    /// wakes the relay's task for it, so nothing is stored.
    ///
    /// Not an `async fn`: that would keep its arguments next to the `poll_fn` that holds
    /// them too, and every idle connection parks two of these.
    pub(super) fn interrupt(
        &self,
        from: Side,
        open: bool,
        at_boundary: bool,
    ) -> impl Future<Output = ()> + Unpin + '_ {
        std::future::poll_fn(move |_| {
            let due = if at_boundary {
                self.attention(from, open).is_some()
            } else {
                self.env.registry.attention(self.key, from) == Some(Attention::SourceDead)
            };
            if due { Poll::Ready(()) } else { Poll::Pending }
        })
    }

    /// The largest frame a direction keeps receiving through the worker's receive ring.
    pub(super) fn recv_buffer_bytes(&self) -> u32 {
        self.env
            .recv
            .as_ref()
            .map_or(u32::MAX, |r| r.buffer_bytes())
    }

    pub(super) fn recv_ring(&self) -> Option<&'e crate::recv_ring::RecvRing> {
        self.env.recv.as_ref()
    }

    /// The one way a pump waits: runs `io` until it completes, or until `interrupt`
    /// resolves first (then `io` is dropped). Once closing has begun, even while `io` is
    /// under way, the wait is also bounded by the close deadline (an in-flight op carries
    /// on under the deadline rather than being dropped, so no bytes it moves are lost).
    ///
    /// Dropping an io_uring op cancels it, and monoio keeps its buffer until the kernel's
    /// completion arrives, then frees it (see "Buffer ownership" in `mod.rs`).
    ///
    /// A hand-written future rather than an `async fn` with `select!`: the readiness wait
    /// is what every idle connection parks in, twice, and this state is the two references,
    /// the interrupt's few bytes and the timer's pointer. `io` is pinned by the caller for
    /// the same reason (moved in, it would take room twice). The timer is made, boxed, only
    /// once closing has begun.
    pub(super) fn wait<'a, F: Future>(
        &'a self,
        mut io: Pin<&'a mut F>,
        mut interrupt: impl Future<Output = ()> + Unpin + 'a,
    ) -> impl Future<Output = Waited<F::Output>> + 'a {
        let mut timer: Option<Pin<Box<monoio::time::Sleep>>> = None;
        std::future::poll_fn(move |cx| {
            if let Poll::Ready(r) = io.as_mut().poll(cx) {
                return Poll::Ready(Waited::Done(r));
            }
            if Pin::new(&mut interrupt).poll(cx).is_ready() {
                return Poll::Ready(Waited::Interrupted);
            }
            let Some(d) = self.deadline.get() else {
                return Poll::Pending;
            };
            let timer = timer.get_or_insert_with(|| {
                Box::pin(monoio::time::sleep_until(self.env.registry.instant_of(d)))
            });
            match timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Waited::Expired),
                Poll::Pending => Poll::Pending,
            }
        })
    }
}
