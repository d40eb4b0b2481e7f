//! Graceful shutdown: stop accepting, let connections finish, then "going away" closes.
//!
//! `wslb run` drains on SIGTERM or SIGINT, or after a binary upgrade (see `instance.rs`),
//! in three steps driven from outside the workers through [`crate::instance::Handle`]:
//! 1. **Stop accepting.** Each worker is told to ([`Control::StopAccepting`]) and cancels
//!    its pending accept, dropping its listener; the listening sockets are shut down so a
//!    connection still queued is reset at once. With `net.ipv4.tcp_migrate_req = 1`
//!    connections still queued move to a listener that remains (a new wslb in a handover),
//!    else they reset.
//! 2. **Grace.** Open connections carry on untouched for `timeouts.shutdown_grace_ms`;
//!    most clients finish or reconnect elsewhere on their own.
//! 3. **Going away.** Each worker is told [`Control::GoAway`]: its registry (see
//!    `relay/registry.rs`) wakes every relay, which sends close 1001 ("going away") to both
//!    its client and its backend, each at a frame boundary (nothing is cut mid-frame), and
//!    the close handshakes get `close_grace_ms` to finish. Then the process exits 0.
//!
//! Waiting is an event too: the last connection to close wakes the drain
//! ([`ConnectionLimit::wait_idle`]), which otherwise waits for its deadline.

use std::time::{Duration, Instant};

use crate::control::{Broadcast, Control};
use crate::listener::ConnectionLimit;

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

/// What a drain needs of an instance.
pub(crate) struct Drain<'a> {
    pub(crate) workers: &'a Broadcast,
    /// Counts the open connections and wakes the drain when the last one closes.
    pub(crate) admission: &'a ConnectionLimit,
    /// Duplicates of the workers' listening sockets.
    pub(crate) listeners: &'a [std::net::TcpListener],
}

impl Drain<'_> {
    fn open(&self) -> u64 {
        self.admission.open() as u64
    }

    /// Runs the three steps; returns when every connection is closed or the hard deadline
    /// (`grace + close_grace + 1 s`) has passed. Without `shut_listeners` (after a binary
    /// upgrade) the listening sockets, which the new process now accepts on, are left as
    /// they are; only this process's accept loops stop.
    pub(crate) fn run(
        &self,
        grace: Duration,
        close_grace: Duration,
        shut_listeners: bool,
    ) -> DrainReport {
        let open_at_start = self.open();
        self.workers.send(Control::StopAccepting);
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
        if self.admission.wait_idle(Instant::now() + grace) {
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
        self.workers.send(Control::GoAway);
        // The close handshakes get close_grace each (a relay enforces it); the second
        // more covers a relay that starts its close a little late (it waits to reach a
        // frame boundary) and the teardown after the handshake.
        let deadline = Instant::now() + close_grace + Duration::from_secs(1);
        self.admission.wait_idle(deadline);
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
