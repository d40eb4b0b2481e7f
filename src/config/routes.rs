//! The routing sections of the config: `[[routes]]`, the sticky cookie and `[rebalance]`,
//! and their validation into [`RouteSpec`]s.

use std::net::SocketAddr;
use std::time::Duration;

use rustls::pki_types::ServerName;
use serde::Deserialize;

use super::{Algorithm, BackendSpec, Balancing, HashKey, HealthConfig, HostMatch, RouteSpec};
use super::{BackendEntry, Config, Health, HealthMode};

/// One `[[routes]]` entry. The fields after `backends` are the ones a route may set for
/// itself ([`RouteFields`]); each left out takes the top-level value where it applies.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RouteConfig {
    /// Its label in metrics, logs and `/backends`. Default: host and prefix
    /// (`chat.example.com/ws`, `*/ws` for any host).
    pub name: String,
    /// An exact host name, `*.example.com`, or empty (default) for any host.
    pub host: String,
    /// Default `/`. The longest matching prefix wins, at a path segment boundary.
    pub path_prefix: String,
    /// As the top-level `backends`. At least one.
    pub backends: Vec<BackendEntry>,
    pub algorithm: Option<Algorithm>,
    pub hash_key: Option<String>,
    pub slow_start_ms: Option<u64>,
    pub sticky: Option<StickyMode>,
    pub sticky_cookie: Option<String>,
    pub extensions: Option<super::Extensions>,
    pub health: RouteHealth,
}

/// A route's `[routes.health]`: each field left out is the top-level `[health]` one.
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RouteHealth {
    pub enabled: Option<bool>,
    pub mode: Option<HealthMode>,
    pub path: Option<String>,
    pub interval_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
}

impl RouteHealth {
    /// Each field: this one's if set, else `d`'s.
    fn over(&self, d: &RouteHealth) -> RouteHealth {
        RouteHealth {
            enabled: self.enabled.or(d.enabled),
            mode: self.mode.or(d.mode),
            path: self.path.clone().or_else(|| d.path.clone()),
            interval_ms: self.interval_ms.or(d.interval_ms),
            timeout_ms: self.timeout_ms.or(d.timeout_ms),
            rise: self.rise.or(d.rise),
            fall: self.fall.or(d.fall),
        }
    }

    /// The `[health]` table these fields make (a field still unset: its default).
    fn resolve(&self) -> Health {
        let h = Health::default();
        Health {
            enabled: self.enabled.unwrap_or(h.enabled),
            mode: self.mode.unwrap_or(h.mode),
            path: self.path.clone().unwrap_or(h.path),
            interval_ms: self.interval_ms.unwrap_or(h.interval_ms),
            timeout_ms: self.timeout_ms.unwrap_or(h.timeout_ms),
            rise: self.rise.unwrap_or(h.rise),
            fall: self.fall.unwrap_or(h.fall),
        }
    }

    /// Whether the field named `f` (as in `[health]`) is set here.
    fn sets(&self, f: &str) -> bool {
        match f {
            "enabled" => self.enabled.is_some(),
            "mode" => self.mode.is_some(),
            "path" => self.path.is_some(),
            "interval_ms" => self.interval_ms.is_some(),
            "timeout_ms" => self.timeout_ms.is_some(),
            "rise" => self.rise.is_some(),
            "fall" => self.fall.is_some(),
            _ => false,
        }
    }
}

impl From<&Health> for RouteHealth {
    fn from(h: &Health) -> Self {
        RouteHealth {
            enabled: Some(h.enabled),
            mode: Some(h.mode),
            path: Some(h.path.clone()),
            interval_ms: Some(h.interval_ms),
            timeout_ms: Some(h.timeout_ms),
            rise: Some(h.rise),
            fall: Some(h.fall),
        }
    }
}

/// The fields a route may set for itself, each `None` when left out. The top-level
/// fields are one value of it ([`Config::route_defaults`], every field set); a route's
/// own are merged over it once ([`RouteFields::over`]) and validation reads the result.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteFields {
    pub algorithm: Option<Algorithm>,
    pub hash_key: Option<String>,
    pub slow_start_ms: Option<u64>,
    pub sticky: Option<StickyMode>,
    pub sticky_cookie: Option<String>,
    pub extensions: Option<super::Extensions>,
    pub health: RouteHealth,
}

impl RouteFields {
    /// Each field: this route's if set, else the default's, where it applies. A route
    /// that chooses its own algorithm takes the default `hash_key` only if that algorithm
    /// hashes, and the default `slow_start_ms` only if it ramps: a `least-connections`
    /// route under a `consistent-hash` default with `hash_key = "query:room"` is not
    /// refused over a `hash_key` it never wrote (found by a new user). One left to its
    /// default algorithm takes both, and is checked with them.
    pub fn over(&self, defaults: &RouteFields) -> RouteFields {
        let applies = |uses: fn(Algorithm) -> bool| self.algorithm.is_none_or(uses);
        RouteFields {
            algorithm: self.algorithm.or(defaults.algorithm),
            hash_key: self.hash_key.clone().or_else(|| {
                defaults
                    .hash_key
                    .clone()
                    .filter(|_| applies(Algorithm::hashes))
            }),
            slow_start_ms: self
                .slow_start_ms
                .or(defaults.slow_start_ms.filter(|_| applies(Algorithm::ramps))),
            sticky: self.sticky.or(defaults.sticky),
            sticky_cookie: self
                .sticky_cookie
                .clone()
                .or_else(|| defaults.sticky_cookie.clone()),
            extensions: self.extensions.or(defaults.extensions),
            health: self.health.over(&defaults.health),
        }
    }
}

impl RouteConfig {
    /// The fields this route sets for itself.
    pub fn fields(&self) -> RouteFields {
        RouteFields {
            algorithm: self.algorithm,
            hash_key: self.hash_key.clone(),
            slow_start_ms: self.slow_start_ms,
            sticky: self.sticky,
            sticky_cookie: self.sticky_cookie.clone(),
            extensions: self.extensions,
            health: self.health.clone(),
        }
    }
}

/// `sticky`: `none` (default) or `cookie`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StickyMode {
    #[default]
    None,
    Cookie,
}

/// `[rebalance]`: closing connections (1012) of backends holding more than their share, so
/// that they reconnect to the lighter ones (see `balancer/rebalance.rs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rebalance {
    /// Default false.
    pub enabled: bool,
    /// How far above its share (the route's mean, by weight) a backend's open connections
    /// may be before connections are moved: 0.2 = 20% (default). 0.01..=10.
    pub tolerance: f64,
    /// Most connections closed per second, over all routes. Default 50.
    pub max_per_second: u32,
    /// Time between passes. Default 1 000 ms.
    pub interval_ms: u64,
}

impl Default for Rebalance {
    fn default() -> Self {
        Self {
            enabled: false,
            tolerance: 0.2,
            max_per_second: 50,
            interval_ms: 1_000,
        }
    }
}

/// `[rebalance]`, validated (`None` when off).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RebalanceSettings {
    pub tolerance: f64,
    pub max_per_second: u32,
    pub interval: Duration,
}

/// What the routes' validation gives back to `validate`.
pub(super) struct Validated {
    pub routes: Vec<RouteSpec>,
    pub warnings: Vec<String>,
    pub rebalance: Option<RebalanceSettings>,
    pub sticky_secret: Option<Box<[u8]>>,
}

impl Config {
    /// The default route (top-level `backends`, if any) and every `[[routes]]` entry.
    pub(super) fn validate_routes(&self, problem: &mut dyn FnMut(&str, String)) -> Validated {
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
        let mut out = Validated {
            routes: Vec::new(),
            warnings: Vec::new(),
            rebalance: None,
            sticky_secret: None,
        };
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
            out.routes.extend(spec);
        }
        for (i, r) in self.routes.iter().enumerate() {
            let field = format!("routes[{i}]");
            if r.backends.is_empty() {
                problem(
                    &format!("{field}.backends"),
                    "at least one backend is required".into(),
                );
            }
            let name = if r.name.is_empty() {
                let host = if r.host.is_empty() { "*" } else { &r.host };
                let prefix = if r.path_prefix.is_empty() {
                    "/"
                } else {
                    &r.path_prefix
                };
                format!("{host}{prefix}")
            } else {
                r.name.clone()
            };
            if out.routes.iter().any(|s| *s.name == *name) {
                problem(
                    &format!("{field}.name"),
                    format!("{name:?} names another route too"),
                );
            }
            let spec = self.route(r, &defaults, &field, name, &mut seen, problem);
            out.routes.extend(spec);
        }
        let (dups, warnings) = super::check_routes(&out.routes);
        for (name, message) in dups {
            problem(&format!("routes ({name})"), message);
        }
        out.warnings.extend(warnings);

        let sticky_used = out.routes.iter().any(|r| r.balancing.sticky.is_some());
        match self.sticky_secret.len() {
            0 if sticky_used => out.warnings.push(
                "sticky_secret is not set: sticky cookies are signed with a key drawn at start, \
                 valid for this process only (a restart, or another instance, ignores them)"
                    .into(),
            ),
            0 => {}
            n if n < 16 => problem(
                "sticky_secret",
                format!("{n} bytes is too short to sign cookies with; use at least 16"),
            ),
            _ => out.sticky_secret = Some(self.sticky_secret.as_bytes().into()),
        }
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
            for r in out
                .routes
                .iter()
                .filter(|r| !super::rebalances(&r.balancing))
            {
                out.warnings.push(format!(
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
        out.rebalance = rb.enabled.then_some(RebalanceSettings {
            tolerance: rb.tolerance,
            max_per_second: rb.max_per_second,
            interval: Duration::from_millis(rb.interval_ms),
        });
        out
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
    #[allow(clippy::too_many_arguments)]
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
        let host = HostMatch::parse(&r.host)
            .map_err(|e| bad(&at("host"), e))
            .ok();
        let path_prefix = if r.path_prefix.is_empty() {
            "/"
        } else {
            r.path_prefix.as_str()
        };
        if !path_prefix.starts_with('/') || path_prefix.contains(['?', '#', ' ']) {
            bad(
                &at("path_prefix"),
                format!("{path_prefix:?} must start with / and have no query"),
            );
        }
        let algorithm = merged.algorithm.unwrap_or_default();
        let backends = self.backend_list(&r.backends, algorithm, &at("backends"), seen, &mut bad);
        let hash_key_at = from(own.hash_key.is_some(), "hash_key");
        let hash_key = merged
            .hash_key
            .as_deref()
            .map_or(Ok(HashKey::Ip), str::parse::<HashKey>)
            .map_err(|e| bad(&hash_key_at, e))
            .ok();
        if hash_key.as_ref().is_some_and(|k| *k != HashKey::Ip) && !algorithm.hashes() {
            bad(
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
            bad(
                &slow_start_at,
                format!(
                    "{} does not ramp weights; slow start needs weighted-round-robin, \
                     least-connections or power-of-two",
                    algorithm.name()
                ),
            );
        }
        if slow_start_ms > super::settings::MAX_KEEPALIVE_MS {
            bad(
                &slow_start_at,
                format!("{slow_start_ms} is more than a day"),
            );
        }
        let sticky = merged.sticky == Some(StickyMode::Cookie);
        let cookie = merged.sticky_cookie.as_deref().unwrap_or_default();
        if sticky && (cookie.is_empty() || !cookie.bytes().all(is_token)) {
            bad(
                &from(own.sticky_cookie.is_some(), "sticky_cookie"),
                format!("{cookie:?} is not a cookie name"),
            );
        }
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
            balancing: Balancing {
                algorithm,
                hash_key: hash_key?,
                slow_start: (slow_start_ms > 0).then(|| Duration::from_millis(slow_start_ms)),
                sticky: sticky.then(|| cookie.into()),
            },
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
            match super::settings::resolve(hostport) {
                Ok(a) if a.port() == 0 => problem(
                    &format!("{list}[{i}]"),
                    format!("{b:?}: backend port must not be 0"),
                ),
                Ok(a) => {
                    let how = tls.then(|| super::settings::host_of(hostport));
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
            HealthMode::Tcp => super::Probe::Tcp,
            HealthMode::Http => super::Probe::Http {
                path: h.path.clone(),
            },
        },
    })
}
