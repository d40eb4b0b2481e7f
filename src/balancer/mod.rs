//! The backend pool and how a connection's backend is chosen (round robin first), and
//! backend health (`health.rs`).
//!
//! The backends new connections may go to are an immutable [`Snapshot`], replaced whole by
//! a reload ([`Pool::set_backends`], SIGHUP). Each worker keeps its own copy ([`LocalPool`])
//! and fetches the new one at its next connection after the pool's generation moves: the
//! swap happens at a safe point (the start of a backend pick), and the hot path reads only
//! worker-local state plus two shared values that rarely change (the generation and the
//! health flags) and the round-robin counter, the one deliberate cross-core write.

pub mod health;
mod round_robin;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use health::{BackendHealth, HealthConfig, Probe};
pub use round_robin::RoundRobin;

/// One backend: its id (stable for the life of the instance, also across reloads that
/// remove and add it back), address and health.
#[derive(Debug)]
pub struct Backend {
    pub id: u32,
    pub addr: SocketAddr,
    pub health: BackendHealth,
}

/// The backends of one configuration, in config order.
#[derive(Debug)]
pub struct Snapshot {
    pub backends: Vec<Arc<Backend>>,
}

/// What a reload changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Change {
    pub added: Vec<SocketAddr>,
    /// Ids and addresses of the backends no longer configured.
    pub removed: Vec<(u32, SocketAddr)>,
}

/// The backend pool of one instance: the current snapshot, every backend ever configured,
/// and the selection counter.
#[derive(Debug)]
pub struct Pool {
    current: Mutex<Arc<Snapshot>>,
    /// Moves when `current` is replaced; workers compare it on each new connection.
    generation: AtomicU64,
    /// Every backend configured so far, by id (index). A removed backend stays here: an
    /// address added back gets its id and health state back.
    known: Mutex<Vec<Arc<Backend>>>,
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
        let pool = Self {
            current: Mutex::new(Arc::new(Snapshot {
                backends: Vec::new(),
            })),
            generation: AtomicU64::new(0),
            known: Mutex::new(Vec::new()),
            fall: fall.max(1),
            rr: RoundRobin::new(),
        };
        pool.set_backends(&backends);
        pool
    }

    /// The current snapshot (takes a lock: for reloads, the checker and tests; workers go
    /// through their [`LocalPool`]).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the configured backends (a reload) and says what changed. Backends kept
    /// keep their id and health; new ones start up, like at startup.
    pub fn set_backends(&self, addrs: &[SocketAddr]) -> Change {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let mut backends = Vec::with_capacity(addrs.len());
        let mut change = Change::default();
        for &addr in addrs {
            if backends.iter().any(|b: &Arc<Backend>| b.addr == addr) {
                continue; // listed twice: once is enough
            }
            let b = match known.iter().find(|b| b.addr == addr) {
                Some(b) => b.clone(),
                None => {
                    let b = Arc::new(Backend {
                        id: known.len() as u32,
                        addr,
                        health: BackendHealth::default(),
                    });
                    known.push(b.clone());
                    b
                }
            };
            if !current.backends.iter().any(|c| c.addr == addr) {
                change.added.push(addr);
            }
            backends.push(b);
        }
        for c in &current.backends {
            if !addrs.contains(&c.addr) {
                change.removed.push((c.id, c.addr));
            }
        }
        *current = Arc::new(Snapshot { backends });
        // Release pairs with `LocalPool::current`'s Acquire load: a worker that sees the
        // new generation then reads the new snapshot under the lock anyway.
        self.generation.fetch_add(1, Ordering::Release);
        change
    }

    /// The backends to try for one new client connection, in order: the round-robin pick
    /// among the backends that are up first, then each other backend that is up once
    /// (failover when a connect is refused or times out). Empty when every backend is down.
    ///
    /// The pick counts only backends that are up, so the rotation stays exact over the
    /// healthy ones (with one down of three, the other two get half each, not one of them
    /// double).
    pub fn candidates<'a>(&'a self, snap: &'a Snapshot) -> impl Iterator<Item = &'a Backend> {
        let all = &snap.backends;
        let n = all.len();
        let up = all.iter().filter(|b| b.health.is_up()).count();
        let first = if up == 0 {
            0
        } else {
            let t = self.rr.next(up);
            // The index of the t-th backend that is up.
            (0..n)
                .filter(|&i| all[i].health.is_up())
                .nth(t)
                .unwrap_or(0)
        };
        (0..n)
            .map(move |k| &*all[(first + k) % n])
            .filter(move |b| up > 0 && b.health.is_up())
    }

    /// A connect to `b`, or the upgrade's exchange with it, failed; `fall` in a row take
    /// it down.
    pub fn failed(&self, b: &Backend) {
        if b.health.failed(self.fall) {
            tracing::warn!(
                backend = %b.addr,
                "backend is down: {} connects or handshakes failed in a row; it returns after passing health checks",
                self.fall
            );
        }
    }

    pub fn connected(&self, b: &Backend) {
        b.health.connected();
    }

    /// The configured backends' addresses, in config order.
    pub fn backends(&self) -> Vec<SocketAddr> {
        self.snapshot().backends.iter().map(|b| b.addr).collect()
    }
}

/// A worker's view of the pool: its own reference to the current snapshot, refreshed when
/// the pool's generation moves. Derefs to the shared [`Pool`] for selection and health.
#[derive(Debug)]
pub struct LocalPool {
    pool: Arc<Pool>,
    /// A worker-local copy of the snapshot (its `Vec` of shared backends), so that taking
    /// a reference per connection is an `Rc` count, not a count on a line every worker
    /// writes.
    cached: RefCell<(u64, Rc<Snapshot>)>,
}

impl LocalPool {
    pub fn new(pool: Arc<Pool>) -> Self {
        let g = pool.generation.load(Ordering::Acquire);
        let snap = local_copy(&pool);
        Self {
            pool,
            cached: RefCell::new((g, snap)),
        }
    }

    /// The snapshot to pick from, fetched again only after a reload.
    pub fn current(&self) -> Rc<Snapshot> {
        let g = self.pool.generation.load(Ordering::Acquire);
        let mut c = self.cached.borrow_mut();
        if c.0 != g {
            *c = (g, local_copy(&self.pool));
        }
        c.1.clone()
    }
}

impl std::ops::Deref for LocalPool {
    type Target = Pool;
    fn deref(&self) -> &Pool {
        &self.pool
    }
}

fn local_copy(pool: &Pool) -> Rc<Snapshot> {
    Rc::new(Snapshot {
        backends: pool.snapshot().backends.clone(),
    })
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
        let snap = p.snapshot();
        p.failed(&snap.backends[1]);
        let mut count = [0; 3];
        for _ in 0..30 {
            let picks: Vec<u32> = p.candidates(&snap).map(|b| b.id).collect();
            assert_eq!(picks.len(), 2, "only the two that are up");
            count[picks[0] as usize] += 1;
        }
        assert_eq!(count, [15, 0, 15]);
    }

    #[test]
    fn all_down_gives_no_candidates() {
        let p = Pool::new(addrs(2), 2);
        let snap = p.snapshot();
        for i in [0, 0, 1, 1] {
            p.failed(&snap.backends[i]);
        }
        assert_eq!(p.candidates(&snap).count(), 0);
        snap.backends[1].health.passed(1);
        assert_eq!(
            p.candidates(&snap).map(|b| b.addr).collect::<Vec<_>>(),
            vec![addrs(2)[1]]
        );
    }

    #[test]
    fn a_reload_keeps_ids_and_health_and_says_what_changed() {
        let a = addrs(3);
        let p = Pool::new(vec![a[0], a[1]], 1);
        let old = p.snapshot();
        p.failed(&old.backends[1]); // a[1] is down
        let change = p.set_backends(&[a[1], a[2], a[2]]);
        assert_eq!(
            change,
            Change {
                added: vec![a[2]],
                removed: vec![(0, a[0])]
            }
        );
        let new = p.snapshot();
        let ids: Vec<u32> = new.backends.iter().map(|b| b.id).collect();
        assert_eq!(
            ids,
            [1, 2],
            "a[1] keeps its id; a duplicate entry is dropped"
        );
        assert!(!new.backends[0].health.is_up(), "and its health");
        assert_eq!(old.backends.len(), 2, "an old snapshot is unchanged");
        // Added back: the old id again.
        p.set_backends(&[a[0]]);
        assert_eq!(p.snapshot().backends[0].id, 0);
    }

    #[test]
    fn a_worker_sees_a_reload_at_its_next_pick() {
        let a = addrs(2);
        let pool = Arc::new(Pool::new(vec![a[0]], 1));
        let local = LocalPool::new(pool.clone());
        let before = local.current();
        pool.set_backends(&[a[1]]);
        assert_eq!(before.backends[0].addr, a[0]);
        assert_eq!(local.current().backends[0].addr, a[1]);
    }
}
