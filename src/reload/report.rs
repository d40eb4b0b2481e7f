//! What a reload applied, by config name: the part of its report that `Reloader::apply`
//! builds as it applies each part of the new settings (the other part, what needs a
//! restart, is `Fixed::changes`).
//!
//! Names are those of the TOML file, for the field the difference comes from: a field of
//! the default route is named as the top-level field it is (`algorithm`,
//! `health.interval_ms`), one of a `[[routes]]` entry by its place there
//! (`routes[1].sticky_cookie`); a top-level field that a route inherits is named once for
//! each route it changed. A route added or removed as a whole is named by its entry
//! (`routes[2]`, or `backends` for the default route).

use crate::balancer::Probe;
use crate::config::RebalanceSettings;
use crate::per_ip::PerIpLimits;
use crate::routes::RouteSpec;

/// The config names of what differs between the running routes and the new ones. A route
/// is the same route when its host and path prefix are (as `Router::configure` keeps its
/// pool); otherwise it was removed or added.
pub(super) fn routes(old: &[RouteSpec], new: &[RouteSpec], out: &mut Vec<String>) {
    let place = |r: &RouteSpec| (r.host.clone(), r.path_prefix.clone());
    let whole = |r: &RouteSpec| match &*r.field {
        "" => "backends".to_string(),
        f => f.to_string(),
    };
    for n in new {
        match old.iter().find(|o| place(o) == place(n)) {
            Some(o) => route(o, n, out),
            None => out.push(whole(n)),
        }
    }
    for o in old {
        if !new.iter().any(|n| place(o) == place(n)) {
            out.push(whole(o));
        }
    }
}

/// The fields that differ between two versions of one route, named where `new` is written.
fn route(old: &RouteSpec, new: &RouteSpec, out: &mut Vec<String>) {
    let at = |f: &str| match &*new.field {
        "" => f.to_string(),
        route => format!("{route}.{f}"),
    };
    let (a, b) = (&old.balancing, &new.balancing);
    for (changed, f) in [
        (old.name != new.name, "name"),
        (old.backends != new.backends, "backends"),
        (a.algorithm != b.algorithm, "algorithm"),
        (a.hash_key != b.hash_key, "hash_key"),
        (a.slow_start != b.slow_start, "slow_start_ms"),
        (a.sticky.is_some() != b.sticky.is_some(), "sticky"),
        (
            a.sticky.is_some() && b.sticky.is_some() && a.sticky != b.sticky,
            "sticky_cookie",
        ),
        (old.extensions != new.extensions, "extensions"),
    ] {
        if changed {
            out.push(at(f));
        }
    }
    match (&old.health, &new.health) {
        (Some(h), Some(k)) => {
            let path = |p: &Probe| match p {
                Probe::Tcp => None,
                Probe::Http { path } => Some(path.clone()),
            };
            let (p, q) = (path(&h.probe), path(&k.probe));
            for (changed, f) in [
                (h.interval != k.interval, "health.interval_ms"),
                (h.timeout != k.timeout, "health.timeout_ms"),
                (h.rise != k.rise, "health.rise"),
                (h.fall != k.fall, "health.fall"),
                (p.is_some() != q.is_some(), "health.mode"),
                (p.is_some() && q.is_some() && p != q, "health.path"),
            ] {
                if changed {
                    out.push(at(f));
                }
            }
        }
        (None, None) => {}
        _ => out.push(at("health.enabled")),
    }
}

/// `limits.*_per_ip` that differ (resolved: a burst of 0 is the rate, so a changed rate
/// may change the burst too).
pub(super) fn per_ip(old: PerIpLimits, new: PerIpLimits, out: &mut Vec<String>) {
    for (changed, f) in [
        (
            old.max_connections != new.max_connections,
            "limits.max_connections_per_ip",
        ),
        (old.rate != new.rate, "limits.handshake_rate_per_ip"),
        (old.burst != new.burst, "limits.handshake_burst_per_ip"),
    ] {
        if changed {
            out.push(f.into());
        }
    }
}

/// `[rebalance]` fields that differ (`None`: off).
pub(super) fn rebalance(
    old: Option<RebalanceSettings>,
    new: Option<RebalanceSettings>,
    out: &mut Vec<String>,
) {
    match (old, new) {
        (Some(a), Some(b)) => {
            for (changed, f) in [
                (a.tolerance != b.tolerance, "rebalance.tolerance"),
                (
                    a.max_per_second != b.max_per_second,
                    "rebalance.max_per_second",
                ),
                (a.interval != b.interval, "rebalance.interval_ms"),
            ] {
                if changed {
                    out.push(f.into());
                }
            }
        }
        (None, None) => {}
        _ => out.push("rebalance.enabled".into()),
    }
}
