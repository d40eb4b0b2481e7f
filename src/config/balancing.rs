//! The balancing and health-check settings of one route, as validation resolves them:
//! plain data the pools (`balancer/`) build their selectors and checkers from.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

/// The `algorithm` config field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    #[default]
    RoundRobin,
    WeightedRoundRobin,
    LeastConnections,
    PowerOfTwo,
    ConsistentHash,
}

impl Algorithm {
    /// As written in the config.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round-robin",
            Algorithm::WeightedRoundRobin => "weighted-round-robin",
            Algorithm::LeastConnections => "least-connections",
            Algorithm::PowerOfTwo => "power-of-two",
            Algorithm::ConsistentHash => "consistent-hash",
        }
    }

    /// Whether backends' `weight` means anything to it. Not power-of-two: its two
    /// candidates are drawn uniformly, so a weight only decides between them and a
    /// backend's share stays under about 2/n whatever its weight (found in review: weight
    /// 10 of 20 got 17.8%, not 50%); a weight there would be a promise not kept.
    pub fn is_weighted(self) -> bool {
        matches!(
            self,
            Algorithm::WeightedRoundRobin | Algorithm::LeastConnections | Algorithm::ConsistentHash
        )
    }

    /// Whether it reads a key from the request (`hash_key`).
    pub fn hashes(self) -> bool {
        self == Algorithm::ConsistentHash
    }

    /// Whether a backend's weight ramps after it comes up (`slow_start_ms`): not for
    /// consistent hashing, where a key's backend must not depend on the time.
    pub fn ramps(self) -> bool {
        matches!(
            self,
            Algorithm::WeightedRoundRobin | Algorithm::LeastConnections | Algorithm::PowerOfTwo
        )
    }
}

/// What `consistent-hash` hashes (`hash_key`), extracted from the request by
/// `connection.rs`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HashKey {
    /// The client's IP address (16 bytes, IPv4 as IPv6-mapped).
    #[default]
    Ip,
    /// The value of the first header of this name (case-insensitive), as sent.
    Header(Box<str>),
    /// The value of the cookie of this name (case-sensitive), as sent.
    Cookie(Box<str>),
    /// The value of the query parameter of this name, as sent (not percent-decoded).
    Query(Box<str>),
}

impl std::str::FromStr for HashKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let named = |name: &str, make: fn(Box<str>) -> HashKey| {
            if name.is_empty() {
                Err(format!(
                    "{s:?} names no {}",
                    s.split(':').next().unwrap_or("")
                ))
            } else {
                Ok(make(name.into()))
            }
        };
        match s.split_once(':') {
            None if s == "ip" => Ok(HashKey::Ip),
            Some(("header", n)) => {
                // A header name is an RFC 9110 token.
                if n.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
                {
                    named(n, HashKey::Header)
                } else {
                    Err(format!("{n:?} is not a header name"))
                }
            }
            // A cookie name is a token too (RFC 6265 §4.1.1); a name with a space, `=` or
            // `;` would never match and every request would fall back.
            Some(("cookie", n))
                if n.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)) =>
            {
                named(n, HashKey::Cookie)
            }
            Some(("cookie", n)) => Err(format!("{n:?} is not a cookie name")),
            // A query parameter's name as sent (not percent-decoded): no `=`, `&`, `#` or
            // whitespace, which would end it.
            Some(("query", n))
                if n.bytes()
                    .all(|c| c.is_ascii_graphic() && !b"=&#".contains(&c)) =>
            {
                named(n, HashKey::Query)
            }
            Some(("query", n)) => Err(format!("{n:?} is not a query parameter name")),
            _ => Err(format!(
                "{s:?} is not \"ip\", \"header:NAME\", \"cookie:NAME\" or \"query:NAME\""
            )),
        }
    }
}

/// How a pool balances: the reloadable settings its snapshots' selectors are built from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Balancing {
    pub algorithm: Algorithm,
    /// Used by `consistent-hash` only.
    pub hash_key: HashKey,
    /// `None`: no slow start. Used by the algorithms that [`Algorithm::ramps`].
    pub slow_start: Option<Duration>,
    /// `sticky = "cookie"`: the cookie's name (`None`: no affinity). Checked before the
    /// algorithm, by `Snapshot::sticky_pick`.
    pub sticky: Option<Box<str>>,
}

/// One configured backend: what selecting and dialling it needs. Its address, its weight
/// (1..=1000; used by the weighted algorithms), and, for one reached over TLS (`wss://`,
/// or every backend with `[tls_backend] enabled`), the name its certificate is verified
/// against and asked for with SNI (`tls_backend.server_name`, else the host it is written
/// with). A backend is these three: the same address reached another way is another
/// backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    pub addr: SocketAddr,
    pub weight: u32,
    pub tls: Option<rustls::pki_types::ServerName<'static>>,
}

impl From<SocketAddr> for BackendSpec {
    fn from(addr: SocketAddr) -> Self {
        Self {
            addr,
            weight: 1,
            tls: None,
        }
    }
}

/// How a backend is probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// A TCP connect.
    Tcp,
    /// `GET path HTTP/1.1`, passing on a 2xx status.
    Http { path: String },
}

/// Health check settings (see `[health]` in the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    pub probe: Probe,
}
