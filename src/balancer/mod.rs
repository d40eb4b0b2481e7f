//! The backend pool and how a connection's backend is chosen (`selection/`: one file per
//! algorithm), and backend health (`health.rs`).
//!
//! The backends new connections may go to are an immutable [`Snapshot`], replaced whole by
//! a reload ([`Pool::set_backends`], SIGHUP; a [`Published`] value). Each worker keeps its
//! own copy ([`LocalPool`]) and fetches the new one at its next connection after the
//! pool's generation moves: the swap happens at a safe point (the start of a backend
//! pick; `snapshot.rs` says why the ordering is right), and the hot path reads only
//! worker-local state plus two shared values that rarely change (the generation and the
//! health flags) and the backends' counts; the cross-core writes each algorithm makes are
//! listed in `selection/mod.rs`.

pub mod affinity;
pub mod health;
pub mod rebalance;
pub mod selection;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::snapshot::{Cached, Published};

pub use crate::config::BackendSpec;
pub use health::{BackendHealth, HealthConfig, Probe};
pub use selection::{Algorithm, Balancing, HashKey, RoundRobin, Selection, Selector};

/// One backend: its id (stable for the life of the instance, also across reloads that
/// remove and add it back), what dialling it needs (its address, and the name it is
/// reached with over TLS), its health and counters.
#[derive(Debug)]
pub struct Backend {
    pub id: u32,
    pub addr: SocketAddr,
    /// Reached over TLS, verified against (and asking SNI for) this name; `None`: plain
    /// TCP. The TLS client config it is reached with is the snapshot's
    /// ([`Snapshot::tls`]).
    pub tls: Option<rustls::pki_types::ServerName<'static>>,
    pub health: BackendHealth,
    pub stats: BackendStats,
}

/// How using a backend failed (`wslb_backend_failures_total{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Connect,
    /// The upgrade exchange: no answer, a broken connection or something not HTTP.
    Handshake,
    HealthCheck,
}

/// A backend's counters: the one place its open-connection count lives.
///
/// Written by every worker, once or twice per connection (never per frame): a backend's
/// open count must be one number across workers (least-connections will read it, and it is
/// what `/backends` shows). Aligned to 128 bytes, like `WorkerStats`, so two backends'
/// counters never share a cache line (or an adjacent-line pair).
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct BackendStats {
    open: AtomicU64,
    selected: AtomicU64,
    failures: [AtomicU64; 3],
}

impl BackendStats {
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    pub fn selected(&self) -> u64 {
        self.selected.load(Ordering::Relaxed)
    }

    pub fn failures(&self) -> [u64; 3] {
        self.failures.each_ref().map(|c| c.load(Ordering::Relaxed))
    }

    pub fn failed(&self, kind: Failure) {
        self.failures[kind as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// One connection to a backend, counted in its open connections until dropped: taken when
/// the backend is tried (so least-connections counts connections still in their
/// handshake, and a burst does not all see the same counts), kept while the relay runs.
#[derive(Debug)]
pub struct Lease(Arc<Backend>);

impl Lease {
    pub fn new(b: Arc<Backend>) -> Self {
        // Relaxed: a count; it publishes nothing else.
        b.stats.open.fetch_add(1, Ordering::Relaxed);
        Lease(b)
    }

    pub fn backend(&self) -> &Backend {
        &self.0
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The backends of one configuration, in config order, and their selector, built once
/// for them (see `selection/`).
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub backends: Vec<Arc<Backend>>,
    pub selector: Selector,
    /// What the selector was built from (and what a reload of the list alone keeps).
    pub balancing: Arc<Balancing>,
    /// The TLS client config its TLS backends (those with a [`Backend::tls`] name) are
    /// reached with (`None`: none is).
    pub tls: Option<Arc<crate::tls::BackendTls>>,
    /// The sticky cookie and each backend's token (`None`: no affinity).
    pub sticky: Option<Arc<affinity::Sticky>>,
    /// The keys `sticky`'s tokens were made with (the instance's when this snapshot was
    /// built; a change of `sticky_secret` builds new snapshots).
    pub keys: Arc<affinity::Keys>,
}

impl Snapshot {
    /// The backends to try for one new connection, in order: the selector's pick for
    /// `key` among the backends that are up, then each other backend that is up once, in
    /// the algorithm's order of preference (failover when a connect is refused or times
    /// out; `selection/failover.rs`). Empty when every backend is down. `key` is what the
    /// connection path extracted from the request for the selector (round robin ignores
    /// it).
    pub fn select(&self, key: &[u8]) -> impl Iterator<Item = &Arc<Backend>> {
        self.failover(self.pick(key))
    }

    /// The selector's pick for `key` (`first`: an index into `backends`, `None` if none
    /// is up), carrying what [`Snapshot::failover`] needs to go on without the key.
    pub fn pick(&self, key: &[u8]) -> selection::Pick {
        self.selector.pick(&self.backends, key)
    }

    /// What the connection path must extract from the request for [`Snapshot::pick`]:
    /// `None` when the selector ignores the key.
    pub fn key_source(&self) -> Option<&HashKey> {
        self.selector.uses_key().then_some(&self.balancing.hash_key)
    }

    /// The backend a sticky cookie's value names, if it is up (`None` also without
    /// affinity, and for a value no backend has: tampered, from a removed backend, or made
    /// with a key older than the previous one).
    pub fn sticky_pick(&self, value: Option<&[u8]>) -> Option<affinity::Named> {
        let (sticky, value) = (self.sticky.as_ref()?, value?);
        match sticky.lookup(value) {
            Some(n) if self.backends[n.backend].health.is_up() => Some(n),
            Some(n) => {
                tracing::debug!(backend = %self.backends[n.backend].addr, "sticky cookie names a backend that is down; choosing another");
                None
            }
            None => {
                tracing::debug!(
                    "sticky cookie names no backend (tampered, or from a removed one); ignored"
                );
                None
            }
        }
    }

    /// `pick`'s backend, then each other backend that is up, in the selector's failover
    /// order; computed as each one is asked for.
    pub fn failover(&self, pick: selection::Pick) -> impl Iterator<Item = &Arc<Backend>> {
        self.selector
            .failover(&self.backends, pick)
            .map(|i| &self.backends[i])
    }
}

/// Hands out backend ids. One per instance, shared by all its pools, so that an id names
/// one backend across every pool (retirements and per-backend counts key on it).
#[derive(Debug, Default)]
pub struct BackendIds(AtomicU32);

impl BackendIds {
    fn next(&self) -> u32 {
        // Relaxed: a unique number is all that is asked; ids are made on reloads only.
        self.0.fetch_add(1, Ordering::Relaxed)
    }
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
    /// The current snapshot; workers compare its generation on each new connection.
    current: Arc<Published<Snapshot>>,
    /// Every backend configured so far. A removed backend stays here: one added back (the
    /// same address, reached the same way) gets its id and health state back.
    known: Mutex<Vec<Arc<Backend>>>,
    ids: Arc<BackendIds>,
    /// Connect failures in a row that take a backend down (the health config's `fall`;
    /// `u32::MAX` without health checks). Set by each reconfiguration.
    fall: AtomicU32,
    /// The pool's round-robin counter: it outlives snapshots, so a reload does not
    /// restart the rotation.
    rr: Arc<RoundRobin>,
}

impl Pool {
    /// `fall`: connect failures in a row that take a backend down (`u32::MAX`: never).
    ///
    /// # Panics
    /// If `backends` is empty (config validation guarantees at least one).
    pub fn new(backends: Vec<SocketAddr>, fall: u32) -> Self {
        Self::with_ids(backends, fall, Arc::default())
    }

    /// An empty pool of a route, whose backend ids come from `ids` (the instance's);
    /// [`Pool::configure`] gives it backends and the keys of its sticky tokens.
    pub fn for_route(ids: Arc<BackendIds>) -> Self {
        let rr = Arc::new(RoundRobin::new());
        Self {
            current: Arc::new(Published::new(Arc::new(Snapshot {
                backends: Vec::new(),
                selector: Selector::round_robin(rr.clone()),
                balancing: Arc::default(),
                tls: None,
                sticky: None,
                keys: affinity::Keys::only(affinity::Key::generate()),
            }))),
            known: Mutex::new(Vec::new()),
            ids,
            fall: AtomicU32::new(u32::MAX),
            rr,
        }
    }

    /// A pool whose backend ids come from `ids`, shared with the instance's other pools.
    ///
    /// # Panics
    /// If `backends` is empty (config validation guarantees at least one).
    pub fn with_ids(backends: Vec<SocketAddr>, fall: u32, ids: Arc<BackendIds>) -> Self {
        assert!(!backends.is_empty(), "a pool needs at least one backend");
        let pool = Self::for_route(ids);
        pool.set_fall(fall);
        pool.set_backends(&backends);
        pool
    }

    /// The current snapshot (takes a lock: for reloads, the checker and tests; workers go
    /// through their [`LocalPool`]).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load()
    }

    /// Connect failures in a row that take a backend down from now on (`u32::MAX`:
    /// never, as without health checks).
    pub fn set_fall(&self, fall: u32) {
        self.fall.store(fall.max(1), Ordering::Relaxed);
    }

    /// Replaces the configured backends (each of weight 1), keeping the TLS settings, the
    /// algorithm and the sticky keys, and says what changed. Backends kept keep their id and health; new
    /// ones start up, like at startup.
    pub fn set_backends(&self, addrs: &[SocketAddr]) -> Change {
        let snap = self.snapshot();
        let specs: Vec<BackendSpec> = addrs.iter().map(|&a| a.into()).collect();
        self.configure(&specs, snap.tls.clone(), &snap.balancing, snap.keys.clone())
    }

    /// Replaces the configured backends, their weights, which are reached over TLS, how
    /// they are balanced and the keys of their sticky tokens (a reload), in one snapshot,
    /// so no worker sees the new list with the old settings; builds its selector. Says
    /// what changed.
    pub fn configure(
        &self,
        specs: &[BackendSpec],
        tls: Option<Arc<crate::tls::BackendTls>>,
        balancing: &Balancing,
        keys: Arc<affinity::Keys>,
    ) -> Change {
        // `known` is held throughout, so two reconfigurations never interleave; `current`
        // only to read and then to swap the snapshot, so that building the selector (a
        // Maglev table, a weighted sequence: milliseconds for large lists) never holds up
        // a worker fetching the snapshot, the health checker or a scrape.
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.snapshot();
        let mut backends = Vec::with_capacity(specs.len());
        let mut weights = Vec::with_capacity(specs.len());
        let mut change = Change::default();
        for spec in specs {
            let addr = spec.addr;
            if backends.iter().any(|b: &Arc<Backend>| b.addr == addr) {
                continue; // listed twice: the first entry is enough
            }
            let b = match known.iter().find(|b| b.addr == addr && b.tls == spec.tls) {
                Some(b) => b.clone(),
                None => {
                    let b = Arc::new(Backend {
                        id: self.ids.next(),
                        addr,
                        tls: spec.tls.clone(),
                        health: BackendHealth::default(),
                        stats: BackendStats::default(),
                    });
                    known.push(b.clone());
                    b
                }
            };
            if !current.backends.iter().any(|c| c.id == b.id) {
                change.added.push(addr);
                // Slow start ramps a backend a reload adds, not the first list's.
                if !current.backends.is_empty() {
                    b.health.added();
                }
            }
            backends.push(b);
            weights.push(spec.weight.max(1));
        }
        for c in &current.backends {
            if !backends.iter().any(|b| b.id == c.id) {
                change.removed.push((c.id, c.addr));
            }
        }
        let selector = Selector::build(balancing, &backends, &weights, self.rr.clone());
        let sticky = balancing
            .sticky
            .as_deref()
            .map(|cookie| affinity::Sticky::new(cookie, &keys, backends.iter().map(|b| b.addr)));
        self.current.replace(Arc::new(Snapshot {
            backends,
            selector,
            balancing: Arc::new(balancing.clone()),
            tls,
            sticky,
            keys,
        }));
        change
    }

    /// `b` was tried for a new connection (first pick or failover).
    pub fn selected(&self, b: &Backend) {
        b.stats.selected.fetch_add(1, Ordering::Relaxed);
    }

    /// A connect to `b`, or the upgrade's exchange with it, failed; `fall` in a row take
    /// it down.
    pub fn failed(&self, b: &Backend, kind: Failure) {
        b.stats.failed(kind);
        let fall = self.fall.load(Ordering::Relaxed);
        if b.health.failed(fall) {
            tracing::warn!(
                backend = %b.addr,
                "backend is down: {fall} connects or handshakes failed in a row; it returns after passing health checks",
            );
        }
    }

    pub fn connected(&self, b: &Backend) {
        b.health.connected();
    }

    /// The backends of the current snapshot as the metrics and `/backends` show them, in
    /// config order, labelled with `route`.
    pub fn backend_views(&self, route: &str) -> Vec<crate::metrics::BackendView> {
        self.snapshot()
            .backends
            .iter()
            .map(|b| crate::metrics::BackendView {
                route: route.to_string(),
                addr: b.addr,
                up: b.health.is_up(),
                open: b.stats.open(),
                selected: b.stats.selected(),
                failures: b.stats.failures(),
            })
            .collect()
    }

    /// The configured backends' addresses, in config order.
    pub fn backends(&self) -> Vec<SocketAddr> {
        self.snapshot().backends.iter().map(|b| b.addr).collect()
    }
}

/// One pool as the threads that look after pools (the health checker, the rebalancer)
/// see it: the pool and what they read of its route's configuration.
#[derive(Debug, Clone)]
pub struct RoutePool {
    /// The route's name, for the logs and the metrics.
    pub name: Box<str>,
    pub pool: Arc<Pool>,
    /// As configured, with their weights (the rebalancer's shares).
    pub backends: Vec<BackendSpec>,
    pub balancing: Balancing,
    /// `None`: no health checks.
    pub health: Option<HealthConfig>,
}

/// Lists the pools for the health checker and the rebalancer. Implemented by their owner,
/// `routes::Router`, which sits above this module: the threads are handed one rather than
/// naming it.
pub trait Pools: Send + Sync {
    /// Every pool as configured now, in its owner's order (route matching order).
    fn pools(&self) -> Vec<RoutePool>;
}

/// A worker's view of the pool: its own reference to the current snapshot, refreshed when
/// the pool's generation moves. Derefs to the shared [`Pool`] for selection and health.
#[derive(Debug)]
pub struct LocalPool {
    pool: Arc<Pool>,
    /// A worker-local copy of the snapshot (its `Vec` of shared backends), so that taking
    /// a reference per connection is an `Rc` count, not a count on a line every worker
    /// writes.
    snapshot: Cached<Snapshot, Rc<Snapshot>>,
}

impl LocalPool {
    pub fn new(pool: Arc<Pool>) -> Self {
        let snapshot = Cached::with(pool.current.clone(), |s| Rc::new(Snapshot::clone(&s)));
        Self { pool, snapshot }
    }

    /// The snapshot to pick from, fetched again only after a reload.
    #[inline]
    pub fn current(&self) -> Rc<Snapshot> {
        self.snapshot.current()
    }
}

impl std::ops::Deref for LocalPool {
    type Target = Pool;
    fn deref(&self) -> &Pool {
        &self.pool
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
        let snap = p.snapshot();
        p.failed(&snap.backends[1], Failure::Connect);
        let mut count = [0; 3];
        for _ in 0..30 {
            let picks: Vec<u32> = snap.select(&[]).map(|b| b.id).collect();
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
            p.failed(&snap.backends[i], Failure::Connect);
        }
        assert_eq!(snap.select(&[]).count(), 0);
        snap.backends[1].health.passed(1);
        assert_eq!(
            snap.select(&[]).map(|b| b.addr).collect::<Vec<_>>(),
            vec![addrs(2)[1]]
        );
    }

    #[test]
    fn a_reload_keeps_ids_and_health_and_says_what_changed() {
        let a = addrs(3);
        let p = Pool::new(vec![a[0], a[1]], 1);
        let old = p.snapshot();
        p.failed(&old.backends[1], Failure::Connect); // a[1] is down
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
    fn pools_sharing_an_id_source_never_share_an_id() {
        let ids = Arc::new(BackendIds::default());
        let a = Pool::with_ids(addrs(2), 1, ids.clone());
        // The same addresses in a second pool are other backends there, with other ids.
        let b = Pool::with_ids(addrs(2), 1, ids.clone());
        a.set_backends(&addrs(3));
        let mut all: Vec<u32> = [&a, &b]
            .iter()
            .flat_map(|p| {
                p.snapshot()
                    .backends
                    .iter()
                    .map(|b| b.id)
                    .collect::<Vec<_>>()
            })
            .collect();
        all.sort();
        assert_eq!(all, [0, 1, 2, 3, 4]);
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
