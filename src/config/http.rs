//! `[http]`: plain HTTP requests beside WebSocket upgrades (see `http/`).

use std::time::Duration;

use serde::Deserialize;

/// `[http]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// Proxy requests that are not WebSocket upgrades (Socket.IO and SignalR polling, a
    /// health page, API calls) to the backend their route and affinity choose. Default
    /// true; false answers them 426 as before.
    pub enabled: bool,
    /// A client connection with no request in flight is closed after this long. Default
    /// 60 000 ms.
    pub keepalive_ms: u64,
    /// Longest wait for the next bytes of a body, either way (a slow client or backend is
    /// cut after it). Default 30 000 ms.
    pub body_timeout_ms: u64,
    /// Largest request body (413 over it). Default 100 MiB; 0 = no limit.
    pub max_body_bytes: u64,
    /// Idle backend connections kept per worker for reuse. Default 32; 0 = none.
    pub pool_size: usize,
    /// An idle backend connection older than this is not reused. Default 15 000 ms.
    pub pool_idle_ms: u64,
}

impl Default for Http {
    fn default() -> Self {
        Self {
            enabled: true,
            keepalive_ms: 60_000,
            body_timeout_ms: 30_000,
            max_body_bytes: 100 << 20,
            pool_size: 32,
            pool_idle_ms: 15_000,
        }
    }
}

/// `[http]`, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpSettings {
    pub enabled: bool,
    pub keepalive: Duration,
    pub body_timeout: Duration,
    /// `u64::MAX`: no limit.
    pub max_body_bytes: u64,
    pub pool_size: usize,
    pub pool_idle: Duration,
}

impl Http {
    pub(super) fn validate(&self, problem: &mut dyn FnMut(&str, String)) -> HttpSettings {
        for (name, v) in [
            ("http.keepalive_ms", self.keepalive_ms),
            ("http.body_timeout_ms", self.body_timeout_ms),
            ("http.pool_idle_ms", self.pool_idle_ms),
        ] {
            if !(1..=86_400_000).contains(&v) {
                problem(name, format!("{v} is outside 1..=86400000"));
            }
        }
        if self.pool_size > 10_000 {
            problem(
                "http.pool_size",
                format!("{} is more than 10000", self.pool_size),
            );
        }
        HttpSettings {
            enabled: self.enabled,
            keepalive: Duration::from_millis(self.keepalive_ms),
            body_timeout: Duration::from_millis(self.body_timeout_ms),
            max_body_bytes: if self.max_body_bytes == 0 {
                u64::MAX
            } else {
                self.max_body_bytes
            },
            pool_size: self.pool_size,
            pool_idle: Duration::from_millis(self.pool_idle_ms),
        }
    }
}
