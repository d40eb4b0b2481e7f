//! wslb: a WebSocket load balancer for Linux, one pinned io_uring runtime per core.
//!
//! # Layout
//! One connection meets the files in this order:
//!
//! ```text
//!  client ──TCP──> listener.rs    SO_REUSEPORT socket per worker (worker.rs: pinned thread,
//!                    │            monoio runtime on io_uring, epoll fallback), accept loop
//!                    ▼
//!                connection.rs    one connection's life, top to bottom:
//!                    │  handshake.rs   parse + validate the Upgrade (httparse), rewrite it
//!                    │  balancer/      round-robin pick over the backend pool, failover
//!                    │  handshake.rs   forward to the backend, relay its 101
//!                    ▼
//!                relay/           two pumps (client->backend, backend->client): read with
//!                    │            io_uring, walk frame headers (frame.rs), write the same
//!                    ▼            bytes on; close handshake and teardown
//!  backend <──TCP──┘
//! ```
//!
//! `config.rs` turns the TOML file and flags into validated `Settings`; `buffers.rs` is
//! each worker's pool of relay buffers (an idle connection holds none); `balancer/health.rs`
//! checks backends from one thread; `drain.rs` runs the SIGTERM/SIGINT drain, `reload.rs`
//! the SIGHUP reload and `handover.rs` the binary upgrade; `relay/registry.rs` is each
//! worker's registry of open relays (drain, keepalive pings, idle and retired-backend
//! closes, all from one timer task per worker); `metrics.rs`
//! keeps per-worker counters and the stats line; `echo.rs` is the built-in echo backend
//! used by tests, benches and `wslb demo`.
#![deny(unsafe_code)]

pub mod admin;
pub mod balancer;
pub mod buffers;
pub mod config;
pub mod connection;
pub mod drain;
pub mod echo;
pub mod frame;
pub mod handover;
pub mod handshake;
pub mod listener;
pub mod metrics;
pub mod relay;
pub mod reload;
pub mod stream;
pub mod worker;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;

use config::{IoDriver, Settings};
use metrics::WorkerStats;
use worker::{StartError, WorkerEnv, WorkerInfo};

/// A running set of workers (a balancer or an echo backend).
pub struct Running {
    /// The address actually bound (the real port when 0 was asked for).
    pub local_addr: SocketAddr,
    pub workers: Vec<WorkerInfo>,
    /// Each worker's counters, in worker order.
    pub stats: Vec<Arc<WorkerStats>>,
    threads: Vec<JoinHandle<()>>,
    drainer: Option<drain::Drainer>,
    /// The balancer's pool and what a reload needs; `None` for the echo backend.
    reload: Option<reload::Reloader>,
}

impl Running {
    /// Each backend's health (up or down), in config order; empty for the echo backend.
    pub fn backends_up(&self) -> Vec<bool> {
        self.reload.as_ref().map_or(Vec::new(), |r| {
            r.pool()
                .snapshot()
                .backends
                .iter()
                .map(|b| b.health.is_up())
                .collect()
        })
    }

    /// Applies a new configuration to the running balancer (SIGHUP): see `reload.rs`.
    /// `None` for the echo backend.
    pub fn reload(&mut self, new: &Settings) -> Option<reload::Applied> {
        self.reload.as_mut().map(|r| r.apply(new))
    }

    /// Duplicates of the listening sockets, to hand over to a new process (binary upgrade).
    pub fn listening_sockets(&self) -> std::io::Result<Vec<std::net::TcpListener>> {
        self.drainer.as_ref().map_or(Ok(Vec::new()), |d| {
            d.listeners.iter().map(|l| l.try_clone()).collect()
        })
    }

    /// The handle that drains this balancer (once; `None` for the echo backend).
    pub fn drainer(&mut self) -> Option<drain::Drainer> {
        self.drainer.take()
    }

    /// Blocks until every worker thread exits (they run until the process ends).
    pub fn wait(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Binds the listeners and starts the balancer's workers.
pub fn start_balancer(settings: Settings) -> Result<Running, StartError> {
    let listeners = listener::bind(settings.listen, settings.workers, settings.backlog)?;
    start_balancer_on(settings, listeners)
}

/// Starts the balancer's workers on listening sockets it already has, one worker per
/// socket: those taken over from an old process in a binary upgrade (`handover.rs`).
pub fn start_balancer_on(
    settings: Settings,
    listeners: Vec<std::net::TcpListener>,
) -> Result<Running, StartError> {
    let local_addr = local_addr(&listeners, settings.listen);
    // Without health checks nothing would bring a backend back, so failed connects do not
    // take one down either.
    let fall = settings.health.as_ref().map_or(u32::MAX, |h| h.fall);
    let pool = Arc::new(balancer::Pool::new(settings.backends.clone(), fall));
    let retirements = Arc::new(relay::registry::Retirements::default());
    let reloader = reload::Reloader::new(&settings, pool.clone(), retirements.clone());
    if let Some(h) = settings.health.clone() {
        balancer::health::spawn_checker(pool.clone(), h).map_err(|source| StartError::Setup {
            what: "starting the health checker",
            source,
        })?;
    }
    let limit = listener::ConnectionLimit::new(settings.max_connections);
    tracing::info!("connection limit {}", settings.max_connections);
    // Duplicates of the listening sockets, for the drain to shut down (see drain.rs).
    let dups = listeners
        .iter()
        .map(|l| l.try_clone())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| StartError::Setup {
            what: "duplicating the listening sockets for the drain",
            source,
        })?;
    let signal = Arc::new(drain::DrainSignal::default());
    let worker_signal = signal.clone();
    let drain_limit = limit.clone();
    let io = settings.io_driver;
    let settings = Arc::new(settings);
    let stats = new_stats(listeners.len());
    let worker_stats = stats.clone();
    let started = worker::spawn("balancer", listeners, io, move |id, l| {
        let stats = worker_stats[id].clone();
        let ctx = Rc::new(WorkerEnv::new(
            id,
            settings.clone(),
            pool.clone(),
            stats.clone(),
        ));
        let limit = limit.clone();
        let watcher = ctx.clone();
        let signal = worker_signal.clone();
        let retired = retirements.clone();
        monoio::spawn(async move { watcher.registry.watch(signal, retired).await });
        let open = stats.clone();
        let accept = listener::accept_loop(l, limit, move |stream, peer, permit| {
            connection::serve(stream, peer, ctx.clone(), (stats.track(), permit))
        });
        async move {
            accept.await;
            // Draining: the runtime (and with it every connection's task) lives until this
            // worker's connections have all closed; the main thread enforces the deadline.
            while open.open() > 0 {
                monoio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    })?;
    tracing::info!("balancing {local_addr}");
    let mut r = running(local_addr, started, stats.clone());
    r.reload = Some(reloader);
    r.drainer = Some(drain::Drainer {
        admission: drain_limit,
        listeners: dups,
        signal,
        stats,
    });
    Ok(r)
}

/// Starts the echo backend on `listen` with `workers` workers.
pub fn start_echo(listen: SocketAddr, workers: usize, io: IoDriver) -> Result<Running, StartError> {
    let listeners = listener::bind(listen, workers, 4096)?;
    let local_addr = local_addr(&listeners, listen);
    let stats = new_stats(listeners.len());
    let worker_stats = stats.clone();
    let started = worker::spawn("echo", listeners, io, move |id, l| {
        let stats = worker_stats[id].clone();
        listener::accept_loop(
            l,
            listener::ConnectionLimit::unlimited(),
            move |stream, _, p| {
                let open = (stats.track(), p);
                async move {
                    echo::serve(stream).await;
                    drop(open);
                }
            },
        )
    })?;
    tracing::info!("echo backend on {local_addr}");
    Ok(running(local_addr, started, stats))
}

fn local_addr(listeners: &[std::net::TcpListener], asked: SocketAddr) -> SocketAddr {
    listeners
        .first()
        .and_then(|l| l.local_addr().ok())
        .unwrap_or(asked)
}

fn new_stats(n: usize) -> Vec<Arc<WorkerStats>> {
    (0..n).map(|_| Arc::default()).collect()
}

fn running(
    local_addr: SocketAddr,
    started: Vec<(WorkerInfo, JoinHandle<()>)>,
    stats: Vec<Arc<WorkerStats>>,
) -> Running {
    let (workers, threads) = started.into_iter().unzip();
    Running {
        local_addr,
        workers,
        stats,
        threads,
        drainer: None,
        reload: None,
    }
}
