//! Graceful shutdown: stop accepting, let connections finish, then "going away" closes.
//!
//! `wslb run` drains on SIGTERM or SIGINT (see `main.rs`), in three steps driven from the
//! main thread through a [`Drainer`]:
//! 1. **Stop accepting.** Each worker's accept loop sees the admission flag cleared and
//!    ends, dropping its listener; the main thread shuts the listening sockets down so a
//!    pending accept returns at once. With `net.ipv4.tcp_migrate_req = 1` connections still
//!    queued move to a listener that remains (a new wslb in a handover), else they reset.
//! 2. **Grace.** Open connections carry on untouched for `timeouts.shutdown_grace_ms`;
//!    most clients finish or reconnect elsewhere on their own.
//! 3. **Going away.** Every relay still open sends close 1001 ("going away") to both its
//!    client and its backend, each at a frame boundary (nothing is cut mid-frame), and the
//!    close handshakes get `close_grace_ms` to finish. Then the process exits 0.
//!
//! The message reaches the workers as an atomic flag; each worker's watcher task (see
//! `relay/registry.rs`) turns it into a worker-local flag and wakes every relay registered
//! with that worker, so an idle relay (parked in a readiness wait) acts on it at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::listener::ConnectionLimit;
use crate::metrics::WorkerStats;

/// Shared by the main thread and all workers of one instance.
#[derive(Debug, Default)]
pub struct DrainSignal {
    going_away: AtomicBool,
}

impl DrainSignal {
    pub fn going_away(&self) -> bool {
        // Relaxed: the flag publishes nothing else; a worker seeing it 50 ms late is fine.
        self.going_away.load(Ordering::Relaxed)
    }
}

/// What a drain came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Connections open when the drain started.
    pub open_at_start: u64,
    /// Connections that were still open when the grace ended and got close 1001.
    pub sent_going_away: u64,
    /// Connections still open at the hard deadline (their sockets close with the process).
    pub left_open: u64,
}

/// Drives a drain from outside the workers (the main thread, or a test).
pub struct Drainer {
    pub(crate) admission: Arc<ConnectionLimit>,
    pub(crate) listeners: Vec<std::net::TcpListener>,
    pub(crate) signal: Arc<DrainSignal>,
    pub(crate) stats: Vec<Arc<WorkerStats>>,
}

impl Drainer {
    fn open(&self) -> u64 {
        self.stats.iter().map(|s| s.open()).sum()
    }

    fn wait_closed(&self, until: Instant) -> bool {
        while self.open() > 0 {
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Runs the three steps; returns when every connection is closed or the hard deadline
    /// (`grace + close_grace + 1 s`) has passed.
    pub fn drain(self, grace: Duration, close_grace: Duration) -> DrainReport {
        self.run(grace, close_grace, true)
    }

    /// The drain after a binary upgrade: the same, except that the listening sockets,
    /// which the new process now accepts on, are left as they are; only this process's
    /// accept loops stop (their pending accepts are cancelled).
    pub fn drain_after_handover(self, grace: Duration, close_grace: Duration) -> DrainReport {
        self.run(grace, close_grace, false)
    }

    fn run(self, grace: Duration, close_grace: Duration, shut_listeners: bool) -> DrainReport {
        let open_at_start = self.open();
        self.admission.stop_accepting();
        for l in self.listeners.iter().filter(|_| shut_listeners) {
            // Resets what waits in the accept queues at once (a client then retries
            // elsewhere instead of waiting for the exit). These are duplicates of the
            // workers' descriptors, so the socket is shut down even if a worker already
            // dropped its own, and no reused descriptor number can be hit.
            let _ = socket2::SockRef::from(l).shutdown(std::net::Shutdown::Read);
        }
        tracing::info!(
            "draining: stopped accepting; {open_at_start} connections open, {} ms to finish",
            grace.as_millis()
        );
        let start = Instant::now();
        if self.wait_closed(start + grace) {
            return DrainReport {
                open_at_start,
                sent_going_away: 0,
                left_open: 0,
            };
        }
        let sent_going_away = self.open();
        tracing::info!(
            "grace over: sending close 1001 (going away) to {sent_going_away} connections"
        );
        self.signal.going_away.store(true, Ordering::Relaxed);
        // 50 ms for the workers' watchers to notice, then the close handshakes.
        let deadline = Instant::now() + close_grace + Duration::from_secs(1);
        self.wait_closed(deadline);
        let left_open = self.open();
        if left_open > 0 {
            tracing::warn!("{left_open} connections still open at the hard deadline");
        }
        DrainReport {
            open_at_start,
            sent_going_away,
            left_open,
        }
    }
}
