//! One route as validation resolves it ([`RouteSpec`]), how its host is matched, and the
//! checks that look at the set of routes (overlaps, duplicates, rebalancing).

use super::{Algorithm, BackendSpec, Balancing, HealthConfig};

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
    pub fn matches(&self, host: &[u8]) -> bool {
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
    pub fn rank(&self) -> usize {
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
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
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
    pub extensions: super::Extensions,
    /// Where it is written: `""` for the default route (the top-level fields),
    /// `routes[i]` for a `[[routes]]` entry. A reload's report names fields by it.
    pub field: Box<str>,
}

impl RouteSpec {
    pub fn same_place(&self, other: &RouteSpec) -> bool {
        self.host == other.host && self.path_prefix == other.path_prefix
    }
}

/// Problems with a set of routes that validation reports: two routes of one host and
/// prefix (the second could never be chosen). And warnings (`wslb check` prints them):
/// a route whose longer prefix a more specific host's route takes for that host.
pub fn check_routes(specs: &[RouteSpec]) -> (Vec<(String, String)>, Vec<String>) {
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

/// Whether rebalancing moves this route's connections: not where the key decides the
/// backend (consistent hashing, a sticky cookie), since a moved client would reconnect to
/// the backend it left.
pub fn rebalances(balancing: &Balancing) -> bool {
    balancing.algorithm != Algorithm::ConsistentHash && balancing.sticky.is_none()
}
