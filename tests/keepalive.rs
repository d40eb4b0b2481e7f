//! Ping keepalive and the idle timeout: a quiet but alive peer is never cut, a dead one is
//! found, and without pings a connection silent both ways is closed.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use wslb::config::{Config, IoDriver};
use wslb::metrics::Event;

fn keepalive(ping_ms: u64, idle_ms: u64) -> impl FnOnce(&mut Config) {
    move |c| {
        c.keepalive.ping_interval_ms = ping_ms;
        c.keepalive.idle_timeout_ms = idle_ms;
    }
}

/// A backend that answers pings, echoes data, answers a close, and records every opcode
/// it receives.
fn recording_backend() -> (std::net::SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    let addr = scripted_backend(move |mut p| {
        while let Some((fin, op, payload)) = p.recv() {
            g.lock().unwrap().push(op);
            match op {
                9 => p.send(true, 10, &payload),
                8 => return p.send(true, 8, &payload),
                _ => p.send(fin, op, &payload),
            }
        }
    });
    (addr, got)
}

/// Reads frames for `how_long`, answering wslb's pings; returns how many it got. Panics on
/// anything else.
fn answer_pings_for(c: &mut Peer, how_long: Duration) -> usize {
    c.stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let (start, mut pings) = (Instant::now(), 0);
    while start.elapsed() < how_long {
        match c.recv() {
            Some((true, 9, p)) => {
                assert_eq!(p, b"wslb-keepalive");
                pings += 1;
                c.send(true, 10, &p);
            }
            Some(other) => panic!("unexpected frame {other:?}"),
            None => {} // read timeout: nothing this round
        }
    }
    c.stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    pings
}

#[test]
fn a_quiet_client_that_answers_pings_is_never_cut_and_pongs_stay_with_wslb() {
    quiet_client(IoDriver::Auto);
}

/// The same on the epoll driver, where an idle relay once missed its wake-ups (see
/// `Readiness` in relay/link.rs).
#[test]
fn keepalive_pings_go_out_on_the_epoll_driver_too() {
    quiet_client(IoDriver::Epoll);
}

fn quiet_client(io: IoDriver) {
    let (backend, got) = recording_backend();
    let lb = balancer(&[backend], 1, |c| {
        keepalive(200, 600)(c);
        c.io_driver = io;
    });
    let mut c = Peer::connect(lb.local_addr);
    assert_echo(&mut c, 1, b"hello");
    // Over three idle timeouts with no data from either side.
    let pings = answer_pings_for(&mut c, Duration::from_millis(2000));
    assert!(pings >= 3, "only {pings} pings in 2 s at a 200 ms interval");
    assert_echo(&mut c, 1, b"still here");
    let pings: u64 = lb
        .stats
        .iter()
        .map(|w| w.events(Event::KeepalivePing))
        .sum();
    assert!(pings >= 6, "{pings} pings counted (client and backend)");
    let got = got.lock().unwrap().clone();
    assert!(
        got.contains(&9),
        "the quiet backend was pinged too: {got:?}"
    );
    assert!(
        !got.contains(&10),
        "the client's pongs to wslb's pings reached the backend: {got:?}"
    );
}

#[test]
fn a_client_that_stops_answering_is_found_dead_and_the_backend_told() {
    let (backend, closes) = close_recording_backend(true);
    let lb = balancer(&[backend], 1, keepalive(200, 600));
    let c = Peer::connect(lb.local_addr);
    let start = Instant::now();
    // The client is alive at the TCP level but answers nothing.
    while closes.lock().unwrap().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "backend never told"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(closes.lock().unwrap()[0], 1001);
    assert_eq!(lb.stats[0].events(Event::DeadPeer), 1);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(550),
        "cut too early: {took:?}"
    );
    drop(c);
}

#[test]
fn a_backend_that_stops_answering_gets_its_client_a_1011() {
    // Completes the upgrade, then reads and ignores everything.
    let backend = scripted_backend(|mut p| while p.recv().is_some() {});
    let lb = balancer(&[backend], 1, keepalive(200, 600));
    let mut c = Peer::connect(lb.local_addr);
    let start = Instant::now();
    loop {
        let (_, op, p) = c.recv().expect("a close before EOF");
        match op {
            9 => c.send(true, 10, &p),
            8 => {
                assert_eq!(u16::from_be_bytes([p[0], p[1]]), 1011);
                break;
            }
            _ => panic!("unexpected opcode {op}"),
        }
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(550) && took < Duration::from_secs(3),
        "{took:?}"
    );
    c.send(true, 8, &close_payload(1011, ""));
    assert!(c.sees_eof());
}

#[test]
fn without_pings_only_a_connection_silent_both_ways_idles_out() {
    let (backend, closes) = close_recording_backend(true);
    let lb = balancer(&[backend], 1, keepalive(0, 500));
    let mut talker = Peer::connect(lb.local_addr);
    let mut silent = Peer::connect(lb.local_addr);
    let start = Instant::now();
    // The talker sends every 150 ms for 1.2 s: never idle.
    while start.elapsed() < Duration::from_millis(1200) {
        assert_echo(&mut talker, 2, b"tick");
        std::thread::sleep(Duration::from_millis(150));
    }
    // The silent one got its close long ago (it is read only now).
    let (code, reason) = silent.expect_close();
    assert_eq!((code, reason.as_str()), (1001, "idle timeout"));
    silent.send(true, 8, &close_payload(1001, ""));
    assert!(silent.sees_eof());
    assert_eq!(closes.lock().unwrap().as_slice(), [1001]);
    assert_echo(&mut talker, 2, b"still talking");
}

#[test]
fn keepalive_settings_are_validated() {
    let mut c = Config {
        backends: vec!["127.0.0.1:9".into()],
        ..Config::default()
    };
    c.keepalive.ping_interval_ms = 1000;
    c.keepalive.idle_timeout_ms = 1000;
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("keepalive.idle_timeout_ms"), "{e}");
}
