//! The order in which one connection tries backends after the selector's first pick.
//!
//! Each algorithm fails over along its own preference:
//! - `round-robin`, `weighted-round-robin`, `power-of-two`: the backends after the pick in
//!   config order, round to the one before it. Their pick carries no preference beyond
//!   itself worth keeping (a rotation, or two random draws), and a fixed rotation from a
//!   pick that is itself spread evenly spreads the failovers evenly too.
//! - `least-connections` (and `consistent-hash` for a request without the key): the
//!   least loaded backend not tried yet, the counts read again for each candidate (a
//!   failed attempt's lease is already gone, and others' connections moved the counts).
//! - `consistent-hash`: the key's walk of the table goes on from the slot of the pick,
//!   skipping backends already tried, so each candidate is the backend the key would get
//!   if the ones tried before it were down (health otherwise unchanged meanwhile), and two
//!   instances with the same backends and health agree on the whole order.
//!
//! A connection normally succeeds on its first backend, so nothing past the pick is
//! computed, and nothing is allocated, until a second candidate is asked for. The set of
//! backends tried (for the two orders that need one) is a bitset, inline up to 256
//! backends and allocated once, at that second candidate, for longer lists.

use std::sync::Arc;

use super::{Pick, Selector};
use crate::balancer::Backend;

/// Lists up to this long keep the tried set inline (four words).
const INLINE: usize = 256;

/// The backends one connection has tried (by index in the snapshot).
#[derive(Debug)]
struct Tried {
    bits: Bits,
    /// How many are set: a table walk ends when every backend has been tried.
    count: usize,
}

#[derive(Debug)]
enum Bits {
    Inline([u64; INLINE / 64]),
    Heap(Box<[u64]>),
}

impl Tried {
    fn new(n: usize) -> Self {
        let bits = if n <= INLINE {
            Bits::Inline([0; INLINE / 64])
        } else {
            Bits::Heap(vec![0; n.div_ceil(64)].into())
        };
        Self { bits, count: 0 }
    }

    fn contains(&self, i: usize) -> bool {
        let w: &[u64] = match &self.bits {
            Bits::Inline(w) => w,
            Bits::Heap(w) => w,
        };
        w[i / 64] & (1 << (i % 64)) != 0
    }

    /// Adds `i`, not in the set yet.
    fn insert(&mut self, i: usize) {
        let w: &mut [u64] = match &mut self.bits {
            Bits::Inline(w) => w,
            Bits::Heap(w) => w,
        };
        w[i / 64] |= 1 << (i % 64);
        self.count += 1;
    }
}

/// How the order goes on after the pick (derived from the selector and the pick).
#[derive(Debug)]
enum Rest {
    /// Not started: the pick comes next.
    Start,
    /// The pick was given; nothing after it worked out yet.
    Picked,
    /// Config order: the offset from the pick of the next backend to look at.
    Rotate(usize),
    /// Least loaded first among those not tried.
    Load(Tried),
    /// The key's table walk: the slot of the last candidate, and the slots left to walk.
    Table {
        tried: Tried,
        slot: u32,
        left: usize,
    },
    Done,
}

/// The failover order of one connection: the pick, then the others that are up, once
/// each, in the algorithm's order (see the module docs). Health is read as each
/// candidate is asked for, so one that went down meanwhile is skipped.
#[derive(Debug)]
pub struct Failover<'a> {
    selector: &'a Selector,
    backends: &'a [Arc<Backend>],
    pick: Pick,
    rest: Rest,
}

impl<'a> Failover<'a> {
    pub(super) fn new(selector: &'a Selector, backends: &'a [Arc<Backend>], pick: Pick) -> Self {
        Self {
            selector,
            backends,
            pick,
            rest: if pick.first.is_some() {
                Rest::Start
            } else {
                Rest::Done
            },
        }
    }

    /// The state after the pick, made when the second candidate is asked for.
    fn after(&self, first: usize) -> Rest {
        let tried = || {
            let mut t = Tried::new(self.backends.len());
            t.insert(first);
            t
        };
        match (self.selector, self.pick.slot) {
            (Selector::ConsistentHash(m), Some(slot)) => Rest::Table {
                tried: tried(),
                slot,
                left: m.slots() - 1,
            },
            (Selector::LeastConnections(_) | Selector::ConsistentHash(_), _) => Rest::Load(tried()),
            _ => Rest::Rotate(1),
        }
    }
}

impl Iterator for Failover<'_> {
    type Item = usize;

    /// The pick, inline in the caller (what nearly every connection asks for); the rest
    /// out of line.
    #[inline]
    fn next(&mut self) -> Option<usize> {
        if let (Rest::Start, Some(first)) = (&self.rest, self.pick.first)
            && self.backends[first].health.is_up()
        {
            self.rest = Rest::Picked;
            return Some(first);
        }
        self.past_the_pick()
    }
}

impl Failover<'_> {
    #[inline(never)]
    fn past_the_pick(&mut self) -> Option<usize> {
        let backends = self.backends;
        let up = |i: usize| backends[i].health.is_up();
        let first = self.pick.first?;
        if let Rest::Start | Rest::Picked = self.rest {
            // The second candidate (or the first, if the pick went down meanwhile): only
            // now is the rest of the order set up.
            self.rest = self.after(first);
        }
        let n = backends.len();
        let next = match &mut self.rest {
            Rest::Start | Rest::Picked | Rest::Done => None,
            Rest::Rotate(k) => {
                let found = (*k..n).find(|&k| up((first + k) % n));
                *k = found.map_or(n, |k| k + 1);
                found.map(|k| (first + k) % n)
            }
            Rest::Load(tried) => {
                let lc = match self.selector {
                    Selector::LeastConnections(lc) => lc,
                    Selector::ConsistentHash(m) => m.fallback(),
                    _ => unreachable!("only these fail over by load"),
                };
                let i = lc.scan_where(backends, |i| !tried.contains(i));
                if let Some(i) = i {
                    tried.insert(i);
                }
                i
            }
            Rest::Table { tried, slot, left } => {
                let Selector::ConsistentHash(m) = self.selector else {
                    unreachable!("only consistent-hash walks a table")
                };
                if tried.count == n {
                    // Every backend tried: the rest of the walk has nothing new.
                    *left = 0;
                }
                let i = m.walk_on(slot, left, |i| !tried.contains(i) && up(i));
                if let Some(i) = i {
                    tried.insert(i);
                }
                i
            }
        };
        if next.is_none() {
            self.rest = Rest::Done;
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use crate::balancer::{Algorithm, BackendSpec, Lease, Pool, Snapshot};
    use std::net::SocketAddr;
    use std::sync::Arc;

    fn specs(n: usize) -> Vec<BackendSpec> {
        (0..n)
            .map(|i| BackendSpec::from(SocketAddr::from(([10, 0, 0, i as u8], 9000))))
            .collect()
    }

    fn pool(specs: &[BackendSpec], algorithm: Algorithm) -> Arc<Snapshot> {
        let pool = Pool::new(specs.iter().map(|s| s.addr).collect(), 1);
        let balancing = crate::balancer::Balancing {
            algorithm,
            ..Default::default()
        };
        pool.configure(specs, None, &balancing, pool.snapshot().keys.clone());
        pool.snapshot()
    }

    fn order(snap: &Snapshot, key: &[u8]) -> Vec<SocketAddr> {
        snap.select(key).map(|b| b.addr).collect()
    }

    /// Review finding: consistent-hash failed over in config order, so a key's second
    /// backend was not the one it goes to when its first is down (and two instances with
    /// the backends listed in other orders disagreed on it).
    #[test]
    fn consistent_hash_fails_over_along_the_keys_own_table() {
        let a = pool(&specs(10), Algorithm::ConsistentHash);
        let mut reversed = specs(10);
        reversed.reverse();
        let b = pool(&reversed, Algorithm::ConsistentHash);
        for k in 0..500u32 {
            let key = format!("user-{k}");
            let key = key.as_bytes();
            let all = order(&a, key);
            assert_eq!(all.len(), 10, "each backend once");
            assert_eq!(order(&b, key), all, "another instance agrees");
            // Each next candidate is where the key goes once the ones before it are down.
            let down: Vec<_> = all[..3]
                .iter()
                .map(|addr| a.backends.iter().find(|x| x.addr == *addr).unwrap())
                .collect();
            for (i, d) in down.iter().enumerate() {
                d.health.failed(1);
                assert_eq!(order(&a, key)[0], all[i + 1], "key {k}, {} down", i + 1);
            }
            for d in down {
                d.health.passed(1);
            }
        }
    }

    /// Review finding: least-connections failed over in config order from its pick, not
    /// to the next-least-loaded backend.
    #[test]
    fn least_connections_fails_over_to_the_next_least_loaded() {
        let snap = pool(&specs(5), Algorithm::LeastConnections);
        let _held: Vec<Lease> = [(0, 6), (1, 2), (2, 4), (4, 1)]
            .iter()
            .flat_map(|&(i, n)| (0..n).map(move |_| i))
            .map(|i| Lease::new(snap.backends[i].clone()))
            .collect();
        snap.backends[4].health.failed(1);
        let ids: Vec<u32> = snap.select(&[]).map(|b| b.id).collect();
        assert_eq!(ids, [3, 1, 2, 0], "by open count, the down one left out");
    }

    /// A consistent-hash request without the key falls back to least-connections, for its
    /// failover too.
    #[test]
    fn a_keyless_request_fails_over_by_load() {
        let snap = pool(&specs(4), Algorithm::ConsistentHash);
        let _held: Vec<Lease> = [(0, 1), (1, 3), (3, 2)]
            .iter()
            .flat_map(|&(i, n)| (0..n).map(move |_| i))
            .map(|i| Lease::new(snap.backends[i].clone()))
            .collect();
        let ids: Vec<u32> = snap.select(&[]).map(|b| b.id).collect();
        assert_eq!(ids, [2, 0, 3, 1]);
    }

    /// Least-connections reads the counts again for each candidate: a connection placed
    /// meanwhile counts.
    #[test]
    fn least_connections_rereads_the_counts() {
        let snap = pool(&specs(3), Algorithm::LeastConnections);
        let _held: Vec<Lease> = [(0, 1), (1, 2), (2, 4)]
            .iter()
            .flat_map(|&(i, n)| (0..n).map(move |_| i))
            .map(|i| Lease::new(snap.backends[i].clone()))
            .collect();
        let mut order = snap.select(&[]);
        assert_eq!(order.next().unwrap().id, 0);
        let _more: Vec<Lease> = (0..5)
            .map(|_| Lease::new(snap.backends[1].clone()))
            .collect();
        assert_eq!(order.next().unwrap().id, 2, "1 now holds 7");
        assert_eq!(order.next().unwrap().id, 1);
        assert!(order.next().is_none());
    }

    /// The rotating algorithms fail over in config order from their pick, skipping the
    /// ones down.
    #[test]
    fn rotating_algorithms_fail_over_in_config_order() {
        for algorithm in [
            Algorithm::RoundRobin,
            Algorithm::WeightedRoundRobin,
            Algorithm::PowerOfTwo,
        ] {
            let snap = pool(&specs(5), algorithm);
            snap.backends[2].health.failed(1);
            for _ in 0..20 {
                let ids: Vec<u32> = snap.select(&[]).map(|b| b.id).collect();
                let want: Vec<u32> = (0..5)
                    .map(|k| (ids[0] + k) % 5)
                    .filter(|&i| i != 2)
                    .collect();
                assert_eq!(ids, want, "{}", algorithm.name());
            }
        }
    }

    /// A connection that succeeds on its pick costs nothing more: the rest of the order
    /// (and, past 256 backends, the tried set's allocation) waits for a second candidate.
    #[test]
    fn nothing_past_the_pick_until_asked() {
        use super::super::tests::backends;
        use super::super::{Balancing, RoundRobin, Selector};
        use super::Rest;
        let bs = backends(300);
        for algorithm in [Algorithm::LeastConnections, Algorithm::ConsistentHash] {
            let balancing = Balancing {
                algorithm,
                ..Balancing::default()
            };
            let s = Selector::build(&balancing, &bs, &[1; 300], Arc::new(RoundRobin::new()));
            let mut f = s.failover(&bs, s.pick(&bs, b"key"));
            assert!(f.next().is_some());
            assert!(matches!(f.rest, Rest::Picked), "{:?}", f.rest);
            assert!(f.next().is_some());
            assert!(matches!(f.rest, Rest::Load(_) | Rest::Table { .. }));
        }
    }

    /// More backends than the tried set holds inline: every one still comes once.
    #[test]
    fn long_lists_give_each_backend_once() {
        let many: Vec<BackendSpec> = (0..300u16)
            .map(|i| BackendSpec::from(SocketAddr::from(([10, 1, (i / 250) as u8, i as u8], 9000))))
            .collect();
        for algorithm in [Algorithm::ConsistentHash, Algorithm::LeastConnections] {
            let snap = pool(&many, algorithm);
            let mut ids: Vec<u32> = snap.select(b"k").map(|b| b.id).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), 300, "{}", algorithm.name());
        }
    }
}
