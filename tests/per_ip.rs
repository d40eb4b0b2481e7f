//! Per-client limits end to end (`limits.max_connections_per_ip`,
//! `limits.handshake_rate_per_ip`): clients on 127.0.0.1 and, bound before connecting,
//! 127.0.0.2 and up, which the limits count as other clients.

mod common;

use std::net::IpAddr;

use common::*;
use wslb::metrics::Rejected;

fn source(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// Sends an upgrade from `from` and returns the whole answer (up to wslb's close).
fn answer_from(from: IpAddr, lb: std::net::SocketAddr) -> String {
    let mut c = Peer::client_from(from, lb);
    c.send_raw(upgrade_request("/").as_bytes());
    c.read_to_end()
}

fn retry_after(answer: &str) -> Option<u64> {
    answer
        .lines()
        .find_map(|l| l.strip_prefix("Retry-After: "))
        .map(|v| v.trim().parse().unwrap())
}

#[test]
fn the_connection_over_a_clients_limit_gets_429_and_a_freed_place_is_taken_again() {
    let e = echo();
    let lb = balancer(&[e.local_addr], 2, |c| c.limits.max_connections_per_ip = 2);
    let h = lb.handle();
    let mut a = Peer::connect(lb.local_addr);
    let mut b = Peer::connect(lb.local_addr);
    // The third from 127.0.0.1, whichever worker its port hashes to: the count is the
    // instance's.
    let r = answer_from(source(1), lb.local_addr);
    assert!(r.starts_with("HTTP/1.1 429 Too Many Requests\r\n"), "{r}");
    assert_eq!(retry_after(&r), Some(1), "{r}");
    assert_eq!(
        h.snapshot().totals.rejected(Rejected::PerIpConnections),
        1,
        "counted before the answer was written"
    );
    // Another client is not affected.
    let mut other = Peer::connect_from(source(2), lb.local_addr);
    assert_echo(&mut other, 1, b"another client");
    assert_echo(&mut a, 2, b"still served");
    // One of 127.0.0.1's connections closes: its place is free again.
    a.send(true, 8, &close_payload(1000, ""));
    assert_eq!(a.expect_close().0, 1000);
    assert!(a.sees_eof());
    drop(a);
    let mut c = connect_within_2s(lb.local_addr).expect("the freed place is taken again");
    assert_echo(&mut c, 1, b"back in");
    let r = answer_from(source(1), lb.local_addr);
    assert!(r.starts_with("HTTP/1.1 429"), "at the limit again: {r}");
    assert_echo(&mut b, 2, b"b too");
    let s = h.snapshot();
    assert!(s.totals.rejected(Rejected::PerIpConnections) >= 2);
    assert_eq!(s.totals.rejected(Rejected::PerIpRate), 0);
}

#[test]
fn a_burst_over_the_bucket_gets_429_with_retry_after_and_clients_have_their_own_buckets() {
    let e = echo();
    let lb = balancer(&[e.local_addr], 2, |c| {
        c.limits.handshake_rate_per_ip = 1;
        c.limits.handshake_burst_per_ip = 3;
    });
    let h = lb.handle();
    // A fresh bucket holds 3 tokens, whatever the time: 3 upgrades go through.
    let held: Vec<Peer> = (0..3)
        .map(|_| Peer::connect_from(source(2), lb.local_addr))
        .collect();
    // One more token per second from then on: of 10 more attempts, all but those a
    // refill allows are refused (one per second the attempts take).
    let refused = (0..10)
        .map(|_| answer_from(source(2), lb.local_addr))
        .find(|r| !r.starts_with("HTTP/1.1 101"))
        .expect("a burst over the bucket is refused");
    assert!(
        refused.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
        "{refused}"
    );
    // At 1 per second the next token is at most a second away.
    assert_eq!(retry_after(&refused), Some(1), "{refused}");
    // 127.0.0.3 has a bucket of its own, and 127.0.0.2's connections are untouched.
    let mut other = Peer::connect_from(source(3), lb.local_addr);
    assert_echo(&mut other, 1, b"own bucket");
    for mut p in held {
        assert_echo(&mut p, 2, b"held");
    }
    let s = h.snapshot();
    assert!(s.totals.rejected(Rejected::PerIpRate) >= 1);
    assert_eq!(s.totals.rejected(Rejected::PerIpConnections), 0);
}

#[test]
fn the_limits_are_reloadable() {
    let e = echo();
    let lb = balancer(&[e.local_addr], 1, |_| {});
    // Off: nothing is counted.
    let _before: Vec<Peer> = (0..3)
        .map(|_| Peer::connect_from(source(4), lb.local_addr))
        .collect();
    let on = config(&[e.local_addr], 1, |c| c.limits.max_connections_per_ip = 1)
        .validate()
        .unwrap();
    let applied = lb.reload(&on);
    assert!(applied.needs_restart.is_empty(), "{applied:?}");
    // Connections opened while the limit was off left no count: one more is admitted,
    // and the one after it is over the limit.
    let _counted = Peer::connect_from(source(4), lb.local_addr);
    let r = answer_from(source(4), lb.local_addr);
    assert!(r.starts_with("HTTP/1.1 429"), "{r}");
    // Off again.
    lb.reload(&config(&[e.local_addr], 1, |_| {}).validate().unwrap());
    let _more = Peer::connect_from(source(4), lb.local_addr);
}
