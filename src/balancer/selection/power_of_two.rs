//! Power of two choices: two distinct backends drawn at random among those that are up, and
//! the one with fewer open connections (for its effective weight). Two reads of shared
//! counts per pick, whatever the number of backends, and no shared write: the draws come
//! from a per-thread generator. (Mitzenmacher: the most loaded of n backends then holds
//! about `ln ln n / ln 2` more than the mean, against `ln n / ln ln n` for one random
//! choice.)

use std::sync::Arc;

use super::{LeastConnections, Selection, Weights, rng};
use crate::balancer::Backend;

/// Draws that may land on a down backend before the pick gives up drawing and scans (as
/// least-connections) instead: with half the backends down, eight draws all miss once in
/// 256 picks; with every backend up, the first draw always lands.
const DRAWS: usize = 8;

#[derive(Debug, Clone)]
pub struct PowerOfTwo {
    weights: Weights,
}

impl PowerOfTwo {
    pub fn new(weights: Weights) -> Self {
        Self { weights }
    }

    /// A random backend that is up, other than `not`, within [`DRAWS`] draws.
    fn draw(backends: &[Arc<Backend>], not: Option<usize>) -> Option<usize> {
        let n = backends.len() - not.is_some() as usize;
        if n == 0 {
            return None;
        }
        (0..DRAWS).find_map(|_| {
            let mut i = rng::below(n);
            // Drawn from the n - 1 others: shift past `not`, so the two are distinct and
            // each other backend equally likely.
            if not.is_some_and(|x| i >= x) {
                i += 1;
            }
            backends[i].health.is_up().then_some(i)
        })
    }
}

impl Selection for PowerOfTwo {
    /// The key plays no part.
    fn first(&self, backends: &[Arc<Backend>], _key: &[u8]) -> Option<usize> {
        let Some(a) = Self::draw(backends, None) else {
            // Most (or all) are down: a scan finds the ones left, or that there are none.
            return LeastConnections::new(self.weights.clone()).scan(backends);
        };
        let Some(b) = Self::draw(backends, Some(a)) else {
            return LeastConnections::new(self.weights.clone()).scan(backends);
        };
        let mut now = None;
        let load = |i: usize, now: &mut Option<u64>| {
            let bk = &backends[i];
            (bk.stats.open() + 1, self.weights.effective(i, bk, now))
        };
        let ((la, wa), (lb, wb)) = (load(a, &mut now), load(b, &mut now));
        // la / wa <= lb / wb, cross-multiplied; on a tie `a`, itself a random one of the two.
        Some(if la.saturating_mul(wb) <= lb.saturating_mul(wa) {
            a
        } else {
            b
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::backends;
    use super::*;
    use crate::balancer::Lease;

    #[test]
    fn keeps_a_small_spread() {
        let bs = backends(10);
        let p = PowerOfTwo::new(Weights::new(&[1; 10], None));
        let mut leases = Vec::new();
        for _ in 0..10_000 {
            let i = p.first(&bs, &[]).unwrap();
            leases.push(Lease::new(bs[i].clone()));
        }
        let open: Vec<u64> = bs.iter().map(|b| b.stats.open()).collect();
        let (min, max) = (open.iter().min().unwrap(), open.iter().max().unwrap());
        // One random choice would spread about ±3 standard deviations (±90) here.
        assert!(max - min <= 10, "{open:?}");
    }

    #[test]
    fn only_up_backends_and_two_distinct() {
        let bs = backends(3);
        let p = PowerOfTwo::new(Weights::new(&[1; 3], None));
        bs[0].health.failed(1);
        bs[2].health.failed(1);
        for _ in 0..100 {
            assert_eq!(p.first(&bs, &[]), Some(1));
        }
        bs[1].health.failed(1);
        assert_eq!(p.first(&bs, &[]), None);
        let one = backends(1);
        assert_eq!(p.first(&one, &[]), Some(0));
    }
}
