//! Weighted round robin (nginx's smooth weighted round robin, precomputed).

use std::sync::Arc;

use super::{Ramp, RoundRobin, Selection, rng};
use crate::balancer::Backend;

/// Smooth weighted round robin (nginx, `ngx_http_upstream_get_peer`): each step every
/// backend's `current` grows by its weight, the largest is chosen and loses the total. The
/// sequence it makes interleaves the backends (weights 5, 1, 1 give `a a b a c a a`, not
/// `a a a a a b c`) and gives each exactly its weight per cycle of `sum(weights)` steps.
///
/// Precomputed once per snapshot (weights divided by their gcd, so the cycle is as short
/// as it can be; building takes `cycle × backends` steps, at reload) and indexed by the
/// pool's global counter, so the shares are exact across workers over every full cycle,
/// however the kernel spreads accepts over them.
///
/// Backends that are down are skipped by drawing a fresh ticket ([`RoundRobin::draw`], as
/// round robin does), so over every full cycle of the counter each backend that is up
/// still gets exactly its weight (the down ones' slots are consumed by skips), at the price
/// of one more counter increment per skipped slot (none while all are up). Recomputing the sequence over the
/// backends that are up would need a snapshot per health change; health flags change
/// under a snapshot, not with one. Slow start declines a ramping backend's slot the same
/// way, with probability `1 - factor`, so its share is `weight × factor` in expectation.
#[derive(Debug)]
pub struct Weighted {
    /// Indexes into the snapshot's backends: one full cycle.
    sequence: Box<[u32]>,
    counter: Arc<RoundRobin>,
    ramp: Option<Ramp>,
}

impl Weighted {
    pub fn new(weights: &[u32], ramp: Option<Ramp>, counter: Arc<RoundRobin>) -> Self {
        Self {
            sequence: smooth_sequence(weights).into(),
            counter,
            ramp,
        }
    }

    #[cfg(test)]
    fn sequence(&self) -> &[u32] {
        &self.sequence
    }
}

/// One cycle of smooth weighted round robin over `weights` (each at least 1), divided by
/// their gcd. Ties go to the lower index, so the sequence is a function of the weights.
pub fn smooth_sequence(weights: &[u32]) -> Vec<u32> {
    let g = weights.iter().fold(0, |g, &w| gcd(g, w)).max(1);
    let w: Vec<i64> = weights.iter().map(|&w| (w / g) as i64).collect();
    let total: i64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl Selection for Weighted {
    /// The key plays no part.
    fn first(&self, backends: &[Arc<Backend>], _key: &[u8]) -> Option<usize> {
        let mut now = None;
        let ramp = self.ramp;
        self.counter.draw(
            self.sequence.len(),
            backends,
            |t| self.sequence[t] as usize,
            |b| {
                let Some(r) = ramp else { return true };
                let up = b.health.came_up();
                if up == 0 {
                    return true;
                }
                let f = r.permille(up, *now.get_or_insert_with(crate::balancer::health::now_ms));
                f >= 1000 || (rng::below(1000) as u64) < f
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::backends;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nginx_sequence() {
        // nginx's documented example: weights 5, 1, 1.
        assert_eq!(smooth_sequence(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_sequence(&[2, 4]), [1, 0, 1], "divided by the gcd");
    }

    proptest! {
        /// Over each full cycle, from any counter value, each backend gets exactly its
        /// weight (divided by the weights' gcd, times the cycles run).
        #[test]
        fn exact_shares_over_each_full_cycle(
            weights in prop::collection::vec(1u32..=50, 1..12),
            start in 0usize..1_000_000,
            cycles in 1usize..4,
        ) {
            let bs = backends(weights.len());
            let counter = Arc::new(RoundRobin::starting_at(start));
            let w = Weighted::new(&weights, None, counter);
            let len = w.sequence().len();
            let g = weights.iter().fold(0, |g, &x| gcd(g, x));
            prop_assert_eq!(len as u32, weights.iter().sum::<u32>() / g);
            for _ in 0..cycles {
                let mut counts = vec![0u32; weights.len()];
                for _ in 0..len {
                    counts[w.first(&bs, &[]).unwrap()] += 1;
                }
                let want: Vec<u32> = weights.iter().map(|&x| x / g).collect();
                prop_assert_eq!(&counts, &want);
            }
        }

        /// With some backends down, the ones up still get exactly their weight per cycle
        /// of the counter (the down ones' slots are spent on skips).
        #[test]
        fn exact_shares_over_the_backends_up(
            weights in prop::collection::vec(1u32..=20, 2..8),
            down in prop::collection::vec(any::<bool>(), 8),
            start in 0usize..1_000_000,
        ) {
            let bs = backends(weights.len());
            for (b, &d) in bs.iter().zip(&down) {
                if d { b.health.failed(1); }
            }
            prop_assume!(bs.iter().any(|b| b.health.is_up()));
            let counter = Arc::new(RoundRobin::starting_at(start));
            let w = Weighted::new(&weights, None, counter.clone());
            let len = w.sequence().len();
            let mut counts = vec![0u32; weights.len()];
            // Picks until the counter has gone round at least `len` tickets; each pick
            // spends one ticket per slot it skips, so the picks are exactly the slots of
            // backends that are up among the tickets spent.
            let begin = counter.peek();
            while counter.peek() - begin < len {
                counts[w.first(&bs, &[]).unwrap()] += 1;
            }
            let mut want = vec![0u32; weights.len()];
            for t in begin..counter.peek() {
                let i = w.sequence()[t % len] as usize;
                want[i] += bs[i].health.is_up() as u32;
            }
            prop_assert_eq!(&counts, &want);
            // And a window of exactly one cycle holds each backend's weight.
            let g = weights.iter().fold(0, |g, &x| gcd(g, x));
            let mut cycle = vec![0u32; weights.len()];
            for t in begin..begin + len {
                cycle[w.sequence()[t % len] as usize] += 1;
            }
            let exact: Vec<u32> = weights.iter().map(|&x| x / g).collect();
            prop_assert_eq!(cycle, exact);
        }
    }

    #[test]
    fn a_ramping_backend_gets_its_effective_share() {
        let bs = backends(2);
        bs[1].health.added(); // 10% of its weight for the next minute
        let ramp = Some(Ramp::new(std::time::Duration::from_secs(60)));
        let w = Weighted::new(&[1, 1], ramp, Arc::new(RoundRobin::new()));
        let mut n = [0u32; 2];
        for _ in 0..10_000 {
            n[w.first(&bs, &[]).unwrap()] += 1;
        }
        // 0.1 / (1 + 0.1) of the picks: 909 expected, a standard deviation about 29.
        assert!((750..1070).contains(&n[1]), "{n:?}");
    }
}
