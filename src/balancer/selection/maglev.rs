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
//!   moves no key whose backend is up.
//! - **A request without the key** (`hash_key` names a header, cookie or query parameter
//!   it does not carry, or carries empty) falls back to least-connections.

use std::sync::Arc;

use super::{LeastConnections, Selection};
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
    pub fn preference(&self, key: &[u8]) -> impl Iterator<Item = usize> + '_ {
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

impl Selection for Maglev {
    fn first(&self, backends: &[Arc<Backend>], key: &[u8]) -> Option<usize> {
        if key.is_empty() {
            return self.fallback.scan(backends);
        }
        let up = |i: &usize| backends[*i].health.is_up();
        if let Some(i) = self.preference(key).take(PROBES).find(up) {
            return Some(i);
        }
        // Most of the table is down (a heavy backend, say): the key keeps walking its own
        // preference order, so it still lands where its hash says and not where the
        // connection counts do (found in review: with weights 100/1/1 and the first down,
        // 24% of keys fell back to least-connections and moved with the counts). The walk
        // ends: some backend is up, so some slot is.
        if !backends.iter().any(|b| b.health.is_up()) {
            return None;
        }
        self.preference(key).skip(PROBES).find(up)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Weights;
    use super::super::tests::backends;
    use super::*;

    fn maglev(bs: &[Arc<Backend>]) -> Maglev {
        let w = vec![1; bs.len()];
        Maglev::new(bs, &w, LeastConnections::new(Weights::new(&w, None)))
    }

    fn keys() -> impl Iterator<Item = [u8; 8]> {
        (0..10_000u64).map(|k| k.to_le_bytes())
    }

    /// The hash is part of the contract between wslb versions: these values must never
    /// change.
    #[test]
    fn the_hash_is_fixed() {
        // The two parts are the published algorithms: FNV-1a's test vector for "a", and
        // SplitMix64's first output from state 0.
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(mix(0x9e37_79b9_7f4a_7c15), 0xe220_a839_7b1d_cdaf);
        assert_eq!(table_size(10), 65_537);
        assert_eq!(table_size(655), 65_537);
        assert_eq!(table_size(656), 65_609);
        let golden = [hash(0, b"10.0.0.1:9000"), hash(1, b"a"), hash(2, b"")];
        assert_eq!(
            golden,
            [GOLDEN[0], GOLDEN[1], GOLDEN[2]],
            "the hash changed: tables built by other versions would disagree"
        );
    }
    const GOLDEN: [u64; 3] = [
        7940685002443622005,
        12873573467346133277,
        8883341085335942963,
    ];

    #[test]
    fn two_tables_built_independently_agree() {
        let a = backends(10);
        // Another instance: its own Backend values, listed in another order.
        let mut b = backends(10);
        b.reverse();
        let (ta, tb) = (maglev(&a), maglev(&b));
        for k in keys() {
            let (x, y) = (ta.first(&a, &k).unwrap(), tb.first(&b, &k).unwrap());
            assert_eq!(a[x].addr, b[y].addr);
        }
    }

    #[test]
    fn slots_are_shared_evenly() {
        let bs = backends(10);
        let t = maglev(&bs);
        let mut slots = [0usize; 10];
        for &i in t.table() {
            slots[i as usize] += 1;
        }
        let mean = t.table().len() / 10;
        assert!(
            slots.iter().all(|&s| s.abs_diff(mean) <= mean / 50),
            "{slots:?}"
        );
    }

    /// The share of 10,000 keys that go elsewhere between two lists.
    fn moved(from: &[Arc<Backend>], to: &[Arc<Backend>]) -> f64 {
        let (a, b) = (maglev(from), maglev(to));
        let n = keys()
            .filter(|k| from[a.first(from, k).unwrap()].addr != to[b.first(to, k).unwrap()].addr)
            .count();
        n as f64 / 10_000.0
    }

    #[test]
    fn adding_or_removing_one_of_ten_moves_about_a_tenth() {
        let eleven = backends(11);
        let ten = &eleven[..10];
        let added = moved(ten, &eleven);
        let removed = moved(&eleven, ten);
        // 1/11 of the keys must move to the new backend; Maglev moves a little more.
        assert!((0.08..=0.15).contains(&added), "{added}");
        assert!((0.08..=0.15).contains(&removed), "{removed}");
        let mut nine: Vec<_> = ten.to_vec();
        nine.remove(3);
        let removed_one = moved(ten, &nine);
        eprintln!(
            "keys moved: one added to 10: {added}, one of 11 removed: {removed}, one of 10 removed: {removed_one}"
        );
        assert!((0.09..=0.15).contains(&removed_one), "{removed_one}");
    }

    #[test]
    fn a_down_backends_keys_go_to_their_next_choice_and_no_other_key_moves() {
        let bs = backends(10);
        let t = maglev(&bs);
        let before: Vec<usize> = keys().map(|k| t.first(&bs, &k).unwrap()).collect();
        bs[4].health.failed(1);
        let mut on_four = 0;
        for (k, &was) in keys().zip(&before) {
            let now = t.first(&bs, &k).unwrap();
            if was == 4 {
                on_four += 1;
                let next = t.preference(&k).find(|&i| i != 4).unwrap();
                assert_eq!(now, next, "the key's next choice");
            } else {
                assert_eq!(now, was, "a key whose backend is up moved");
            }
        }
        assert!(on_four > 800, "{on_four}");
    }

    /// Regression test (found in review): with a heavy backend down, a key whose first 64
    /// slots were all its went to least-connections and moved with the counts.
    #[test]
    fn keys_stay_put_when_most_of_the_table_is_down() {
        let bs = backends(3);
        let w = [100, 1, 1];
        let t = Maglev::new(&bs, &w, LeastConnections::new(Weights::new(&w, None)));
        bs[0].health.failed(1);
        let picks = |bs: &[Arc<Backend>]| -> Vec<Option<usize>> {
            (0..2000u32)
                .map(|k| t.first(bs, format!("key-{k}").as_bytes()))
                .collect()
        };
        let before = picks(&bs);
        assert!(
            before.iter().all(|p| matches!(p, Some(1 | 2))),
            "{before:?}"
        );
        // Connections open on backend 1 (what least-connections would look at).
        let held: Vec<_> = (0..50)
            .map(|_| crate::balancer::Lease::new(bs[1].clone()))
            .collect();
        assert_eq!(picks(&bs), before);
        drop(held);
        bs[1].health.failed(1);
        bs[2].health.failed(1);
        assert_eq!(t.first(&bs, b"key-1"), None);
    }

    #[test]
    fn weights_share_the_slots() {
        let bs = backends(3);
        let w = [1, 2, 3];
        let t = Maglev::new(&bs, &w, LeastConnections::new(Weights::new(&w, None)));
        let mut slots = [0usize; 3];
        for &i in t.table() {
            slots[i as usize] += 1;
        }
        let m = t.table().len();
        for i in 0..3 {
            let want = m * w[i] as usize / 6;
            assert!(slots[i].abs_diff(want) < m / 100, "{slots:?}");
        }
    }

    #[test]
    fn no_key_falls_back_to_least_connections() {
        let bs = backends(3);
        let t = maglev(&bs);
        let _l: Vec<_> = (0..3)
            .flat_map(|i| (0..5 - i).map(move |_| i))
            .map(|i| crate::balancer::Lease::new(bs[i].clone()))
            .collect();
        assert_eq!(t.first(&bs, b""), Some(2));
    }
}
