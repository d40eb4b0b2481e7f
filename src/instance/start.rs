//! The steps of starting an instance (`Instance::launch`), in the order it takes them:
//! the route table, admission, the listening sockets' duplicates, the access log, the
//! workers, the rebalancer and the admin server, each with its log lines.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use crate::access_log::AccessLog;
use crate::admin::{self, AdminServer, AdminView};
use crate::balancer::affinity;
use crate::config::Settings;
use crate::control::Broadcast;
use crate::listener::{self, ConnectionLimit};
use crate::metrics::WorkerStats;
use crate::routes::Router;
use crate::worker::{self, StartError, WorkerEnv, Workers};

use super::Handle;

/// What the workers share, built before they start: [`spawn_workers`] gives each worker a
/// handle to every part, then the instance's `Reloader` and [`Handle`] take them over.
pub(super) struct Parts {
    pub router: Arc<Router>,
    pub admission: Arc<ConnectionLimit>,
    /// Each worker's counters, in worker order.
    pub stats: Vec<Arc<WorkerStats>>,
    pub access_log: Option<Arc<AccessLog>>,
    /// The server config new TLS handshakes use (`None`: TLS off).
    pub certificates: Option<Arc<crate::tls::Certificates>>,
}

/// The router with the settings' routes, and the start's log lines about them (the routes,
/// the config's warnings, an unverified backend TLS).
pub(super) fn route_table(settings: &Settings, tls: &crate::tls::Loaded) -> Arc<Router> {
    // Sticky-cookie tokens: signed with the configured secret, or a key drawn now and
    // kept for the life of the process (reloads included; a reload may change the
    // secret, see `affinity.rs`).
    let keys = affinity::Keyring::new(settings.sticky_secret.as_deref());
    let router = Arc::new(Router::new(keys));
    router.configure(&settings.routes, tls.backend.clone());
    for w in &settings.warnings {
        tracing::warn!("{w}");
    }
    for r in &settings.routes {
        tracing::info!(
            route = %r.name,
            host = %r.host.as_config(),
            path_prefix = %r.path_prefix,
            backends = r.backends.len(),
            algorithm = r.balancing.algorithm.name(),
            "route"
        );
    }
    if let Some(t) = &tls.backend
        && t.insecure()
    {
        tracing::warn!(
            "tls_backend.insecure_skip_verify is on: backends' certificates are NOT \
             verified; anyone on the path can impersonate them (for tests only)"
        );
    }
    router
}

/// The connection limits every accept checks (the instance's, and each client's), and
/// their log lines.
pub(super) fn admission(settings: &Settings) -> Arc<ConnectionLimit> {
    let admission = ConnectionLimit::new(settings.max_connections);
    admission.per_ip().configure(settings.per_ip);
    tracing::info!("connection limit {}", settings.max_connections);
    let p = settings.per_ip;
    if p.max_connections > 0 || p.rate > 0 {
        tracing::info!(
            "per-client limits: {} connections, {} new per second (burst {}); 0 = off",
            p.max_connections,
            p.rate,
            p.burst
        );
    }
    admission
}

/// The access log the settings ask for (`None`: off), opened once and shared by the
/// workers.
pub(super) fn open_access_log(settings: &Settings) -> Result<Option<Arc<AccessLog>>, StartError> {
    match &settings.access_log {
        None => Ok(None),
        Some(a) => Ok(Some(Arc::new(
            AccessLog::open(a.format, a.path.clone()).map_err(|source| StartError::Setup {
                what: "opening the access log",
                source,
            })?,
        ))),
    }
}

/// One balancer worker per listening socket: each builds its environment from `parts` on
/// its own thread, runs its timers, accepts until told to stop and serves each
/// connection. Separate because it is the one part of the start that runs on the workers.
pub(super) fn spawn_workers(
    settings: &Settings,
    listeners: Vec<std::net::TcpListener>,
    parts: &Parts,
) -> Result<Workers, StartError> {
    let (settings, router) = (Arc::new(settings.clone()), parts.router.clone());
    let (stats, limit) = (parts.stats.clone(), parts.admission.clone());
    let access_log = parts.access_log.clone();
    let certificates = parts.certificates.clone();
    worker::spawn(
        "balancer",
        listeners,
        settings.io_driver,
        move |id, l, inbox| {
            let stats = stats[id].clone();
            let mut env = WorkerEnv::new(id, &settings, router.clone(), stats.clone());
            env.access_log = access_log.clone();
            env.tls = certificates.clone().map(crate::tls::LocalCertificates::new);
            env.relay.recv = worker::recv_ring(id, &settings, stats.clone());
            let tls_enabled = settings.tls_enabled;
            let env = Rc::new(env);
            let limit = limit.clone();
            async move {
                let keepalive = env.clone();
                monoio::spawn(async move { keepalive.relay.registry.keepalive_timer().await });
                monoio::spawn(worker::trim_when_idle(env.clone()));
                if let Some(r) = env.relay.recv.clone() {
                    monoio::spawn(r.run());
                }
                let accepting = monoio::io::Canceller::new();
                let conn_env = env.clone();
                let accept = monoio::spawn(listener::accept_loop(
                    l,
                    limit,
                    accepting.handle(),
                    !tls_enabled,
                    move |stream, peer, permit| {
                        let open = (stats.track(), permit);
                        let tls = conn_env.tls.as_ref().map(|t| t.current());
                        crate::connection::serve(stream, peer, conn_env.clone(), open, tls)
                    },
                ));
                worker::obey(inbox, &env.relay.registry, accepting).await;
                // Stopped: the accept is cancelled; its end drops the listener.
                accept.await;
                if let Some(r) = &env.relay.recv {
                    r.retire();
                }
            }
        },
    )
}

/// The rebalancer thread, started even with `[rebalance]` off so that a reload can turn
/// it on.
pub(super) fn spawn_rebalancer(
    settings: &Settings,
    router: &Arc<Router>,
    workers: &Broadcast,
) -> Result<crate::balancer::rebalance::Rebalancer, StartError> {
    let rebalancer = crate::balancer::rebalance::Rebalancer::spawn(
        settings.rebalance,
        router.clone(),
        workers.clone(),
    )
    .map_err(|source| StartError::Setup {
        what: "starting the rebalancer",
        source,
    })?;
    if let Some(r) = &settings.rebalance {
        tracing::info!(
            tolerance = r.tolerance,
            max_per_second = r.max_per_second,
            "rebalancing on"
        );
    }
    Ok(rebalancer)
}

/// The admin server on `addr` (`None`: off), last of the start: it serves `handle`.
/// `taken_over`: see `Instance::launch`.
pub(super) fn start_admin(
    addr: Option<SocketAddr>,
    taken_over: bool,
    handle: &Handle,
) -> Result<Option<AdminServer>, StartError> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let bound = if taken_over {
        listener::bind_shared(addr, 1, 128)
    } else {
        listener::bind(addr, 1, 128)
    };
    let l = bound
        .map_err(StartError::Admin)?
        .pop()
        .expect("one socket asked for");
    let view: Arc<dyn AdminView> = Arc::new(handle.clone());
    let admin = admin::spawn_on(l, view).map_err(|source| StartError::Setup {
        what: "starting the admin server",
        source,
    })?;
    Ok(Some(admin))
}

/// Duplicates of the listening sockets, kept for the life of the instance (the drain shuts
/// them down, a binary upgrade hands them over) while the workers own the originals.
pub(super) fn duplicate(
    listeners: &[std::net::TcpListener],
) -> Result<Vec<std::net::TcpListener>, StartError> {
    listeners
        .iter()
        .map(|l| l.try_clone())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| StartError::Setup {
            what: "duplicating the listening sockets",
            source,
        })
}

/// The start's log lines about what the workers now serve: the certificates and their
/// warnings, then the address.
pub(super) fn log_serving(tls: &crate::tls::Loaded, local_addr: SocketAddr) {
    match &tls.server {
        Some(t) => {
            for c in &t.certificates {
                tracing::info!(file = %c.file.display(), names = ?c.names, "TLS certificate");
            }
            for w in &t.warnings {
                tracing::warn!("{w}");
            }
            tracing::info!("balancing {local_addr} (TLS)");
        }
        None => tracing::info!("balancing {local_addr}"),
    }
}
