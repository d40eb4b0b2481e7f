//! How the backend for a new connection is chosen: one shape for every algorithm, one file
//! per algorithm.
//!
//! A [`Selector`] is built once per backend snapshot (`Pool::configure`) and shared by
//! every worker's copy of it; the connection path asks it with a key it extracted from the
//! request (client address, a header, a cookie, a query parameter), and the selector never
//! reaches into the connection. [`Snapshot::select`](super::Snapshot::select) turns its
//! pick into the failover order.
//!
//! # Cross-core writes per connection, by algorithm
//! Every algorithm shares these, made by the connection path, not the selector: the
//! chosen backend's `selected` count (one `fetch_add` per backend tried) and its `open`
//! count (`Lease`: a `fetch_add` when the backend is tried, a `fetch_sub` when the
//! connection ends or the attempt fails), each on that backend's own padded line. On top:
//! - `round-robin`: one `fetch_add` on the pool's counter, plus one more for each backend
//!   it skips because it is down, at most 32 and then one last `fetch_add` for the rest
//!   (`round_robin.rs`): no extra one while every backend is up.
//! - `weighted-round-robin`: the same on the same counter, a slot of its sequence for a
//!   ticket; a ramping backend's slot (slow start) can be declined and skipped too.
//! - `least-connections`: none. It reads every backend's `open` line (lines other cores
//!   write); ties are broken with a per-thread RNG, not a shared counter.
//! - `power-of-two`: none. It reads two backends' `open` lines; per-thread RNG.
//! - `consistent-hash`: none. It reads the shared, immutable table and the health flags;
//!   a request without the key falls back to least-connections (none either).
//!
//! Reads of lines other cores write (the counts, the health flags) cost a cache miss when
//! they changed; they are per connection, never per frame.

mod failover;
mod least_connections;
mod maglev;
mod power_of_two;
mod rng;
mod round_robin;
mod weighted;
mod weights;

use super::Backend;
pub use crate::config::{Algorithm, Balancing, HashKey};
pub use failover::Failover;
pub use least_connections::LeastConnections;
pub use maglev::Maglev;
pub use power_of_two::PowerOfTwo;
pub use round_robin::RoundRobin;
use std::sync::Arc;
pub use weighted::Weighted;
pub use weights::{Ramp, Weights};

/// A selector's first choice for one connection ([`Selector::pick`]), with what its
/// failover order ([`Selector::failover`]) needs to go on from it: a copy, so the
/// connection path carries it from the request (where the key is) to the connects
/// without keeping the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    /// The index in the snapshot's backends of the backend to try first; `None` when
    /// none is up.
    pub first: Option<usize>,
    /// `consistent-hash` with a key: the table slot `first` was found at, where the
    /// key's walk goes on. `None` for the other algorithms and for a request without the
    /// key (which falls back to least-connections).
    slot: Option<u32>,
}

impl Pick {
    /// A pick that carries nothing but its backend (a sticky cookie's, say): after it,
    /// consistent-hash fails over by load, as for a request without the key.
    pub fn of(first: Option<usize>) -> Self {
        Self { first, slot: None }
    }
}

/// An algorithm: which backend to try first.
pub trait Selection {
    /// The index in `backends` of the backend to try first for `key`, among those that
    /// are up; `None` when none is.
    fn first(&self, backends: &[Arc<Backend>], key: &[u8]) -> Option<usize>;
}

/// The selector of one snapshot. An enum rather than a trait object: the set of
/// algorithms is closed and known here, and a pick is one match, not a virtual call.
/// Cheap to clone (each worker's copy of the snapshot has one): the tables are shared.
#[derive(Debug, Clone)]
pub enum Selector {
    RoundRobin(Arc<RoundRobin>),
    Weighted(Arc<Weighted>),
    LeastConnections(LeastConnections),
    PowerOfTwo(PowerOfTwo),
    ConsistentHash(Arc<Maglev>),
}

impl Selector {
    /// Round robin on `counter`, which the pool keeps across snapshots.
    pub fn round_robin(counter: Arc<RoundRobin>) -> Self {
        Selector::RoundRobin(counter)
    }

    /// The selector for `backends` (each with its weight in `weights`, same order) under
    /// `balancing`. Built once per snapshot; `counter` is the pool's, kept across them.
    pub fn build(
        balancing: &Balancing,
        backends: &[Arc<Backend>],
        weights: &[u32],
        counter: Arc<RoundRobin>,
    ) -> Self {
        debug_assert_eq!(backends.len(), weights.len());
        let ramp = if balancing.algorithm.ramps() {
            balancing.slow_start.map(Ramp::new)
        } else {
            None
        };
        let w = Weights::new(weights, ramp);
        match balancing.algorithm {
            Algorithm::RoundRobin => Selector::RoundRobin(counter),
            Algorithm::WeightedRoundRobin => {
                Selector::Weighted(Arc::new(Weighted::new(weights, ramp, counter)))
            }
            Algorithm::LeastConnections => Selector::LeastConnections(LeastConnections::new(w)),
            Algorithm::PowerOfTwo => Selector::PowerOfTwo(PowerOfTwo::new(w)),
            Algorithm::ConsistentHash => Selector::ConsistentHash(Arc::new(Maglev::new(
                backends,
                weights,
                LeastConnections::new(w),
            ))),
        }
    }

    /// The backend to try first for `key`, and what [`Selector::failover`] needs to go
    /// on from it.
    #[inline]
    pub fn pick(&self, backends: &[Arc<Backend>], key: &[u8]) -> Pick {
        match self {
            Selector::ConsistentHash(m) => m.pick(backends, key),
            _ => Pick::of(self.first(backends, key)),
        }
    }

    /// The backends (indexes into `backends`, the snapshot's) one connection tries, in
    /// order: `pick`'s, then each other one that is up, once, in this algorithm's order
    /// of preference (`failover.rs` says which, per algorithm). Lazy: nothing past the
    /// pick is worked out, nor allocated, until a second candidate is asked for.
    pub fn failover<'a>(&'a self, backends: &'a [Arc<Backend>], pick: Pick) -> Failover<'a> {
        Failover::new(self, backends, pick)
    }

    /// Whether the pick depends on the key (so the connection path must extract it).
    pub fn uses_key(&self) -> bool {
        matches!(self, Selector::ConsistentHash(_))
    }
}

impl Selection for Selector {
    #[inline]
    fn first(&self, backends: &[Arc<Backend>], key: &[u8]) -> Option<usize> {
        match self {
            Selector::RoundRobin(rr) => rr.first(backends, key),
            Selector::Weighted(w) => w.first(backends, key),
            Selector::LeastConnections(lc) => lc.first(backends, key),
            Selector::PowerOfTwo(p) => p.first(backends, key),
            Selector::ConsistentHash(m) => m.first(backends, key),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::balancer::{BackendHealth, BackendStats};
    use std::net::SocketAddr;

    /// `n` backends on 127.0.0.1:9000.., all up, none with connections.
    pub fn backends(n: usize) -> Vec<Arc<Backend>> {
        (0..n)
            .map(|i| {
                Arc::new(Backend {
                    id: i as u32,
                    addr: SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)),
                    tls: None,
                    health: BackendHealth::default(),
                    stats: BackendStats::default(),
                })
            })
            .collect()
    }

    #[test]
    fn hash_keys_parse() {
        assert_eq!("ip".parse(), Ok(HashKey::Ip));
        assert_eq!(
            "header:X-User".parse(),
            Ok(HashKey::Header("X-User".into()))
        );
        assert_eq!("cookie:sid".parse(), Ok(HashKey::Cookie("sid".into())));
        assert_eq!("query:room".parse(), Ok(HashKey::Query("room".into())));
        for bad in [
            "",
            "ipv4",
            "header:",
            "header:a b",
            "path:x",
            "cookie:",
            "cookie: sid",
            "cookie:a=b",
            "cookie:a;b",
            "query:a&b",
            "query:a=b",
            "query:a#",
        ] {
            assert!(bad.parse::<HashKey>().is_err(), "{bad:?}");
        }
    }
}
