//! Consistent hashing (`consistent-hash`): Maglev (Eisenbud et al., NSDI 2016).
//!
//! Each backend gets a permutation of the table's slots from two hashes of its address;
//! the backends take turns claiming their next free slot until the table is full (a
//! backend of weight w takes w turns for each turn of the heaviest one, so its share of
//! slots follows its weight). A key goes to the backend of slot `hash(key) % size`.
//!
//! - **Same list, same table.** The hash is fixed here (below), not std's (`DefaultHasher`
//!   is randomly keyed per process and its algorithm may change between Rust versions),
//!   and backends take their turns in the order of their addresses, not the config's, so
//!   two wslb instances given the same backends (and weights) build identical tables
//!   without talking to each other, whatever version built them.
//! - **Table size**: the smallest prime at least 100 × backends, and never below 65,537,
//!   so 65,537 for up to 655 backends. Prime: every skip in `1..size` is then coprime with
//!   the size, so each backend's permutation visits every slot. At least 100 slots per
//!   backend: the paper's bound for slot counts within about 1% of each other. Fixed
//!   while the list stays within 655 backends: a key's slot is `hash % size`, so a size
//!   that changed with every backend added would move every key.
//! - **Disruption**: adding or removing one of n backends moves about 1/n of the keys
//!   (slightly more, as the paper says; `tests` bound it).
//! - **A backend that is down** is not rebuilt out of the table (health changes under a
//!   snapshot, not with one): its keys take the next slot's backend, and the next, until
//!   one that is up. That is each key's preference order: deterministic (two instances
//!   with the same health agree), spread over the other backends as the table is, and it
//!   moves no key whose backend is up. Failover (a connect to the pick failed) follows the
//!   same walk on from the pick's slot, past backends already tried ([`Maglev::walk_on`]),
//!   so a key's second candidate is where it goes once its first is down.
//! - **A request without the key** (`hash_key` names a header, cookie or query parameter
//!   it does not carry, or carries empty) falls back to least-connections.

use std::sync::Arc;

use super::{LeastConnections, Pick, Selection};
use crate::balancer::Backend;

/// The table size for up to 655 backends (see the module docs).
pub const MIN_TABLE: usize = 65_537;

#[derive(Debug)]
pub struct Maglev {
    /// Slot -> index into the snapshot's backends.
    table: Box<[u32]>,
    fallback: LeastConnections,
}

/// FNV-1a (64-bit) over `seed` then `bytes`, then SplitMix64's finalizer (FNV alone mixes
/// the last bytes poorly into the high bits). Both are fixed by their definitions, with
/// no dependency whose update could change them: a table built by any wslb version from
/// the same list is the same.
/// An address as the bytes Maglev hashes: 4 or 6, the octets, the port big-endian. The
/// same on every host and Rust version (an IPv6 scope id is left out: it names an
/// interface of this host only).
fn addr_bytes(a: std::net::SocketAddr) -> Vec<u8> {
    let mut v = Vec::with_capacity(19);
    match a.ip() {
        std::net::IpAddr::V4(ip) => {
            v.push(4);
            v.extend_from_slice(&ip.octets());
        }
        std::net::IpAddr::V6(ip) => {
            v.push(6);
            v.extend_from_slice(&ip.octets());
        }
    }
    v.extend_from_slice(&a.port().to_be_bytes());
    v
}

pub fn hash(seed: u64, bytes: &[u8]) -> u64 {
    mix(fnv1a(fnv1a(FNV_OFFSET, &seed.to_le_bytes()), bytes))
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// SplitMix64's output function (Steele, Lea, Flood 2014).
fn mix(mut h: u64) -> u64 {
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Seeds of the three hashes: a key's slot, a backend's offset, its skip.
const KEY_SEED: u64 = 0;
const OFFSET_SEED: u64 = 1;
const SKIP_SEED: u64 = 2;

/// The table size for `n` backends: the smallest prime ≥ max(100 n, 65 537).
pub fn table_size(n: usize) -> usize {
    let mut m = (100 * n).max(MIN_TABLE);
    while !is_prime(m) {
        m += 1;
    }
    m
}

fn is_prime(m: usize) -> bool {
    m >= 2
        && (2..)
            .take_while(|d| d * d <= m)
            .all(|d| !m.is_multiple_of(d))
}

impl Maglev {
    /// The table for `backends` with `weights` (same order); `fallback` picks for requests
    /// without the key.
    pub fn new(backends: &[Arc<Backend>], weights: &[u32], fallback: LeastConnections) -> Self {
        let n = backends.len();
        if n == 0 {
            return Self {
                table: Box::new([]),
                fallback,
            };
        }
        let m = table_size(n);
        // Turn order and permutations depend on the address only, never on the config's
        // order: its bytes (family, address octets, port big-endian), not its text, which
        // std may format differently across versions (IPv6 forms) and hosts (scope ids).
        let mut order: Vec<(Vec<u8>, usize)> = backends
            .iter()
            .enumerate()
            .map(|(i, b)| (addr_bytes(b.addr), i))
            .collect();
        order.sort();
        let perm: Vec<(u64, u64)> = order
            .iter()
            .map(|(name, _)| {
                let offset = hash(OFFSET_SEED, name) % m as u64;
                let skip = hash(SKIP_SEED, name) % (m as u64 - 1) + 1;
                (offset, skip)
            })
            .collect();
        let wmax = weights.iter().copied().max().unwrap_or(1).max(1) as u64;
        let mut credit = vec![0u64; n];
        let mut next = vec![0u64; n];
        let mut table = vec![u32::MAX; m];
        let mut filled = 0;
        'fill: loop {
            for (k, &(_, i)) in order.iter().enumerate() {
                credit[k] += weights[i].max(1) as u64;
                while credit[k] >= wmax {
                    credit[k] -= wmax;
                    let (offset, skip) = perm[k];
                    loop {
                        let c = ((offset + next[k] * skip) % m as u64) as usize;
                        next[k] += 1;
                        if table[c] == u32::MAX {
                            table[c] = i as u32;
                            filled += 1;
                            break;
                        }
                    }
                    if filled == m {
                        break 'fill;
                    }
                }
            }
        }
        Self {
            table: table.into(),
            fallback,
        }
    }

    /// The backend index of `key`'s slot, and then of each following slot: the key's
    /// preference order (with repeats).
    #[cfg(test)]
    fn preference(&self, key: &[u8]) -> impl Iterator<Item = usize> + '_ {
        let m = self.table.len();
        let slot = if m == 0 {
            0
        } else {
            (hash(KEY_SEED, key) % m as u64) as usize
        };
        (0..m).map(move |k| self.table[(slot + k) % m] as usize)
    }

    #[cfg(test)]
    fn table(&self) -> &[u32] {
        &self.table
    }
}

/// Slots a pick walks past down backends before it checks that any backend is up at all:
/// with a tenth of the slots down, 64 slots all down happens once in 10^64.
const PROBES: usize = 64;

impl Maglev {
    /// The first slot of `key`'s walk whose backend is up, and that backend; a request
    /// without the key falls back to least-connections.
    pub fn pick(&self, backends: &[Arc<Backend>], key: &[u8]) -> Pick {
        if key.is_empty() {
            return Pick::of(self.fallback.scan(backends));
        }
        let m = self.table.len();
        if m == 0 {
            return Pick::of(None);
        }
        let start = (hash(KEY_SEED, key) % m as u64) as usize;
        let up = |k: &usize| {
            backends[self.table[(start + k) % m] as usize]
                .health
                .is_up()
        };
        // Most of the table down (a heavy backend, say): the key keeps walking its own
        // preference order, so it still lands where its hash says and not where the
        // connection counts do (found in review: with weights 100/1/1 and the first down,
        // 24% of keys fell back to least-connections and moved with the counts). The walk
        // ends: some backend is up, so some slot is.
        let k = (0..PROBES.min(m)).find(up).or_else(|| {
            backends
                .iter()
                .any(|b| b.health.is_up())
                .then(|| (PROBES..m).find(up))
                .flatten()
        });
        match k {
            Some(k) => {
                let slot = (start + k) % m;
                Pick {
                    first: Some(self.table[slot] as usize),
                    slot: Some(slot as u32),
                }
            }
            None => Pick::of(None),
        }
    }

    /// Failover: walks on from `slot` to the next slot whose backend `wanted` (up, not
    /// tried yet), within the `left` slots left of one round of the table; moves `slot`
    /// there and counts down `left`.
    pub(super) fn walk_on(
        &self,
        slot: &mut u32,
        left: &mut usize,
        wanted: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let m = self.table.len();
        while *left > 0 {
            *left -= 1;
            *slot = ((*slot as usize + 1) % m) as u32;
            let i = self.table[*slot as usize] as usize;
            if wanted(i) {
                return Some(i);
            }
        }
        None
    }

    /// The table's size.
    pub(super) fn slots(&self) -> usize {
        self.table.len()
    }

    /// What a request without the key goes by (for its failover too).
    pub(super) fn fallback(&self) -> &LeastConnections {
        &self.fallback
    }
}

impl Selection for Maglev {
    #[inline]
    fn first(&self, backends: &[Arc<Backend>], key: &[u8]) -> Option<usize> {
        self.pick(backends, key).first
    }
}

#[cfg(test)]
mod tests;
