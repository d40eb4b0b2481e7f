//! A per-thread xorshift64* generator for the randomized algorithms (power-of-two, the
//! tie-breaks of least-connections, slow start's declines): each worker thread has its own
//! state, so drawing a number writes nothing another core reads.

use std::cell::Cell;
use std::hash::BuildHasher;

thread_local! {
    /// Seeded once per thread from std's random hasher keys (never 0, which xorshift
    /// would keep forever).
    static STATE: Cell<u64> = Cell::new(
        std::collections::hash_map::RandomState::new().hash_one(std::thread::current().id()) | 1,
    );
}

/// A uniform number in `0..n` (`n > 0`). Lemire's multiply-shift: the bias is at most
/// `n / 2^64`, nothing a balancer can see.
#[inline]
pub fn below(n: usize) -> usize {
    debug_assert!(n > 0);
    let r = STATE.with(|s| {
        // xorshift64* (Vigna 2016): three shifts and a multiply, period 2^64 - 1.
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    });
    ((r as u128 * n as u128) >> 64) as usize
}

#[cfg(test)]
mod tests {
    #[test]
    fn covers_the_range() {
        let mut seen = [0u32; 7];
        for _ in 0..7000 {
            seen[super::below(7)] += 1;
        }
        assert!(seen.iter().all(|&c| c > 700), "{seen:?}");
    }
}
