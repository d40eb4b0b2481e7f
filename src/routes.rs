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

use crate::balancer::{
    BackendIds, BackendSpec, Balancing, Change, HealthConfig, LocalPool, Pool, Pools, RoutePool,
};
use crate::snapshot::{Cached, Published};

/// Which hosts a route takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    Any,
    /// A name, lowercase.
    Exact(Box<str>),
    /// `*.example.com`, kept as the suffix `.example.com`, lowercase.
    Wildcard(Box<str>),
}

impl HostMatch {
    /// `""` (any host), a name, or `*.` and a name. Names are letters, digits, `-` and `.`
    /// (or an IP address, `[v6]` in brackets); no port.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Ok(HostMatch::Any);
        }
        let lower = s.to_ascii_lowercase();
        let (wild, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let ipv6 = !wild && name.starts_with('[') && name.ends_with(']');
        let ok = !name.is_empty()
            && if ipv6 {
                name[1..name.len() - 1]
                    .parse::<std::net::Ipv6Addr>()
                    .is_ok()
            } else {
                name.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
                    && !name.starts_with('.')
                    && !name.ends_with('.')
                    && !name.contains("..")
            };
        if !ok {
            return Err(format!(
                "{s:?} is not a host name, \"*.\" and a host name, or empty for any host \
                 (no port, no scheme)"
            ));
        }
        Ok(if wild {
            HostMatch::Wildcard(format!(".{name}").into())
        } else {
            HostMatch::Exact(name.into())
        })
    }

    /// Whether `host` (port stripped) is one of this route's.
    fn matches(&self, host: &[u8]) -> bool {
        match self {
            HostMatch::Any => true,
            HostMatch::Exact(h) => host.eq_ignore_ascii_case(h.as_bytes()),
            HostMatch::Wildcard(suffix) => {
                host.len() > suffix.len()
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
            }
        }
    }

    /// How specific: higher wins.
    fn rank(&self) -> usize {
        match self {
            HostMatch::Any => 0,
            HostMatch::Wildcard(s) => 1 + s.len(),
            HostMatch::Exact(_) => usize::MAX,
        }
    }

    /// As written in the config (`""` for any host).
    pub fn as_config(&self) -> String {
        match self {
            HostMatch::Any => String::new(),
            HostMatch::Exact(h) => h.to_string(),
            HostMatch::Wildcard(s) => format!("*{s}"),
        }
    }
}

/// Whether `prefix` takes `path` (see the module doc: segment boundaries).
fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
    }
}

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

/// One route as configured (validated).
#[derive(Debug, Clone, PartialEq)]
pub struct RouteSpec {
    /// Its label in metrics, logs and `/backends`: `name`, or host and prefix.
    pub name: Box<str>,
    pub host: HostMatch,
    pub path_prefix: Box<str>,
    pub backends: Vec<BackendSpec>,
    pub balancing: Balancing,
    /// `None`: no health checks for this route's backends.
    pub health: Option<HealthConfig>,
    /// What happens to the client's extension offers (permessage-deflate).
    pub extensions: crate::handshake::Extensions,
    /// Where it is written: `""` for the default route (the top-level fields),
    /// `routes[i]` for a `[[routes]]` entry. A reload's report names fields by it.
    pub field: Box<str>,
}

impl RouteSpec {
    fn same_place(&self, other: &RouteSpec) -> bool {
        self.host == other.host && self.path_prefix == other.path_prefix
    }
}

/// How the route is balanced (`balancer::rebalance::rebalances` asks).
impl AsRef<Balancing> for RouteSpec {
    fn as_ref(&self) -> &Balancing {
        &self.balancing
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

/// Problems with a set of routes that validation reports: two routes of one host and
/// prefix (the second could never be chosen). And warnings (`wslb check` prints them):
/// a route whose longer prefix a more specific host's route takes for that host.
pub fn check(specs: &[RouteSpec]) -> (Vec<(String, String)>, Vec<String>) {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    for (i, a) in specs.iter().enumerate() {
        for b in &specs[..i] {
            if a.same_place(b) {
                problems.push((
                    a.name.to_string(),
                    format!(
                        "host {:?} and path_prefix {:?} are those of route {:?}: it could never be chosen",
                        a.host.as_config(),
                        a.path_prefix,
                        b.name
                    ),
                ));
            }
        }
        for b in specs {
            // `b`'s host is more specific and covers part of `a`'s hosts, `a`'s prefix is
            // inside `b`'s: for `b`'s hosts, requests under `a`'s prefix go to `b`.
            let covers = match (&a.host, &b.host) {
                (HostMatch::Any, HostMatch::Exact(_) | HostMatch::Wildcard(_)) => true,
                (HostMatch::Wildcard(s), HostMatch::Exact(h)) => {
                    h.len() > s.len() && h.ends_with(&**s)
                }
                (HostMatch::Wildcard(s), HostMatch::Wildcard(t)) => {
                    t.len() > s.len() && t.ends_with(&**s)
                }
                _ => false,
            };
            if covers
                && a.path_prefix.len() > b.path_prefix.len()
                && prefix_matches(&b.path_prefix, &a.path_prefix)
            {
                warnings.push(format!(
                    "route {:?} (host {:?}, {}) overlaps route {:?}: requests for {} under {} go to {:?}, \
                     whose host is more specific",
                    a.name,
                    a.host.as_config(),
                    a.path_prefix,
                    b.name,
                    b.host.as_config(),
                    a.path_prefix,
                    b.name
                ));
            }
        }
    }
    (problems, warnings)
}

#[cfg(test)]
mod tests;
