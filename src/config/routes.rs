//! The routing sections of the config: `[[routes]]`, the sticky cookie and `[rebalance]`,
//! the fields a route inherits from the top level; their validation into [`RouteSpec`]s
//! is `routes/validate.rs`.

use std::time::Duration;

use serde::Deserialize;

use super::{Algorithm, BackendEntry, Health, HealthMode, RouteSpec};

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
    /// Its `name`, or when left out its host and prefix (`*/ws` for any host).
    fn label(&self) -> String {
        if !self.name.is_empty() {
            return self.name.clone();
        }
        let host = if self.host.is_empty() {
            "*"
        } else {
            &self.host
        };
        let prefix = if self.path_prefix.is_empty() {
            "/"
        } else {
            &self.path_prefix
        };
        format!("{host}{prefix}")
    }

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

/// `Config::validate_routes` and the checks of one route.
mod validate;
