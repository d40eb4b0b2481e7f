//! Per-worker counters, written only by their own worker and summed when someone reads them.

use std::sync::atomic::{AtomicU64, Ordering};

/// Things that happen to connections, counted per worker for the stats line and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// wslb sent a keepalive ping to a quiet peer.
    KeepalivePing,
    /// A peer answered nothing within the idle timeout and was given up.
    DeadPeer,
    /// A connection silent both ways was closed (idle timeout without pings).
    IdleClose,
    /// A connection to a backend removed by a reload got close 1012 at its deadline.
    RemovedBackendClose,
    /// A client broke the protocol (bad frame).
    ClientProtocolError,
    /// A backend broke the protocol.
    BackendProtocolError,
    /// A client got 503 because every backend was down.
    AllBackendsDown,
    /// A client got 502: no backend could be reached, or one failed the handshake.
    BadGateway,
}

impl Event {
    const ALL: [Event; 8] = [
        Event::KeepalivePing,
        Event::DeadPeer,
        Event::IdleClose,
        Event::RemovedBackendClose,
        Event::ClientProtocolError,
        Event::BackendProtocolError,
        Event::AllBackendsDown,
        Event::BadGateway,
    ];

    fn name(self) -> &'static str {
        match self {
            Event::KeepalivePing => "pings",
            Event::DeadPeer => "dead peers",
            Event::IdleClose => "idle closes",
            Event::RemovedBackendClose => "removed-backend closes",
            Event::ClientProtocolError => "client protocol errors",
            Event::BackendProtocolError => "backend protocol errors",
            Event::AllBackendsDown => "503 all down",
            Event::BadGateway => "502",
        }
    }
}

/// One worker's connection counters. Each is written by one thread only (its worker);
/// `Relaxed` because readers only want a snapshot.
///
/// The workers' stats are allocated one after another at startup, so without the alignment
/// neighbouring workers' counters would share cache lines and every accept on one core
/// would steal the line from the other (false sharing). 128 bytes, not 64: on x86 the
/// adjacent-line prefetcher pulls 64-byte lines in 128-byte-aligned pairs, so two workers
/// on the two halves of one pair would still contend. With the alignment the struct is a
/// whole number of 128-byte blocks and no other allocation can share them. The one reader
/// (the stats line, every few seconds) only makes the writer re-own the line once per read.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct WorkerStats {
    accepted: AtomicU64,
    open: AtomicU64,
    events: [AtomicU64; Event::ALL.len()],
}

impl WorkerStats {
    pub fn count(&self, e: Event) {
        self.events[e as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn events(&self, e: Event) -> u64 {
        self.events[e as usize].load(Ordering::Relaxed)
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Counts an accepted connection as open until the returned guard drops.
    pub fn track(self: &std::sync::Arc<Self>) -> OpenGuard {
        // Single writer: a load+store pair would do, but fetch_add is as cheap uncontended.
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenGuard(self.clone())
    }
}

/// Decrements the worker's open count when the connection's task ends.
pub struct OpenGuard(std::sync::Arc<WorkerStats>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One line summing the workers' counters, e.g.
/// `open 9900 (4951 4949), accepted 10000 (5003 4997), spread 1.00; pings 12, dead peers 1`.
/// The spread is the busiest worker's accepted count over the mean: how evenly
/// SO_REUSEPORT's hash placed connections (1.00 is perfect; with N workers it cannot exceed
/// N). Events (see [`Event`]) follow, totals since start, only those that happened.
pub fn summary(stats: &[std::sync::Arc<WorkerStats>]) -> String {
    let open: Vec<u64> = stats.iter().map(|s| s.open()).collect();
    let accepted: Vec<u64> = stats.iter().map(|s| s.accepted()).collect();
    let list = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(" ");
    let total: u64 = accepted.iter().sum();
    let spread = if total == 0 {
        1.0
    } else {
        *accepted.iter().max().unwrap() as f64 * accepted.len() as f64 / total as f64
    };
    let events: Vec<String> = Event::ALL
        .iter()
        .map(|&e| (e, stats.iter().map(|s| s.events(e)).sum::<u64>()))
        .filter(|&(_, n)| n > 0)
        .map(|(e, n)| format!("{} {n}", e.name()))
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
pub fn log_every(stats: Vec<std::sync::Arc<WorkerStats>>, interval: std::time::Duration) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Regression: neighbouring workers' `WorkerStats` shared cache lines (false sharing)
    /// while a comment said the line was never contended.
    #[test]
    fn each_workers_stats_own_whole_128_byte_blocks() {
        assert_eq!(std::mem::align_of::<WorkerStats>(), 128);
        assert_eq!(std::mem::size_of::<WorkerStats>() % 128, 0);
        // Allocated the way `lib.rs` does, back to back: no two share a 128-byte block.
        let w: Vec<Arc<WorkerStats>> = (0..4).map(|_| Arc::default()).collect();
        let mut blocks: Vec<usize> = w.iter().map(|s| Arc::as_ptr(s) as usize).collect();
        assert!(blocks.iter().all(|&a| a % 128 == 0), "{blocks:x?}");
        blocks.sort_unstable();
        assert!(
            blocks
                .windows(2)
                .all(|p| p[1] - p[0] >= std::mem::size_of::<WorkerStats>()),
            "{blocks:x?}"
        );
    }

    #[test]
    fn summary_sums_workers_and_measures_spread() {
        let w: Vec<Arc<WorkerStats>> = (0..2).map(|_| Arc::default()).collect();
        assert_eq!(summary(&w), "open 0 (0 0), accepted 0 (0 0), spread 1.00");
        let guards: Vec<_> = (0..3).map(|_| w[0].track()).chain([w[1].track()]).collect();
        assert_eq!(summary(&w), "open 4 (3 1), accepted 4 (3 1), spread 1.50");
        drop(guards);
        assert_eq!(summary(&w), "open 0 (0 0), accepted 4 (3 1), spread 1.50");
        w[0].count(Event::KeepalivePing);
        w[1].count(Event::KeepalivePing);
        w[1].count(Event::BadGateway);
        assert_eq!(
            summary(&w),
            "open 0 (0 0), accepted 4 (3 1), spread 1.50; pings 2, 502 1"
        );
    }
}
