//! Per-worker pool of relay buffers: a connection holds one only while bytes are in flight.
//!
//! An idle proxied connection pins no buffer. On io_uring a relay direction over plain TCP
//! receives through the worker's receive ring (`recv_ring/`: the kernel picks one of the
//! ring's own buffers when bytes arrive) and takes a buffer from this pool only when
//! what it received cannot be forwarded from the ring's buffer: a frame split across
//! chunks, or one larger than the ring's buffers. Where there is no ring (epoll, a TLS
//! stream, `recv_ring_buffers = 0`) a direction waits for readability first (an io_uring
//! `POLL_ADD`, or the epoll driver's readiness), then takes a buffer from this pool, reads
//! what the kernel has and forwards it. Either way the buffer goes back once the direction
//! stands at a frame boundary. The request heads and plain HTTP bodies borrow from here
//! too. So the number of buffers a worker owns follows the number of reads and writes in
//! flight at once, not the number of connections: 9,900 idle connections cost no buffer
//! memory at all.
//!
//! The pool belongs to one worker (`Rc`, `RefCell`); buffers never cross threads, so
//! mimalloc's thread-local free lists serve every allocation here.

use std::cell::{Cell, RefCell};

/// Free buffers a worker keeps for reuse. A buffer is in use only from a completed
/// readiness wait to the end of the write that forwards what was read, and on loopback both
/// usually complete within one turn of the event loop, so few are out at once even with
/// thousands of busy connections; a miss costs one allocation from mimalloc's thread-local
/// free list. The cap bounds what a worker keeps after a burst: 16 x `relay_buffer_max_bytes`
/// (1 MiB by default). It is also part of the measured memory per idle connection (its
/// buffers are allocated during the handshakes), which is why it is not larger.
const MAX_FREE: usize = 16;

/// A worker's free relay buffers.
#[derive(Debug)]
pub struct BufferPool {
    free: RefCell<Vec<Vec<u8>>>,
    /// Buffers handed out since start (wrapping): the worker's idle trim compares it
    /// between its checks to see that no byte moved (see `worker::trim_when_idle`).
    taken: Cell<u32>,
    /// Capacity of a new buffer (`limits.relay_buffer_bytes`).
    size: usize,
    /// Largest capacity kept for reuse (`limits.relay_buffer_max_bytes`).
    max: usize,
}

impl BufferPool {
    pub fn new(size: usize, max: usize) -> Self {
        Self {
            free: RefCell::new(Vec::new()),
            taken: Cell::new(0),
            size,
            max: max.max(size),
        }
    }

    /// An empty buffer with capacity for at least `min` bytes (and at least the pool's
    /// buffer size). Buffers grow to fit the largest frame their connections saw, so a
    /// pool serving 16 KiB messages settles on buffers that take one whole framed message.
    pub fn take(&self, min: usize) -> Vec<u8> {
        let min = min.max(self.size);
        self.taken.set(self.taken.get().wrapping_add(1));
        match self.free.borrow_mut().pop() {
            Some(mut b) => {
                if b.capacity() < min {
                    b.reserve_exact(min);
                }
                b
            }
            None => Vec::with_capacity(min),
        }
    }

    /// Gives a buffer back. Its contents are dropped.
    pub fn give(&self, mut b: Vec<u8>) {
        let cap = b.capacity();
        if cap < self.size || cap > self.max {
            return;
        }
        let mut free = self.free.borrow_mut();
        if free.len() < MAX_FREE {
            b.clear();
            free.push(b);
        }
    }

    /// Buffers handed out since start (wrapping).
    pub fn taken(&self) -> u32 {
        self.taken.get()
    }

    /// Frees every buffer kept for reuse: after a burst the pool holds up to 16 buffers
    /// grown to the largest frames seen, memory an idle worker should not pin.
    pub fn trim(&self) {
        *self.free.borrow_mut() = Vec::new();
    }

    /// Buffers waiting for reuse.
    #[cfg(test)]
    fn free_count(&self) -> usize {
        self.free.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_buffers_and_grows_them_to_fit() {
        let p = BufferPool::new(1024, 8192);
        let a = p.take(0);
        assert_eq!(a.capacity(), 1024);
        let ptr = a.as_ptr();
        p.give(a);
        let b = p.take(0);
        assert_eq!(b.as_ptr(), ptr, "the freed buffer is reused");
        p.give(b);
        let c = p.take(4000);
        assert!(c.capacity() >= 4000 && c.is_empty());
        p.give(c);
        assert!(p.take(0).capacity() >= 4000, "grown buffers stay grown");
    }

    #[test]
    fn keeps_at_most_max_free_and_drops_odd_sizes() {
        let p = BufferPool::new(1024, 8192);
        let bufs: Vec<_> = (0..MAX_FREE + 10).map(|_| p.take(0)).collect();
        for b in bufs {
            p.give(b);
        }
        assert_eq!(p.free_count(), MAX_FREE);
        let p = BufferPool::new(1024, 8192);
        p.give(Vec::with_capacity(16));
        p.give(Vec::with_capacity(1 << 20));
        assert_eq!(p.free_count(), 0);
    }

    #[test]
    fn trim_frees_the_spares_and_takes_are_counted() {
        let p = BufferPool::new(1024, 65536);
        let before = p.taken();
        let bufs: Vec<_> = (0..4).map(|_| p.take(65536)).collect();
        assert_eq!(p.taken().wrapping_sub(before), 4);
        for b in bufs {
            p.give(b);
        }
        assert_eq!(p.free_count(), 4);
        p.trim();
        assert_eq!(p.free_count(), 0);
        assert!(p.take(1).capacity() >= 1024, "still serves after a trim");
    }
}
