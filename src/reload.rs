//! Configuration reload (SIGHUP): a new backend list applied to the running instance, with
//! nobody's connection dropped.
//!
//! What a reload changes:
//! - **Backends.** The pool's snapshot is replaced (see `balancer/mod.rs`): added backends
//!   take new connections from each worker's next pick on; removed ones get no new
//!   connections. Connections already on a removed backend carry on untouched until they
//!   close, or until `timeouts.removed_backend_drain_ms` has passed; then each gets close
//!   1012 (service restart) on both sides at a frame boundary, from its worker's registry
//!   (`relay/registry.rs`). A removed backend added back before that is simply kept.
//! - **Nothing else, yet.** Listen address, workers, timeouts, limits, keepalive and
//!   health settings are fixed for the life of the process; a reload that changes them
//!   says which, in the log, and keeps running on the old values. A binary upgrade (a new
//!   process taking over the listening sockets, `handover.rs`) applies them without
//!   dropping anyone.
//!
//! An invalid new config (unreadable, bad TOML, any invalid field) changes nothing: the
//! caller logs every problem and the instance runs on as before.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::balancer::{Change, Pool};
use crate::config::Settings;
use crate::relay::registry::{Retirement, Retirements};

/// What a reload did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub backends: Change,
    /// Settings that differ from the running ones but need a restart (or a binary
    /// upgrade) to take effect, by config field name.
    pub needs_restart: Vec<&'static str>,
}

/// Applies reloads to one running balancer.
#[derive(Debug)]
pub struct Reloader {
    running: Settings,
    pool: Arc<Pool>,
    retirements: Arc<Retirements>,
    retired: Vec<Retirement>,
}

impl Reloader {
    pub fn new(running: &Settings, pool: Arc<Pool>, retirements: Arc<Retirements>) -> Self {
        Self {
            running: running.clone(),
            pool,
            retirements,
            retired: Vec::new(),
        }
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Applies `new` (already validated) and logs what changed.
    pub fn apply(&mut self, new: &Settings) -> Applied {
        let needs_restart = fixed_fields_changed(&self.running, new);
        for field in &needs_restart {
            tracing::warn!("reload: {field} changed; it takes effect only after a restart");
        }
        let change = self.pool.set_backends(&new.backends);
        let now = Instant::now();
        let deadline = new.removed_backend_drain.map(|d| now + d);
        let current: Vec<u32> = self.pool.snapshot().backends.iter().map(|b| b.id).collect();
        // Back in the config: no longer retired. Long past their deadline: nothing left
        // to close (no new connection can reach a removed backend).
        self.retired.retain(|r| {
            !current.contains(&r.backend)
                && r.deadline.is_none_or(|d| now < d + Duration::from_secs(60))
        });
        for &(id, addr) in &change.removed {
            tracing::info!(
                backend = %addr,
                "reload: backend removed; its connections {}",
                match new.removed_backend_drain {
                    Some(d) => format!("get close 1012 in {} ms unless they end first", d.as_millis()),
                    None => "stay until they close".into(),
                }
            );
            self.retired.push(Retirement {
                backend: id,
                deadline,
            });
        }
        for addr in &change.added {
            tracing::info!(backend = %addr, "reload: backend added");
        }
        self.retirements.set(self.retired.clone());
        self.running.backends = new.backends.clone();
        self.running.removed_backend_drain = new.removed_backend_drain;
        Applied {
            backends: change,
            needs_restart,
        }
    }
}

/// The fields a reload cannot change in a running instance, that differ.
fn fixed_fields_changed(old: &Settings, new: &Settings) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut check = |name, differs: bool| {
        if differs {
            out.push(name);
        }
    };
    check("listen", old.listen != new.listen);
    check("workers", old.workers != new.workers);
    check("io_driver", old.io_driver != new.io_driver);
    check("backlog", old.backlog != new.backlog);
    check("upgrade_socket", old.upgrade_socket != new.upgrade_socket);
    check(
        "stats_interval_secs",
        old.stats_interval != new.stats_interval,
    );
    check(
        "timeouts.client_handshake_ms",
        old.client_handshake_timeout != new.client_handshake_timeout,
    );
    check(
        "timeouts.backend_connect_ms",
        old.backend_connect_timeout != new.backend_connect_timeout,
    );
    check(
        "timeouts.backend_handshake_ms",
        old.backend_handshake_timeout != new.backend_handshake_timeout,
    );
    check(
        "timeouts.close_grace_ms",
        old.close_grace != new.close_grace,
    );
    check(
        "timeouts.shutdown_grace_ms",
        old.shutdown_grace != new.shutdown_grace,
    );
    check(
        "limits.max_connections",
        old.max_connections != new.max_connections,
    );
    check(
        "limits.max_request_bytes",
        old.max_request_bytes != new.max_request_bytes,
    );
    check(
        "limits.max_frame_bytes",
        old.max_frame_bytes != new.max_frame_bytes,
    );
    check(
        "limits.max_message_bytes",
        old.max_message_bytes != new.max_message_bytes,
    );
    check(
        "limits.relay_buffer_bytes",
        old.relay_buffer_bytes != new.relay_buffer_bytes,
    );
    check(
        "limits.relay_buffer_max_bytes",
        old.relay_buffer_max_bytes != new.relay_buffer_max_bytes,
    );
    check("keepalive", old.keepalive != new.keepalive);
    check("health", old.health != new.health);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn settings(toml: &str) -> Settings {
        Config::from_toml(toml).unwrap().validate().unwrap()
    }

    #[test]
    fn backends_change_and_fixed_fields_are_named() {
        let old = settings(r#"backends = ["127.0.0.1:9001", "127.0.0.1:9002"]"#);
        let pool = Arc::new(Pool::new(old.backends.clone(), 3));
        let ret = Arc::new(Retirements::default());
        let mut r = Reloader::new(&old, pool.clone(), ret);
        let new = settings(
            r#"
            backends = ["127.0.0.1:9002", "127.0.0.1:9003"]
            listen = "127.0.0.1:8081"
            [timeouts]
            removed_backend_drain_ms = 1000
            [keepalive]
            ping_interval_ms = 0
            "#,
        );
        let applied = r.apply(&new);
        assert_eq!(
            applied.backends.added,
            vec!["127.0.0.1:9003".parse().unwrap()]
        );
        assert_eq!(
            applied.backends.removed,
            vec![(0, "127.0.0.1:9001".parse().unwrap())]
        );
        assert_eq!(applied.needs_restart, vec!["listen", "keepalive"]);
        assert_eq!(r.retired.len(), 1);
        assert!(r.retired[0].deadline.is_some());
        // 9001 added back: no longer retired (9003, removed now, is).
        let back = settings(r#"backends = ["127.0.0.1:9001", "127.0.0.1:9002"]"#);
        r.apply(&back);
        let ids: Vec<u32> = r.retired.iter().map(|r| r.backend).collect();
        assert_eq!(ids, [2]);
    }
}
