//! A running balancer ([`Instance`]) and its control [`Handle`]; the echo backend
//! ([`EchoServer`]). Both stop their threads and join them when dropped.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::access_log::AccessLog;
use crate::admin::{AdminServer, AdminView};
use crate::balancer::health;
use crate::config::{Fixed, IoDriver, Settings};
use crate::control::{Broadcast, Control};
use crate::drain::{Drain, DrainReport};
use crate::listener::{self, ConnectionLimit};
use crate::metrics::{Process, Rejected, Snapshot, Totals, WorkerStats, unix_now};
use crate::reload::{Applied, Reloader};
use crate::routes::Router;
use crate::worker::{self, StartError, WorkerInfo, Workers};
use std::sync::atomic::{AtomicBool, Ordering};

/// A running balancer: its workers, health checker and what its [`Handle`] controls.
/// Dropping it stops the workers (connections still open are abandoned; drain first) and
/// the health checker, and joins their threads.
pub struct Instance {
    /// The address actually bound (the real port when 0 was asked for).
    pub local_addr: SocketAddr,
    pub workers: Vec<WorkerInfo>,
    /// Each worker's counters, in worker order.
    pub stats: Vec<Arc<WorkerStats>>,
    /// Where the admin server listens (`None`: off).
    pub admin_addr: Option<SocketAddr>,
    fixed: Fixed,
    handle: Handle,
    running: Workers,
    health: Option<health::Checker>,
    admin: Option<AdminServer>,
}

/// Controls one [`Instance`] from any thread: drain, reload, hand over, stop. Cheap to
/// clone; it does not keep the instance running (dropping the `Instance` stops it).
#[derive(Clone)]
pub struct Handle(Arc<Shared>);

struct Shared {
    workers: Broadcast,
    admission: Arc<ConnectionLimit>,
    /// Each worker's counters, summed by [`Handle::snapshot`].
    stats: Vec<Arc<WorkerStats>>,
    /// Set when a drain starts (readiness goes 503 and `wslb_draining` 1).
    draining: AtomicBool,
    reloads: Mutex<Reloads>,
    access_log: Option<Arc<AccessLog>>,
    io_driver: &'static str,
    /// Duplicates of the workers' listening sockets, for the life of the instance: the
    /// drain shuts them down, a binary upgrade hands them over.
    listeners: Vec<std::net::TcpListener>,
    router: Arc<Router>,
    reloader: Mutex<Reloader>,
    rebalancer: crate::balancer::rebalance::Rebalancer,
}

impl Instance {
    /// Binds the listeners and starts the balancer's workers.
    pub fn start(settings: Settings) -> Result<Instance, StartError> {
        let listeners = listener::bind(settings.listen, settings.workers, settings.backlog)?;
        Self::launch(settings, listeners, false)
    }

    /// Starts the balancer's workers on listening sockets it already has, one worker per
    /// socket: those taken over from an old process in a binary upgrade (`handover.rs`).
    pub fn start_on(
        settings: Settings,
        listeners: Vec<std::net::TcpListener>,
    ) -> Result<Instance, StartError> {
        Self::launch(settings, listeners, true)
    }

    /// `taken_over`: the listeners come from an old process, which also still serves the
    /// admin address until it exits, so the admin listener joins that port (SO_REUSEPORT)
    /// instead of refusing it as taken.
    fn launch(
        settings: Settings,
        listeners: Vec<std::net::TcpListener>,
        taken_over: bool,
    ) -> Result<Instance, StartError> {
        // The certificates the settings name (config/ reads no file).
        let tls = crate::tls::load(&settings)?;
        let local_addr = local_addr(&listeners, settings.listen);
        // On taken-over sockets too: the option follows this process's config.
        listener::defer_accept(&listeners, settings.defer_accept).map_err(|source| {
            StartError::Bind(listener::BindError::Io {
                addr: local_addr,
                source,
            })
        })?;
        let router = start::route_table(&settings, &tls);
        let admission = start::admission(&settings);
        let dups = start::duplicate(&listeners)?;
        let health = health::spawn_checker(router.clone()).map_err(|source| StartError::Setup {
            what: "starting the health checker",
            source,
        })?;
        let parts = start::Parts {
            access_log: start::open_access_log(&settings)?,
            stats: new_stats(listeners.len()),
            certificates: tls
                .server
                .as_ref()
                .map(|t| Arc::new(crate::tls::Certificates::new(t.config.clone()))),
            router,
            admission,
        };
        let running = start::spawn_workers(&settings, listeners, &parts)?;
        start::log_serving(&tls, local_addr);
        let rebalancer = start::spawn_rebalancer(&settings, &parts.router, running.control())?;
        let start::Parts {
            router,
            admission,
            stats,
            access_log,
            certificates,
        } = parts;
        let reloader = Reloader::new(
            &settings,
            tls,
            router.clone(),
            health.rewake(),
            rebalancer.configure(),
            running.control().clone(),
            certificates,
            admission.clone(),
        );
        let handle = Handle(Arc::new(Shared {
            workers: running.control().clone(),
            admission,
            stats: stats.clone(),
            draining: AtomicBool::new(false),
            reloads: Mutex::new(Reloads {
                last_success: unix_now(),
                ..Reloads::default()
            }),
            access_log,
            io_driver: match running.infos.first().map(|i| i.driver) {
                Some(worker::Driver::Epoll) => "epoll",
                _ => "io_uring",
            },
            listeners: dups,
            router,
            reloader: Mutex::new(reloader),
            rebalancer,
        }));
        let admin = start::start_admin(settings.admin, taken_over, &handle)?;
        Ok(Instance {
            admin_addr: admin.as_ref().map(AdminServer::local_addr),
            admin,
            local_addr,
            fixed: settings.fixed.clone(),
            workers: running.infos.clone(),
            stats,
            handle,
            running,
            health: Some(health),
        })
    }

    /// The settings a reload cannot change, as this instance runs on them.
    pub fn fixed(&self) -> &Fixed {
        &self.fixed
    }

    /// A handle to control this instance from any thread.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Each backend's health (up or down), route by route (see `Router::backend_views`), each
    /// route's in config order.
    pub fn backends_up(&self) -> Vec<bool> {
        self.handle
            .0
            .router
            .backend_views()
            .iter()
            .map(|b| b.up)
            .collect()
    }

    /// Applies a new configuration (SIGHUP): see [`Handle::reload`].
    pub fn reload(&self, new: &Settings) -> Applied {
        self.handle.reload(new)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // The admin server first: it holds a handle and would report a stopped instance.
        drop(self.admin.take());
        self.running.stop();
        if let Some(h) = self.health.take() {
            h.stop();
        }
    }
}

impl Handle {
    /// Drains (see `drain.rs`): stops accepting, shuts the listening sockets down, lets
    /// connections finish for `grace`, then closes the rest with 1001. Returns when every
    /// connection is closed or the hard deadline has passed.
    pub fn drain(&self, grace: Duration, close_grace: Duration) -> DrainReport {
        self.0.draining.store(true, Ordering::Relaxed);
        self.drainer().run(grace, close_grace, true)
    }

    /// The drain after a binary upgrade: the same, except that the listening sockets, which
    /// the new process now accepts on, are left as they are.
    pub fn drain_after_handover(&self, grace: Duration, close_grace: Duration) -> DrainReport {
        self.0.draining.store(true, Ordering::Relaxed);
        self.drainer().run(grace, close_grace, false)
    }

    fn drainer(&self) -> Drain<'_> {
        Drain {
            workers: &self.0.workers,
            admission: &self.0.admission,
            listeners: &self.0.listeners,
        }
    }

    /// Applies a new configuration to the running balancer: see `reload.rs`. Reads the
    /// certificates it names first; if they do not load, the reload fails (it is counted
    /// and logged) and nothing changes.
    pub fn reload(&self, new: &Settings) -> Applied {
        match crate::tls::load(new) {
            Ok(tls) => self.apply(new, tls),
            Err(e) => {
                self.reload_failed();
                for line in e.to_string().lines() {
                    tracing::error!("reload failed, nothing changed: {line}");
                }
                Applied::default()
            }
        }
    }

    /// Applies `new` with its certificates already loaded (`tls::load`).
    pub fn apply(&self, new: &Settings, tls: crate::tls::Loaded) -> Applied {
        let mut r = self.0.reloader.lock().unwrap_or_else(|e| e.into_inner());
        let applied = r.apply(new, tls);
        let mut n = self.0.reloads.lock().unwrap_or_else(|e| e.into_inner());
        n.ok += 1;
        n.last_success = unix_now();
        applied
    }

    /// A reload was attempted and rejected (the new config was invalid); nothing changed.
    pub fn reload_failed(&self) {
        self.0
            .reloads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .failed += 1;
    }

    /// Reopens the access log file (log rotation, on SIGHUP).
    pub fn reopen_logs(&self) -> std::io::Result<()> {
        self.0.access_log.as_ref().map_or(Ok(()), |l| l.reopen())
    }

    /// Everything the metrics show, read now: the workers' counters summed, the backends
    /// of the current snapshot, the instance's state and the process's figures.
    pub fn snapshot(&self) -> Snapshot {
        let s = &self.0;
        let mut totals = Totals::of(&s.stats);
        totals.rejected[Rejected::Limit as usize] += s.admission.refused();
        for r in [Rejected::PerIpConnections, Rejected::PerIpRate] {
            totals.rejected[r as usize] += s.admission.per_ip().refused(r);
        }
        let reloads = *s.reloads.lock().unwrap_or_else(|e| e.into_inner());
        Snapshot {
            totals,
            backends: s.router.backend_views(),
            draining: s.draining.load(Ordering::Relaxed),
            reloads_ok: reloads.ok,
            reloads_failed: reloads.failed,
            last_reload_success: reloads.last_success,
            io_driver: s.io_driver,
            process: Process::read(),
            rebalance: s.rebalancer.stats(),
            certificates: s
                .reloader
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .certificates(),
        }
    }

    /// Whether this instance should get new connections: not while it drains, nor with
    /// every backend down (a load balancer in front, or Kubernetes, then sends clients
    /// elsewhere). `Err` says why not.
    pub fn ready(&self) -> Result<(), String> {
        if self.0.draining.load(Ordering::Relaxed) {
            return Err("draining".into());
        }
        let table = self.0.router.table();
        let up = |r: &Arc<crate::routes::Route>| {
            r.pool.snapshot().backends.iter().any(|b| b.health.is_up())
        };
        if !table.routes.iter().any(up) {
            return Err("every backend is down".into());
        }
        Ok(())
    }

    /// Duplicates of the listening sockets, to hand over to a new process (binary upgrade).
    pub fn listening_sockets(&self) -> std::io::Result<Vec<std::net::TcpListener>> {
        self.0.listeners.iter().map(|l| l.try_clone()).collect()
    }

    /// Offers the listening sockets on `upgrade` to a new process (`handover.rs`);
    /// `on_handover` runs once one has taken them (the caller then drains).
    pub fn offer_handover(
        &self,
        upgrade: std::os::unix::net::UnixListener,
        on_handover: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<()> {
        crate::handover::offer(upgrade, self.listening_sockets()?, on_handover)
    }

    /// Ends the workers now, as dropping the [`Instance`] does (without joining them).
    pub fn stop(&self) {
        self.0.workers.send(Control::Stop);
    }
}

impl AdminView for Handle {
    fn snapshot(&self) -> Snapshot {
        Handle::snapshot(self)
    }

    fn ready(&self) -> Result<(), String> {
        Handle::ready(self)
    }
}

/// Configuration reloads, for the metrics.
#[derive(Debug, Clone, Copy, Default)]
struct Reloads {
    ok: u64,
    failed: u64,
    /// Unix time of the last successful load (the start, then each reload).
    last_success: f64,
}

/// The built-in echo backend (tests, benches, `wslb demo`). Dropping it stops its workers.
pub struct EchoServer {
    pub local_addr: SocketAddr,
    pub workers: Vec<WorkerInfo>,
    pub stats: Vec<Arc<WorkerStats>>,
    running: Workers,
}

impl EchoServer {
    /// Starts the echo backend on `listen` with `workers` workers.
    pub fn start(listen: SocketAddr, workers: usize, io: IoDriver) -> Result<Self, StartError> {
        let listeners = listener::bind(listen, workers, 4096)?;
        let local_addr = local_addr(&listeners, listen);
        let stats = new_stats(listeners.len());
        let worker_stats = stats.clone();
        let running = worker::spawn("echo", listeners, io, move |id, l, mut inbox| {
            let stats = worker_stats[id].clone();
            async move {
                let accepting = monoio::io::Canceller::new();
                let accept = monoio::spawn(listener::accept_loop(
                    l,
                    ConnectionLimit::unlimited(),
                    accepting.handle(),
                    true,
                    move |stream, _, p| {
                        let open = (stats.track(), p);
                        monoio::spawn(async move {
                            crate::echo::serve(stream).await;
                            drop(open);
                        });
                    },
                ));
                // The echo backend never drains: any message that ends accepting ends it.
                while let Some(Control::GoAway | Control::Retire(_) | Control::Shed(_)) =
                    inbox.recv().await
                {}
                drop(accepting.cancel());
                accept.await;
            }
        })?;
        tracing::info!("echo backend on {local_addr}");
        Ok(EchoServer {
            local_addr,
            workers: running.infos.clone(),
            stats,
            running,
        })
    }

    /// Blocks for as long as the echo backend runs (until the process ends).
    pub fn wait(self) {
        let EchoServer { running, .. } = self;
        running.wait();
    }
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

/// The steps of [`Instance::launch`], each with its log lines.
mod start;
