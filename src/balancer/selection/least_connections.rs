//! Least connections: the backend with the fewest open WebSocket connections for its
//! (effective) weight.
//!
//! The counts are `BackendStats::open`, one number per backend across all workers (the
//! `Lease` each connection holds from the moment its backend is tried), kept in the
//! `Backend` itself: a reload keeps the backends it keeps, so their counts stay right, and
//! a backend added by a reload starts at its true count (0, or what it still holds if it
//! was removed and added back).

use std::sync::Arc;

use super::{Selection, Weights, rng};
use crate::balancer::Backend;

#[derive(Debug, Clone)]
pub struct LeastConnections {
    weights: Weights,
}

impl LeastConnections {
    pub fn new(weights: Weights) -> Self {
        Self { weights }
    }

    /// The up backend with the lowest `(open + 1) / effective weight` (the `+ 1` is the
    /// connection being placed, so an empty backend of weight 3 still beats an empty one
    /// of weight 1). Ties are broken uniformly at random (reservoir sampling over the
    /// tied ones: the k-th tie replaces the pick with probability 1/k), so no backend wins
    /// ties for its position in the list.
    #[inline]
    pub(super) fn scan(&self, backends: &[Arc<Backend>]) -> Option<usize> {
        self.scan_where(backends, |_| true)
    }

    /// [`LeastConnections::scan`] over the backends `eligible` lets through (failover:
    /// those not tried yet).
    #[inline]
    pub(super) fn scan_where(
        &self,
        backends: &[Arc<Backend>],
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let mut now = None;
        let mut best: Option<(usize, u64, u64)> = None;
        let mut ties = 1;
        for (i, b) in backends.iter().enumerate() {
            if !eligible(i) || !b.health.is_up() {
                continue;
            }
            let load = b.stats.open() + 1;
            let w = self.weights.effective(i, b, &mut now);
            match best {
                // load / w < best_load / best_w, cross-multiplied (open stays far below
                // 2^44, weights times the ramp below 2^20).
                Some((_, bl, bw)) if load.saturating_mul(bw) > bl.saturating_mul(w) => {}
                Some((_, bl, bw)) if load.saturating_mul(bw) == bl.saturating_mul(w) => {
                    ties += 1;
                    if rng::below(ties) == 0 {
                        best = Some((i, load, w));
                    }
                }
                _ => {
                    ties = 1;
                    best = Some((i, load, w));
                }
            }
        }
        best.map(|(i, _, _)| i)
    }
}

impl Selection for LeastConnections {
    /// The key plays no part.
    fn first(&self, backends: &[Arc<Backend>], _key: &[u8]) -> Option<usize> {
        self.scan(backends)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::backends;
    use super::*;
    use crate::balancer::Lease;

    #[test]
    fn fills_the_emptiest_and_breaks_ties_evenly() {
        let bs = backends(4);
        let lc = LeastConnections::new(Weights::new(&[1; 4], None));
        // 0 and 1 hold 5 each, 2 holds 1, 3 is empty: 3 gets the next one, then 2 and 3
        // alternate until each reaches 5, then all four share.
        let mut leases: Vec<Lease> = Vec::new();
        for (i, n) in [(0, 5), (1, 5), (2, 1)] {
            leases.extend((0..n).map(|_| Lease::new(bs[i].clone())));
        }
        assert_eq!(lc.first(&bs, &[]), Some(3));
        for _ in 0..9 {
            let i = lc.first(&bs, &[]).unwrap();
            leases.push(Lease::new(bs[i].clone()));
        }
        let open: Vec<u64> = bs.iter().map(|b| b.stats.open()).collect();
        assert_eq!(open, [5, 5, 5, 5]);
        // All tied: over many picks without leasing, each wins about a quarter.
        let mut wins = [0u32; 4];
        for _ in 0..4000 {
            wins[lc.first(&bs, &[]).unwrap()] += 1;
        }
        assert!(wins.iter().all(|&w| (800..1200).contains(&w)), "{wins:?}");
    }

    #[test]
    fn a_ramping_backend_fills_to_its_effective_weight() {
        let bs = backends(2);
        bs[1].health.added(); // 10% of its weight for the next minute
        let ramp = Some(super::super::Ramp::new(std::time::Duration::from_secs(60)));
        let lc = LeastConnections::new(Weights::new(&[1, 1], ramp));
        let leases: Vec<Lease> = (0..1100)
            .map(|_| Lease::new(bs[lc.first(&bs, &[]).unwrap()].clone()))
            .collect();
        // (open + 1) / 0.1 against (open + 1) / 1: about 100 against 1,000.
        let on_new = bs[1].stats.open();
        assert!((95..=105).contains(&on_new), "{on_new}");
        drop(leases);
    }

    #[test]
    fn weights_and_health() {
        let bs = backends(2);
        let lc = LeastConnections::new(Weights::new(&[3, 1], None));
        let mut leases = Vec::new();
        for _ in 0..40 {
            let i = lc.first(&bs, &[]).unwrap();
            leases.push(Lease::new(bs[i].clone()));
        }
        assert_eq!((bs[0].stats.open(), bs[1].stats.open()), (30, 10));
        bs[0].health.failed(1);
        assert_eq!(lc.first(&bs, &[]), Some(1), "the only one up");
        bs[1].health.failed(1);
        assert_eq!(lc.first(&bs, &[]), None);
    }
}
