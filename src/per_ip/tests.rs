//! The client key, the tables' arithmetic and the rate bucket, checked against models.

use super::*;
use proptest::prelude::*;

fn ways() -> [AtomicU64; WAYS] {
    Default::default()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn ipv4_by_address_ipv6_by_64() {
    let k = |s| ClientKey::of(ip(s));
    assert_ne!(k("127.0.0.1"), k("127.0.0.2"));
    assert_eq!(k("2001:db8:1:2::1"), k("2001:db8:1:2:ffff:1:2:3"));
    assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
    assert_eq!(k("::ffff:10.0.0.1"), k("10.0.0.1"));
    assert_ne!(k("::"), k("0.0.0.0"));
    assert_eq!(k("10.0.0.1").to_string(), "10.0.0.1");
    assert_eq!(k("2001:db8:1:2:3:4:5:6").to_string(), "2001:db8:1:2::/64");
}

#[test]
fn connections_count_up_to_the_limit_and_free_on_release() {
    let w = ways();
    use conns::Verdict::*;
    assert_eq!(conns::acquire(&w, 7, 2), Admit(Some(0)));
    assert_eq!(conns::acquire(&w, 9, 2), Admit(Some(1)), "another client");
    assert_eq!(conns::acquire(&w, 7, 2), Admit(Some(0)));
    assert_eq!(conns::acquire(&w, 7, 2), Refuse { first: true });
    assert_eq!(conns::acquire(&w, 7, 2), Refuse { first: false });
    w[0].fetch_sub(1, Ordering::Relaxed);
    assert_eq!(conns::acquire(&w, 7, 2), Admit(Some(0)), "a place freed");
    assert_eq!(
        conns::acquire(&w, 7, 2),
        Refuse { first: true },
        "an admission ended the episode"
    );
    w[0].fetch_sub(2, Ordering::Relaxed);
    assert_eq!(conns::count(w[0].load(Ordering::Relaxed)), 0);
    assert_eq!(
        conns::acquire(&w, 11, 1),
        Admit(Some(0)),
        "a free slot is reused"
    );
}

#[test]
fn a_full_bucket_fails_open() {
    let w = ways();
    for fp in 0..WAYS as u32 {
        assert_eq!(
            conns::acquire(&w, fp, 1),
            conns::Verdict::Admit(Some(fp as usize))
        );
    }
    assert_eq!(conns::acquire(&w, 99, 1), conns::Verdict::Admit(None));
    // The clients that hold slots are still limited.
    assert_eq!(
        conns::acquire(&w, 3, 1),
        conns::Verdict::Refuse { first: true }
    );
}

#[test]
fn a_split_client_is_limited_by_its_total() {
    // Two workers each claimed a slot for client 5 at once.
    let w = ways();
    w[2].store(5 << 32 | 1, Ordering::Relaxed);
    w[6].store(5 << 32 | 1, Ordering::Relaxed);
    assert!(matches!(
        conns::acquire(&w, 5, 2),
        conns::Verdict::Refuse { .. }
    ));
    assert_eq!(conns::acquire(&w, 5, 3), conns::Verdict::Admit(Some(2)));
}

#[test]
fn a_burst_then_one_per_interval() {
    let g = Gcra::new(10, 3);
    let w = ways();
    let t0 = 5_000_000;
    for _ in 0..3 {
        assert!(g.acquire(&w, 1, t0).is_ok());
    }
    assert_eq!(g.acquire(&w, 1, t0), Err((100_000, true)));
    assert_eq!(g.acquire(&w, 1, t0 + 40_000), Err((60_000, false)));
    assert!(
        g.acquire(&w, 2, t0).is_ok(),
        "another client has its own bucket"
    );
    assert!(g.acquire(&w, 1, t0 + 100_000).is_ok());
    assert_eq!(g.acquire(&w, 1, t0 + 100_000), Err((100_000, true)));
    // Refilled after a quiet burst's worth of time: the slot is free for anyone.
    assert!(!g.busy(w[0].load(Ordering::Relaxed), t0 + 400_000));
}

#[test]
fn the_clock_wraps() {
    let g = Gcra::new(1, 2);
    let w = ways();
    let t0 = TAT_MASK - 500_000;
    assert!(g.acquire(&w, 1, t0).is_ok());
    assert!(g.acquire(&w, 1, t0).is_ok());
    assert_eq!(g.acquire(&w, 1, t0 + 600_000), Err((400_000, true)));
    assert!(g.acquire(&w, 1, t0 + 2_000_000).is_ok());
}

#[test]
fn a_full_rate_bucket_fails_open() {
    let g = Gcra::new(1, 1);
    let w = ways();
    for fp in 0..WAYS as u32 {
        assert!(g.acquire(&w, fp, 1000).is_ok());
    }
    assert_eq!(g.acquire(&w, 99, 1000), Ok(None));
    assert!(g.acquire(&w, 0, 1000).is_err());
}

#[test]
fn limits_off_admit_without_counting_and_allocate_nothing() {
    let p = PerIp::new(100);
    assert_eq!(p.admit(ip("10.0.0.1")), Ok(Counted(None)));
    assert!(p.connections.get().is_none() && p.rates.get().is_none());
    p.configure(PerIpLimits {
        max_connections: 1,
        rate: 0,
        burst: 0,
    });
    let c = p.admit(ip("10.0.0.1")).unwrap();
    assert_eq!(p.admit(ip("10.0.0.1")), Err(Refusal::Connections));
    assert_eq!(p.refused(Rejected::PerIpConnections), 1);
    assert!(p.admit(ip("10.0.0.2")).is_ok());
    p.release(c);
    assert!(p.admit(ip("10.0.0.1")).is_ok());
    assert!(p.rates.get().is_none());
}

#[test]
fn a_rate_refusal_gives_the_connection_place_back() {
    let p = PerIp::new(100);
    p.configure(PerIpLimits {
        max_connections: 1,
        rate: 1,
        burst: 1,
    });
    let c = p.admit(ip("10.0.0.1")).unwrap();
    p.release(c);
    assert_eq!(
        p.admit(ip("10.0.0.1")),
        Err(Refusal::Rate { retry_after: 1 })
    );
    let t = p.connections.get().unwrap();
    let counts: u64 = t
        .buckets
        .iter()
        .flat_map(|b| &b.0)
        .map(|w| conns::count(w.load(Ordering::Relaxed)))
        .sum();
    assert_eq!(counts, 0);
    assert_eq!(p.refused(Rejected::PerIpRate), 1);
}

#[test]
fn tables_are_sized_from_the_connection_limit() {
    assert_eq!(table_slots(10), 4096);
    assert_eq!(table_slots(5000), 8192);
    assert_eq!(table_slots(usize::MAX), 1 << 20);
    assert_eq!(std::mem::size_of::<Bucket>(), 64);
}

proptest! {
    /// Over any sorted arrival times, a GCRA admits at most `burst + d / T` in any
    /// window of length `d`, and a client that waits as told is admitted.
    #[test]
    fn gcra_admits_no_more_than_the_bucket(
        rate in 1u32..2000,
        burst in 1u32..20,
        gaps in proptest::collection::vec(0u64..3000, 1..300),
    ) {
        let g = Gcra::new(rate, burst);
        let w = ways();
        let mut now = 1_000_000u64;
        let mut admitted = Vec::new();
        for gap in gaps {
            now += gap;
            match g.acquire(&w, 42, now) {
                Ok(slot) => {
                    prop_assert_eq!(slot, Some(0));
                    admitted.push(now);
                }
                Err((wait, _)) => {
                    prop_assert!(wait >= 1 && wait <= g.interval);
                    // Told to wait `wait`: then it is admitted (on a fresh copy, so
                    // the sequence under test goes on unchanged).
                    let copy = ways();
                    copy[0].store(w[0].load(Ordering::Relaxed), Ordering::Relaxed);
                    prop_assert!(g.acquire(&copy, 42, now + wait).is_ok());
                    // A microsecond sooner it is not.
                    let sooner = ways();
                    sooner[0].store(w[0].load(Ordering::Relaxed), Ordering::Relaxed);
                    prop_assert!(g.acquire(&sooner, 42, now + wait - 1).is_err());
                }
            }
        }
        for (i, &start) in admitted.iter().enumerate() {
            for (j, &end) in admitted.iter().enumerate().skip(i) {
                let d = end - start;
                prop_assert!((j - i + 1) as u64 <= u64::from(burst) + d / g.interval,
                    "{} admitted in {} us", j - i + 1, d);
            }
        }
    }

    /// A client spacing its upgrades by the interval is never refused.
    #[test]
    fn gcra_never_refuses_a_client_within_its_rate(
        rate in 1u32..100_000,
        burst in 1u32..100,
        n in 1usize..200,
    ) {
        let g = Gcra::new(rate, burst);
        let w = ways();
        for k in 0..n as u64 {
            prop_assert!(g.acquire(&w, 1, 77 + k * g.interval).is_ok());
        }
    }

    /// Any sequence of opens and closes from a few clients sharing a bucket: each
    /// client's counted connections never pass the limit, a refusal happens only at
    /// the limit, and the slots add up to what is open.
    #[test]
    fn connection_counts_match_a_model(
        max in 1u32..5,
        ops in proptest::collection::vec((0u32..4, any::<bool>()), 1..200),
    ) {
        let w = ways();
        let mut open: Vec<Vec<usize>> = vec![Vec::new(); 4];
        for (client, close) in ops {
            let held = &mut open[client as usize];
            if close {
                if let Some(slot) = held.pop() {
                    w[slot].fetch_sub(1, Ordering::Relaxed);
                }
                continue;
            }
            match conns::acquire(&w, client, max) {
                conns::Verdict::Admit(Some(slot)) => held.push(slot),
                conns::Verdict::Admit(None) => prop_assert!(false, "4 clients fit in 8 slots"),
                conns::Verdict::Refuse { .. } => prop_assert_eq!(held.len(), max as usize),
            }
            prop_assert!(held.len() <= max as usize);
        }
        let total: u64 = w.iter().map(|v| conns::count(v.load(Ordering::Relaxed))).sum();
        prop_assert_eq!(total, open.iter().map(Vec::len).sum::<usize>() as u64);
    }
}
