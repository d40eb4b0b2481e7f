//! `wslb run`'s supervision in-process: real signals raised to this test process reach the
//! supervisor, SIGHUP reloads the config file (new connections go to the new backend, the
//! open one carries on) and SIGTERM drains (the open connection gets 1001, the drain ends).
//! Its own test binary: the signal handlers are process-wide.

mod common;

use common::*;
use nix::sys::signal::{Signal, raise};
use wslb::config::Source;
use wslb::supervise::{Outcome, Supervisor};

#[test]
fn sighup_reloads_and_sigterm_drains_in_process() {
    let (a, b) = (echo(), echo());
    let dir = test_dir("signals");
    let path = dir.join("wslb.toml");
    let config = |backend: std::net::SocketAddr| {
        format!(
            "listen = \"127.0.0.1:0\"\nworkers = 1\nbackends = [\"{backend}\"]\nstats_interval_secs = 0\n\
             [timeouts]\nshutdown_grace_ms = 200\nclose_grace_ms = 1000\n[health]\nenabled = false\n[admin]\nlisten = \"\"\n"
        )
    };
    std::fs::write(&path, config(a.local_addr)).unwrap();
    let source = Source {
        path: Some(path.clone()),
        ..Source::default()
    };
    let supervisor = Supervisor::new();
    let signals = supervisor.catch_signals().unwrap();
    let lb = supervisor.start(source.load().unwrap(), false).unwrap();
    let (addr, stats) = (lb.local_addr, lb.stats.clone());
    let open = move || stats.iter().map(|w| w.open()).sum::<u64>();
    let supervised = std::thread::spawn(move || {
        let outcome = supervisor.run(&lb, &source);
        (outcome, lb)
    });

    let mut long_lived = Peer::connect(addr);
    assert_echo(&mut long_lived, 1, b"on a");
    assert_eq!(a.stats[0].accepted(), 1);

    std::fs::write(&path, config(b.local_addr)).unwrap();
    raise(Signal::SIGHUP).unwrap();
    // The reload is applied on the supervisor's thread: new connections reach b from then
    // on. Each try before that lands on a and is closed again.
    let mut reached_b = false;
    for _ in 0..500 {
        let mut c = Peer::connect(addr);
        assert_echo(&mut c, 1, b"a or b");
        c.send(true, 8, &close_payload(1000, ""));
        assert_eq!(c.expect_close().0, 1000);
        if b.stats[0].accepted() == 1 {
            reached_b = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(reached_b, "SIGHUP never moved new connections to b");
    assert_echo(&mut long_lived, 1, b"still on a");
    // The probes' relays end once their close handshakes are done: only the long-lived
    // connection is left for the drain.
    for _ in 0..500 {
        if open() == 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(open(), 1);

    raise(Signal::SIGTERM).unwrap();
    // After the grace the connection still open is told the instance goes away.
    let (code, reason) = long_lived.expect_close();
    assert_eq!((code, reason.as_str()), (1001, "going away"));
    long_lived.send(true, 8, &close_payload(1001, ""));
    let (outcome, lb) = supervised.join().unwrap();
    let Outcome::Drained(report) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(
        (
            report.open_at_start,
            report.sent_going_away,
            report.left_open
        ),
        (1, 1, 0)
    );
    drop(lb);
    drop(signals);
    let _ = std::fs::remove_dir_all(&dir);
}
