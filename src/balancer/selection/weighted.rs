//! Weighted round robin: nginx's smooth weighted round robin, precomputed, or for cycles
//! too long to precompute, a golden-ratio scatter of the same slots computed per pick.

use std::sync::Arc;

use super::{Ramp, RoundRobin, Selection, rng};
use crate::balancer::Backend;

/// Weighted round robin on the pool's global counter: ticket `t` goes to the backend of
/// slot `t % cycle` of one cycle of [`Cycle`], so the shares are exact across workers over
/// every full cycle, however the kernel spreads accepts over them.
///
/// Backends that are down are skipped by drawing a fresh ticket ([`RoundRobin::draw`], as
/// round robin does), so over every full cycle of the counter each backend that is up
/// still gets exactly its weight (the down ones' slots are consumed by skips), at the
/// price of one more counter increment per skipped slot (none while all are up).
/// Recomputing the cycle over the backends that are up would need a snapshot per health
/// change; health flags change under a snapshot, not with one. Slow start declines a
/// ramping backend's slot the same way, with probability `1 - factor`, so its share is
/// `weight × factor` in expectation.
#[derive(Debug)]
pub struct Weighted {
    cycle: Cycle,
    counter: Arc<RoundRobin>,
    ramp: Option<Ramp>,
}

impl Weighted {
    pub fn new(weights: &[u32], ramp: Option<Ramp>, counter: Arc<RoundRobin>) -> Self {
        Self {
            cycle: Cycle::new(weights, TABLE_SLOTS, TABLE_STEPS),
            counter,
            ramp,
        }
    }
}

/// The longest cycle kept as a table (4 bytes a slot: 256 KiB).
const TABLE_SLOTS: usize = 1 << 16;

/// The most steps (cycle × backends) building the table may take: about 10 ms at reload,
/// at the 0.6 ns a step of the review's case, 1,000 backends of weights 999 and 1000
/// (10^9 steps, 0.62 s under the reload lock, before this bound).
const TABLE_STEPS: usize = 1 << 24;

/// One cycle of the weighted rotation: `sum(weights)` slots, weights divided by their gcd
/// (so the cycle is as short as it can be), each backend in exactly its weight of them,
/// so that every full cycle of tickets gives each exactly its weight. Two shapes, by size:
#[derive(Debug)]
enum Cycle {
    /// Smooth weighted round robin (nginx, `ngx_http_upstream_get_peer`), precomputed:
    /// each step every backend's `current` grows by its weight, the largest is chosen and
    /// loses the total. It interleaves the backends (weights 5, 1, 1 give `a a b a c a a`,
    /// not `a a a a a b c`). Kept while the cycle has at most [`TABLE_SLOTS`] slots and building
    /// it (`cycle × backends` steps) at most [`TABLE_STEPS`]. Slot -> backend index.
    Smooth(Box<[u32]>),
    /// Longer cycles, computed per pick instead of built: backend `i` owns the positions
    /// `ends[i - 1]..ends[i]` of `0..len` (its weight of them), and slot `t` is position
    /// `t × stride % len`, a binary search away from its backend. `stride` is coprime with
    /// `len`, so a cycle's slots visit every position once: the shares are exactly the
    /// table's. And it is near `len / φ` ([`scatter_stride`]), so each backend's slots are
    /// spread over the cycle: the gaps between them take at most three sizes (the
    /// three-gap theorem), in tests none over 4 × `len / weight`. The order is other than the smooth one; building is O(backends),
    /// a pick O(log backends), and no table: 8 bytes a backend.
    Scatter {
        ends: Box<[u64]>,
        stride: u64,
        len: u64,
    },
}

impl Cycle {
    fn new(weights: &[u32], max_slots: usize, max_steps: usize) -> Self {
        let g = weights.iter().fold(0, |g, &w| gcd(g, w)).max(1);
        let len: u64 = weights.iter().map(|&w| (w / g) as u64).sum();
        let n = weights.len() as u64;
        if len <= max_slots as u64 && len.saturating_mul(n) <= max_steps as u64 {
            return Cycle::Smooth(smooth_sequence(weights).into());
        }
        let ends = weights
            .iter()
            .scan(0, |end, &w| {
                *end += (w / g) as u64;
                Some(*end)
            })
            .collect();
        let stride = scatter_stride(len);
        Cycle::Scatter { ends, stride, len }
    }

    fn len(&self) -> usize {
        match self {
            Cycle::Smooth(t) => t.len(),
            Cycle::Scatter { len, .. } => *len as usize,
        }
    }

    /// The backend of slot `t` (`t < len`).
    #[inline]
    fn at(&self, t: usize) -> usize {
        match self {
            Cycle::Smooth(table) => table[t] as usize,
            Cycle::Scatter { ends, stride, len } => {
                let t = t as u64;
                let p = match t.checked_mul(*stride) {
                    Some(x) => x % len,
                    // A cycle past 2^32 slots (over four million backends).
                    None => (t as u128 * *stride as u128 % *len as u128) as u64,
                };
                ends.partition_point(|&e| e <= p)
            }
        }
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

/// Candidates on each side of `len / φ` that [`scatter_stride`] weighs.
const STRIDE_TRIES: u64 = 64;

/// The scatter's stride for a cycle of `len`: of the integers nearest `len / φ` (up to
/// [`STRIDE_TRIES`] each side) coprime with `len`, the one whose `stride / len` has the
/// smallest partial quotients (the largest, in its continued fraction), nearest first.
///
/// `t × stride / len` (mod 1) is a Weyl sequence, and how evenly it visits an interval
/// over any run of tickets is bounded by the partial quotients: the golden ratio's are
/// all 1, the best there is. But `len / φ` rounded to an integer is a rational whose
/// fraction can end in one large quotient, and then the slots bunch (found in testing:
/// weight 215 of a cycle of 23,244 had every slot in one half of the cycle, 55 apart).
/// A few dozen candidates always held one with quotients of at most 5 in tests (that
/// one exists for every `len` is Zaremba's conjecture).
fn scatter_stride(len: u64) -> u64 {
    let near = (len as f64 * 0.618_033_988_749_895) as u64;
    (0..STRIDE_TRIES)
        .flat_map(|d| [near + d, near.wrapping_sub(d)])
        .filter(|&s| (1..len).contains(&s))
        .filter_map(|s| {
            // Euclid on (len, s): its quotients are those of s / len; it ends at gcd 1
            // when they are coprime.
            let (mut a, mut b, mut most) = (len, s, 0);
            while b != 0 {
                most = most.max(a / b);
                (a, b) = (b, a % b);
            }
            (a == 1).then_some((most, s))
        })
        .min_by_key(|&(most, _)| most)
        .map_or(1, |(_, s)| s)
}

impl Selection for Weighted {
    /// The key plays no part.
    fn first(&self, backends: &[Arc<Backend>], _key: &[u8]) -> Option<usize> {
        let mut now = None;
        let ramp = self.ramp;
        self.counter.draw(
            self.cycle.len(),
            backends,
            |t| self.cycle.at(t),
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

    /// `Weighted::new`'s, or (`scatter`) the long cycles' shape whatever the length.
    fn weighted(weights: &[u32], counter: Arc<RoundRobin>, scatter: bool) -> Weighted {
        let w = Weighted::new(weights, None, counter);
        if !scatter {
            assert!(
                matches!(w.cycle, Cycle::Smooth(_)),
                "short cycles are tables"
            );
            return w;
        }
        Weighted {
            cycle: Cycle::new(weights, 0, 0),
            ..w
        }
    }

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
            scatter: bool,
        ) {
            let bs = backends(weights.len());
            let counter = Arc::new(RoundRobin::starting_at(start));
            let w = weighted(&weights, counter, scatter);
            let len = w.cycle.len();
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
            scatter: bool,
        ) {
            let bs = backends(weights.len());
            for (b, &d) in bs.iter().zip(&down) {
                if d { b.health.failed(1); }
            }
            prop_assume!(bs.iter().any(|b| b.health.is_up()));
            let counter = Arc::new(RoundRobin::starting_at(start));
            let w = weighted(&weights, counter.clone(), scatter);
            let len = w.cycle.len();
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
                let i = w.cycle.at(t % len);
                want[i] += bs[i].health.is_up() as u32;
            }
            prop_assert_eq!(&counts, &want);
            // And a window of exactly one cycle holds each backend's weight.
            let g = weights.iter().fold(0, |g, &x| gcd(g, x));
            let mut cycle = vec![0u32; weights.len()];
            for t in begin..begin + len {
                cycle[w.cycle.at(t % len)] += 1;
            }
            let exact: Vec<u32> = weights.iter().map(|&x| x / g).collect();
            prop_assert_eq!(cycle, exact);
        }

        /// The scatter spreads each backend's slots over the cycle: the gaps between one
        /// backend's consecutive slots (round the end of the cycle) take at most three
        /// sizes, as the three-gap theorem says, and none is over 4 × `len / weight`
        /// (with the stride nearest `len / φ` alone, some were 100 ×).
        #[test]
        fn scattered_slots_are_spread(
            weights in prop::collection::vec(1u32..=1000, 1..40),
        ) {
            let w = weighted(&weights, Arc::new(RoundRobin::new()), true);
            let len = w.cycle.len();
            let mut slots = vec![Vec::new(); weights.len()];
            for t in 0..len {
                slots[w.cycle.at(t)].push(t);
            }
            for s in &slots {
                let mut gaps: Vec<usize> = s.windows(2).map(|p| p[1] - p[0]).collect();
                gaps.push(s[0] + len - s[s.len() - 1]);
                gaps.sort();
                gaps.dedup();
                prop_assert!(gaps.len() <= 3, "{:?}", gaps);
                prop_assert!(gaps[gaps.len() - 1] * s.len() <= 4 * len, "{:?} of {}", gaps, len);
            }
        }
    }

    /// Regression test (found in testing): with the coprime stride nearest `len / φ`
    /// (14,369 of 23,244), weight 215's slots came 55 apart in one half of the cycle and
    /// not at all in the other.
    #[test]
    fn a_stride_with_a_large_partial_quotient_is_not_taken() {
        let w = weighted(&[215, 23_029], Arc::new(RoundRobin::new()), true);
        let slots: Vec<usize> = (0..23_244).filter(|&t| w.cycle.at(t) == 0).collect();
        let widest = slots.windows(2).map(|p| p[1] - p[0]).max().unwrap();
        let round = slots[0] + 23_244 - slots[slots.len() - 1];
        // 108 apart on average.
        assert!(widest.max(round) <= 4 * 108, "{widest}, {round}");
    }

    /// Regression test (found in review): 1,000 backends of weights 999 and 1000 made a
    /// smooth cycle of 999,500 slots, built in 10^9 steps (0.62 s, under the reload lock).
    #[test]
    fn a_long_cycle_is_not_precomputed() {
        let weights: Vec<u32> = (0..1000).map(|i| 999 + i % 2).collect();
        let w = Weighted::new(&weights, None, Arc::new(RoundRobin::new()));
        let Cycle::Scatter { ends, len, .. } = &w.cycle else {
            panic!("built as a table");
        };
        assert_eq!((ends.len(), *len), (1000, 999_500), "one entry a backend");
        // Still exactly each one's weight over the cycle.
        let mut counts = vec![0u32; 1000];
        for t in 0..w.cycle.len() {
            counts[w.cycle.at(t)] += 1;
        }
        assert_eq!(counts, weights);
        // And ordinary lists keep the smooth table: 1,000 backends of weights 1 to 4.
        let four: Vec<u32> = (0..1000).map(|i| 1 + i % 4).collect();
        let w = Weighted::new(&four, None, Arc::new(RoundRobin::new()));
        assert!(matches!(&w.cycle, Cycle::Smooth(t) if t.len() == 2500));
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
