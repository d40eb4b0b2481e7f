//! Per-worker counters, written only by their own worker and summed when someone reads them.

use std::sync::atomic::{AtomicU64, Ordering};

/// One worker's connection counters. Each is written by one thread only (its worker), so
/// the cache line is never contended; `Relaxed` because readers only want a snapshot.
#[derive(Debug, Default)]
pub struct WorkerStats {
    accepted: AtomicU64,
    open: AtomicU64,
}

impl WorkerStats {
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
/// `open 9900 (4951 4949), accepted 10000 (5003 4997), spread 1.00`. The spread is the
/// busiest worker's accepted count over the mean: how evenly SO_REUSEPORT's hash placed
/// connections (1.00 is perfect; with N workers it cannot exceed N).
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
    format!(
        "open {} ({}), accepted {} ({}), spread {spread:.2}",
        open.iter().sum::<u64>(),
        list(&open),
        total,
        list(&accepted),
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

    #[test]
    fn summary_sums_workers_and_measures_spread() {
        let w: Vec<Arc<WorkerStats>> = (0..2).map(|_| Arc::default()).collect();
        assert_eq!(summary(&w), "open 0 (0 0), accepted 0 (0 0), spread 1.00");
        let guards: Vec<_> = (0..3).map(|_| w[0].track()).chain([w[1].track()]).collect();
        assert_eq!(summary(&w), "open 4 (3 1), accepted 4 (3 1), spread 1.50");
        drop(guards);
        assert_eq!(summary(&w), "open 0 (0 0), accepted 4 (3 1), spread 1.50");
    }
}
