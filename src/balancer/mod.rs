//! The backend pool and how a connection's backend is chosen (round robin first).
//!
//! The pool is an immutable snapshot shared by all workers through an `Arc`; the only
//! mutable shared state on the connection path is the round-robin counter.

mod round_robin;

use std::net::SocketAddr;

pub use round_robin::RoundRobin;

/// The backends of one configuration, in config order, plus the selection counter.
#[derive(Debug)]
pub struct Pool {
    backends: Vec<SocketAddr>,
    rr: RoundRobin,
}

impl Pool {
    /// # Panics
    /// If `backends` is empty (config validation guarantees at least one).
    pub fn new(backends: Vec<SocketAddr>) -> Self {
        assert!(!backends.is_empty(), "a pool needs at least one backend");
        Self {
            backends,
            rr: RoundRobin::new(),
        }
    }

    /// The backends to try for one new client connection, in order: the round-robin pick
    /// first, then each other backend once (failover when a connect is refused or times out).
    pub fn candidates(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        let n = self.backends.len();
        let first = self.rr.next(n);
        (0..n).map(move |i| self.backends[(first + i) % n])
    }

    pub fn backends(&self) -> &[SocketAddr] {
        &self.backends
    }
}
