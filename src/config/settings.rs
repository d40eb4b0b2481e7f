//! [`Config::validate`]: every field checked (all problems reported at once), addresses
//! resolved, defaults that depend on the machine (cores, descriptor limit) filled in.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use super::{Config, ConfigError, IoDriver, Problem, Tls, TlsBackend};

/// The validated, resolved configuration the workers run on: the part a reload may change
/// (the fields here) and the part it may not ([`Fixed`], read through `Deref` as if its
/// fields were here, so every reader writes `settings.listen`).
///
/// A field added here must be applied by `Reloader::apply` (`reload.rs`), which names what
/// it applied in the reload's report; a field added to [`Fixed`] is compared by
/// [`Fixed::changes`], which names it in the "needs a restart" part of the report. A test
/// (`reload/tests.rs`) changes every field of `wslb.example.toml` in a reload and fails
/// for one that is in neither.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The routes (the default one, from the top-level `backends`, first), each with its
    /// backends, balancing and health settings.
    pub routes: Vec<super::RouteSpec>,
    /// `[rebalance]` (`None`: off).
    pub rebalance: Option<super::RebalanceSettings>,
    /// `sticky_secret` (`None`: the instance draws a key at start and keeps it).
    pub sticky_secret: Option<Box<[u8]>>,
    /// Things worth saying that are not errors (`wslb check` prints them, a start logs them).
    pub warnings: Vec<String>,
    /// `[tls]`: the certificate files TLS termination serves (`None`: none is named, TLS
    /// is off). Loaded by `tls::load`, not here: this module reads no certificate.
    /// Reloadable: a reload reads the files again and the workers' next handshakes use them.
    pub tls: Option<Tls>,
    /// `[tls_backend]`: how backends reached over TLS are verified and what they are
    /// shown (`None`: no backend is reached over TLS).
    pub tls_backend: Option<TlsBackend>,
    /// `None`: removed backends' connections stay until they close.
    pub removed_backend_drain: Option<Duration>,
    /// `limits.max_connections_per_ip`, `handshake_rate_per_ip` and `handshake_burst_per_ip`
    /// (resolved: a burst of 0 is the rate). Applied by a reload to the instance's
    /// `per_ip::PerIp`, which each accept reads.
    pub per_ip: PerIpLimits,
    pub fixed: Fixed,
}

impl std::ops::Deref for Settings {
    type Target = Fixed;
    fn deref(&self) -> &Fixed {
        &self.fixed
    }
}

/// Defines [`Fixed`] and the table of its fields' config names from one list, so that a
/// field cannot be added without the name a reload reports it by (a table's name, `http`,
/// stands for each of its fields).
macro_rules! fixed_settings {
    ($( $(#[$doc:meta])* $field:ident: $ty:ty = $config:literal, )*) => {
        /// The settings fixed for the life of the process: a reload that changes one logs
        /// its config name and keeps the running value (a binary upgrade applies it).
        #[derive(Debug, Clone, PartialEq)]
        pub struct Fixed {
            $( $(#[$doc])* pub $field: $ty, )*
        }

        impl Fixed {
            /// The config names (as in the TOML file) of the fields that differ.
            pub fn changes(&self, new: &Fixed) -> Vec<&'static str> {
                let mut out = Vec::new();
                $( if self.$field != new.$field { out.push($config); } )*
                out
            }
        }
    };
}

fixed_settings! {
    listen: SocketAddr = "listen",
    workers: usize = "workers",
    io_driver: IoDriver = "io_driver",
    backlog: u32 = "backlog",
    /// Seconds, `None` when off.
    defer_accept: Option<u32> = "defer_accept",
    /// `None`: no binary upgrades.
    upgrade_socket: Option<std::path::PathBuf> = "upgrade_socket",
    /// `None` when stats lines are off.
    stats_interval: Option<Duration> = "stats_interval_secs",
    client_handshake_timeout: Duration = "timeouts.client_handshake_ms",
    backend_connect_timeout: Duration = "timeouts.backend_connect_ms",
    backend_handshake_timeout: Duration = "timeouts.backend_handshake_ms",
    close_grace: Duration = "timeouts.close_grace_ms",
    shutdown_grace: Duration = "timeouts.shutdown_grace_ms",
    /// Resolved: never 0.
    max_connections: usize = "limits.max_connections",
    max_request_bytes: usize = "limits.max_request_bytes",
    /// `u64::MAX` when unlimited.
    max_frame_bytes: u64 = "limits.max_frame_bytes",
    /// `u64::MAX` when unlimited.
    max_message_bytes: u64 = "limits.max_message_bytes",
    relay_buffer_bytes: usize = "limits.relay_buffer_bytes",
    relay_buffer_max_bytes: usize = "limits.relay_buffer_max_bytes",
    /// 0: no receive ring.
    recv_ring_buffers: u16 = "limits.recv_ring_buffers",
    recv_ring_buffer_bytes: u32 = "limits.recv_ring_buffer_bytes",
    keepalive: KeepaliveSettings = "keepalive",
    /// `None`: no admin server.
    admin: Option<SocketAddr> = "admin.listen",
    /// Read by validation only (a remote `admin.listen` needs it), so fixed with it.
    admin_allow_remote: bool = "admin.allow_remote",
    /// `None`: no access log.
    access_log: Option<AccessLogSettings> = "access_log",
    /// Whether the listener speaks TLS (its certificates are reloadable, this is not).
    tls_enabled: bool = "tls",
    /// Plain HTTP beside upgrades.
    http: super::HttpSettings = "http",
}

/// The per-client limits as configured; `0` turns one off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PerIpLimits {
    /// Connections one client may have open at once.
    pub max_connections: u32,
    /// New connections (upgrades) per second, sustained.
    pub rate: u32,
    /// Connections one client may open at once before `rate` applies; resolved (at least 1
    /// while `rate` is on).
    pub burst: u32,
}

/// `[keepalive]`, resolved (both in milliseconds, `0` = off).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeepaliveSettings {
    /// A peer quiet for this long gets a WebSocket ping from wslb.
    pub ping_interval_ms: u32,
    /// With pings: a peer quiet this long (it did not answer the ping) is dead. Without
    /// pings: a connection with no frame in either direction this long is closed.
    pub idle_timeout_ms: u32,
}

/// Where and how the access log is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogSettings {
    pub format: super::AccessLogFormat,
    /// `None`: stderr.
    pub path: Option<std::path::PathBuf>,
}

/// Keepalive times are kept in a 32-bit millisecond clock; a day is plenty (and for slow
/// start, more than plenty).
pub(super) const MAX_KEEPALIVE_MS: u64 = 86_400_000;

/// Descriptors this process may open (the soft RLIMIT_NOFILE). Only reads it: `wslb`
/// raises the soft limit to the hard one at startup (`main.rs`), not when a config is
/// validated, so `wslb check` and tests change nothing.
fn nofile_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit};
    getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft)
}

/// The default connection limit: two descriptors per proxied connection, 64 kept for
/// listeners, io_uring rings, logs and the like.
fn connections_for_descriptors() -> usize {
    let n = nofile_limit().min(usize::MAX as u64 / 2) as usize;
    (n.saturating_sub(64) / 2).max(1)
}

impl Config {
    /// Checks every field and resolves addresses. Returns all problems, not just the first,
    /// in the order of the checks below (each section's own function).
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let mut problems = Vec::new();
        let mut problem = |field: &str, message: String| {
            problems.push(Problem {
                field: field.to_string(),
                message,
                at: None,
            })
        };
        let listen = resolve(&self.listen).map_err(|e| problem("listen", e)).ok();
        let admin = self.admin_address(&mut problem);
        let routes = self.validate_routes(&mut problem);
        let http = self.http.validate(&mut problem);
        self.check_process(&mut problem);
        self.check_timeouts(&mut problem);
        self.check_buffers(&mut problem);
        self.check_per_ip(&mut problem);
        // Checked here (it needs no file); the files themselves are read by `tls::load`.
        if !self.tls.enabled() && !self.tls.client_ca.is_empty() {
            problem(
                "tls.client_ca",
                "set, but no certificate is configured (tls.cert and tls.key)".into(),
            );
        }
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }
        let fixed = self.fixed(listen.expect("checked above"), admin, http);
        Ok(self.settings(routes, fixed))
    }

    /// `admin.listen` resolved (`None`: off, or refused). Separate because it is the one
    /// address with a policy of its own: not loopback needs `admin.allow_remote`.
    fn admin_address(&self, problem: &mut dyn FnMut(&str, String)) -> Option<SocketAddr> {
        match self.admin.listen.as_str() {
            "" => None,
            a => match resolve(a) {
                Ok(addr) if !addr.ip().is_loopback() && !self.admin.allow_remote => {
                    problem(
                        "admin.listen",
                        format!(
                            "{a:?} is not a loopback address; the admin server has no \
                             authentication, so set admin.allow_remote = true to expose it"
                        ),
                    );
                    None
                }
                Ok(addr) => Some(addr),
                Err(e) => {
                    problem("admin.listen", e);
                    None
                }
            },
        }
    }

    /// The process's own shape: workers, the upgrade socket's path, the listen backlog.
    fn check_process(&self, problem: &mut dyn FnMut(&str, String)) {
        if self.workers > 1024 {
            problem(
                "workers",
                format!("{} is more than 1024; use 0 for one per core", self.workers),
            );
        }
        // sun_path holds 108 bytes with the terminating NUL.
        if self.upgrade_socket.len() > 107 {
            problem(
                "upgrade_socket",
                format!(
                    "{:?} is longer than a Unix socket path may be (107 bytes)",
                    self.upgrade_socket
                ),
            );
        }
        if self.backlog == 0 {
            problem("backlog", "must be at least 1".into());
        }
    }

    /// `[timeouts]` and `[keepalive]`: the times, each in its range and the keepalive pair
    /// in order.
    fn check_timeouts(&self, problem: &mut dyn FnMut(&str, String)) {
        let t = &self.timeouts;
        for (name, v) in [
            ("timeouts.client_handshake_ms", t.client_handshake_ms),
            ("timeouts.backend_connect_ms", t.backend_connect_ms),
            ("timeouts.backend_handshake_ms", t.backend_handshake_ms),
            ("timeouts.close_grace_ms", t.close_grace_ms),
        ] {
            if v == 0 {
                problem(name, "must be at least 1 ms".into());
            }
        }
        let k = &self.keepalive;
        for (name, v) in [
            ("keepalive.ping_interval_ms", k.ping_interval_ms),
            ("keepalive.idle_timeout_ms", k.idle_timeout_ms),
        ] {
            if v > MAX_KEEPALIVE_MS {
                problem(name, format!("{v} is more than a day ({MAX_KEEPALIVE_MS})"));
            }
        }
        if k.ping_interval_ms > 0
            && k.idle_timeout_ms > 0
            && k.idle_timeout_ms <= k.ping_interval_ms
        {
            problem(
                "keepalive.idle_timeout_ms",
                format!(
                    "{} must be longer than ping_interval_ms ({}): a pinged peer needs time to answer",
                    k.idle_timeout_ms, k.ping_interval_ms
                ),
            );
        }
    }

    /// `[limits]`' sizes: frames and messages, the request head, the relay's buffers and
    /// the receive ring's.
    fn check_buffers(&self, problem: &mut dyn FnMut(&str, String)) {
        let l = &self.limits;
        if l.max_frame_bytes > 0
            && l.max_message_bytes > 0
            && l.max_message_bytes < l.max_frame_bytes
        {
            problem(
                "limits.max_message_bytes",
                format!(
                    "{} is less than max_frame_bytes ({}); a message is at least one frame",
                    l.max_message_bytes, l.max_frame_bytes
                ),
            );
        }
        if !(1024..=65536).contains(&l.max_request_bytes) {
            problem(
                "limits.max_request_bytes",
                format!("{} is outside 1024..=65536", l.max_request_bytes),
            );
        }
        if !(1024..=1 << 20).contains(&l.relay_buffer_bytes) {
            problem(
                "limits.relay_buffer_bytes",
                format!("{} is outside 1024..=1048576", l.relay_buffer_bytes),
            );
        }
        if l.recv_ring_buffers != 0
            && (!l.recv_ring_buffers.is_power_of_two()
                || !(16..=1 << 15).contains(&l.recv_ring_buffers))
        {
            problem(
                "limits.recv_ring_buffers",
                format!(
                    "{} is not 0 or a power of two in 16..=32768",
                    l.recv_ring_buffers
                ),
            );
        }
        if !(1024..=64 << 10).contains(&l.recv_ring_buffer_bytes) {
            problem(
                "limits.recv_ring_buffer_bytes",
                format!("{} is outside 1024..=65536", l.recv_ring_buffer_bytes),
            );
        }
        if !(l.relay_buffer_bytes..=16 << 20).contains(&l.relay_buffer_max_bytes) {
            problem(
                "limits.relay_buffer_max_bytes",
                format!(
                    "{} is outside relay_buffer_bytes ({})..=16777216",
                    l.relay_buffer_max_bytes, l.relay_buffer_bytes
                ),
            );
        }
    }

    /// `[limits]`' per-client fields: each in its range, and a burst only with a rate.
    fn check_per_ip(&self, problem: &mut dyn FnMut(&str, String)) {
        let l = &self.limits;
        for (name, v, max) in [
            (
                "limits.max_connections_per_ip",
                l.max_connections_per_ip,
                1_000_000,
            ),
            (
                "limits.handshake_rate_per_ip",
                l.handshake_rate_per_ip,
                100_000,
            ),
            (
                "limits.handshake_burst_per_ip",
                l.handshake_burst_per_ip,
                100_000,
            ),
        ] {
            if v > max {
                problem(name, format!("{v} is more than {max}"));
            }
        }
        if l.handshake_burst_per_ip > 0 && l.handshake_rate_per_ip == 0 {
            problem(
                "limits.handshake_burst_per_ip",
                "a burst without handshake_rate_per_ip limits nothing".into(),
            );
        }
    }

    /// The fixed settings, resolved from fields already checked (no problem can arise
    /// here): machine-dependent defaults filled in, `0 = unlimited` turned into a bound.
    fn fixed(
        &self,
        listen: SocketAddr,
        admin: Option<SocketAddr>,
        http: super::HttpSettings,
    ) -> Fixed {
        let (t, k, l) = (&self.timeouts, &self.keepalive, &self.limits);
        Fixed {
            listen,
            workers: if self.workers == 0 {
                available_cores()
            } else {
                self.workers
            },
            io_driver: self.io_driver,
            backlog: self.backlog,
            defer_accept: self.defer_accept.then(|| {
                self.timeouts
                    .client_handshake_ms
                    .div_ceil(1000)
                    .clamp(1, 3600) as u32
            }),
            upgrade_socket: (!self.upgrade_socket.is_empty())
                .then(|| self.upgrade_socket.clone().into()),
            stats_interval: (self.stats_interval_secs > 0)
                .then(|| Duration::from_secs(self.stats_interval_secs)),
            client_handshake_timeout: Duration::from_millis(t.client_handshake_ms),
            backend_connect_timeout: Duration::from_millis(t.backend_connect_ms),
            backend_handshake_timeout: Duration::from_millis(t.backend_handshake_ms),
            close_grace: Duration::from_millis(t.close_grace_ms),
            shutdown_grace: Duration::from_millis(t.shutdown_grace_ms),
            max_connections: match l.max_connections {
                0 => connections_for_descriptors(),
                n => n,
            },
            max_request_bytes: l.max_request_bytes,
            max_frame_bytes: if l.max_frame_bytes == 0 {
                u64::MAX
            } else {
                l.max_frame_bytes
            },
            max_message_bytes: if l.max_message_bytes == 0 {
                u64::MAX
            } else {
                l.max_message_bytes
            },
            keepalive: KeepaliveSettings {
                ping_interval_ms: k.ping_interval_ms as u32,
                idle_timeout_ms: k.idle_timeout_ms as u32,
            },
            relay_buffer_bytes: l.relay_buffer_bytes,
            relay_buffer_max_bytes: l.relay_buffer_max_bytes,
            recv_ring_buffers: l.recv_ring_buffers.min(1 << 15) as u16,
            recv_ring_buffer_bytes: l.recv_ring_buffer_bytes.min(64 << 10) as u32,
            admin,
            admin_allow_remote: self.admin.allow_remote,
            access_log: self.access_log.enabled.then(|| AccessLogSettings {
                format: self.access_log.format,
                path: (!self.access_log.path.is_empty())
                    .then(|| self.access_log.path.clone().into()),
            }),
            tls_enabled: self.tls.enabled(),
            http,
        }
    }

    /// The reloadable settings around `fixed`, from the validated routes and fields
    /// already checked.
    fn settings(&self, routes: super::routes::Validated, fixed: Fixed) -> Settings {
        let (t, l) = (&self.timeouts, &self.limits);
        // Backends written `wss://`, or all with `[tls_backend] enabled`: each carries its
        // name (`BackendSpec::tls`); `tls::load` loads the client config they share.
        let any_tls = routes
            .routes
            .iter()
            .flat_map(|r| &r.backends)
            .any(|b| b.tls.is_some());
        Settings {
            routes: routes.routes,
            rebalance: routes.rebalance,
            sticky_secret: routes.sticky_secret,
            warnings: routes.warnings,
            tls: self.tls.enabled().then(|| self.tls.clone()),
            tls_backend: any_tls.then(|| self.tls_backend.clone()),
            removed_backend_drain: (t.removed_backend_drain_ms > 0)
                .then(|| Duration::from_millis(t.removed_backend_drain_ms)),
            per_ip: PerIpLimits {
                max_connections: l.max_connections_per_ip as u32,
                rate: l.handshake_rate_per_ip as u32,
                burst: match l.handshake_burst_per_ip {
                    0 => l.handshake_rate_per_ip as u32,
                    b => b as u32,
                },
            },
            fixed,
        }
    }
}

/// Number of cores this process may run on (respects taskset/cgroup cpusets).
pub fn available_cores() -> usize {
    core_affinity::get_core_ids()
        .map(|c| c.len())
        .filter(|&n| n > 0)
        .unwrap_or(1)
}

/// The host of `host:port` (`[v6]:port` without the brackets), as a TLS name.
pub(super) fn host_of(hostport: &str) -> String {
    let host = hostport.rsplit_once(':').map_or(hostport, |(h, _)| h);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_string()
}

/// `ip:port` directly, or `host:port` through the system resolver (once, at startup).
pub(super) fn resolve(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if !s.contains(':') {
        return Err(format!("{s:?} is not host:port (the port is missing)"));
    }
    match s.to_socket_addrs() {
        Ok(mut it) => it
            .next()
            .ok_or_else(|| format!("{s:?} resolved to no address")),
        Err(e) => Err(format!("{s:?} is not a valid host:port: {e}")),
    }
}
