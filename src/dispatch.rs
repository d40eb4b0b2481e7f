//! What happens to a parsed request, decided once for upgrades and plain requests alike:
//! its route, the backends to try in failover order, and the affinity cookie its answer
//! carries, or the [`Refusal`] it gets. The steps run in order, each able to refuse; a new
//! check on requests (a client address from a PROXY header, Origin, a token) is one more
//! step here, never a second path.

use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;

use crate::balancer::affinity::Named;
use crate::balancer::selection::Pick;
use crate::balancer::{Backend, HashKey, Pool, Snapshot};
use crate::handshake::{Extensions, Scheme, View};
use crate::outcome::Refusal;
use crate::routes::{LocalRoutes, LocalTable};

/// Where a request goes.
#[derive(Debug)]
pub struct Decision {
    /// The worker's copy of the route table, held so the route's pool outlives a reload
    /// while this request is served.
    routes: Rc<LocalTable>,
    route: usize,
    /// The pool's snapshot the pick was made in.
    snap: Rc<Snapshot>,
    first: Pick,
    /// The backend the request's sticky cookie named, if it is up.
    sticky: Option<Named>,
    /// The route's `extensions`.
    pub extensions: Extensions,
}

/// Runs the steps for a request: route, then pick (a sticky cookie naming a backend that
/// is up wins over the algorithm). `peer` is the client's address as wslb knows it.
///
/// The request's bytes are read here, while they are at hand: the key the selector is
/// asked with is borrowed from them (or is the client's address, on the stack), and
/// nothing of the request is copied for later.
pub fn dispatch(
    routes: &LocalRoutes,
    peer: IpAddr,
    req: &View<'_, '_>,
) -> Result<Decision, Refusal> {
    let routes = routes.current();
    let route = routes
        .table
        .find(req.host, req.path)
        .ok_or(Refusal::NoRoute)?;
    let snap = routes.pools[route].current();
    let cookie = snap.sticky.as_ref().and_then(|s| req.cookie(&s.cookie));
    let sticky = snap.sticky_pick(cookie);
    let first = match sticky {
        Some(n) => Pick::of(Some(n.backend)),
        None => {
            let ip = selection_key(peer);
            snap.pick(request_key(snap.key_source(), req, &ip))
        }
    };
    let extensions = routes.table.routes[route].spec.extensions;
    Ok(Decision {
        routes,
        route,
        snap,
        first,
        sticky,
        extensions,
    })
}

impl Decision {
    /// The route's pool: health marks and counters of its backends.
    pub fn pool(&self) -> &Pool {
        &self.routes.pools[self.route]
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snap
    }

    /// The backends to try, in order: the pick, then each other backend that is up once.
    /// Empty when every backend is down.
    pub fn candidates(&self) -> impl Iterator<Item = &Arc<Backend>> + '_ {
        self.snap.failover(self.first)
    }

    /// The `Set-Cookie` line (with its CRLF) the answer carries when `chosen` served
    /// it: with affinity on, unless the request already named this backend with a token
    /// of the current key (one of the previous key is replaced: it stops being honoured
    /// at the next change of `sticky_secret`).
    pub fn set_cookie(&self, chosen: &Backend, scheme: Scheme) -> Option<String> {
        let sticky = self.snap.sticky.as_ref()?;
        let i = self.snap.backends.iter().position(|b| b.id == chosen.id)?;
        if self.sticky.is_some_and(|n| n.backend == i && !n.stale) {
            return None;
        }
        Some(sticky.set_cookie(i, scheme == Scheme::Https))
    }
}

/// The bytes the selector is asked with: what `hash_key` names, borrowed from the request
/// (a header's value, a cookie's, a query parameter's, as sent), or the client's address
/// (`ip`, on the caller's stack). Empty when the request lacks it (the selector then falls
/// back to least-connections) or when the selector ignores keys (`source` is `None`).
fn request_key<'a>(source: Option<&HashKey>, req: &View<'a, '_>, ip: &'a [u8; 16]) -> &'a [u8] {
    match source {
        None => &[],
        Some(HashKey::Ip) => ip,
        Some(HashKey::Header(name)) => req.header(name).map_or(&[], <[u8]>::trim_ascii),
        Some(HashKey::Cookie(name)) => req.cookie(name).unwrap_or_default(),
        Some(HashKey::Query(name)) => req.query_param(name).map_or(&[], str::as_bytes),
    }
}

/// The client's address as a selection key (IPv4 as IPv6-mapped, so every address key is
/// 16 bytes, and the same client hashes the same over either family's socket).
fn selection_key(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}
