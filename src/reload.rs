//! Configuration reload (SIGHUP): a new backend list applied to the running instance, with
//! nobody's connection dropped.
//!
//! What a reload changes:
//! - **Routes.** `[[routes]]` may be added, changed and removed (`routes.rs`): a route
//!   with the host and prefix of a running one keeps its pool (counts, health, rotation);
//!   a new one starts with a new pool; a removed one takes no new request, and its
//!   backends' connections are retired like a removed backend's (below). Each route's
//!   health settings are part of it: the checker reads them again at once.
//! - **Backends.** Each route's pool snapshot is replaced (see `balancer/mod.rs`): added backends
//!   take new connections from each worker's next pick on; removed ones get no new
//!   connections. Connections already on a removed backend carry on untouched until they
//!   close, or until `timeouts.removed_backend_drain_ms` has passed; then each gets close
//!   1012 (service restart) on both sides at a frame boundary: each worker is sent the
//!   list of retired backends ([`Control::Retire`]) and closes their relays at the
//!   deadline (`worker::obey`). A removed backend added back before that is simply kept.
//! - **Balancing.** `algorithm`, `hash_key`, `slow_start_ms` and the backends' weights
//!   are part of the same snapshot: its selector is built for them, and each worker's next
//!   pick uses it. Open-connection counts live in the backends, which the reload keeps, so
//!   least-connections stays right across it.
//! - **TLS certificates.** The files are read again (by the validation that made `new`);
//!   if any changed, the instance's `tls::Certificates` get the new server config, which
//!   every worker's next handshake uses (so it has taken effect when the reload returns);
//!   open connections keep the session they have. A file that no
//!   longer loads fails the validation, so the old certificates stay.
//! - **Per-client limits.** `limits.max_connections_per_ip`, `handshake_rate_per_ip` and
//!   `handshake_burst_per_ip` are stored into the instance's `per_ip::PerIp`, which each
//!   worker's next accept reads (two words, not a message: no worker has anything to do
//!   when they change). Counts and buckets carry over.
//! - **Rebalancing** (`[rebalance]`): the rebalancer's next pass uses the new settings.
//! - **Sticky secret.** New sticky cookies are signed with the new `sticky_secret`; cookies
//!   signed with the previous one are still honoured (and replaced) until the secret
//!   changes again (`balancer/affinity.rs`), so rolling a secret out to several instances
//!   drops nobody's affinity. Without a secret, the key drawn at start stays.
//! - **Nothing else, yet.** Listen address, workers, timeouts, other limits and keepalive
//!   are fixed for the life of the process; a reload that changes them
//!   says which, in the log, and keeps running on the old values. A binary upgrade (a new
//!   process taking over the listening sockets, `handover.rs`) applies them without
//!   dropping anyone.
//!
//! The report ([`Applied`], and the "reload done" log line) names every setting that
//! differs from the running ones in exactly one of two lists: applied (each part's name is
//! added by the code that applies it, `reload/report.rs`) or needing a restart
//! (`Fixed::changes`). `reload/tests.rs` changes every field of `wslb.example.toml` and
//! holds the reload to that.
//!
//! An invalid new config (unreadable, bad TOML, any invalid field) changes nothing: the
//! caller logs every problem and the instance runs on as before.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::balancer::Change;
use crate::balancer::health::Rewake;
use crate::config::Settings;
use crate::control::{Broadcast, Control, Retirement};
use crate::listener::ConnectionLimit;
use crate::routes::{Router, RoutesChange};

/// What a reload did. Every setting that differs from the running ones is named (by its
/// config name, as in the TOML file) in exactly one of `applied` and `needs_restart`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// The backends added and removed, over every route (a removed route's backends
    /// among the removed).
    pub backends: Change,
    pub routes: RoutesChange,
    /// Settings that differed from the running ones and now run (see `reload/report.rs`
    /// for the names: `routes[1].algorithm`, `tls` for the whole `[tls]` table), sorted.
    pub applied: Vec<String>,
    /// Settings that differ from the running ones but need a restart (or a binary
    /// upgrade) to take effect, by config field name.
    pub needs_restart: Vec<&'static str>,
    /// The TLS certificates changed and the workers were sent the new ones.
    pub tls: bool,
}

/// Applies reloads to one running balancer.
#[derive(Debug)]
pub struct Reloader {
    running: Settings,
    /// The running settings' certificates.
    running_tls: crate::tls::Loaded,
    router: Arc<Router>,
    /// Tells the health checker the routes changed.
    health: Rewake,
    /// Gives the rebalancer its new settings.
    rebalance: crate::balancer::rebalance::Configure,
    workers: Broadcast,
    retired: Vec<Retirement>,
    /// The server config new TLS handshakes use (`None`: TLS off).
    certificates: Option<Arc<crate::tls::Certificates>>,
    /// The instance's admission, whose per-client limits a reload sets.
    admission: Arc<ConnectionLimit>,
}

impl Reloader {
    /// The running settings with their certificates, what a reload changes (the routes,
    /// the rebalancer, the workers, the server certificates, the admission's per-client
    /// limits) and the health checker to tell: one handle each, as `Instance` has them.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        running: &Settings,
        running_tls: crate::tls::Loaded,
        router: Arc<Router>,
        health: Rewake,
        rebalance: crate::balancer::rebalance::Configure,
        workers: Broadcast,
        certificates: Option<Arc<crate::tls::Certificates>>,
        admission: Arc<ConnectionLimit>,
    ) -> Self {
        Self {
            running: running.clone(),
            running_tls,
            router,
            health,
            rebalance,
            workers,
            retired: Vec::new(),
            certificates,
            admission,
        }
    }

    /// The TLS certificates in use (empty without TLS).
    pub fn certificates(&self) -> Vec<crate::tls::CertInfo> {
        self.running_tls
            .server
            .as_ref()
            .map_or_else(Vec::new, |t| t.certificates.clone())
    }

    /// Applies `new` (already validated, its certificates in `tls`) and logs what changed.
    pub fn apply(&mut self, new: &Settings, tls_new: crate::tls::Loaded) -> Applied {
        let needs_restart = self.running.fixed.changes(&new.fixed);
        let mut applied = Vec::new();
        for field in &needs_restart {
            tracing::warn!("reload: {field} changed; it takes effect only after a restart");
        }
        // Before `configure`, which builds every pool's snapshot with the keys.
        if self.router.set_sticky_secret(new.sticky_secret.as_deref()) {
            applied.push("sticky_secret".into());
            tracing::info!(
                "reload: sticky_secret changed; new sticky cookies are signed with it, and \
                 those signed with the previous secret are honoured until it changes again"
            );
        }
        let routes = self.apply_routes(new, &tls_new, &mut applied);
        let mut change = Change::default();
        for (_, c) in &routes.backends {
            change.added.extend(&c.added);
            change.removed.extend(&c.removed);
        }
        change.removed.extend(&routes.retired);
        self.apply_rebalance(new, &mut applied);
        self.apply_per_ip(new, &mut applied);
        self.retire(new, &change, &mut applied);
        let tls = self.apply_certificates(new, &tls_new, &mut applied);
        // Everything but the fixed part: a reloadable field added to `Settings` is applied
        // without anyone having to remember it here.
        self.running = Settings {
            fixed: self.running.fixed.clone(),
            ..new.clone()
        };
        self.running_tls = tls_new;
        applied.sort();
        applied.dedup();
        Applied {
            backends: change,
            routes,
            applied,
            needs_restart,
            tls,
        }
    }

    /// The routes and their pools (backends, balancing, health, the backends' TLS client
    /// config): the one step every worker sees through the router's next snapshot.
    fn apply_routes(
        &mut self,
        new: &Settings,
        tls_new: &crate::tls::Loaded,
        applied: &mut Vec<String>,
    ) -> RoutesChange {
        // Every route's spec and the backends' TLS go to the pools' next snapshots.
        report::routes(&self.running.routes, &new.routes, applied);
        // The loaded client config (names, file contents) or how it is used.
        if tls_new.backend != self.running_tls.backend
            || new.tls_backend != self.running.tls_backend
        {
            applied.push("tls_backend".into());
        }
        let routes = self.router.configure(&new.routes, tls_new.backend.clone());
        self.health.routes_changed();
        for name in &routes.added {
            tracing::info!(route = %name, "reload: route added");
        }
        for name in &routes.removed {
            tracing::info!(route = %name, "reload: route removed; it takes no new requests");
        }
        for r in &new.routes {
            let old = self.running.routes.iter().find(|o| o.name == r.name);
            if old.is_some_and(|o| o.balancing != r.balancing) {
                tracing::info!(
                    route = %r.name,
                    algorithm = r.balancing.algorithm.name(),
                    "reload: balancing changed; new connections use it"
                );
            }
            if old.is_some_and(|o| o.health != r.health) {
                tracing::info!(route = %r.name, "reload: health checks changed");
            }
        }
        routes
    }

    /// The rebalancer's settings: handed to the rebalancer thread, whose next pass reads
    /// them (no worker is told).
    fn apply_rebalance(&self, new: &Settings, applied: &mut Vec<String>) {
        if new.rebalance != self.running.rebalance {
            report::rebalance(self.running.rebalance, new.rebalance, applied);
            self.rebalance.set(new.rebalance);
            tracing::info!(
                enabled = new.rebalance.is_some(),
                "reload: rebalancing changed; its next pass uses it"
            );
        }
    }

    /// The per-client limits: stored in the admission every accept reads (no worker is
    /// told).
    fn apply_per_ip(&self, new: &Settings, applied: &mut Vec<String>) {
        if new.per_ip != self.running.per_ip {
            let l = new.per_ip;
            report::per_ip(self.running.per_ip, l, applied);
            self.admission.per_ip().configure(l);
            tracing::info!(
                max_connections_per_ip = l.max_connections,
                handshake_rate_per_ip = l.rate,
                handshake_burst_per_ip = l.burst,
                "reload: per-client limits changed; new connections are checked against them"
            );
        }
    }

    /// The removed backends join the retired list, with their close deadline, and every
    /// worker is sent the list (the workers own the connections to close).
    fn retire(&mut self, new: &Settings, change: &Change, applied: &mut Vec<String>) {
        // Read from `new` for the backends this reload removes (and later ones).
        if new.removed_backend_drain != self.running.removed_backend_drain {
            applied.push("timeouts.removed_backend_drain_ms".into());
        }
        let now = Instant::now();
        let deadline = new.removed_backend_drain.map(|d| now + d);
        let current: Vec<u32> = self
            .router
            .table()
            .routes
            .iter()
            .flat_map(|r| {
                r.pool
                    .snapshot()
                    .backends
                    .iter()
                    .map(|b| b.id)
                    .collect::<Vec<_>>()
            })
            .collect();
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
        self.workers.send(Control::Retire(self.retired.clone()));
    }

    /// The server certificates, swapped if they changed; whether they were.
    fn apply_certificates(
        &self,
        new: &Settings,
        tls_new: &crate::tls::Loaded,
        applied: &mut Vec<String>,
    ) -> bool {
        // Certificates: only while TLS stays on (turning it on or off needs a restart,
        // reported above as `tls`).
        if let (Some(old), Some(loaded), Some(certs)) = (
            &self.running_tls.server,
            &tls_new.server,
            &self.certificates,
        ) && (old != loaded || self.running.tls != new.tls)
        {
            for c in &loaded.certificates {
                tracing::info!(
                    file = %c.file.display(),
                    names = ?c.names,
                    "reload: TLS certificate loaded; new handshakes use it"
                );
            }
            certs.replace(loaded.config.clone());
            applied.push("tls".into());
            return true;
        }
        false
    }
}

/// The applied part of a reload's report: see `reload/report.rs`.
mod report;

#[cfg(test)]
mod tests;

/// Every field of the example file against the reload's report.
#[cfg(test)]
mod fields;
