//! The admin server and its status page over a made-up instance whose counters move: three
//! backends (the third down), connections and frames at a rate that wanders. For looking
//! at the page and for `tests/browser/`, which drives it.
//!
//! ```sh
//! cargo run --example admin_demo                    # prints: admin http://127.0.0.1:PORT/
//! cargo run --example admin_demo -- 127.0.0.1:9091
//! ```
//!
//! Commands on stdin, one a line: `drain`, `undrain`, `down N`, `up N` (backend N from 1).
//! End of stdin stops it.

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use wslb::admin::{self, AdminView};
use wslb::metrics::{BackendView, Process, Snapshot, Totals, unix_now};

struct Demo {
    start: Instant,
    started_at: f64,
    draining: AtomicBool,
    /// Each backend's health, as set from stdin.
    up: Mutex<[bool; 3]>,
}

const ADDRS: [&str; 3] = ["10.0.0.11:9000", "10.0.0.12:9000", "10.0.0.13:9000"];

impl Demo {
    /// Counters as smooth functions of the time since start, so every fetch sees them
    /// moved: connections at 40/s +- 15, frames at 2,400/s +- 600.
    fn totals(t: f64) -> Totals {
        let wave = |period: f64, amp: f64| amp * period * (1.0 - (t / period).cos());
        let accepted = (40.0 * t + wave(3.0, 15.0)) as u64;
        let frames = 2_400.0 * t + wave(5.0, 600.0);
        let mut totals = Totals {
            accepted,
            open: (350.0 + 40.0 * (t / 7.0).sin()) as u64,
            frames: [(frames * 0.55) as u64, (frames * 0.45) as u64],
            bytes: [
                (frames * 0.55 * 180.0) as u64,
                (frames * 0.45 * 420.0) as u64,
            ],
            handshake_sum_secs: accepted as f64 * 0.0012,
            ..Totals::default()
        };
        totals.handshake_buckets[2] = accepted;
        totals
    }
}

impl AdminView for Demo {
    fn snapshot(&self) -> Snapshot {
        let t = self.start.elapsed().as_secs_f64();
        let totals = Demo::totals(t);
        let up = *self.up.lock().unwrap();
        // The open connections spread over the backends that are up, unevenly.
        let weights = [0.45, 0.35, 0.20];
        let live: f64 = weights
            .iter()
            .zip(up)
            .filter(|(_, u)| *u)
            .map(|(w, _)| w)
            .sum();
        let backends = ADDRS
            .iter()
            .zip(up)
            .zip(weights)
            .enumerate()
            .map(|(i, ((addr, up), w))| BackendView {
                route: "default".into(),
                addr: addr.parse().unwrap(),
                up,
                open: if up {
                    (totals.open as f64 * w / live) as u64
                } else {
                    0
                },
                selected: (totals.accepted as f64 * w) as u64,
                failures: [i as u64, 0, if up { 0 } else { (t / 2.0) as u64 }],
            })
            .collect();
        Snapshot {
            rebalance: Vec::new(),
            totals,
            backends,
            draining: self.draining.load(Ordering::Relaxed),
            reloads_ok: 1,
            reloads_failed: 0,
            last_reload_success: self.started_at,
            io_driver: "io_uring",
            process: Process::read(),
            certificates: Vec::new(),
        }
    }

    fn ready(&self) -> Result<(), String> {
        if self.draining.load(Ordering::Relaxed) {
            Err("draining".into())
        } else if !self.up.lock().unwrap().iter().any(|&u| u) {
            Err("every backend is down".into())
        } else {
            Ok(())
        }
    }
}

fn main() -> std::io::Result<()> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into())
        .parse()
        .map_err(|e| std::io::Error::other(format!("listen address: {e}")))?;
    admin::check_listen(listen, false).map_err(std::io::Error::other)?;
    let demo = Arc::new(Demo {
        start: Instant::now(),
        started_at: unix_now(),
        draining: AtomicBool::new(false),
        up: Mutex::new([true, true, false]),
    });
    let server = admin::spawn(listen, demo.clone())?;
    println!("admin http://{}/", server.local_addr());
    std::io::stdout().flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let mut words = line.split_whitespace();
        let backend = |w: Option<&str>| {
            w.and_then(|n| n.parse::<usize>().ok())
                .filter(|n| (1..=3).contains(n))
        };
        match (words.next(), words.next()) {
            (Some("drain"), None) => demo.draining.store(true, Ordering::Relaxed),
            (Some("undrain"), None) => demo.draining.store(false, Ordering::Relaxed),
            (Some(cmd @ ("up" | "down")), n) if backend(n).is_some() => {
                demo.up.lock().unwrap()[backend(n).unwrap() - 1] = cmd == "up";
            }
            _ => {
                eprintln!("commands: drain, undrain, down N, up N (N = 1..3)");
                continue;
            }
        }
        // The test waits for this line before it looks at the page.
        println!("ok {line}");
        std::io::stdout().flush()?;
    }
    drop(server);
    Ok(())
}
