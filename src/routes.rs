//! Routes: which pool a request goes to, by its `Host` and path (`[[routes]]`; the
//! top-level `backends` are the default route, any host and `/`).
//!
//! # Matching
//! Among the routes whose host and path prefix both match, the one with the most specific
//! host wins (an exact name, then the longest `*.` wildcard, then any host), and among
//! those the longest path prefix. A request no route matches gets 404. The host is the
//! `Host` header without its port, compared case-insensitively; `*.example.com` matches
//! `a.example.com` and `a.b.example.com`, not `example.com`. A prefix matches at a path
//! segment boundary: `/ws` matches `/ws`, `/ws/chat` and `/ws?room=1`, not `/wsx`
//! (a prefix ending in `/` matches what starts with it). The query is not matched.
//!
//! # State
//! The table is an immutable [`Table`], replaced whole by a reload ([`Router::configure`];
//! a [`Published`] value, like a pool's snapshot);
//! a route that a reload keeps (same host and prefix) keeps its [`Pool`], so its backends'
//! open-connection counts, health and round-robin position carry over. Each worker holds a
//! [`LocalRoutes`]: its own copy of the table with a [`LocalPool`] per route, fetched
//! again when the router's generation moves (at the worker's next request), like a pool's
//! snapshot.

use std::rc::Rc;
use std::sync::{Arc, Mutex};

use crate::balancer::{BackendIds, Change, LocalPool, Pool, Pools, RoutePool};
use crate::config::prefix_matches;
pub use crate::config::{HostMatch, RouteSpec, check_routes as check};
use crate::snapshot::{Cached, Published};

/// `Host` without its port (`[::1]:8080` -> `[::1]`).
fn host_only(host: &[u8]) -> &[u8] {
    let host = host.trim_ascii();
    if host.starts_with(b"[") {
        return match host.iter().position(|&c| c == b']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.iter().rposition(|&c| c == b':') {
        Some(colon) => &host[..colon],
        None => host,
    }
}

/// One route: its spec and its pool.
#[derive(Debug)]
pub struct Route {
    pub spec: RouteSpec,
    pub pool: Arc<Pool>,
}

/// The routes, in matching order (most specific first).
#[derive(Debug, Default)]
pub struct Table {
    pub routes: Vec<Arc<Route>>,
}

impl Table {
    /// The index of the route `host` and `path` (the request target) go to.
    pub fn find(&self, host: &[u8], path: &str) -> Option<usize> {
        let host = host_only(host);
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        self.routes
            .iter()
            .position(|r| r.spec.host.matches(host) && prefix_matches(&r.spec.path_prefix, path))
    }
}

/// What a reload changed, route by route.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RoutesChange {
    pub added: Vec<Box<str>>,
    pub removed: Vec<Box<str>>,
    /// Each kept route's backend changes, by route name.
    pub backends: Vec<(Box<str>, Change)>,
    /// The ids and addresses of the backends of removed routes (their connections drain
    /// like a removed backend's).
    pub retired: Vec<(u32, std::net::SocketAddr)>,
}

/// The instance's routes: the current table, replaced by reloads.
#[derive(Debug)]
pub struct Router {
    current: Arc<Published<Table>>,
    ids: Arc<BackendIds>,
    /// The sticky-cookie keys every pool's tokens are made with; a reload that changes
    /// `sticky_secret` rotates them ([`Router::set_sticky_secret`]).
    keys: Mutex<crate::balancer::affinity::Keyring>,
}

impl Router {
    pub fn new(keys: crate::balancer::affinity::Keyring) -> Self {
        Self {
            current: Arc::new(Published::new(Arc::default())),
            ids: Arc::default(),
            keys: Mutex::new(keys),
        }
    }

    /// A reload's `sticky_secret` (see `affinity.rs`): when it changed, new cookies are
    /// made with it and the ones of the key before are still honoured. Takes effect with
    /// the next [`Router::configure`], which builds every pool's snapshot with the keys
    /// (the reload calls it right after). Says whether the secret changed.
    pub fn set_sticky_secret(&self, secret: Option<&[u8]>) -> bool {
        self.keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_secret(secret)
    }

    /// The current table (takes a lock: for reloads, the background threads, the admin
    /// side and tests; workers go through their [`LocalRoutes`]).
    pub fn table(&self) -> Arc<Table> {
        self.current.load()
    }

    /// The backends of every route's current snapshot as the metrics and `/backends` show
    /// them, route by route (in matching order), each route's in config order.
    pub fn backend_views(&self) -> Vec<crate::metrics::BackendView> {
        let table = self.table();
        table
            .routes
            .iter()
            .flat_map(|r| r.pool.backend_views(&r.spec.name))
            .collect()
    }

    /// Applies `specs` (and the backends' TLS): a route with the host and prefix of a
    /// current one keeps its pool, reconfigured; others get a new pool; the rest are
    /// removed. Says what changed.
    pub fn configure(
        &self,
        specs: &[RouteSpec],
        tls: Option<Arc<crate::tls::BackendTls>>,
    ) -> RoutesChange {
        let old = self.table();
        let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner()).keys();
        let mut change = RoutesChange::default();
        let mut routes = Vec::with_capacity(specs.len());
        for spec in specs {
            let pool = match old.routes.iter().find(|r| r.spec.same_place(spec)) {
                Some(r) => r.pool.clone(),
                None => {
                    if !old.routes.is_empty() {
                        change.added.push(spec.name.clone());
                    }
                    Arc::new(Pool::for_route(self.ids.clone()))
                }
            };
            pool.set_fall(spec.health.as_ref().map_or(u32::MAX, |h| h.fall));
            let c = pool.configure(&spec.backends, tls.clone(), &spec.balancing, keys.clone());
            if spec.health.is_none() {
                // Nothing would bring a down backend back.
                for b in pool.snapshot().backends.iter() {
                    b.health.passed(1);
                }
            }
            if !old.routes.is_empty()
                && c != Change::default()
                && !change.added.contains(&spec.name)
            {
                change.backends.push((spec.name.clone(), c));
            }
            routes.push(Arc::new(Route {
                spec: spec.clone(),
                pool,
            }));
        }
        for r in &old.routes {
            if !specs.iter().any(|s| s.same_place(&r.spec)) {
                change.removed.push(r.spec.name.clone());
                change
                    .retired
                    .extend(r.pool.snapshot().backends.iter().map(|b| (b.id, b.addr)));
            }
        }
        // Most specific host first, then the longest prefix; stable, so config order
        // decides nothing else (validation refuses two routes of one host and prefix).
        routes.sort_by_key(|r| std::cmp::Reverse((r.spec.host.rank(), r.spec.path_prefix.len())));
        self.current.replace(Arc::new(Table { routes }));
        change
    }
}

/// The health checker and the rebalancer look after the routes' pools through this.
impl Pools for Router {
    fn pools(&self) -> Vec<RoutePool> {
        self.table()
            .routes
            .iter()
            .map(|r| RoutePool {
                name: r.spec.name.clone(),
                pool: r.pool.clone(),
                backends: r.spec.backends.clone(),
                balancing: r.spec.balancing.clone(),
                health: r.spec.health.clone(),
            })
            .collect()
    }
}

/// A worker's view of the routes: its copy of the table, with a [`LocalPool`] per route.
#[derive(Debug)]
pub struct LocalRoutes(Cached<Table, Rc<LocalTable>>);

/// One worker's copy of a [`Table`].
#[derive(Debug)]
pub struct LocalTable {
    pub table: Arc<Table>,
    /// By route index.
    pub pools: Vec<LocalPool>,
}

impl LocalRoutes {
    pub fn new(router: Arc<Router>) -> Self {
        Self(Cached::with(router.current.clone(), local_table))
    }

    /// The table to route by, fetched again only after a reload.
    #[inline]
    pub fn current(&self) -> Rc<LocalTable> {
        self.0.current()
    }
}

fn local_table(table: Arc<Table>) -> Rc<LocalTable> {
    let pools = table
        .routes
        .iter()
        .map(|r| LocalPool::new(r.pool.clone()))
        .collect();
    Rc::new(LocalTable { table, pools })
}

#[cfg(test)]
mod tests;
