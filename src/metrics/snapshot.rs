//! Reading the counters: every worker's summed into [`Totals`], with the backends' and the
//! instance's state into a [`Snapshot`], at the moment someone asks (a scrape, the stats
//! line, the status page). Reads are `Relaxed`: a snapshot may mix counts a few events
//! apart, never a torn number.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{
    CLOSE_CODES, ClosedBy, Event, HANDSHAKE_BUCKETS, Process, Rejected, TLS_VERSIONS, TlsFailure,
    WorkerStats,
};
use crate::frame::Side;

/// Every worker's counters, summed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub accepted: u64,
    pub open: u64,
    pub events: [u64; Event::ALL.len()],
    pub rejected: [u64; Rejected::ALL.len()],
    /// By the side that sent them ([`Side::index`]).
    pub bytes: [u64; 2],
    pub frames: [u64; 2],
    /// By [`ClosedBy`] and code bucket (`metrics::code_label`).
    pub closes: [[u64; CLOSE_CODES]; 3],
    /// Per bucket of `HANDSHAKE_BUCKETS`, then +Inf; not cumulative.
    pub handshake_buckets: [u64; HANDSHAKE_BUCKETS.len() + 1],
    pub handshake_sum_secs: f64,
    /// Completed TLS handshakes by version ([`TLS_VERSIONS`]), failed ones by reason
    /// ([`TlsFailure`]).
    pub tls_handshakes: [u64; TLS_VERSIONS.len()],
    pub tls_failures: [u64; TlsFailure::ALL.len()],
    /// Plain HTTP responses by class (1xx..5xx), and requests on reused backend connections.
    pub http: [u64; 5],
    pub http_reused: u64,
    /// Bytes the receive rings received.
    pub ring_bytes: u64,
}

impl Totals {
    pub fn of(workers: &[Arc<WorkerStats>]) -> Self {
        let mut t = Totals::default();
        let add = |into: &mut [u64], from: &[std::sync::atomic::AtomicU64]| {
            for (i, c) in into.iter_mut().zip(from) {
                *i += c.load(Ordering::Relaxed);
            }
        };
        let mut micros = 0;
        for w in workers {
            t.accepted += WorkerStats::load(&w.accepted);
            t.open += WorkerStats::load(&w.open);
            add(&mut t.events, &w.events);
            add(&mut t.rejected, &w.rejected);
            add(&mut t.bytes, &w.bytes);
            add(&mut t.frames, &w.frames);
            for (by, row) in t.closes.iter_mut().zip(&w.closes) {
                add(by, row);
            }
            add(&mut t.handshake_buckets, &w.handshake.buckets);
            micros += WorkerStats::load(&w.handshake.sum_micros);
            add(&mut t.tls_handshakes, &w.tls_handshakes);
            add(&mut t.tls_failures, &w.tls_failures);
            add(&mut t.http, &w.http);
            t.http_reused += WorkerStats::load(&w.http_reused);
            t.ring_bytes += WorkerStats::load(&w.ring_bytes);
        }
        t.handshake_sum_secs = micros as f64 / 1e6;
        t
    }

    pub fn event(&self, e: Event) -> u64 {
        self.events[e as usize]
    }

    pub fn rejected(&self, r: Rejected) -> u64 {
        self.rejected[r as usize]
    }

    pub fn bytes(&self, from: Side) -> u64 {
        self.bytes[from.index()]
    }

    pub fn frames(&self, from: Side) -> u64 {
        self.frames[from.index()]
    }

    /// Closes sent by `by` with `code` (`None`: without a code).
    pub fn closes(&self, by: ClosedBy, code: Option<u16>) -> u64 {
        self.closes[by as usize][super::code_bucket(code)]
    }

    pub fn handshakes(&self) -> u64 {
        self.handshake_buckets.iter().sum()
    }
}

/// One backend as the metrics and `/backends` show it (made by `balancer::Pool` and
/// `routes::Router`'s `backend_views`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendView {
    /// The route's name (`default` for the top-level `backends`).
    pub route: String,
    pub addr: SocketAddr,
    pub up: bool,
    pub open: u64,
    pub selected: u64,
    /// By kind: connect, handshake, health check (`balancer::Failure`).
    pub failures: [u64; 3],
}

/// One configured certificate, as the metrics and the log describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub file: PathBuf,
    /// Its subjectAltName DNS names (the SNI names it serves).
    pub names: Vec<String>,
    /// notAfter, in Unix seconds.
    pub not_after: i64,
}

/// One route's rebalancing figures (`balancer/rebalance.rs` keeps them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RebalanceStats {
    pub route: String,
    /// The spread the last pass saw.
    pub spread: f64,
    /// Passes that closed connections.
    pub passes: u64,
    /// Connections the workers marked for close (1012) over those passes.
    pub moved: u64,
}

/// Everything a scrape renders.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub totals: Totals,
    pub backends: Vec<BackendView>,
    pub draining: bool,
    /// Reloads applied and rejected.
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// Unix time of the last successful reload (or of the start).
    pub last_reload_success: f64,
    pub io_driver: &'static str,
    pub process: Process,
    /// The TLS certificates in use (empty without TLS).
    pub certificates: Vec<CertInfo>,
    /// Each route's rebalancing figures (empty while rebalancing never ran).
    pub rebalance: Vec<RebalanceStats>,
}

/// One line summing the workers' counters, e.g.
/// `open 9900 (4951 4949), accepted 10000 (5003 4997), spread 1.00; pings 12, dead peers 1`.
/// The spread is the busiest worker's accepted count over the mean: how evenly
/// SO_REUSEPORT's hash placed connections (1.00 is perfect; with N workers it cannot exceed
/// N). Events (see [`Event`]) follow, totals since start, only those that happened.
pub fn summary(stats: &[Arc<WorkerStats>]) -> String {
    let open: Vec<u64> = stats.iter().map(|s| s.open()).collect();
    let accepted: Vec<u64> = stats.iter().map(|s| s.accepted()).collect();
    let list = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(" ");
    let total: u64 = accepted.iter().sum();
    let spread = if total == 0 {
        1.0
    } else {
        *accepted.iter().max().unwrap() as f64 * accepted.len() as f64 / total as f64
    };
    // Events, then the answers wslb gave for its backends (the 503s and 502s are counted
    // once, as rejections, and shown here under their status).
    let t = Totals::of(stats);
    let events: Vec<String> = Event::ALL
        .iter()
        .map(|&e| (e.name(), t.event(e)))
        .chain([
            ("503 all down", t.rejected(Rejected::AllBackendsDown)),
            ("502", t.rejected(Rejected::BackendFailed)),
        ])
        .filter(|&(_, n)| n > 0)
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    format!(
        "open {} ({}), accepted {} ({}), spread {spread:.2}{}{}",
        open.iter().sum::<u64>(),
        list(&open),
        total,
        list(&accepted),
        if events.is_empty() { "" } else { "; " },
        events.join(", ")
    )
}

/// Logs [`summary`] every `interval` from a thread of its own, when it changed. The
/// counters are read with Relaxed loads: a line may mix counts a few connections apart.
pub fn log_every(stats: Vec<Arc<WorkerStats>>, interval: std::time::Duration) {
    let spawned = std::thread::Builder::new()
        .name("wslb-stats".into())
        .spawn(move || {
            let mut last = String::new();
            loop {
                std::thread::sleep(interval);
                let line = summary(&stats);
                if line != last {
                    tracing::info!("stats: {line}");
                    last = line;
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the stats thread: {e}; no stats lines");
    }
}
