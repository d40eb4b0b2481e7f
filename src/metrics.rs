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
