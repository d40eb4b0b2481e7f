//! Maglev's tests: the fixed hash, the table's spread and disruption, and keys' picks.

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
