//! What the weighted algorithms share: per-backend weights and slow start.

use std::sync::Arc;
use std::time::Duration;

use crate::balancer::Backend;

/// Slow start (`slow_start_ms`): a backend that came up (health checks brought it back, or
/// a reload added it) gets, for `t` ms after that,
///
/// ```text
/// effective weight = weight × max(0.1, t / slow_start_ms)     while t < slow_start_ms
///                  = weight                                    after
/// ```
///
/// linear from 10% (as Envoy's slow start's default `min_weight_percent`: a backend that
/// just came up still gets some traffic, which proves it really is up) to its full weight.
/// The factor is kept in thousandths ([`Ramp::permille`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ramp {
    ms: u64,
}

/// The ramp's floor, in thousandths of the weight.
const RAMP_FLOOR: u64 = 100;

impl Ramp {
    pub fn new(d: Duration) -> Self {
        Self {
            ms: (d.as_millis() as u64).max(1),
        }
    }

    /// The factor, in thousandths, for a backend that came up at `came_up` (ms on
    /// [`crate::balancer::health::now_ms`]'s clock; 0: not since the start) at `now`.
    #[inline]
    pub fn permille(self, came_up: u64, now: u64) -> u64 {
        let t = now.saturating_sub(came_up);
        if came_up == 0 || t >= self.ms {
            1000
        } else {
            (t * 1000 / self.ms).max(RAMP_FLOOR)
        }
    }
}

/// The weights of one snapshot's backends, and their slow start: what least-connections
/// and power-of-two divide the open counts by.
#[derive(Debug, Clone)]
pub struct Weights {
    /// `None`: every weight is 1.
    w: Option<Arc<[u32]>>,
    ramp: Option<Ramp>,
}

impl Weights {
    pub fn new(weights: &[u32], ramp: Option<Ramp>) -> Self {
        Self {
            w: weights.iter().any(|&w| w != 1).then(|| weights.into()),
            ramp,
        }
    }

    /// Backend `i`'s effective weight, in thousandths (weight × the ramp's factor). `now`
    /// is read from the clock at most once per pick, and only while some backend ramps.
    #[inline]
    pub fn effective(&self, i: usize, b: &Backend, now: &mut Option<u64>) -> u64 {
        let w = self.w.as_ref().map_or(1, |w| w[i] as u64);
        let factor = match self.ramp {
            None => 1000,
            Some(r) => match b.health.came_up() {
                0 => 1000,
                up => {
                    let now = *now.get_or_insert_with(crate::balancer::health::now_ms);
                    let p = r.permille(up, now);
                    if p == 1000 {
                        // Ramped: no clock read for it from now on (found in review:
                        // every pick read the clock once any backend had ever come up).
                        b.health.ramp_done(up);
                    }
                    p
                }
            },
        };
        w * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramp_formula() {
        let r = Ramp::new(Duration::from_millis(1000));
        assert_eq!(r.permille(0, 50), 1000, "came up at the start: no ramp");
        assert_eq!(r.permille(1000, 1000), RAMP_FLOOR);
        assert_eq!(r.permille(1000, 1500), 500);
        assert_eq!(r.permille(1000, 2000), 1000);
    }
}
