//! Backend health: active checks (each round probes all backends at once) and passive marking.
//!
//! Each backend has an up/down flag that every worker reads on each new connection
//! (`Relaxed` loads of an `AtomicBool`; a worker acting on a flag a few microseconds stale
//! costs one failover at most). Only two things change it:
//! - the checker thread (one per instance, so a backend is not probed once per worker):
//!   every `interval`, a round of probes, one thread per backend so that a round takes
//!   about one `timeout` however many backends are dead: a TCP connect (or an HTTP
//!   `GET path` expecting 2xx) within `timeout`; `rise` passes in a row bring a down
//!   backend up, `fall` failures in a row take an up one down;
//! - passive detection: `fall` failed connects or upgrade exchanges in a row from live
//!   traffic take a backend down too. It comes back only through passing checks, so a flapping backend does not
//!   get traffic between failures.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

pub use crate::config::{HealthConfig, Probe};

/// Milliseconds on a process-wide monotonic clock, from 1 (0 means "never" to
/// [`BackendHealth::came_up`]).
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// One backend's state, shared by all workers and the checker.
#[derive(Debug)]
pub struct BackendHealth {
    up: AtomicBool,
    /// Consecutive failures (checks or connects) while up.
    failures: AtomicU32,
    /// Consecutive passing checks while down.
    passes: AtomicU32,
    /// When ([`now_ms`]) the backend last came up, or was added by a reload: where slow
    /// start's ramp begins. 0: up since the start (no ramp).
    came_up: AtomicU64,
}

impl Default for BackendHealth {
    fn default() -> Self {
        // Backends start up: a fresh balancer serves at once, and a dead backend is
        // found by the first failed connects or checks.
        Self {
            up: AtomicBool::new(true),
            failures: AtomicU32::new(0),
            passes: AtomicU32::new(0),
            came_up: AtomicU64::new(0),
        }
    }
}

impl BackendHealth {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// A failed check or connect. Returns true if this took the backend down.
    pub fn failed(&self, fall: u32) -> bool {
        self.passes.store(0, Ordering::Relaxed);
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        n >= fall && self.up.swap(false, Ordering::Relaxed)
    }

    /// A successful connect from live traffic: resets the failure run.
    pub fn connected(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// A passing check. Returns true if this brought the backend up.
    pub fn passed(&self, rise: u32) -> bool {
        self.failures.store(0, Ordering::Relaxed);
        if self.is_up() {
            return false;
        }
        let n = self.passes.fetch_add(1, Ordering::Relaxed) + 1;
        if n < rise {
            return false;
        }
        // Before the flag, though Relaxed: a worker that sees the flag first gives the
        // backend its full weight for a pick or two, which is harmless.
        self.came_up.store(now_ms(), Ordering::Relaxed);
        !self.up.swap(true, Ordering::Relaxed)
    }

    /// When the backend came up or was added ([`now_ms`]); 0 if up since the start.
    #[inline]
    pub fn came_up(&self) -> u64 {
        self.came_up.load(Ordering::Relaxed)
    }

    /// A reload added the backend: slow start ramps it from now.
    pub fn added(&self) {
        self.came_up.store(now_ms(), Ordering::Relaxed);
    }

    /// The ramp that began at `since` is over: picks stop reading the clock for this
    /// backend. One write per ramp, by whichever worker sees its end first; a newer ramp
    /// (a later `since`) is left alone.
    pub fn ramp_done(&self, since: u64) {
        let _ = self
            .came_up
            .compare_exchange(since, 0, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// How a probe reaches a backend over TLS: the client config and the backend's name.
pub type ProbeTls<'a> = (&'a crate::tls::BackendTls, &'a ServerName<'static>);

/// Probes one backend once; an `http` check of a TLS backend (`tls`: how it is reached)
/// speaks HTTPS.
pub fn probe(
    addr: SocketAddr,
    cfg: &HealthConfig,
    tls: Option<ProbeTls<'_>>,
) -> Result<(), String> {
    let deadline = Instant::now() + cfg.timeout;
    let s = TcpStream::connect_timeout(&addr, cfg.timeout).map_err(|e| e.to_string())?;
    let Probe::Http { path } = &cfg.probe else {
        return Ok(());
    };
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    // One write: `write!` on a socket would send each formatted piece separately.
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: wslb-health\r\nConnection: close\r\n\r\n"
    );
    match tls {
        None => http_status(s, |s| s, &req, left),
        Some((t, name)) => {
            let conn = rustls::ClientConnection::new(t.config.clone(), name.clone())
                .map_err(|e| format!("TLS: {e}"))?;
            let stream = rustls::StreamOwned::new(conn, s);
            http_status(stream, |s| &s.sock, &req, left)
        }
    }
}

/// Sends `req` on `s` and reads the status line of the answer: 2xx passes. `sock` gives
/// the socket under `s` (whose timeouts bound each step by what is `left`).
fn http_status<S: Read + Write>(
    mut s: S,
    sock: impl Fn(&S) -> &TcpStream,
    req: &str,
    left: impl Fn() -> Duration,
) -> Result<(), String> {
    sock(&s)
        .set_write_timeout(Some(left()))
        .map_err(|e| e.to_string())?;
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        sock(&s)
            .set_read_timeout(Some(left()))
            .map_err(|e| e.to_string())?;
        let n = s.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before a status line".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(_) if resp.code.is_some() => {
                let code = resp.code.unwrap_or(0);
                return if (200..300).contains(&code) {
                    Ok(())
                } else {
                    Err(format!("status {code}"))
                };
            }
            Ok(_) if buf.len() < 8192 => continue,
            Ok(_) => return Err("status line over 8 KiB".into()),
            Err(e) => return Err(format!("not HTTP: {e}")),
        }
    }
}

/// Backends probed at once in a round: one short-lived thread each. More backends are
/// probed in waves of this many, so a round over n dead backends takes about
/// `ceil(n / 64)` timeouts and the checker never has more than 64 threads out.
const PARALLEL_PROBES: usize = 64;

/// Probes every address once, concurrently (see `PARALLEL_PROBES`), and returns the
/// results in the same order. Each probe gives up at `cfg.timeout`, so this returns after
/// about one timeout per wave. If a thread cannot be started, that probe runs on the
/// calling thread instead.
pub fn probe_all(
    targets: &[(SocketAddr, Option<ProbeTls<'_>>)],
    cfg: &HealthConfig,
) -> Vec<Result<(), String>> {
    let mut out = Vec::with_capacity(targets.len());
    for wave in targets.chunks(PARALLEL_PROBES) {
        std::thread::scope(|scope| {
            let running: Vec<_> = wave
                .iter()
                .map(|&(addr, tls)| {
                    let spawned = std::thread::Builder::new()
                        .name("wslb-probe".into())
                        .spawn_scoped(scope, move || probe(addr, cfg, tls));
                    (addr, tls, spawned)
                })
                .collect();
            for (addr, tls, spawned) in running {
                out.push(match spawned {
                    Ok(t) => t
                        .join()
                        .unwrap_or_else(|_| Err("the probe panicked".into())),
                    Err(_) => probe(addr, cfg, tls),
                });
            }
        });
    }
    out
}

/// One round of checks over the pool's current snapshot: a reload's added backends are
/// probed from the next round on, removed ones no longer. Probes run concurrently; the
/// results are applied afterwards, in config order.
fn check_round(pool: &super::Pool, cfg: &HealthConfig) {
    let snapshot = pool.snapshot();
    let client = snapshot.tls.as_deref();
    let targets: Vec<_> = snapshot
        .backends
        .iter()
        .map(|b| (b.addr, client.zip(b.tls.as_ref())))
        .collect();
    for (b, result) in snapshot.backends.iter().zip(probe_all(&targets, cfg)) {
        let (addr, h) = (b.addr, &b.health);
        match result {
            Ok(()) => {
                if h.passed(cfg.rise) {
                    tracing::warn!(backend = %addr, "backend is up again ({} checks passed)", cfg.rise);
                }
            }
            Err(e) => {
                b.stats.failed(super::Failure::HealthCheck);
                if h.failed(cfg.fall) {
                    tracing::warn!(backend = %addr, "backend is down: health check failed {} times ({e})", cfg.fall);
                } else {
                    tracing::debug!(backend = %addr, "health check failed: {e}");
                }
            }
        }
    }
}

/// The checker thread, stopped (and joined) by [`Checker::stop`] or on drop.
#[derive(Debug)]
pub struct Checker {
    wake: Option<std::sync::mpsc::Sender<Wake>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checker {
    pub fn stop(mut self) {
        self.halt();
    }

    /// What a reload tells the checker with (the routes changed: see [`Rewake`]).
    pub fn rewake(&self) -> Rewake {
        Rewake(self.wake.clone())
    }

    fn halt(&mut self) {
        // Ends the wait between rounds at once.
        if let Some(w) = self.wake.take() {
            let _ = w.send(Wake::Stop);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.halt();
    }
}

#[derive(Debug)]
enum Wake {
    Reload,
    Stop,
}

/// Tells the checker that the routes changed (a reload): it looks at them again now, so
/// that a route added with health checks gets its first round at once.
#[derive(Debug, Clone, Default)]
pub struct Rewake(Option<std::sync::mpsc::Sender<Wake>>);

impl Rewake {
    pub fn routes_changed(&self) {
        if let Some(w) = &self.0 {
            let _ = w.send(Wake::Reload);
        }
    }
}

/// Starts the checker thread for every route with health checks (as `pools` lists them,
/// asked again at each wake): each route's round every its `interval` (the routes' rounds
/// one after the other), until stopped. Between rounds
/// it waits on its channel until the next one is due: a stop ends the wait at once, a
/// reload ([`Rewake::routes_changed`]) makes it read the routes again (no flag polled on a
/// timer).
pub fn spawn_checker(pools: Arc<dyn super::Pools>) -> std::io::Result<Checker> {
    let (wake, woken) = std::sync::mpsc::channel::<Wake>();
    let thread = std::thread::Builder::new()
        .name("wslb-health".into())
        .spawn(move || {
            // When each route's next round is due, by its pool (kept across reloads).
            let mut due: Vec<(*const super::Pool, Instant)> = Vec::new();
            loop {
                let routes = pools.pools();
                let checked: Vec<_> = routes
                    .iter()
                    .filter_map(|r| Some((&r.pool, r.health.as_ref()?)))
                    .collect();
                due.retain(|(p, _)| checked.iter().any(|(q, _)| Arc::as_ptr(q) == *p));
                for (pool, cfg) in &checked {
                    let key = Arc::as_ptr(pool);
                    let now = Instant::now();
                    match due.iter_mut().find(|(p, _)| *p == key) {
                        Some((_, at)) if *at > now => continue,
                        Some((_, at)) => *at = now + cfg.interval,
                        None => due.push((key, now + cfg.interval)),
                    }
                    check_round(pool, cfg);
                }
                let next = due.iter().map(|(_, at)| *at).min();
                let woke = match next {
                    None => woken
                        .recv()
                        .map_err(|_| std::sync::mpsc::RecvTimeoutError::Disconnected),
                    Some(at) => woken.recv_timeout(at.saturating_duration_since(Instant::now())),
                };
                match woke {
                    Ok(Wake::Stop) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                    Ok(Wake::Reload) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                }
            }
        })?;
    Ok(Checker {
        wake: Some(wake),
        thread: Some(thread),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_ramp_is_cleared_and_a_newer_one_kept() {
        let h = BackendHealth::default();
        h.added();
        let first = h.came_up();
        assert_ne!(first, 0);
        h.ramp_done(first);
        assert_eq!(h.came_up(), 0, "the ramp that ended is forgotten");
        h.added();
        let second = h.came_up();
        h.ramp_done(second.wrapping_sub(1)); // an older ramp's end
        assert_eq!(
            h.came_up(),
            second,
            "a newer ramp is not cleared by an older one"
        );
    }

    #[test]
    fn fall_takes_down_and_only_rise_passes_bring_back() {
        let h = BackendHealth::default();
        assert!(!h.failed(3) && !h.failed(3));
        assert!(h.is_up());
        assert!(h.failed(3), "the third failure in a row takes it down");
        assert!(!h.is_up());
        assert!(!h.failed(3), "already down");
        assert!(!h.passed(2));
        h.failed(3); // a failure resets the run of passes
        assert!(!h.passed(2));
        assert_eq!(h.came_up(), 0, "up since the start, then down: no ramp yet");
        assert!(h.passed(2), "two passes in a row bring it up");
        assert!(h.is_up());
        let up = h.came_up();
        assert!(up > 0, "slow start ramps from here");
        assert!(!h.passed(2));
        assert_eq!(h.came_up(), up, "a pass while up is not a new start");
    }

    #[test]
    fn a_connect_resets_the_failure_run() {
        let h = BackendHealth::default();
        h.failed(2);
        h.connected();
        assert!(!h.failed(2));
        assert!(h.is_up());
    }

    /// Regression: the checker probed backends one after another, so with n black-holed
    /// backends a round took n timeouts. Each scripted backend here holds its probe
    /// unanswered until all n probes are connected at once; only then do they all get 200.
    /// Probed one at a time, the first would wait for the others until its timeout, and the
    /// most ever connected at once would be 1.
    #[test]
    fn a_round_probes_all_backends_at_the_same_time() {
        use std::sync::{Condvar, Mutex};
        const N: usize = 5;
        // (connected now, most ever connected at once)
        let state = Arc::new((Mutex::new((0usize, 0usize)), Condvar::new()));
        let addrs: Vec<SocketAddr> = (0..N)
            .map(|_| {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = l.local_addr().unwrap();
                let state = state.clone();
                std::thread::spawn(move || {
                    let (mut s, _) = l.accept().unwrap();
                    let (lock, cv) = &*state;
                    let mut g = lock.lock().unwrap();
                    g.0 += 1;
                    g.1 = g.1.max(g.0);
                    cv.notify_all();
                    let (mut g, _) = cv
                        .wait_timeout_while(g, Duration::from_secs(3), |g| g.1 < N)
                        .unwrap();
                    let all_at_once = g.1 == N;
                    g.0 -= 1;
                    drop(g);
                    if all_at_once {
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\n");
                    }
                });
                addr
            })
            .collect();
        let cfg = HealthConfig {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(3),
            rise: 1,
            fall: 1,
            probe: Probe::Http {
                path: "/health".into(),
            },
        };
        let targets: Vec<_> = addrs.iter().map(|&a| (a, None)).collect();
        let results = probe_all(&targets, &cfg);
        assert_eq!(
            state.0.lock().unwrap().1,
            N,
            "most probes connected at once"
        );
        assert_eq!(results, vec![Ok(()); N]);
    }

    /// An address that refuses connections while the returned socket lives: bound, never
    /// listening (freeing a port instead would let a parallel test take it).
    fn refusing() -> (socket2::Socket, SocketAddr) {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        let addr = s.local_addr().unwrap().as_socket().unwrap();
        (s, addr)
    }

    #[test]
    fn a_round_applies_results_in_config_order() {
        let live = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (_held, dead) = refusing();
        let pool = super::super::Pool::new(vec![dead, live.local_addr().unwrap()], 1);
        let cfg = HealthConfig {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            rise: 1,
            fall: 1,
            probe: Probe::Tcp,
        };
        check_round(&pool, &cfg);
        let up: Vec<bool> = pool
            .snapshot()
            .backends
            .iter()
            .map(|b| b.health.is_up())
            .collect();
        assert_eq!(up, [false, true]);
    }

    #[test]
    fn http_probe_wants_2xx() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let cfg = HealthConfig {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            rise: 1,
            fall: 1,
            probe: Probe::Http {
                path: "/health".into(),
            },
        };
        let server = std::thread::spawn(move || {
            for answer in [
                "HTTP/1.1 204 No Content\r\n\r\n",
                "HTTP/1.1 503 Busy\r\n\r\n",
            ] {
                let (mut s, _) = l.accept().unwrap();
                let mut req = Vec::new();
                let mut b = [0u8; 512];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut b).unwrap();
                    assert!(n > 0);
                    req.extend_from_slice(&b[..n]);
                }
                assert!(req.starts_with(b"GET /health HTTP/1.1\r\n"));
                s.write_all(answer.as_bytes()).unwrap();
            }
        });
        assert_eq!(probe(addr, &cfg, None), Ok(()));
        assert_eq!(probe(addr, &cfg, None), Err("status 503".into()));
        server.join().unwrap();
        let (_held, dead) = refusing();
        assert!(
            probe(
                dead,
                &HealthConfig {
                    probe: Probe::Tcp,
                    ..cfg
                },
                None
            )
            .is_err()
        );
    }
}
