//! How the backend for a new connection is chosen: one shape for every algorithm.
//!
//! A [`Selector`] is built once per backend snapshot (`Pool::set_backends`) and shared by
//! every worker's copy of it; the connection path asks it with a key it extracted from the
//! request (client address, a header, a cookie ...), and the selector never reaches into
//! the connection. [`Snapshot::select`](super::Snapshot::select) turns its pick into the
//! failover order. Round robin is the one algorithm so far; each further one is a file in
//! this module and a variant of [`Selector`].

use std::sync::Arc;

use super::{Backend, RoundRobin};

/// An algorithm: which backend to try first.
pub trait Selection {
    /// The index in `backends` of the backend to try first for `key`, among those that
    /// are up; `None` when none is.
    fn first(&self, backends: &[Arc<Backend>], key: &[u8]) -> Option<usize>;
}

/// The selector of one snapshot. An enum rather than a trait object: the set of
/// algorithms is closed and known here, and a pick is one match, not a virtual call.
#[derive(Debug, Clone)]
pub enum Selector {
    RoundRobin(Arc<RoundRobin>),
}

impl Selector {
    /// Round robin on `counter`, which the pool keeps across snapshots.
    pub fn round_robin(counter: Arc<RoundRobin>) -> Self {
        Selector::RoundRobin(counter)
    }
}

impl Selection for Selector {
    #[inline]
    fn first(&self, backends: &[Arc<Backend>], key: &[u8]) -> Option<usize> {
        match self {
            Selector::RoundRobin(rr) => rr.first(backends, key),
        }
    }
}
