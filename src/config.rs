//! File + flags -> validated [`Settings`]: the TOML schema and its documented defaults
//! here, `validate()` and the resolved form in `config/settings.rs`.
//!
//! [`Config`] is what a user writes (every field optional, unknown fields rejected so a typo
//! is named instead of silently ignored). [`Config::validate`] turns it into [`Settings`],
//! the resolved form workers run on, or returns *every* problem at once, each naming its field.

use std::fmt;
use std::path::Path;

use serde::Deserialize;

/// Which io driver each worker's monoio runtime uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum IoDriver {
    /// io_uring, falling back to epoll (with a warning in the log) where the kernel or a
    /// seccomp profile refuses io_uring.
    #[default]
    Auto,
    /// io_uring only; startup fails if it is unavailable.
    IoUring,
    /// epoll only (monoio's legacy driver).
    Epoll,
}

impl std::str::FromStr for IoDriver {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "io-uring" => Ok(Self::IoUring),
            "epoll" => Ok(Self::Epoll),
            other => Err(format!(
                "unknown io driver {other:?} (expected auto, io-uring or epoll)"
            )),
        }
    }
}

/// How access log lines are written (`access_log.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    #[default]
    Text,
    Json,
}

/// What happens to the client's `Sec-WebSocket-Extensions` (`extensions`, per route).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Extensions {
    /// Offers of permessage-deflate go to the backend and its choice comes back in the
    /// 101; the relay then allows RSV1 on a message's first frame and stays zero-copy
    /// (it never inflates). Offers of any other extension are removed, since wslb cannot
    /// tell which RSV bits they would use.
    #[default]
    Pass,
    /// No extension is negotiated: both peers speak uncompressed frames.
    Strip,
}

/// The config file as written. See `wslb.example.toml` for a commented copy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address every worker listens on (SO_REUSEPORT). Default `127.0.0.1:8080`.
    pub listen: String,
    /// Backend WebSocket servers, `host:port`, `ws://host:port` or `wss://host:port`
    /// (reached over TLS, see `[tls_backend]`), or `{ address = "host:port", weight = 3 }`.
    /// At least one is required.
    pub backends: Vec<BackendEntry>,
    /// How new connections are spread over the backends: `round-robin` (default),
    /// `weighted-round-robin`, `least-connections`, `power-of-two` or `consistent-hash`.
    /// Reloadable.
    pub algorithm: Algorithm,
    /// What `consistent-hash` hashes: `ip` (default: the client's address),
    /// `header:NAME`, `cookie:NAME` or `query:NAME`. A request without it goes to the
    /// backend with the fewest connections.
    pub hash_key: String,
    /// Slow start for `weighted-round-robin`, `least-connections` and `power-of-two`: a
    /// backend that comes back up, or that a reload adds, ramps from 10% of its weight to
    /// all of it over this many ms. Default 0: off.
    pub slow_start_ms: u64,
    /// Worker threads, one per core. `0` (default) means one per available core.
    pub workers: usize,
    /// `auto` (default), `io-uring` or `epoll`.
    pub io_driver: IoDriver,
    /// listen(2) backlog per worker socket. Default 4096: connection bursts land in several
    /// workers' queues at once, and the kernel caps it at `net.core.somaxconn` anyway.
    pub backlog: u32,
    /// `TCP_DEFER_ACCEPT` on the listening sockets: the kernel hands wslb a connection only
    /// once its first bytes have arrived, which saves a wakeup per handshake; a client that
    /// connects and sends nothing is kept out of the process until
    /// `timeouts.client_handshake_ms` has passed (rounded up to seconds), then gets that
    /// timeout again. Default true; false for exact handshake timeouts on silent clients.
    pub defer_accept: bool,
    /// Seconds between stats lines in the log (per-worker accepted and open connections,
    /// and how evenly SO_REUSEPORT spread them). Logged only when something changed.
    /// Default 10; `0` turns them off.
    pub stats_interval_secs: u64,
    /// Unix socket path where this wslb offers its listening sockets to a new process
    /// started with `wslb run --takeover` (zero-downtime binary upgrade, see
    /// `handover.rs`). Default empty: no upgrades.
    pub upgrade_socket: String,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub health: Health,
    pub keepalive: Keepalive,
    pub admin: Admin,
    pub access_log: AccessLog,
    pub tls: Tls,
    pub tls_backend: TlsBackend,
    /// More pools, chosen by Host and path (see `routes.rs`); the top-level `backends` are
    /// the default route (any host, `/`). Reloadable: added, changed and removed routes.
    pub routes: Vec<RouteConfig>,
    /// `none` (default) or `cookie`: the 101 sets a cookie naming the backend, and a
    /// request carrying it goes back there while it is up. Per route too.
    pub sticky: StickyMode,
    /// The sticky cookie's name. Default `wslb_backend`. Per route too.
    pub sticky_cookie: String,
    /// Secret (16 bytes or more) sticky cookies are signed with; instances sharing it
    /// honour each other's cookies. Default empty: a key drawn at start, for this process.
    pub sticky_secret: String,
    pub rebalance: Rebalance,
    /// `pass` (default): permessage-deflate is negotiated end to end (the relay stays
    /// zero-copy and allows RSV1 where it marks a compressed message); `strip`: no
    /// extension is negotiated. Per route too.
    pub extensions: Extensions,
    pub http: Http,
}

/// One `backends` entry: an address (`"host:port"`, `"ws://host:port"`,
/// `"wss://host:port"`) or a table `{ address = "...", weight = N }` (weight 1..=1000,
/// default 1; the address as in the short form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendEntry {
    pub address: String,
    /// Kept as written until `validate` checks its range (so every problem is named).
    pub weight: i64,
}

impl From<String> for BackendEntry {
    fn from(address: String) -> Self {
        Self { address, weight: 1 }
    }
}

impl From<&str> for BackendEntry {
    fn from(address: &str) -> Self {
        address.to_string().into()
    }
}

impl<'de> Deserialize<'de> for BackendEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// The table form, with unknown keys rejected like everywhere else.
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            address: String,
            #[serde(default = "one")]
            weight: i64,
        }
        fn one() -> i64 {
            1
        }
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = BackendEntry;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"host:port\" or { address = \"host:port\", weight = N }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<BackendEntry, E> {
                Ok(v.into())
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                m: A,
            ) -> Result<BackendEntry, A::Error> {
                let t = Table::deserialize(serde::de::value::MapAccessDeserializer::new(m))?;
                Ok(BackendEntry {
                    address: t.address,
                    weight: t.weight,
                })
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// The admin HTTP server: `/metrics`, `/healthz`, `/readyz`, `/backends` and the status
/// page `/` (see `admin/`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// Address of the admin listener. Default `127.0.0.1:9091`; empty turns it off.
    pub listen: String,
    /// The admin server has no authentication, so an address other than loopback is
    /// refused unless this is true. Default false.
    pub allow_remote: bool,
}

impl Default for Admin {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9091".into(),
            allow_remote: false,
        }
    }
}

/// One line per finished client connection (see `access_log.rs`).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLog {
    /// Default false.
    pub enabled: bool,
    /// `text` (default: logfmt, `key=value`) or `json` (one object per line).
    pub format: AccessLogFormat,
    /// File to append to, reopened on SIGHUP (log rotation). Default empty: stderr.
    pub path: String,
}

/// WebSocket ping keepalive and the idle timeout (see `relay/registry.rs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Keepalive {
    /// A peer (client or backend) that has sent nothing for this long gets a ping from
    /// wslb; its pong is not forwarded. Keeps NAT and firewall state alive and proves the
    /// peer is there. Default 30 000 ms; `0` sends no pings.
    pub ping_interval_ms: u64,
    /// With pings: a peer that has sent nothing, not even the pong, for this long is dead;
    /// the other side gets a close (1011 to a client whose backend died, 1001 to a backend
    /// whose client did). A quiet peer that answers pings is never cut. Without pings: a
    /// connection with no frame in either direction for this long gets close 1001 "idle
    /// timeout" on both sides. Default 90 000 ms; `0` turns it off.
    pub idle_timeout_ms: u64,
}

impl Default for Keepalive {
    fn default() -> Self {
        Self {
            ping_interval_ms: 30_000,
            idle_timeout_ms: 90_000,
        }
    }
}

/// Active health checks, run from one thread per instance (see `balancer/health.rs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Health {
    /// Default true. Off: no checks, and failed connects never take a backend down
    /// (nothing would bring it back).
    pub enabled: bool,
    /// `tcp` (default: a connect) or `http` (`GET path`, passing on 2xx).
    pub mode: HealthMode,
    /// Path for `http` checks. Default `/`.
    pub path: String,
    /// Time between checks of each backend. Default 2 000 ms.
    pub interval_ms: u64,
    /// Time one check may take. Default 1 000 ms.
    pub timeout_ms: u64,
    /// Passing checks in a row that bring a down backend back. Default 2.
    pub rise: u32,
    /// Failed checks, or failed connects from live traffic, in a row that take a backend
    /// down. Default 3.
    pub fall: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum HealthMode {
    #[default]
    Tcp,
    Http,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            enabled: true,
            mode: HealthMode::Tcp,
            path: "/".into(),
            interval_ms: 2_000,
            timeout_ms: 1_000,
            rise: 2,
            fall: 3,
        }
    }
}

/// Timeouts in milliseconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Time a client has to send its complete upgrade request. Default 10 000 ms.
    pub client_handshake_ms: u64,
    /// TCP connect to one backend; on expiry the next backend is tried. Default 3 000 ms.
    pub backend_connect_ms: u64,
    /// Time a backend has to answer the forwarded upgrade. Default 10 000 ms.
    pub backend_handshake_ms: u64,
    /// After a close frame has been sent to a peer (or one side's TCP has ended), how long
    /// the other side gets to finish the close handshake before wslb closes its socket.
    /// Default 5 000 ms.
    pub close_grace_ms: u64,
    /// On SIGTERM/SIGINT, how long open connections may carry on by themselves after wslb
    /// stops accepting, before each gets close 1001 (going away). Default 10 000 ms; `0`
    /// sends the closes at once.
    pub shutdown_grace_ms: u64,
    /// A backend removed by a reload (SIGHUP) gets no new connections; its open ones carry
    /// on for this long, then get close 1012 (service restart) on both sides.
    /// Default 300 000 ms; `0`: they stay until they close by themselves.
    pub removed_backend_drain_ms: u64,
}

/// Connection limits (instance-wide and per client) and size limits in bytes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Concurrent client connections per instance, over all workers; a client past it gets
    /// 503 and the accept loop keeps running. `0` (default): as many as the descriptor
    /// limit allows, `(RLIMIT_NOFILE - 64) / 2`, since each proxied connection holds two
    /// descriptors; wslb raises its soft limit to the hard one at startup.
    pub max_connections: usize,
    /// Largest upgrade request head accepted from a client; larger gets 431.
    /// Default 8 192 (NGINX's `large_client_header_buffers` default is 8 KiB per line;
    /// browsers send about 1 KiB with cookies). Range 1 024..=65 536.
    pub max_request_bytes: usize,
    /// Largest payload of one client frame; larger closes the client with 1009.
    /// Default 16 MiB (Autobahn's largest case). `0` disables the check.
    pub max_frame_bytes: u64,
    /// Largest client message: a data frame's payload and its continuations' together;
    /// larger closes the client with 1009. wslb never buffers a message (frames stream
    /// through), so this protects backends, not wslb. Default 64 MiB; `0` disables it.
    pub max_message_bytes: u64,
    /// Initial relay buffer per direction. Default 16 384 (a 16 KiB message's payload, or
    /// hundreds of small pipelined frames, per read). Range 1 024..=1 048 576.
    pub relay_buffer_bytes: usize,
    /// A direction's buffer grows to fit the largest frame it has seen, up to this size, so
    /// a frame moves in one read and one write instead of one per buffer-full. Larger frames
    /// stream through in pieces. Default 65 536. At least `relay_buffer_bytes`, at most 16 MiB.
    pub relay_buffer_max_bytes: usize,
    /// Provided buffers in each worker's receive ring, which carries the multishot receives
    /// of plain TCP relay sockets on io_uring (one receive per socket for its whole life,
    /// instead of a poll and a read per message). A power of two, 16..=32 768; `0` turns
    /// the ring off (every relay then waits for readiness and reads, as on epoll).
    /// Default 512.
    pub recv_ring_buffers: u32,
    /// Size of each receive-ring buffer. A direction whose frames (header included) fit
    /// stays on the ring; one that sees a larger frame goes back to the relay buffers,
    /// which grow to move it in one read. 1 024..=65 536; default 4 096 (a page: the
    /// ring's memory is what its small messages touch, and an idle worker gives it back).
    pub recv_ring_buffer_bytes: usize,
    /// Connections one client (an IPv4 address, an IPv6 /64) may have open at once; past
    /// it the client gets 429 with `Retry-After: 1` (a TLS client: a close before the
    /// handshake). Counted over all workers. Default 0: off. At most 1 000 000. Reloadable.
    pub max_connections_per_ip: u64,
    /// New connections per second one client may open, sustained (a token bucket); past
    /// it, 429 with `Retry-After` saying when the bucket has a token again. Default 0:
    /// off. At most 100 000. Reloadable.
    pub handshake_rate_per_ip: u64,
    /// Connections one client may open at once before `handshake_rate_per_ip` applies
    /// (the bucket's size). Default 0: as many as the rate, one second's worth, so that a
    /// client reconnecting everything it had (several tabs, an app's several sockets) after
    /// a network change gets through while its sustained rate stays bounded. At most
    /// 100 000. Reloadable.
    pub handshake_burst_per_ip: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            backends: Vec::new(),
            algorithm: Algorithm::RoundRobin,
            hash_key: "ip".into(),
            slow_start_ms: 0,
            workers: 0,
            io_driver: IoDriver::Auto,
            backlog: 4096,
            defer_accept: true,
            stats_interval_secs: 10,
            upgrade_socket: String::new(),
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            health: Health::default(),
            keepalive: Keepalive::default(),
            admin: Admin::default(),
            access_log: AccessLog::default(),
            tls: Tls::default(),
            tls_backend: TlsBackend::default(),
            routes: Vec::new(),
            sticky: StickyMode::None,
            sticky_cookie: "wslb_backend".into(),
            sticky_secret: String::new(),
            rebalance: Rebalance::default(),
            extensions: Extensions::Pass,
            http: Http::default(),
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            client_handshake_ms: 10_000,
            backend_connect_ms: 3_000,
            backend_handshake_ms: 10_000,
            close_grace_ms: 5_000,
            shutdown_grace_ms: 10_000,
            removed_backend_drain_ms: 300_000,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 0,
            max_request_bytes: 8192,
            max_frame_bytes: 16 << 20,
            max_message_bytes: 64 << 20,
            relay_buffer_bytes: 16 << 10,
            relay_buffer_max_bytes: 64 << 10,
            recv_ring_buffers: 512,
            recv_ring_buffer_bytes: 4096,
            max_connections_per_ip: 0,
            handshake_rate_per_ip: 0,
            handshake_burst_per_ip: 0,
        }
    }
}

/// `wslb run`'s flags and where its settings come from: see `config/source.rs`.
mod source;
pub use source::{Overrides, Source};

/// The TLS sections: see `config/tls.rs`.
mod tls;
pub use tls::{CertFiles, ClientAuth, Tls, TlsBackend, UnknownSni};

/// `[http]`: see `config/http.rs`.
mod http;
pub use http::{Http, HttpSettings};

/// `[[routes]]`, sticky cookies and `[rebalance]`: see `config/routes.rs`.
mod routes;
pub use routes::{Rebalance, RebalanceSettings, RouteConfig, RouteFields, RouteHealth, StickyMode};

/// Reading a file with every schema problem named: see `config/schema.rs`.
mod schema;
pub use schema::Parsed;

/// The validated, resolved configuration: see `config/settings.rs`.
mod settings;
pub use settings::{
    AccessLogSettings, Fixed, KeepaliveSettings, PerIpLimits, Settings, available_cores,
};

/// A route's balancing and health checks, resolved: see `config/balancing.rs`.
mod balancing;
pub use balancing::{Algorithm, BackendSpec, Balancing, HashKey, HealthConfig, Probe};

/// One route, resolved, and the checks over the set: see `config/spec.rs`.
mod spec;
pub use spec::{HostMatch, RouteSpec, check_routes, prefix_matches, rebalances};

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub message: String,
    /// Where the field is written in the config file (`None`: it is not, or the settings
    /// did not come from a file).
    pub at: Option<Location>,
}

/// A place in the config file, both 1-based (the column counts characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            // The field first, as without a location (logs and scripts look for `field:`).
            Some(Location { line, column }) => write!(
                f,
                "{}: {} (line {line}, column {column})",
                self.field, self.message
            ),
            None => write!(f, "{}: {}", self.field, self.message),
        }
    }
}

/// `1 problem`, `2 problems`: a count and a noun, plural when it is not one.
pub fn count(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

/// Everything wrong with a config, or the reason it could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML for wslb: {message}")]
    Parse { path: String, message: String },
    #[error("{}", ProblemList(.0))]
    Invalid(Vec<Problem>),
}

struct ProblemList<'a>(&'a [Problem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "invalid configuration ({}):",
            count(self.0.len(), "problem")
        )?;
        for p in self.0 {
            writeln!(f, "  {p}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Reads a TOML file, naming every schema problem (no validation yet: flags may still
    /// override fields; [`Parsed::validate`] adds validation's problems to these).
    pub fn read(path: &Path) -> Result<Parsed, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        schema::parse(&text).map_err(|message| ConfigError::Parse {
            path: shown,
            message,
        })
    }

    /// Parses TOML text, stopping at the first schema problem (toml's message for it).
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }
}

#[cfg(test)]
mod tests;
