//! One relay direction's side of the ring: its [`Source`] (the slot the pump holds), the
//! wait for its next [`Chunk`], and the chunk itself, a provided buffer out of the ring.

use std::future::Future;
use std::io;
use std::task::Poll;

use super::{Next, OPEN, RecvRing, Want};
use crate::metrics::Event;

/// One socket's receive through the ring, held by the relay pump reading it: its slot,
/// 4 bytes, since every idle connection carries two. It has no `Drop`: the relay hands it
/// back with [`RecvRing::close`] when it ends (relays are not dropped midway; at a
/// worker's end the ring goes with everything else, and closing the ring cancels what is
/// left).
#[must_use]
#[derive(Debug)]
pub struct Source(pub(super) std::num::NonZeroU32);

impl Source {
    pub(super) fn id(&self) -> u32 {
        self.0.get() - 1
    }
}

impl RecvRing {
    /// The next chunk of `src`, or how its receive ended.
    pub fn next<'a>(&'a self, src: &'a Source) -> impl Future<Output = Next> + 'a {
        let id = src.id();
        std::future::poll_fn(move |cx| {
            let chunk = self.pop(id);
            self.resume_if_drained(id);
            if let Some(c) = chunk {
                return Poll::Ready(Next::Chunk(c));
            }
            let mut slots = self.0.slots.borrow_mut();
            let s = &mut slots[id as usize];
            if s.end != OPEN {
                return Poll::Ready(Next::End(match s.end {
                    0 => Ok(()),
                    e => Err(io::Error::from_raw_os_error(-e)),
                }));
            }
            // (`Closed` cannot be seen here: `close` takes the source.)
            if !s.armed && matches!(s.want, Want::Stop | Want::Closed) {
                return Poll::Ready(Next::Stopped);
            }
            s.waker = Some(cx.waker().clone());
            Poll::Pending
        })
    }

    /// Stops `src`'s receive for good (a frame too large for the ring's buffers): chunks
    /// already received still come, then [`Next::Stopped`].
    pub fn stop(&self, src: &Source) {
        let id = src.id();
        let cancel = {
            let mut slots = self.0.slots.borrow_mut();
            let s = &mut slots[id as usize];
            if s.want == Want::Stop {
                // Asked already (by an earlier chunk of the same large frame).
                return;
            }
            let was = std::mem::replace(&mut s.want, Want::Stop);
            // A pause's cancel is already on its way.
            s.armed && was != Want::Pause
        };
        self.0.stats.count(Event::RecvLargeFrame);
        if cancel {
            self.0.cancel(id);
        }
    }

    /// The relay is done with `src`: what is queued goes back to the ring, a receive still
    /// in flight is cancelled, and the slot is free once its last completion is reaped.
    pub fn close(&self, src: Source) {
        let id = src.id();
        while let Some(c) = self.pop(id) {
            drop(c);
        }
        let (armed, was) = {
            let mut slots = self.0.slots.borrow_mut();
            let s = &mut slots[id as usize];
            s.waker = None;
            (s.armed, std::mem::replace(&mut s.want, Want::Closed))
        };
        if !armed {
            self.0.free.borrow_mut().push(id);
        } else if was == Want::Run {
            // A pause's or a stop's cancel is already on its way.
            self.0.cancel(id);
        }
        // The relay closes the socket next, so nothing naming its descriptor may stay in
        // the submission queue (see `Inner::submit`).
        self.0.flush();
    }
}

/// Bytes one completion put in a provided buffer; puts the buffer back in the ring when
/// dropped. A write op takes it as its buffer (monoio's `IoBuf`).
pub struct Chunk {
    pub(super) ring: RecvRing,
    pub(super) bid: u16,
    pub(super) len: u32,
}

impl Chunk {
    pub fn bytes(&self) -> &[u8] {
        self.ring.0.bufs.bytes(self.bid, self.len)
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        self.ring.0.give(self.bid);
    }
}

// SAFETY: the pointer is the chunk's buffer, which stays out of the ring, unchanged and
// mapped while the chunk lives (it goes back only in `drop`, and the mapping lives as
// long as the ring, which the chunk keeps alive).
#[allow(unsafe_code)]
unsafe impl monoio::buf::IoBuf for Chunk {
    fn read_ptr(&self) -> *const u8 {
        self.bytes().as_ptr()
    }

    fn bytes_init(&self) -> usize {
        self.len as usize
    }
}
