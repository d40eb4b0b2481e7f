//! What the two pumps of one relay share: the close requests between them, their read
//! cancellers, the task waker and the worker registration (drain, keepalive, retirement);
//! and the readiness wait a pump makes without holding a buffer.

use std::cell::Cell;
use std::task::{Poll, Waker};

use monoio::io::{Canceller, OwnedReadHalf};
use monoio::net::TcpStream;

use crate::frame::{Sender, Violation};

use super::registry::Attention;
use crate::worker::WorkerEnv;

/// The state the two pumps of one connection share. Both run in the same task, so plain
/// `Cell`/`RefCell` suffice; a borrow is never held across an await.
pub(super) struct Link<'p> {
    /// A close owed to this pump's destination (which broke the protocol), to be sent in
    /// place of the source's close reply, or when the source ends or the grace runs out.
    /// Only the code is stored: the reason follows from which side broke the protocol
    /// (see [`Pump::take_owed`]), and every byte here is paid by every idle connection.
    pub(super) close_request: [Cell<Option<u16>>; 2],
    /// Cancels this pump's pending read so that it sees a close request promptly. Made on
    /// first use: only reads that may wait (mid-frame, or after a full buffer) need one,
    /// and each costs a heap allocation an idle connection should not carry.
    pub(super) readers: [Cell<Option<Canceller>>; 2],
    pub(super) violation: Cell<Option<(Sender, Violation)>>,
    /// The relay's task (both pumps run in it): woken when one pump asks the other to
    /// close, and, through the worker's registry, when the instance drains, a keepalive
    /// is due or the backend was retired.
    task: Waker,
    /// The worker's relay settings, buffer pool and registry (here rather than in each
    /// pump: one reference per connection instead of two).
    pub(super) env: &'p WorkerEnv,
    pub(super) key: u32,
}

impl Drop for Link<'_> {
    fn drop(&mut self) {
        self.env.registry.unregister(self.key);
    }
}

impl<'p> Link<'p> {
    pub(super) fn new(task: Waker, env: &'p WorkerEnv, backend: u32) -> Self {
        Self {
            close_request: Default::default(),
            readers: Default::default(),
            violation: Cell::new(None),
            key: env.registry.register(task.clone(), backend),
            task,
            env,
        }
    }

    /// What the registry has due for pump `me`, minus a going-away close it already sent.
    #[inline]
    pub(super) fn attention(&self, me: usize, went_away: bool) -> Option<Attention> {
        match self.env.registry.attention(self.key, me)? {
            Attention::GoAway(..) if went_away => None,
            a => Some(a),
        }
    }

    pub(super) fn request_close(&self, pump: usize, code: u16) {
        self.close_request[pump].set(Some(code));
        if let Some(c) = self.readers[pump].take() {
            self.readers[pump].set(Some(c.cancel()));
        }
        // The other pump may have been polled already in this turn of the task.
        self.task.wake_by_ref();
    }

    pub(super) fn reader(&self, pump: usize) -> monoio::io::CancelHandle {
        // A `Cell` rather than a `RefCell`: 8 bytes less per pump, and taken out and put
        // back is all it needs.
        let c = self.readers[pump].take().unwrap_or_default();
        let h = c.handle();
        self.readers[pump].set(Some(c));
        h
    }

    /// Resolves once a close request for `pump` is pending, or the registry has something
    /// due for it. Both wake the relay's task (see `task`), so nothing is stored.
    ///
    /// Not an `async fn`: that would keep its arguments next to the `poll_fn` that holds
    /// them too, and every idle connection parks two of these.
    pub(super) fn interrupted(
        &self,
        pump: usize,
        went_away: bool,
    ) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(move |_| {
            if self.close_request[pump].get().is_some() || self.attention(pump, went_away).is_some()
            {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }

    /// Resolves once the keepalive finds pump `me`'s source dead.
    pub(super) fn source_dead(&self, me: usize) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(move |_| {
            if self.env.registry.attention(self.key, me) == Some(Attention::SourceDead) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

/// Waiting for a source to become readable without holding a buffer.
pub trait Readiness {
    fn ready(&self) -> impl std::future::Future<Output = std::io::Result<()>>;
}

impl Readiness for TcpStream {
    fn ready(&self) -> impl std::future::Future<Output = std::io::Result<()>> {
        // Strict (`relaxed = false`): on the epoll driver a relaxed check answers from the
        // readiness cached since the last event, so after a read that did not drain the
        // socket to EAGAIN it says "readable" on an idle socket. The pump then parked in a
        // plain read that nothing interrupts, and a drain's 1001, a keepalive ping or an
        // idle close never went out (regression test: tests/drain.rs, epoll). The strict
        // check costs a poll(2) per wait on epoll; io_uring ignores the flag.
        self.readable(false)
    }
}

/// The stream behind a read half, for a readiness wait.
#[allow(unsafe_code)]
pub(super) fn stream_of<T>(half: &OwnedReadHalf<T>) -> &T {
    // SAFETY: the read half and its write half share the stream through an
    // `Rc<UnsafeCell<T>>`; monoio's own halves each take `&mut T` from it while their ops
    // run. `Readiness::ready` only reads the stream's shared fd handle (an `Rc` that
    // nothing replaces while both halves live) to submit a poll; it never touches state a
    // concurrent write uses. The reference does not outlive the half.
    unsafe { &*half.0.get() }
}
