//! The soak (`--scenarios soak`): wslb alone, for minutes, under traffic that checks every
//! echo, while its backends are killed, reloaded in and out, and wslb itself is replaced by
//! a binary takeover. It is built to catch the next data-path bug: corrupted, lost or
//! reordered messages, connections closed for no documented reason, memory or descriptors
//! that do not come back, panics.
//!
//!   cargo bench --bench load -- --scenarios soak [--minutes 10] [--connections 9900]
//!                                [--seed N] [--client-threads 2]
//!
//! What runs (times from the moment every connection is up):
//! - `--connections` clients (client.rs), each sending numbered messages of random size
//!   (1 B to 64 KiB, text or binary, see msg.rs) with idle spells of 0.5-3 s between them,
//!   and checking each echo's hash, order and opcode. Every 20 s all clients pause
//!   together for 5 s (`QUIET_*`), so that wslb's workers go idle and trim their
//!   buffers (after 500 ms without traffic), and the first messages after it meet the
//!   trimmed buffers. One client in 50 sends a message begun just before a pause in two
//!   parts around it (conn.rs `SPLITTERS`), so wslb holds half a frame while it trims.
//!   10% of clients per minute close (1000) and reconnect on their own.
//! - Backends (echo.rs) are this binary started again: index 0 is never killed or removed
//!   (the stall client lives there); 1-6 rotate. One of them is SIGKILLed every 20 s (at
//!   5 s, 25 s, ...) and started again 1 s later; every 5 s (at 0.5 s, 5.5 s, ...) the
//!   config file is rewritten with one backend added or removed, then SIGHUP.
//!   `removed_backend_drain_ms` is 3 s, so removed backends' connections get 1012 soon.
//! - At half time a second wslb starts with `--takeover` (upgrade_socket in the config);
//!   the old one drains (`shutdown_grace_ms` 5 s, then 1001) and must exit 0.
//! - Slot 0 is the stall client: once on backend 0, it stops reading for 30 s while it
//!   keeps sending, then reads again; every echo must arrive intact and in order.
//!
//! Checks (report.rs), printed as a table; the bench exits 1 if any fails. The README's
//! Performance section says what each check means and what a full run should show.

mod chaos;
mod client;
mod conn;
pub mod echo;
mod msg;
mod report;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The soak's command line (everything after `--`).
pub struct Args {
    pub minutes: f64,
    pub conns: usize,
    pub seed: u64,
    pub threads: usize,
}

/// If the command line asks for the soak, runs it and returns the exit code. The soak
/// runs alone: it takes minutes and its own wslb, so it is not one of the scenarios the
/// rounds interleave.
pub fn run_if_asked() -> Option<i32> {
    let v: Vec<String> = std::env::args().skip(1).collect();
    let i = v.iter().position(|a| a == "--scenarios")?;
    if v.get(i + 1).map(String::as_str) != Some("soak") {
        if v.get(i + 1)
            .is_some_and(|s| s.split(',').any(|n| n == "soak"))
        {
            eprintln!("load bench: the soak runs alone (--scenarios soak)");
            return Some(2);
        }
        return None;
    }
    let seed_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let mut a = Args {
        minutes: 10.0,
        conns: 9900,
        seed: seed_now,
        threads: 2,
    };
    let mut j = 0;
    while j < v.len() {
        let val = v.get(j + 1).cloned().unwrap_or_default();
        let bad = |what: &str| -> ! {
            eprintln!("load bench: {} needs {what}", v[j]);
            std::process::exit(2)
        };
        match v[j].as_str() {
            "--scenarios" => {}
            "--bench" => {
                j += 1;
                continue;
            }
            "--minutes" => a.minutes = val.parse().unwrap_or_else(|_| bad("a number")),
            "--connections" | "--idle-conns" => {
                a.conns = val.parse().unwrap_or_else(|_| bad("a count"))
            }
            "--seed" => a.seed = val.parse().unwrap_or_else(|_| bad("an integer")),
            "--client-threads" => a.threads = val.parse().unwrap_or_else(|_| bad("a count")),
            other => {
                eprintln!("load bench: {other} is not a soak flag (see benches/load/soak/mod.rs)");
                return Some(2);
            }
        }
        j += 2;
    }
    a.threads = a.threads.clamp(1, a.conns.max(1));
    Some(run(a))
}

/// Every this long all clients pause together...
pub const QUIET_EVERY: Duration = Duration::from_secs(20);
/// ...for this long (from 15 s to 20 s of each 20): ten of the worker's 500 ms trim
/// checks. Workers trim 0.5-1 s into the phase, but on this shared machine one run saw
/// them 2.3 s in; 5 s leaves room for that and for an RSS sample after it.
pub const QUIET_FOR: Duration = Duration::from_secs(5);
/// How late into a quiet phase a send still counts as a client thread running behind
/// rather than a client that did not pause (see `conn.rs`).
pub const QUIET_LAG: Duration = Duration::from_millis(250);
/// How long the stall client does not read.
pub const STALL_FOR: Duration = Duration::from_secs(30);
/// `timeouts.removed_backend_drain_ms`: removed backends' connections get 1012 this long
/// after the reload, well within the run.
pub const DRAIN: Duration = Duration::from_secs(3);
/// `timeouts.shutdown_grace_ms` of the process a takeover replaces.
pub const GRACE: Duration = Duration::from_secs(5);
/// A connection on a killed or removed backend still open this long after its close was
/// due missed the close.
pub const MISSED_AFTER: Duration = Duration::from_secs(5);

/// When things happen, as offsets from the moment every connection was up.
pub struct Plan {
    pub run: Duration,
    pub takeover_at: Duration,
    pub stall_at: Duration,
    /// Reconnects per client per minute, on the clients' own initiative.
    pub reconnect_per_min: f64,
    /// The first and the last window compared for RSS.
    pub rss_first: (Duration, Duration),
    pub rss_last: (Duration, Duration),
}

impl Plan {
    fn new(minutes: f64) -> Plan {
        let run = Duration::from_secs_f64(minutes * 60.0);
        // Warm-up, and the RSS windows: a minute each, or a fifth of a short run, in whole
        // quiet cycles, so that both hold the same share of quiet time.
        let cycles = (run / 5).as_secs() / QUIET_EVERY.as_secs();
        let w = QUIET_EVERY * (cycles as u32).clamp(1, 3);
        let takeover_at = run / 2;
        // The stall after the first RSS window if it fits before the takeover with 5 s to
        // spare, else once the old process has drained (its grace and 2 s).
        let stall_at = if w * 2 + STALL_FOR + Duration::from_secs(5) < takeover_at {
            w * 2
        } else {
            takeover_at + GRACE + Duration::from_secs(2)
        };
        Plan {
            run,
            takeover_at,
            stall_at,
            reconnect_per_min: 0.1,
            rss_first: (w, w * 2),
            rss_last: (run - w, run),
        }
    }
}

/// What happened to one backend, for judging closes: `kills[life]` is when that life of it
/// was killed, `removals` when reloads took it out of the config.
#[derive(Default)]
pub struct Fate {
    pub kills: Vec<Instant>,
    pub removals: Vec<Instant>,
}

#[derive(Default)]
pub struct Takeover {
    pub started: Option<Instant>,
    /// The new process said it serves (its log line): the old one stops accepting then.
    pub ready: Option<Instant>,
}

/// State the controller and the client threads share. Written by the controller a few
/// times a second at most, read by a client when one of its connections closes or once per
/// message; a bench, so plain mutexes.
pub struct World {
    pub addr: SocketAddr,
    pub seed: u64,
    pub plan: Plan,
    /// Every connection was up: the plan's time zero.
    pub start: OnceLock<Instant>,
    pub ready: AtomicUsize,
    /// The run is over: clients close and stop.
    pub stop: AtomicBool,
    /// The stall client has read everything it was sent during the stall (or gave up).
    pub stall_done: AtomicBool,
    pub fates: Mutex<Vec<Fate>>,
    pub takeover: Mutex<Takeover>,
    /// When the stall client stopped reading and until when: wslb holds its backlog then,
    /// so the RSS windows leave that span out.
    pub stall_span: Mutex<Option<(Instant, Instant)>>,
}

/// Why a connection closing was expected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    Killed,
    Removed,
    Takeover,
}

impl World {
    /// Until when all clients pause, if now is in a quiet phase.
    pub fn quiet_until(&self, now: Instant) -> Option<Instant> {
        let t0 = *self.start.get()?;
        let into = now.checked_duration_since(t0)?;
        let phase = Duration::from_nanos((into.as_nanos() % QUIET_EVERY.as_nanos()) as u64);
        (phase >= QUIET_EVERY - QUIET_FOR).then(|| now + (QUIET_EVERY - phase))
    }

    /// How long until the next quiet phase begins (zero in one, or before time zero).
    pub fn until_quiet(&self, now: Instant) -> Duration {
        let Some(into) = self
            .start
            .get()
            .and_then(|&t0| now.checked_duration_since(t0))
        else {
            return Duration::MAX;
        };
        let phase = Duration::from_nanos((into.as_nanos() % QUIET_EVERY.as_nanos()) as u64);
        (QUIET_EVERY - QUIET_FOR).saturating_sub(phase)
    }

    /// When the close of a connection to `backend` (index, life) opened at `opened` was
    /// due, and why, if anything that closes connections happened to it. Removals count
    /// if they came after the connection opened, or up to `DRAIN` before: a connection
    /// wslb placed while it had not yet read the new config (a loaded machine can delay
    /// that by a second or more) is retired with the others. A removed backend is added
    /// back no sooner than 6 s later (chaos.rs), so this never takes in a connection made
    /// after it returned.
    pub fn close_due(&self, backend: (usize, u32), opened: Instant) -> Option<(Instant, Cause)> {
        let fates = self.fates.lock().unwrap();
        let f = fates.get(backend.0)?;
        let killed = f.kills.get(backend.1 as usize).map(|&t| (t, Cause::Killed));
        let removed = f
            .removals
            .iter()
            .find(|&&r| opened < r + DRAIN)
            .map(|&r| (r + DRAIN, Cause::Removed));
        match (killed, removed) {
            (Some(k), Some(r)) => Some(if k.0 <= r.0 { k } else { r }),
            (k, r) => k.or(r),
        }
    }

    /// Whether a 1001 now is the drain after the takeover: the connection was accepted by
    /// the old process (opened before the new one served, plus 1 s for accepts in flight).
    pub fn takeover_close(&self, opened: Instant) -> bool {
        let t = self.takeover.lock().unwrap();
        t.started.is_some() && t.ready.is_none_or(|r| opened < r + Duration::from_secs(1))
    }
}

fn run(a: Args) -> i32 {
    let plan = Plan::new(a.minutes);
    println!(
        "soak: seed {} (--seed {} repeats it); {} connections over {} client threads, {} min; \
         takeover at {:.0} s, stall at {:.0} s; {} cores",
        a.seed,
        a.seed,
        a.conns,
        a.threads,
        a.minutes,
        plan.takeover_at.as_secs_f64(),
        plan.stall_at.as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let mut setup = chaos::Setup::start(a.seed);
    let world = Arc::new(World {
        addr: setup.listen,
        seed: a.seed,
        plan,
        start: OnceLock::new(),
        ready: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        stall_done: AtomicBool::new(false),
        fates: Mutex::new((0..chaos::POOL).map(|_| Fate::default()).collect()),
        takeover: Mutex::new(Takeover::default()),
        stall_span: Mutex::new(None),
    });
    let threads: Vec<_> = (0..a.threads)
        .map(|t| {
            let slots: Vec<usize> = (t..a.conns).step_by(a.threads).collect();
            let w = world.clone();
            std::thread::spawn(move || client::run_thread(w, slots))
        })
        .collect();
    // Up to two minutes for every connection to come up (9,900 take ~10 s here).
    let t_up = Instant::now();
    while world.ready.load(Ordering::Relaxed) < a.conns && t_up.elapsed() < Duration::from_secs(120)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let up = world.ready.load(Ordering::Relaxed);
    println!(
        "soak: {up} of {} connections up in {:.1} s",
        a.conns,
        t_up.elapsed().as_secs_f64()
    );
    world.start.set(Instant::now()).unwrap();
    let day = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() % 86400.0);
    println!(
        "soak: time zero at {:02}:{:02}:{:06.3} UTC (as in wslb's log lines)",
        (day / 3600.0) as u32,
        (day % 3600.0 / 60.0) as u32,
        day % 60.0
    );
    let events = setup.drive(&world);
    world.stop.store(true, Ordering::Relaxed);
    let mut tally = client::Tally::default();
    for t in threads {
        tally.merge(t.join().expect("a client thread panicked"));
    }
    tally.never_up = (a.conns - up) as u64;
    let end = setup.finish();
    report::report(&a, &world, &tally, &events, &end)
}
