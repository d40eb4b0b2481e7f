//! Graceful drain (what SIGTERM/SIGINT run): stop accepting, let connections finish within
//! the grace, then close 1001 to both sides of each remaining connection.

mod common;

use std::time::{Duration, Instant};

use common::*;
use wslb::config::IoDriver;

#[test]
fn drain_stops_accepting_lets_connections_finish_then_sends_going_away_to_both_sides() {
    drain_scenario(IoDriver::Auto);
}

/// Regression: on the epoll driver an idle relay parked in a read that a stale readiness
/// let through, so the going-away close never went out and the drain hit its deadline.
#[test]
fn drain_sends_going_away_on_the_epoll_driver_too() {
    drain_scenario(IoDriver::Epoll);
}

fn drain_scenario(io: IoDriver) {
    // A backend that echoes and records the close code it receives.
    let (backend, closes) = close_recording_backend(true);
    let lb = balancer(&[backend], 2, |c| c.io_driver = io);
    let addr = lb.local_addr;
    let drainer = lb.handle();
    let mut stays = Peer::connect(addr);
    let mut leaves = Peer::connect(addr);
    assert_echo(&mut stays, 2, b"before");

    let start = Instant::now();
    let draining = std::thread::spawn(move || {
        drainer.drain(Duration::from_millis(600), Duration::from_secs(2))
    });
    std::thread::sleep(Duration::from_millis(150));
    // New clients are turned away at once...
    let refused = match std::net::TcpStream::connect(addr) {
        Err(_) => true,
        Ok(mut s) => {
            use std::io::{Read, Write};
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let _ = s.write_all(upgrade_request("/").as_bytes());
            let mut b = [0u8; 64];
            !matches!(s.read(&mut b), Ok(n) if n > 0)
        }
    };
    assert!(refused, "a new connection was served during the drain");
    // ...while open ones carry on during the grace, and may finish by themselves.
    assert_echo(&mut stays, 2, b"during the grace");
    leaves.send(true, 8, &close_payload(1000, "bye"));
    assert_eq!(leaves.expect_close().0, 1000);
    drop(leaves);

    // After the grace, the one still open gets 1001 and answers it.
    let (code, reason) = stays.expect_close();
    assert_eq!((code, reason.as_str()), (1001, "going away"));
    assert!(
        start.elapsed() >= Duration::from_millis(550),
        "{:?}",
        start.elapsed()
    );
    stays.send(true, 8, &close_payload(1001, ""));
    assert!(stays.sees_eof());
    drop(stays);

    let report = draining.join().unwrap();
    assert_eq!(report.open_at_start, 2);
    assert_eq!(report.sent_going_away, 1);
    assert_eq!(report.left_open, 0);
    let mut codes = closes.lock().unwrap().clone();
    codes.sort();
    assert_eq!(
        codes,
        vec![1000, 1001],
        "the backend saw the leaver's close and a 1001"
    );
}
