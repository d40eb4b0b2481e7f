//! The control plane: messages from whoever runs the instance (drain, reload, stop) to
//! every worker, each of which acts on them in one task.
//!
//! A message wakes the worker the moment it is sent; nothing is polled. The channels are
//! tokio's unbounded `mpsc`: runtime-agnostic (no tokio runtime involved), sendable from
//! any thread, and their waker wakes a monoio task across threads (monoio's `sync`
//! feature). Unbounded because the messages are few and rare (a drain, a reload) and the
//! sender, often a signal-handling or main thread, must never block on a busy worker.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use tokio::sync::mpsc;

/// One instruction to a worker (see [`crate::worker::obey`] for what each does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Cancel the pending accept and accept no more (a drain, a handover).
    StopAccepting,
    /// Send close 1001 to both sides of every open relay (the drain's grace is over).
    GoAway,
    /// The backends a reload removed, and when their remaining connections get close
    /// 1012. The whole current list each time: a backend no longer in it (added back) is
    /// no longer retired.
    Retire(Vec<Retirement>),
    /// A rebalancing pass: close 1012 to up to this many connections of each backend
    /// (quotas shared by every worker; see `balancer/rebalance.rs`).
    Shed(Arc<Shed>),
    /// End the worker now (the instance is dropped or stopped). Connections still open are
    /// abandoned, not closed: drain first for a graceful end.
    Stop,
}

/// A backend removed by a reload, and when its remaining connections get close 1012.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retirement {
    /// The backend's `balancer::Pool` id.
    pub backend: u32,
    /// `None`: they may stay until they close.
    pub deadline: Option<Instant>,
}

/// How many connections of which backends one rebalancing pass closes. Every worker takes
/// from the same quotas, so the pass closes what it asked for (or every such connection
/// there is), however the connections are spread over the workers. What is left after the
/// workers have been through it says how many could not be found.
#[derive(Debug)]
pub struct Shed {
    /// Backend id, connections still to close.
    quotas: Vec<(u32, AtomicU32)>,
}

impl Shed {
    pub fn new(quotas: impl IntoIterator<Item = (u32, u32)>) -> Self {
        Self {
            quotas: quotas
                .into_iter()
                .map(|(b, n)| (b, AtomicU32::new(n)))
                .collect(),
        }
    }

    /// Takes one from `backend`'s quota; false when it has none (or is not in this pass).
    pub fn take(&self, backend: u32) -> bool {
        self.quotas.iter().any(|(b, left)| {
            *b == backend
                // Relaxed: a count; workers only need to agree on it, not order around it.
                && left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
        })
    }

    /// The connections still to close, by backend id.
    pub fn left(&self) -> Vec<(u32, u32)> {
        self.quotas
            .iter()
            .map(|(b, n)| (*b, n.load(Ordering::Relaxed)))
            .collect()
    }
}

impl PartialEq for Shed {
    fn eq(&self, other: &Self) -> bool {
        self.left() == other.left()
    }
}

impl Eq for Shed {}

/// Sends to every worker of one instance.
#[derive(Debug, Clone, Default)]
pub struct Broadcast(Vec<mpsc::UnboundedSender<Control>>);

/// One worker's end of the [`Broadcast`].
#[derive(Debug)]
pub struct Inbox(mpsc::UnboundedReceiver<Control>);

/// A broadcast to `n` workers and each worker's inbox, in worker order.
pub fn channels(n: usize) -> (Broadcast, Vec<Inbox>) {
    let (tx, rx): (Vec<_>, Vec<_>) = (0..n).map(|_| mpsc::unbounded_channel()).unzip();
    (Broadcast(tx), rx.into_iter().map(Inbox).collect())
}

impl Broadcast {
    /// Sends `message` to every worker. A worker that has already ended is skipped: there
    /// is nothing left for it to do.
    pub fn send(&self, message: Control) {
        for worker in &self.0 {
            let _ = worker.send(message.clone());
        }
    }
}

impl Inbox {
    /// The next message; `None` once every sender is gone (the instance was dropped).
    pub async fn recv(&mut self) -> Option<Control> {
        self.0.recv().await
    }

    /// The next message if one is waiting (tests).
    #[cfg(test)]
    pub(crate) fn try_recv(&mut self) -> Option<Control> {
        self.0.try_recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_worker_gets_every_message_in_order() {
        let (all, mut inboxes) = channels(2);
        all.send(Control::StopAccepting);
        all.send(Control::GoAway);
        drop(all);
        for inbox in &mut inboxes {
            let got: Vec<_> = std::iter::from_fn(|| inbox.try_recv()).collect();
            assert_eq!(got, [Control::StopAccepting, Control::GoAway]);
        }
    }
}
