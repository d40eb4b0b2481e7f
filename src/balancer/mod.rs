//! The backend pool and how a connection's backend is chosen (round robin first), and
//! backend health (`health.rs`).
//!
//! The pool is an immutable snapshot shared by all workers through an `Arc`; the only
//! mutable shared state on the connection path is the round-robin counter and the
//! backends' health flags.

pub mod health;
mod round_robin;

use std::net::SocketAddr;
use std::sync::Arc;

pub use health::{BackendHealth, HealthConfig, Probe};
pub use round_robin::RoundRobin;

/// The backends of one configuration, in config order, their health, and the selection
/// counter.
#[derive(Debug)]
pub struct Pool {
    backends: Vec<SocketAddr>,
    health: Arc<[BackendHealth]>,
    /// Connect failures in a row that take a backend down (the health config's `fall`).
    fall: u32,
    rr: RoundRobin,
}

impl Pool {
    /// `fall`: connect failures in a row that take a backend down (`u32::MAX`: never).
    ///
    /// # Panics
    /// If `backends` is empty (config validation guarantees at least one).
    pub fn new(backends: Vec<SocketAddr>, fall: u32) -> Self {
        assert!(!backends.is_empty(), "a pool needs at least one backend");
        let health = (0..backends.len())
            .map(|_| BackendHealth::default())
            .collect();
        Self {
            backends,
            health,
            fall: fall.max(1),
            rr: RoundRobin::new(),
        }
    }

    /// The backends to try for one new client connection, in order: the round-robin pick
    /// among the backends that are up first, then each other backend that is up once
    /// (failover when a connect is refused or times out). Empty when every backend is down.
    ///
    /// The pick counts only backends that are up, so the rotation stays exact over the
    /// healthy ones (with one down of three, the other two get half each, not one of them
    /// double).
    pub fn candidates(&self) -> impl Iterator<Item = (usize, SocketAddr)> + '_ {
        let n = self.backends.len();
        let up = self.health.iter().filter(|h| h.is_up()).count();
        let first = if up == 0 {
            0
        } else {
            let t = self.rr.next(up);
            // The index of the t-th backend that is up.
            (0..n)
                .filter(|&i| self.health[i].is_up())
                .nth(t)
                .unwrap_or(0)
        };
        (0..n)
            .map(move |k| (first + k) % n)
            .filter(move |&i| up > 0 && self.health[i].is_up())
            .map(move |i| (i, self.backends[i]))
    }

    /// A connect to backend `i` failed; `fall` in a row take it down.
    pub fn connect_failed(&self, i: usize) {
        if self.health[i].failed(self.fall) {
            tracing::warn!(
                backend = %self.backends[i],
                "backend is down: {} connects failed in a row; it returns after passing health checks",
                self.fall
            );
        }
    }

    pub fn connected(&self, i: usize) {
        self.health[i].connected();
    }

    pub fn backends(&self) -> &[SocketAddr] {
        &self.backends
    }

    /// The health flags, for the checker thread.
    pub fn health(&self) -> Arc<[BackendHealth]> {
        self.health.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 9000 + i)))
            .collect()
    }

    #[test]
    fn rotation_is_exact_over_the_backends_that_are_up() {
        let p = Pool::new(addrs(3), 1);
        p.connect_failed(1);
        let mut count = [0; 3];
        for _ in 0..30 {
            let picks: Vec<usize> = p.candidates().map(|(i, _)| i).collect();
            assert_eq!(picks.len(), 2, "only the two that are up");
            count[picks[0]] += 1;
        }
        assert_eq!(count, [15, 0, 15]);
    }

    #[test]
    fn all_down_gives_no_candidates() {
        let p = Pool::new(addrs(2), 2);
        for i in [0, 0, 1, 1] {
            p.connect_failed(i);
        }
        assert_eq!(p.candidates().count(), 0);
        p.health()[1].passed(1);
        assert_eq!(
            p.candidates().map(|(_, a)| a).collect::<Vec<_>>(),
            vec![addrs(2)[1]]
        );
    }
}
