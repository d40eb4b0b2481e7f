//! Balancing algorithms through the real balancer: least-connections placing new
//! connections on a backend a reload added under 300 open ones, and reloads that change
//! the algorithm (round robin, then weighted, then consistent hashing on a header), and
//! slow start holding back a backend a reload added.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use wslb::balancer::Algorithm;
use wslb::config::BackendEntry;

/// Each backend's (open, selected) counts, in the order of `addrs`.
fn counts(lb: &wslb::Instance, addrs: &[SocketAddr]) -> Vec<(u64, u64)> {
    let s = lb.handle().snapshot();
    addrs
        .iter()
        .map(|a| {
            s.backends
                .iter()
                .find(|b| b.addr == *a)
                .map_or((0, 0), |b| (b.open, b.selected))
        })
        .collect()
}

fn open(lb: &wslb::Instance, addrs: &[SocketAddr]) -> Vec<u64> {
    counts(lb, addrs).into_iter().map(|c| c.0).collect()
}

fn selected(lb: &wslb::Instance, addrs: &[SocketAddr]) -> Vec<u64> {
    counts(lb, addrs).into_iter().map(|c| c.1).collect()
}

/// Waits (up to `TIMEOUT`) until the open counts are `want`.
fn wait_open(lb: &wslb::Instance, addrs: &[SocketAddr], want: &[u64]) {
    let t = Instant::now();
    while open(lb, addrs) != want {
        assert!(
            t.elapsed() < TIMEOUT,
            "open {:?}, want {want:?}",
            open(lb, addrs)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A client whose upgrade carries `extra` header lines.
fn connect_with(lb: SocketAddr, extra: &str) -> Peer {
    let mut p = Peer::client(lb);
    p.send_raw(
        format!(
            "GET / HTTP/1.1\r\nHost: test\r\n{extra}Upgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .as_bytes(),
    );
    let head = p.read_head();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    p
}

#[test]
fn least_connections_fills_a_backend_added_under_300_open_connections() {
    let echoes: Vec<_> = (0..3).map(|_| echo()).collect();
    let addrs: Vec<SocketAddr> = echoes.iter().map(|e| e.local_addr).collect();
    let lc = |c: &mut wslb::config::Config| c.algorithm = Algorithm::LeastConnections;
    let lb = balancer(&addrs[..2], 2, lc);
    let mut peers: Vec<Peer> = (0..300).map(|_| Peer::connect(lb.local_addr)).collect();
    assert_eq!(open(&lb, &addrs), [150, 150, 0]);

    // A reload adds the third backend; the first two keep their 300 connections (and
    // their counts, which live in the backends the reload keeps).
    let applied = lb.reload(&config(&addrs, 2, lc).validate().unwrap());
    assert_eq!(applied.backends.added, vec![addrs[2]]);
    assert_eq!(open(&lb, &addrs), [150, 150, 0]);
    // Every new connection goes to the new backend until it holds as many...
    peers.extend((0..150).map(|_| Peer::connect(lb.local_addr)));
    assert_eq!(open(&lb, &addrs), [150, 150, 150]);
    // ...then they share.
    peers.extend((0..30).map(|_| Peer::connect(lb.local_addr)));
    assert_eq!(open(&lb, &addrs), [160, 160, 160]);
    for p in peers.iter_mut().step_by(60) {
        assert_echo(p, 1, b"still relayed");
    }

    // 60 of the first 300 clients leave, from whichever backends they were on: the next
    // 60 connections fill exactly those gaps.
    for i in (0..120).step_by(2).rev() {
        peers.swap_remove(i);
    }
    let after_close = {
        let t = Instant::now();
        loop {
            let o = open(&lb, &addrs);
            if o.iter().sum::<u64>() == 420 {
                break o;
            }
            assert!(t.elapsed() < TIMEOUT, "{o:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let deficit: Vec<u64> = after_close.iter().map(|&o| 160 - o).collect();
    assert_eq!(deficit.iter().sum::<u64>(), 60);
    peers.extend((0..60).map(|_| Peer::connect(lb.local_addr)));
    assert_eq!(open(&lb, &addrs), [160, 160, 160], "after {after_close:?}");
    drop(peers);
    wait_open(&lb, &addrs, &[0, 0, 0]);
}

#[test]
fn a_reload_changes_the_algorithm() {
    let echoes: Vec<_> = (0..2).map(|_| echo()).collect();
    let addrs: Vec<SocketAddr> = echoes.iter().map(|e| e.local_addr).collect();
    let lb = balancer(&addrs, 2, |_| {});
    let mut peers: Vec<Peer> = (0..4).map(|_| Peer::connect(lb.local_addr)).collect();
    assert_eq!(selected(&lb, &addrs), [2, 2], "round robin");

    // Weighted round robin, 3 to 1: every cycle of 4 connections gives 3 and 1.
    let weighted = config(&addrs, 2, |c| {
        c.algorithm = Algorithm::WeightedRoundRobin;
        c.backends = vec![
            BackendEntry {
                address: addrs[0].to_string(),
                weight: 3,
            },
            addrs[1].to_string().into(),
        ];
    });
    lb.reload(&weighted.validate().unwrap());
    peers.extend((0..8).map(|_| Peer::connect(lb.local_addr)));
    assert_eq!(selected(&lb, &addrs), [2 + 6, 2 + 2]);

    // Consistent hashing on a header: each user's connections all go to one backend;
    // one without the header goes to the backend with fewer open connections.
    let hashed = config(&addrs, 2, |c| {
        c.algorithm = Algorithm::ConsistentHash;
        c.hash_key = "header:X-User".into();
    });
    lb.reload(&hashed.validate().unwrap());
    let mut homes = std::collections::HashSet::new();
    // 20 users: all on one backend would be a 1 in 500,000 chance of the ports.
    for user in 0..20 {
        let before = selected(&lb, &addrs);
        peers.extend((0..2).map(|_| connect_with(lb.local_addr, &format!("X-User: u{user}\r\n"))));
        let after = selected(&lb, &addrs);
        let grew: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        assert!(grew.contains(&2) && grew.contains(&0), "u{user}: {grew:?}");
        homes.insert(grew.iter().position(|&g| g == 2));
    }
    assert_eq!(homes.len(), 2, "both backends get some users");
    let o = open(&lb, &addrs);
    let before = selected(&lb, &addrs);
    peers.push(connect_with(lb.local_addr, ""));
    let after = selected(&lb, &addrs);
    let to = (0..2).find(|&i| after[i] > before[i]).unwrap();
    assert_eq!(
        o[to],
        *o.iter().min().unwrap(),
        "no key: least connections {o:?}"
    );
    for p in &mut peers {
        assert_echo(p, 1, b"relayed");
    }
}

#[test]
fn slow_start_keeps_a_backend_added_by_a_reload_at_a_tenth_of_its_weight() {
    let echoes: Vec<_> = (0..3).map(|_| echo()).collect();
    let addrs: Vec<SocketAddr> = echoes.iter().map(|e| e.local_addr).collect();
    let slow = |c: &mut wslb::config::Config| {
        c.algorithm = Algorithm::LeastConnections;
        // Long enough that the ramp stays at its 10% floor for the whole test.
        c.slow_start_ms = 600_000;
    };
    let lb = balancer(&addrs[..2], 2, slow);
    let mut peers: Vec<Peer> = (0..100).map(|_| Peer::connect(lb.local_addr)).collect();
    assert_eq!(
        open(&lb, &addrs),
        [50, 50, 0],
        "the first list starts at full weight"
    );
    lb.reload(&config(&addrs, 2, slow).validate().unwrap());
    peers.extend((0..100).map(|_| Peer::connect(lb.local_addr)));
    // At a tenth of its weight the new backend is "full" at a tenth of the others'
    // count: (open + 1) / 0.1 against (open + 1) / 1, with about 95 on each of the others.
    let o = open(&lb, &addrs);
    assert_eq!(o.iter().sum::<u64>(), 200);
    assert!((8..=11).contains(&o[2]), "{o:?}");
    // Without slow start, the same reload would have given it all 100 (the first test).
    for p in peers.iter_mut().step_by(50) {
        assert_echo(p, 1, b"relayed");
    }
}
