//! One pinned thread = one monoio runtime: io_uring, or epoll where io_uring is unavailable;
//! and the task in each worker that acts on the instance's control messages.
//!
//! Workers share nothing per frame. What they share is read-only (`Arc<Settings>`, the
//! backend `Pool` snapshot, of which each keeps its own reference), except for a few
//! deliberate cross-core writes, each per connection or rarer, never per frame: the pool's
//! round-robin counter, the instance-wide connection count (`listener::ConnectionLimit`),
//! with per-client limits on, the client's slots in the shared tables (`per_ip/`),
//! a backend's health marks on a failed connect (`balancer/health.rs`), and each worker's
//! own counters, which other threads only read. Control messages arrive through a channel
//! per worker (`control.rs`).

use std::future::Future;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Instant;

use monoio::io::Canceller;
use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};

use crate::buffers::BufferPool;
use crate::config::{Fixed, IoDriver, Settings};
use crate::control::{Broadcast, Control, Inbox, Retirement};
use crate::dial::{IdleConns, Timeouts};
use crate::frame::Limits;
use crate::metrics::WorkerStats;
use crate::relay::registry::Registry;
use crate::relay::{Context, RelayConfig};

/// What one balancer worker's connections share, from the request to the hand-over to the
/// relay: the settings fixed for the process, the worker's views of the reloadable state
/// (routes and their pools, certificates: each read from its live snapshot, so nothing
/// here holds a start-up copy of a reloadable field), the relays' [`Context`], the access
/// log and the idle backend connections. One per worker, owned by its thread (connections
/// hold an `Rc`), so nothing here is written by another core.
#[derive(Debug)]
pub struct WorkerEnv {
    pub(crate) id: usize,
    pub(crate) fixed: Fixed,
    /// The worker's copy of the routes and their pools.
    pub(crate) routes: crate::routes::LocalRoutes,
    /// What the relays use: rules, buffers (handshake reads borrow from them too), the
    /// registry of open relays, the counters, the receive ring.
    pub(crate) relay: Context,
    /// The access log, when enabled (shared by the workers; one write per connection).
    pub(crate) access_log: Option<Arc<crate::access_log::AccessLog>>,
    /// The TLS config new client handshakes use (`None`: plain ws), as a certificate
    /// reload last replaced it.
    pub(crate) tls: Option<crate::tls::LocalCertificates>,
    /// Idle backend connections for plain HTTP requests.
    pub(crate) idle: IdleConns,
}

impl WorkerEnv {
    pub fn new(
        id: usize,
        settings: &Settings,
        router: Arc<crate::routes::Router>,
        stats: Arc<WorkerStats>,
    ) -> Self {
        let fixed = settings.fixed.clone();
        let rules = RelayConfig::new(
            Limits {
                frame: fixed.max_frame_bytes,
                message: fixed.max_message_bytes,
                buffer: fixed.relay_buffer_max_bytes,
            },
            fixed.close_grace,
        );
        let relay = Context {
            rules,
            buffers: BufferPool::new(fixed.relay_buffer_bytes, fixed.relay_buffer_max_bytes),
            registry: Registry::new(fixed.keepalive),
            stats,
            recv: None,
        };
        Self {
            id,
            routes: crate::routes::LocalRoutes::new(router),
            relay,
            tls: None,
            idle: IdleConns::default(),
            fixed,
            access_log: None,
        }
    }

    /// This worker's counters.
    pub fn stats(&self) -> &WorkerStats {
        &self.relay.stats
    }

    /// The worker's relay buffers.
    pub fn buffers(&self) -> &BufferPool {
        &self.relay.buffers
    }

    /// How long dialling a backend may take.
    pub fn dial_timeouts(&self) -> Timeouts {
        Timeouts {
            connect: self.fixed.backend_connect_timeout,
            handshake: self.fixed.backend_handshake_timeout,
        }
    }
}

/// The worker's receive ring, on io_uring when `limits.recv_ring_buffers` is not 0. A
/// kernel that refuses it (no buffer rings before 5.19, no multishot receive before 6.0)
/// leaves the relays on readiness waits and reads, with a warning.
pub fn recv_ring(
    id: usize,
    settings: &Settings,
    stats: Arc<WorkerStats>,
) -> Option<crate::recv_ring::RecvRing> {
    if monoio::utils::is_legacy() || settings.recv_ring_buffers == 0 {
        return None;
    }
    let (n, size) = (settings.recv_ring_buffers, settings.recv_ring_buffer_bytes);
    match crate::recv_ring::RecvRing::new(n, size, stats) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!("worker {id}: no receive ring ({e}); relays poll and read");
            None
        }
    }
}

/// How long a worker must hand out no relay buffer (no byte moved on any of its
/// connections) before it gives back what a burst left behind: long enough that a worker
/// with steady traffic never trims, short enough that a burst's peak is gone within a
/// second of its end.
const IDLE_TRIM_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

/// After a burst of traffic, once the worker has been quiet for `IDLE_TRIM_AFTER`, frees
/// what the burst left: the buffer pool's spare buffers (grown to the largest frames seen)
/// and the pages mimalloc keeps for this thread. mimalloc returns freed pages to the OS
/// only on a later allocation or free ("delayed purge"), and an idle worker makes none, so
/// without this more of a burst's peak stays resident (load bench, idle-busy: see the
/// README's memory figures).
///
/// A timer, but not a control-plane poll: it reads this worker's own buffer counter once a
/// second and does nothing while traffic flows (a busy worker never trims) or after it has
/// trimmed once.
pub async fn trim_when_idle(env: std::rc::Rc<WorkerEnv>) {
    // Relay buffers handed out, and receive-ring chunks received: either moving means
    // traffic.
    let activity = |env: &WorkerEnv| {
        let ring = env.relay.recv.as_ref().map_or(0, |r| r.received());
        (env.relay.buffers.taken(), ring)
    };
    let mut seen = activity(&env);
    let mut burst = false;
    loop {
        monoio::time::sleep(IDLE_TRIM_AFTER).await;
        let now = activity(&env);
        if now != seen {
            (seen, burst) = (now, true);
        } else if burst {
            burst = false;
            env.relay.buffers.trim();
            if let Some(r) = &env.relay.recv {
                // Not with a chunk still out: it tries again after the next quiet spell.
                burst = !r.trim();
            }
            collect_allocator();
            tracing::debug!(
                worker = env.id,
                "idle: spare buffers freed, allocator collected"
            );
        }
    }
}

/// Has mimalloc free this thread's empty pages and purge what it keeps for reuse now
/// (`mi_collect(true)`), rather than on a later allocation that an idle worker does not
/// make. Harmless where mimalloc is not the global allocator (tests): its heap is empty.
#[allow(unsafe_code)]
fn collect_allocator() {
    // SAFETY: `mi_collect` takes a bool and works on the calling thread's mimalloc heap
    // and the process's arenas under mimalloc's own locks; it frees nothing still
    // allocated.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

/// The io driver a worker actually runs on (as reported by monoio, not as requested).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    IoUring,
    Epoll,
}

/// A started worker.
#[derive(Debug, Clone, Copy)]
pub struct WorkerInfo {
    pub id: usize,
    /// The core it is pinned to, if pinning succeeded.
    pub core: Option<usize>,
    pub driver: Driver,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "worker {id}: cannot start an io_uring runtime ({source}); use --io-driver auto or epoll"
    )]
    IoUring { id: usize, source: std::io::Error },
    #[error("worker {id}: cannot start an epoll runtime: {source}")]
    Epoll { id: usize, source: std::io::Error },
    #[error("worker {id}: {source}")]
    Listener { id: usize, source: std::io::Error },
    #[error("{what}: {source}")]
    Setup {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("worker {id} exited during startup")]
    Died { id: usize },
    #[error(transparent)]
    Bind(#[from] crate::listener::BindError),
    #[error("admin server ([admin] listen or --admin; empty turns it off): {0}")]
    Admin(crate::listener::BindError),
    /// A certificate the settings name does not load (`tls::load`).
    #[error(transparent)]
    Tls(#[from] crate::config::ConfigError),
}

/// Entries in each io_uring submission queue. Operations in flight are not bounded by it
/// (they leave the queue when submitted); 1024 absorbs one event-loop turn's submissions
/// for about 500 busy connections before monoio flushes early.
const URING_ENTRIES: u32 = 1024;

/// A started set of workers. Dropping it stops them and joins their threads.
#[derive(Debug)]
pub struct Workers {
    pub infos: Vec<WorkerInfo>,
    control: Broadcast,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Sends to every worker.
    pub fn control(&self) -> &Broadcast {
        &self.control
    }

    /// Blocks until every worker thread ends: when it is told to stop, so for a server that
    /// nobody stops, until the process ends.
    pub fn wait(mut self) {
        self.join();
    }

    /// Tells every worker to stop ([`Control::Stop`]) and joins their threads.
    pub fn stop(&mut self) {
        self.control.send(Control::Stop);
        self.join();
    }

    fn join(&mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts one thread per listener, pinned round-robin over the available cores, each
/// running `serve(id, listener, inbox)` on its own runtime, with `inbox` receiving what is
/// sent through [`Workers::control`]. Returns once every worker has started (or the first
/// startup error, after stopping those that had started).
pub fn spawn<F, Fut>(
    role: &'static str,
    listeners: Vec<std::net::TcpListener>,
    io: IoDriver,
    serve: F,
) -> Result<Workers, StartError>
where
    F: Fn(usize, monoio::net::TcpListener, Inbox) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let serve = Arc::new(serve);
    let (tx, rx) = mpsc::channel();
    let (control, inboxes) = crate::control::channels(listeners.len());
    let mut threads = Vec::new();
    for ((id, listener), inbox) in listeners.into_iter().enumerate().zip(inboxes) {
        let core = (!cores.is_empty()).then(|| cores[id % cores.len()]);
        let (tx, serve) = (tx.clone(), serve.clone());
        let startup_tx = tx.clone();
        let thread = std::thread::Builder::new()
            .name(format!("wslb-{role}-{id}"))
            .spawn(move || {
                let pinned = core
                    .filter(|c| core_affinity::set_for_current(*c))
                    .map(|c| c.id);
                let run = async move {
                    let driver = if monoio::utils::is_legacy() {
                        Driver::Epoll
                    } else {
                        Driver::IoUring
                    };
                    let listener = match monoio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(source) => {
                            let _ = tx.send(Err(StartError::Listener { id, source }));
                            return;
                        }
                    };
                    let _ = tx.send(Ok(WorkerInfo {
                        id,
                        core: pinned,
                        driver,
                    }));
                    drop(tx);
                    serve(id, listener, inbox).await;
                };
                if let Err(e) = block_on(id, io, run) {
                    let _ = startup_tx.send(Err(e));
                }
            })
            .expect("spawning a thread");
        threads.push(thread);
    }
    drop(tx);
    let n = threads.len();
    let mut workers = Workers {
        infos: Vec::with_capacity(n),
        control,
        threads,
    };
    for _ in 0..n {
        match rx.recv() {
            Ok(Ok(info)) => workers.infos.push(info),
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(StartError::Died {
                    id: workers.infos.len(),
                });
            }
        }
    }
    workers.infos.sort_by_key(|i| i.id);
    for i in &workers.infos {
        let core = i
            .core
            .map_or("unpinned".to_string(), |c| format!("core {c}"));
        tracing::info!("{role} worker {} on {core}, io driver {:?}", i.id, i.driver);
    }
    Ok(workers)
}

/// A balancer worker's control task: acts on the instance's messages (`control.rs`) until
/// told to stop. `accepting` cancels the worker's accept loop; the worker's registry of
/// open relays wakes the relays each message concerns.
///
/// Retired backends' relays are closed at their deadline by a timer on the earliest one;
/// between messages and deadlines this task sleeps.
pub async fn obey(mut inbox: Inbox, registry: &Registry, accepting: Canceller) {
    let mut accepting = Some(accepting);
    let mut stop_accepting = move || {
        if let Some(c) = accepting.take() {
            drop(c.cancel());
        }
    };
    // Retirements whose deadline has not come yet, and the backends whose relays this
    // worker has marked retired (to unmark if a reload adds one back).
    let mut pending: Vec<Retirement> = Vec::new();
    let mut marked: Vec<u32> = Vec::new();
    loop {
        let next = pending.iter().filter_map(|r| r.deadline).min();
        let message = match next {
            None => inbox.recv().await,
            Some(at) => monoio::select! {
                m = inbox.recv() => m,
                _ = monoio::time::sleep_until(monoio::time::Instant::from_std(at)) => {
                    retire_due(&mut pending, &mut marked, registry);
                    continue;
                }
            },
        };
        match message {
            Some(Control::StopAccepting) => stop_accepting(),
            Some(Control::GoAway) => registry.go_away(),
            Some(Control::Retire(list)) => {
                let back: Vec<u32> = marked
                    .iter()
                    .copied()
                    .filter(|b| !list.iter().any(|r| r.backend == *b))
                    .collect();
                registry.unretire(&back);
                marked.retain(|b| !back.contains(b));
                // Without a deadline a retirement never closes anything.
                pending = list.into_iter().filter(|r| r.deadline.is_some()).collect();
                retire_due(&mut pending, &mut marked, registry);
            }
            Some(Control::Shed(shed)) => {
                let hit = registry.shed(&shed);
                if hit > 0 {
                    tracing::debug!("rebalancing: {hit} connections told to close (1012)");
                }
            }
            Some(Control::Stop) | None => {
                stop_accepting();
                return;
            }
        }
    }
}

/// Closes (1012) the relays of the retirements in `pending` whose deadline has passed;
/// each leaves `pending` then, since its backend gets no new connections.
fn retire_due(pending: &mut Vec<Retirement>, marked: &mut Vec<u32>, registry: &Registry) {
    let now = Instant::now();
    let (due, later): (Vec<Retirement>, Vec<Retirement>) = pending
        .iter()
        .partition(|r| r.deadline.is_some_and(|d| now >= d));
    *pending = later;
    let due: Vec<u32> = due.iter().map(|r| r.backend).collect();
    if due.is_empty() {
        return;
    }
    let hit = registry.retire(&due);
    if hit > 0 {
        tracing::info!(
            "{hit} connections to removed backends passed their drain deadline: close 1012"
        );
    }
    for b in due {
        if !marked.contains(&b) {
            marked.push(b);
        }
    }
}

type UringRuntime = monoio::Runtime<monoio::time::TimeDriver<IoUringDriver>>;

/// An io_uring runtime with IORING_SETUP_COOP_TASKRUN (Linux 5.19+): completions are
/// processed when the worker next enters the kernel, instead of by interrupting it with an
/// IPI each time. The worker enters the kernel every loop turn anyway, so nothing waits
/// longer; measured on the 100 x 64 B closed loop it cut proxy CPU per message by 14% and
/// raised throughput 16% (README, "Performance"). Older kernels reject the flag: retry
/// without it. IORING_SETUP_DEFER_TASKRUN (with SINGLE_ISSUER) was tried on top: 5% fewer
/// msg/s and 6-9% more CPU per message at 100 and 1,000 x 64 B (3 rounds, `--ab-env`), so
/// it stays off.
fn build_uring() -> std::io::Result<UringRuntime> {
    let build = |coop: bool| {
        let mut flags = io_uring::IoUring::builder();
        if coop {
            flags.setup_coop_taskrun();
        }
        RuntimeBuilder::<IoUringDriver>::new()
            .with_entries(URING_ENTRIES)
            .uring_builder(flags)
            .enable_timer()
            .build()
    };
    build(true).or_else(|_| build(false))
}

/// Runs `fut` to completion on a new runtime of the requested kind. `Auto` tries io_uring
/// and falls back to epoll with a warning: monoio's own `FusionDriver` falls back silently,
/// which would leave the log claiming io_uring on hosts where it is blocked.
fn block_on(id: usize, io: IoDriver, fut: impl Future<Output = ()>) -> Result<(), StartError> {
    if io != IoDriver::Epoll {
        match build_uring() {
            Ok(mut rt) => {
                rt.block_on(fut);
                return Ok(());
            }
            Err(source) if io == IoDriver::IoUring => {
                return Err(StartError::IoUring { id, source });
            }
            Err(e) => {
                tracing::warn!("worker {id}: io_uring unavailable ({e}); falling back to epoll")
            }
        }
    }
    let mut rt = RuntimeBuilder::<LegacyDriver>::new()
        .enable_timer()
        .build()
        .map_err(|source| StartError::Epoll { id, source })?;
    rt.block_on(fut);
    Ok(())
}
