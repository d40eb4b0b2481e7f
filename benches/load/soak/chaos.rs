//! What the soak does to wslb and its backends while the clients run: starts the echo
//! backends and wslb, kills and restarts a backend every 20 s, adds or removes one by a
//! reload every 5 s, replaces wslb by a binary takeover at half time, and samples wslb's
//! memory and descriptors every second.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::msg::Rng;
use super::{DRAIN, GRACE, World, echo};
use crate::targets::{self, TempDir};

/// Echo backends: 0 stays, 1..POOL rotate through the config.
pub const POOL: usize = 7;
/// Rotating backends in the config: at least..
const MIN_ROTATING: usize = 2;
/// ..and at most.
const MAX_ROTATING: usize = 4;
const KILL_EVERY: Duration = Duration::from_secs(20);
const KILL_AT: Duration = Duration::from_secs(5);
const RESTART_AFTER: Duration = Duration::from_secs(1);
const RELOAD_EVERY: Duration = Duration::from_secs(5);
const RELOAD_AT: Duration = Duration::from_millis(500);
/// A removed backend comes back no sooner than this after its removal, so its connections
/// have had their 1012 (a backend added back within the drain keeps them: README).
const READD_AFTER: Duration = Duration::from_secs(6);

struct Backend {
    addr: SocketAddr,
    life: u32,
    child: Option<Child>,
    configured: bool,
    removed_at: Option<Instant>,
    /// Killed, to be started again then.
    restart_at: Option<Instant>,
}

impl Backend {
    fn spawn(&mut self, index: usize) {
        let exe = std::env::current_exe().expect("the bench binary's path");
        let c = Command::new(exe)
            .env(echo::ENV, format!("{} {index} {}", self.addr, self.life))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting a soak echo backend");
        self.child = Some(c);
    }
}

/// One wslb process and its log (its stderr).
pub struct Wslb {
    pub child: Child,
    pub log: PathBuf,
}

impl Wslb {
    fn start(cfg: &Path, log: PathBuf, takeover: bool) -> Wslb {
        let mut args = vec![
            "run".to_string(),
            "--config".into(),
            cfg.display().to_string(),
        ];
        if takeover {
            args.push("--takeover".into());
        }
        let child = Command::new(targets::wslb_bin())
            .args(&args)
            // wslb::worker at debug: its "idle: spare buffers freed" lines show the trims.
            .env("WSLB_LOG", "info,wslb::worker=debug")
            .env("NO_COLOR", "1")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting wslb");
        Wslb { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig);
    }
}

/// The running system.
pub struct Setup {
    pub listen: SocketAddr,
    dir: TempDir,
    cfg: PathBuf,
    backends: Vec<Backend>,
    pub wslb: Wslb,
    /// Processes a takeover replaced, with their exit status once they exited.
    pub old: Vec<(Wslb, Option<std::process::ExitStatus>)>,
    pub baseline_fds: usize,
    rng: Rng,
}

/// What the controller did and measured.
#[derive(Default)]
pub struct Events {
    pub kills: u64,
    pub adds: u64,
    pub removes: u64,
    pub reloads: u64,
    /// Seconds from starting the new process to its "serving" line, and until the old one
    /// exited.
    pub takeover_ready_s: Option<f64>,
    pub takeover_old_gone_s: Option<f64>,
    /// (seconds since time zero, RSS of every wslb process alive, how many there were).
    pub rss: Vec<(f64, u64, usize)>,
    pub stall_waited_s: f64,
}

/// What the end of the run left.
pub struct Finish {
    pub fds_end: usize,
    pub fds_detail: String,
    pub logs: Vec<PathBuf>,
    pub old_exits: Vec<Option<i32>>,
    pub baseline_fds: usize,
    /// Whether the last wslb was still running at the end, and its exit status after the
    /// SIGTERM that stopped it.
    pub alive_at_end: bool,
    pub last_exit: Option<i32>,
}

impl Setup {
    pub fn start(seed: u64) -> Setup {
        let dir = TempDir::new("soak");
        let listen = targets::free_addr();
        let mut backends: Vec<Backend> = (0..POOL)
            .map(|i| Backend {
                addr: targets::free_addr(),
                life: 0,
                child: None,
                configured: i <= 3,
                removed_at: None,
                restart_at: None,
            })
            .collect();
        for (i, b) in backends.iter_mut().enumerate() {
            b.spawn(i);
        }
        for b in &backends {
            targets::wait_listening(b.addr);
        }
        let cfg = dir.0.join("wslb.toml");
        write_config(&cfg, listen, &backends, &dir.0);
        let mut s = Setup {
            listen,
            wslb: Wslb::start(&cfg, dir.0.join("wslb-0.log"), false),
            dir,
            cfg,
            backends,
            old: Vec::new(),
            baseline_fds: 0,
            rng: Rng::derive(seed, u64::MAX - 1, 0, 0),
        };
        targets::wait_listening(listen);
        // Its health checker, admin server and workers settle; then the fewest seen.
        std::thread::sleep(Duration::from_millis(1500));
        s.baseline_fds = (0..5)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(200));
                fd_count(s.wslb.pid())
            })
            .min()
            .unwrap();
        println!(
            "soak: wslb pid {} on {listen}, {} descriptors before any client; config {}",
            s.wslb.pid(),
            s.baseline_fds,
            s.cfg.display()
        );
        s
    }
}

/// wslb's config: the backends configured now, the upgrade socket for the takeover, short
/// drains. Written to a new file and renamed over the old, so wslb never reads half a file.
fn write_config(cfg: &Path, listen: SocketAddr, backends: &[Backend], dir: &Path) {
    let list: Vec<String> = backends
        .iter()
        .filter(|b| b.configured)
        .map(|b| format!("\"{}\"", b.addr))
        .collect();
    let text = format!(
        "listen = \"{listen}\"\nbackends = [{}]\nworkers = 2\nstats_interval_secs = 5\n\
         upgrade_socket = \"{}\"\n[timeouts]\nremoved_backend_drain_ms = {}\n\
         shutdown_grace_ms = {}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        list.join(", "),
        dir.join("upgrade.sock").display(),
        DRAIN.as_millis(),
        GRACE.as_millis(),
    );
    let tmp = cfg.with_extension("toml.new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, cfg).unwrap();
}

/// Descriptors a process holds now.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// The kinds of a process's descriptors (socket, anon_inode:[io_uring], ...), counted.
pub fn fd_kinds(pid: u32) -> String {
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    if let Ok(d) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in d.flatten() {
            let t = std::fs::read_link(e.path()).map_or("?".into(), |p| p.display().to_string());
            let kind = t.split(':').next().unwrap_or("?").to_string();
            let kind = if kind.starts_with('/') {
                "file".into()
            } else {
                kind
            };
            let kind = if t.starts_with("anon_inode:") {
                t
            } else {
                kind
            };
            *kinds.entry(kind).or_default() += 1;
        }
    }
    kinds
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn rss_bytes(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

impl Setup {
    /// Runs the plan from time zero until the run is over and the stall client is done.
    pub fn drive(&mut self, world: &World) -> Events {
        let t0 = *world.start.get().unwrap();
        let plan = &world.plan;
        let mut ev = Events::default();
        let (mut next_kill, mut next_reload) = (KILL_AT, RELOAD_AT);
        let mut next_sample = Duration::ZERO;
        let mut takeover: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let t = now - t0;
            if t >= plan.run {
                // Relaxed: a flag polled; nothing else is published through it.
                let stalled = !world.stall_done.load(Ordering::Relaxed);
                if !stalled || t >= plan.run + Duration::from_secs(60) {
                    ev.stall_waited_s = (t - plan.run).as_secs_f64();
                    return ev;
                }
            }
            if t >= next_sample {
                next_sample += Duration::from_secs(1);
                let mut pids = vec![self.wslb.pid()];
                pids.extend(self.old.iter().filter(|o| o.1.is_none()).map(|o| o.0.pid()));
                let rss = pids.iter().map(|&p| rss_bytes(p)).sum();
                ev.rss.push((t.as_secs_f64(), rss, pids.len()));
            }
            for i in 0..POOL {
                let b = &mut self.backends[i];
                if b.restart_at.is_some_and(|r| now >= r) {
                    b.restart_at = None;
                    b.life += 1;
                    b.spawn(i);
                }
            }
            if t >= next_kill && t < plan.run {
                next_kill += KILL_EVERY;
                self.kill_one(world, &mut ev, now);
            }
            let old_draining = self.old.iter().any(|o| o.1.is_none());
            if t >= next_reload && t < plan.run {
                next_reload += RELOAD_EVERY;
                // Not while two processes run: the config must be the one both read.
                if !old_draining {
                    self.reload(world, &mut ev, now);
                }
            }
            if takeover.is_none() && t >= plan.takeover_at {
                takeover = Some(now);
                world.takeover.lock().unwrap().started = Some(now);
                let n = self.old.len() + 1;
                let new = Wslb::start(&self.cfg, self.dir.0.join(format!("wslb-{n}.log")), true);
                let old = std::mem::replace(&mut self.wslb, new);
                println!(
                    "soak: takeover at {:.1} s: new wslb pid {}",
                    t.as_secs_f64(),
                    self.wslb.pid()
                );
                self.old.push((old, None));
            }
            if let Some(t1) = takeover
                && ev.takeover_ready_s.is_none()
                && std::fs::read_to_string(&self.wslb.log)
                    .is_ok_and(|l| l.contains("binary upgrade: serving"))
            {
                ev.takeover_ready_s = Some(t1.elapsed().as_secs_f64());
                world.takeover.lock().unwrap().ready = Some(now);
            }
            for o in self.old.iter_mut().filter(|o| o.1.is_none()) {
                if let Ok(Some(st)) = o.0.child.try_wait() {
                    o.1 = Some(st);
                    ev.takeover_old_gone_s = takeover.map(|t1| t1.elapsed().as_secs_f64());
                    println!("soak: old wslb exited ({st}) at {:.1} s", t.as_secs_f64());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILLs one rotating backend in the config (its kill noted first, so a client
    /// that sees the close finds it), to be started again after `RESTART_AFTER`.
    fn kill_one(&mut self, world: &World, ev: &mut Events, now: Instant) {
        let alive: Vec<usize> = (1..POOL)
            .filter(|&i| self.backends[i].configured && self.backends[i].restart_at.is_none())
            .collect();
        if alive.is_empty() {
            return;
        }
        let i = alive[self.rng.below(alive.len() as u64) as usize];
        let b = &mut self.backends[i];
        world.fates.lock().unwrap()[i].kills.push(now);
        if let Some(mut c) = b.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        b.restart_at = Some(now + RESTART_AFTER);
        ev.kills += 1;
    }

    /// Adds or removes one rotating backend, rewrites the config and sends SIGHUP.
    fn reload(&mut self, world: &World, ev: &mut Events, now: Instant) {
        let rotating = |b: &Backend| b.configured;
        let n = self.backends[1..].iter().filter(|b| rotating(b)).count();
        let can_add: Vec<usize> = (1..POOL)
            .filter(|&i| {
                let b = &self.backends[i];
                !b.configured && b.removed_at.is_none_or(|r| now >= r + READD_AFTER)
            })
            .collect();
        let add = match n {
            _ if can_add.is_empty() => false,
            n if n <= MIN_ROTATING => true,
            n if n >= MAX_ROTATING => false,
            _ => self.rng.below(2) == 0,
        };
        if add {
            let i = can_add[self.rng.below(can_add.len() as u64) as usize];
            self.backends[i].configured = true;
            ev.adds += 1;
        } else if n > MIN_ROTATING {
            let on: Vec<usize> = (1..POOL).filter(|&i| self.backends[i].configured).collect();
            let i = on[self.rng.below(on.len() as u64) as usize];
            world.fates.lock().unwrap()[i].removals.push(now);
            self.backends[i].configured = false;
            self.backends[i].removed_at = Some(now);
            ev.removes += 1;
        } else {
            return;
        }
        write_config(&self.cfg, self.listen, &self.backends, &self.dir.0);
        self.wslb.signal(nix::sys::signal::Signal::SIGHUP);
        ev.reloads += 1;
    }

    /// After the clients closed: waits (up to 20 s) for wslb's descriptors to come back to
    /// the baseline, then stops wslb (SIGTERM) and the backends.
    pub fn finish(mut self) -> Finish {
        let pid = self.wslb.pid();
        let t = Instant::now();
        let mut fds = fd_count(pid);
        while fds > self.baseline_fds && t.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(250));
            fds = fd_count(pid);
        }
        let fds_detail = fd_kinds(pid);
        let alive_at_end = matches!(self.wslb.child.try_wait(), Ok(None));
        self.wslb.signal(nix::sys::signal::Signal::SIGTERM);
        let last_exit = self.wslb.child.wait().ok().and_then(|s| s.code());
        for o in &mut self.old {
            if o.1.is_none() {
                let _ = o.0.child.kill();
                o.1 = o.0.child.wait().ok();
            }
        }
        for b in &mut self.backends {
            if let Some(mut c) = b.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let mut logs: Vec<PathBuf> = self.old.iter().map(|o| o.0.log.clone()).collect();
        logs.push(self.wslb.log.clone());
        // Kept: the temporary directory goes with `self`, the logs are copied out.
        let keep = std::env::temp_dir().join(format!("wslb-soak-logs-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&keep);
        let logs = logs
            .into_iter()
            .map(|l| {
                let to = keep.join(l.file_name().unwrap());
                let _ = std::fs::copy(&l, &to);
                to
            })
            .collect();
        Finish {
            fds_end: fds,
            fds_detail,
            logs,
            old_exits: self
                .old
                .iter()
                .map(|o| o.1.and_then(|s| s.code()))
                .collect(),
            baseline_fds: self.baseline_fds,
            alive_at_end,
            last_exit,
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = self.wslb.child.kill();
        let _ = self.wslb.child.wait();
        for b in &mut self.backends {
            if let Some(mut c) = b.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
