//! The routing sections' validation into [`RouteSpec`]s: each route on its own (what it
//! matches, its backends, its balancing, its health checks), then the checks across
//! routes, the sticky secret and `[rebalance]`.

use std::net::SocketAddr;
use std::time::Duration;

use rustls::pki_types::ServerName;

use super::super::{Algorithm, BackendSpec, Balancing, HashKey, HealthConfig, HostMatch};
use super::super::{BackendEntry, Config, Health, HealthMode, RouteSpec};
use super::{RebalanceSettings, RouteConfig, RouteFields, StickyMode, Validated};

impl Config {
    /// The default route (top-level `backends`, if any) and every `[[routes]]` entry.
    pub(in crate::config) fn validate_routes(
        &self,
        problem: &mut dyn FnMut(&str, String),
    ) -> Validated {
        // A value written once and inherited by several routes has its problem reported
        // once, where it is written.
        let mut reported: Vec<(String, String)> = Vec::new();
        let mut once = |f: &str, m: String| {
            if !reported.iter().any(|(rf, rm)| rf == f && *rm == m) {
                reported.push((f.into(), m.clone()));
                problem(f, m);
            }
        };
        let problem: &mut dyn FnMut(&str, String) = &mut once;
        let routes = self.route_specs(problem);
        let (dups, mut warnings) = super::super::check_routes(&routes);
        for (name, message) in dups {
            problem(&format!("routes ({name})"), message);
        }
        let sticky_secret = self.sticky_secret(&routes, &mut warnings, problem);
        let rebalance = self.rebalance_settings(&routes, &mut warnings, problem);
        Validated {
            routes,
            warnings,
            rebalance,
            sticky_secret,
        }
    }

    /// Each route checked on its own, in config order (the default route first); one
    /// with a problem is left out. Separate from the checks across routes that follow.
    fn route_specs(&self, problem: &mut dyn FnMut(&str, String)) -> Vec<RouteSpec> {
        let mut routes: Vec<RouteSpec> = Vec::new();
        if self.backends.is_empty() && self.routes.is_empty() {
            problem(
                "backends",
                "at least one backend address (or a [[routes]] entry) is required".into(),
            );
        }
        // An address is one backend: reached one way (TLS or not, by one name) everywhere.
        let mut seen: Vec<(SocketAddr, Option<String>)> = Vec::new();
        let defaults = self.route_defaults();
        if !self.backends.is_empty() {
            // The default route: the top-level fields, and nothing of its own.
            let top = RouteConfig {
                backends: self.backends.clone(),
                ..RouteConfig::default()
            };
            let spec = self.route(&top, &defaults, "", "default".into(), &mut seen, problem);
            routes.extend(spec);
        }
        for (i, r) in self.routes.iter().enumerate() {
            let field = format!("routes[{i}]");
            if r.backends.is_empty() {
                problem(
                    &format!("{field}.backends"),
                    "at least one backend is required".into(),
                );
            }
            let name = r.label();
            if routes.iter().any(|s| *s.name == *name) {
                problem(
                    &format!("{field}.name"),
                    format!("{name:?} names another route too"),
                );
            }
            let spec = self.route(r, &defaults, &field, name, &mut seen, problem);
            routes.extend(spec);
        }
        routes
    }

    /// `sticky_secret`, checked against whether any route signs cookies with it: a
    /// warning when one does and no secret is set.
    fn sticky_secret(
        &self,
        routes: &[RouteSpec],
        warnings: &mut Vec<String>,
        problem: &mut dyn FnMut(&str, String),
    ) -> Option<Box<[u8]>> {
        let sticky_used = routes.iter().any(|r| r.balancing.sticky.is_some());
        match self.sticky_secret.len() {
            0 if sticky_used => warnings.push(
                "sticky_secret is not set: sticky cookies are signed with a key drawn at start, \
                 valid for this process only (a restart, or another instance, ignores them)"
                    .into(),
            ),
            0 => {}
            n if n < 16 => problem(
                "sticky_secret",
                format!("{n} bytes is too short to sign cookies with; use at least 16"),
            ),
            _ => return Some(self.sticky_secret.as_bytes().into()),
        }
        None
    }

    /// `[rebalance]`, checked (`None` when off), with a warning for each route it cannot
    /// move clients of.
    fn rebalance_settings(
        &self,
        routes: &[RouteSpec],
        warnings: &mut Vec<String>,
        problem: &mut dyn FnMut(&str, String),
    ) -> Option<RebalanceSettings> {
        let rb = &self.rebalance;
        if !(0.01..=10.0).contains(&rb.tolerance) {
            problem(
                "rebalance.tolerance",
                format!("{} is outside 0.01..=10 (0.2 = 20%)", rb.tolerance),
            );
        }
        if rb.max_per_second == 0 || rb.max_per_second > 100_000 {
            problem(
                "rebalance.max_per_second",
                format!("{} is outside 1..=100000", rb.max_per_second),
            );
        }
        if !(100..=3_600_000).contains(&rb.interval_ms) {
            problem(
                "rebalance.interval_ms",
                format!("{} is outside 100..=3600000", rb.interval_ms),
            );
        }
        if rb.enabled {
            for r in routes
                .iter()
                .filter(|r| !super::super::rebalances(&r.balancing))
            {
                warnings.push(format!(
                    "route {:?} is not rebalanced: with {} its clients would reconnect to \
                     the backend they left",
                    r.name,
                    if r.balancing.sticky.is_some() {
                        "a sticky cookie"
                    } else {
                        "consistent-hash"
                    }
                ));
            }
        }
        rb.enabled.then_some(RebalanceSettings {
            tolerance: rb.tolerance,
            max_per_second: rb.max_per_second,
            interval: Duration::from_millis(rb.interval_ms),
        })
    }

    /// The top-level fields as the defaults of every route.
    pub fn route_defaults(&self) -> RouteFields {
        RouteFields {
            algorithm: Some(self.algorithm),
            hash_key: Some(self.hash_key.clone()),
            slow_start_ms: Some(self.slow_start_ms),
            sticky: Some(self.sticky),
            sticky_cookie: Some(self.sticky_cookie.clone()),
            extensions: Some(self.extensions),
            health: (&self.health).into(),
        }
    }

    /// One route: `r`'s fields merged over `defaults`, checked. `field` is where `r` is
    /// written (`routes[i]`; empty for the default route, whose fields are the top-level
    /// ones). A problem with a value `r` inherited is named where the value is written.
    fn route(
        &self,
        r: &RouteConfig,
        defaults: &RouteFields,
        field: &str,
        name: String,
        seen: &mut Vec<(SocketAddr, Option<String>)>,
        problem: &mut dyn FnMut(&str, String),
    ) -> Option<RouteSpec> {
        let at = |f: &str| {
            if field.is_empty() {
                f.to_string()
            } else {
                format!("{field}.{f}")
            }
        };
        let own = r.fields();
        let merged = own.over(defaults);
        // Where a merged value is written: the route, or the top level.
        let from = |set: bool, f: &str| if set { at(f) } else { f.to_string() };
        let mut ok = true;
        let mut bad = |f: &str, m: String| {
            ok = false;
            problem(f, m);
        };
        let (host, path_prefix) = route_match(r, &at, &mut bad);
        let algorithm = merged.algorithm.unwrap_or_default();
        let backends = self.backend_list(&r.backends, algorithm, &at("backends"), seen, &mut bad);
        let balancing = balancing(&own, &merged, &from, &mut bad);
        let health_at = |f: &str| from(own.health.sets(f), &format!("health.{f}"));
        let health = health_config(&merged.health.resolve(), &health_at, &mut bad);
        if !ok {
            return None;
        }
        Some(RouteSpec {
            name: name.into(),
            host: host?,
            path_prefix: path_prefix.into(),
            backends,
            balancing: balancing?,
            health,
            extensions: merged.extensions.unwrap_or_default(),
            field: field.into(),
        })
    }

    /// A `backends` list (written at `list`): addresses resolved, weights checked against
    /// the algorithm.
    fn backend_list(
        &self,
        entries: &[BackendEntry],
        algorithm: Algorithm,
        list: &str,
        seen: &mut Vec<(SocketAddr, Option<String>)>,
        problem: &mut dyn FnMut(&str, String),
    ) -> Vec<BackendSpec> {
        let mut backends: Vec<BackendSpec> = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let b = &entry.address;
            if !(1..=1000).contains(&entry.weight) {
                problem(
                    &format!("{list}[{i}].weight"),
                    format!("{} is outside 1..=1000", entry.weight),
                );
            } else if entry.weight != 1 && !algorithm.is_weighted() {
                problem(
                    &format!("{list}[{i}].weight"),
                    format!(
                        "{} ignores weights; use weighted-round-robin, least-connections \
                         or consistent-hash",
                        algorithm.name()
                    ),
                );
            }
            let (tls, hostport) = if let Some(rest) = b.strip_prefix("wss://") {
                (true, rest)
            } else if let Some(rest) = b.strip_prefix("ws://") {
                (false, rest)
            } else {
                (self.tls_backend.enabled, b.as_str())
            };
            let hostport = hostport.strip_suffix('/').unwrap_or(hostport);
            match super::super::settings::resolve(hostport) {
                Ok(a) if a.port() == 0 => problem(
                    &format!("{list}[{i}]"),
                    format!("{b:?}: backend port must not be 0"),
                ),
                Ok(a) => {
                    let how = tls.then(|| super::super::settings::host_of(hostport));
                    let name = how.as_ref().and_then(|host| {
                        let (name, field) = match self.tls_backend.server_name.as_str() {
                            "" => (host.clone(), format!("{list}[{i}]")),
                            set => (set.to_string(), "tls_backend.server_name".to_string()),
                        };
                        ServerName::try_from(name.clone())
                            .map_err(|e| {
                                let why = format!("{name:?} is not a DNS name or IP address: {e}");
                                problem(&field, why)
                            })
                            .ok()
                    });
                    match seen.iter().find(|(addr, _)| *addr == a) {
                        Some((_, before)) if *before != how => problem(
                            &format!("{list}[{i}]"),
                            format!("{b:?}: {a} is reached another way (TLS or name) elsewhere"),
                        ),
                        Some(_) => {}
                        None => seen.push((a, how.clone())),
                    }
                    let weight = entry.weight.clamp(1, 1000) as u32;
                    match backends.iter().find(|s| s.addr == a) {
                        Some(s) if s.weight != weight => problem(
                            &format!("{list}[{i}]"),
                            format!("{b:?}: {a} is listed before with another weight"),
                        ),
                        Some(_) => {}
                        None => backends.push(BackendSpec {
                            addr: a,
                            weight,
                            tls: name,
                        }),
                    }
                }
                Err(e) => problem(&format!("{list}[{i}]"), e),
            }
        }
        backends
    }
}

/// An RFC 9110 token character (cookie and header names).
fn is_token(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// What a route matches (its host and path prefix, `/` when left out), checked: the part
/// of a route that is not about its backends.
fn route_match<'r>(
    r: &'r RouteConfig,
    at: &dyn Fn(&str) -> String,
    problem: &mut dyn FnMut(&str, String),
) -> (Option<HostMatch>, &'r str) {
    let host = HostMatch::parse(&r.host)
        .map_err(|e| problem(&at("host"), e))
        .ok();
    let path_prefix = if r.path_prefix.is_empty() {
        "/"
    } else {
        r.path_prefix.as_str()
    };
    if !path_prefix.starts_with('/') || path_prefix.contains(['?', '#', ' ']) {
        problem(
            &at("path_prefix"),
            format!("{path_prefix:?} must start with / and have no query"),
        );
    }
    (host, path_prefix)
}

/// A route's balancing from its merged fields, checked: a hash key, slow start and a
/// sticky cookie each apply to some algorithms only. `from(set, f)` names field `f` where
/// it is written (the route's own when `set`, else the top level). `None` when the hash
/// key does not parse (every other problem is reported, and the route is dropped by the
/// caller).
fn balancing(
    own: &RouteFields,
    merged: &RouteFields,
    from: &dyn Fn(bool, &str) -> String,
    problem: &mut dyn FnMut(&str, String),
) -> Option<Balancing> {
    let algorithm = merged.algorithm.unwrap_or_default();
    let hash_key_at = from(own.hash_key.is_some(), "hash_key");
    let hash_key = merged
        .hash_key
        .as_deref()
        .map_or(Ok(HashKey::Ip), str::parse::<HashKey>)
        .map_err(|e| problem(&hash_key_at, e))
        .ok();
    if hash_key.as_ref().is_some_and(|k| *k != HashKey::Ip) && !algorithm.hashes() {
        problem(
            &hash_key_at,
            format!(
                "{} does not hash; hash_key needs algorithm = \"consistent-hash\"",
                algorithm.name()
            ),
        );
    }
    let slow_start_ms = merged.slow_start_ms.unwrap_or(0);
    let slow_start_at = from(own.slow_start_ms.is_some(), "slow_start_ms");
    if slow_start_ms > 0 && !algorithm.ramps() {
        problem(
            &slow_start_at,
            format!(
                "{} does not ramp weights; slow start needs weighted-round-robin, \
                 least-connections or power-of-two",
                algorithm.name()
            ),
        );
    }
    if slow_start_ms > super::super::settings::MAX_KEEPALIVE_MS {
        problem(
            &slow_start_at,
            format!("{slow_start_ms} is more than a day"),
        );
    }
    let sticky = merged.sticky == Some(StickyMode::Cookie);
    let cookie = merged.sticky_cookie.as_deref().unwrap_or_default();
    if sticky && (cookie.is_empty() || !cookie.bytes().all(is_token)) {
        problem(
            &from(own.sticky_cookie.is_some(), "sticky_cookie"),
            format!("{cookie:?} is not a cookie name"),
        );
    }
    Some(Balancing {
        algorithm,
        hash_key: hash_key?,
        slow_start: (slow_start_ms > 0).then(|| Duration::from_millis(slow_start_ms)),
        sticky: sticky.then(|| cookie.into()),
    })
}

/// A `[health]` table (merged for a route), checked: `None` when checks are off. `at`
/// names a field where it is written.
fn health_config(
    h: &Health,
    at: &dyn Fn(&str) -> String,
    problem: &mut dyn FnMut(&str, String),
) -> Option<HealthConfig> {
    for (name, v) in [
        ("interval_ms", h.interval_ms),
        ("timeout_ms", h.timeout_ms),
        ("rise", h.rise as u64),
        ("fall", h.fall as u64),
    ] {
        if v == 0 {
            problem(&at(name), "must be at least 1".into());
        }
    }
    if h.mode == HealthMode::Http && !h.path.starts_with('/') {
        problem(&at("path"), format!("{:?} must start with /", h.path));
    }
    h.enabled.then(|| HealthConfig {
        interval: Duration::from_millis(h.interval_ms),
        timeout: Duration::from_millis(h.timeout_ms),
        rise: h.rise,
        fall: h.fall,
        probe: match h.mode {
            HealthMode::Tcp => super::super::Probe::Tcp,
            HealthMode::Http => super::super::Probe::Http {
                path: h.path.clone(),
            },
        },
    })
}
