//! Out of descriptors (EMFILE): wslb logs it once, backs off instead of spinning, keeps
//! its open connections, and serves again once descriptors free up.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// CPU time (user + system) the process has used, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses): utime is the 12th, stime
    // the 13th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn out_of_descriptors_logs_once_backs_off_and_recovers() {
    let backend = echo();
    let reserved = reserve_addr();
    let lb = reserved.addr;
    let dir = test_dir("emfile");
    let path = dir.join("wslb.toml");
    // max_connections high, so the descriptor limit (not wslb's own) is what runs out.
    std::fs::write(
        &path,
        format!(
            "listen = \"{lb}\"\nworkers = 1\nbackends = [\"{}\"]\n\
             defer_accept = false\n\
             [limits]\nmax_connections = 1000\n[health]\nenabled = false\n",
            backend.local_addr
        ),
    )
    .unwrap();
    let wslb = Wslb::start_with_nofile(&path, 40);
    wslb.wait_for("balancing");
    let mut served = Peer::connect(lb);
    assert_echo(&mut served, 1, b"before");

    // Idle TCP clients (accepted at once: no TCP_DEFER_ACCEPT), each holding a descriptor in wslb until its handshake timeout:
    // far more than 40 descriptors.
    let idle: Vec<TcpStream> = (0..80).map(|_| TcpStream::connect(lb).unwrap()).collect();
    wslb.wait_for("backing off until resources free up");
    let before = cpu_ticks(wslb.child.id());
    std::thread::sleep(Duration::from_secs(1));
    let spent = cpu_ticks(wslb.child.id()) - before;
    assert!(
        spent <= 10,
        "{spent} ticks of CPU in 1 s while out of descriptors: spinning"
    );
    let warnings = wslb
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("backing off"))
        .count();
    assert_eq!(warnings, 1, "{:#?}", wslb.log.lock().unwrap());
    // The connection it already had is untouched.
    assert_echo(&mut served, 1, b"during");

    // Descriptors free up: new clients are served again.
    drop(idle);
    let start = Instant::now();
    let mut fresh = loop {
        if let Some(p) = connect_within_2s(lb) {
            break p;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never served again"
        );
    };
    assert_echo(&mut fresh, 1, b"after");
    let _ = std::fs::remove_dir_all(&dir);
}

/// With `TCP_DEFER_ACCEPT` (the default), clients that connect and send nothing stay in the
/// kernel: the same 80 silent clients as above take none of wslb's 40 descriptors, and a
/// client that speaks is served at once beside them.
#[test]
fn silent_clients_take_no_descriptor_with_defer_accept() {
    let backend = echo();
    let reserved = reserve_addr();
    let lb = reserved.addr;
    let dir = test_dir("defer-accept");
    let path = dir.join("wslb.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"{lb}\"\nworkers = 1\nbackends = [\"{}\"]\n\
             [limits]\nmax_connections = 1000\n[health]\nenabled = false\n",
            backend.local_addr
        ),
    )
    .unwrap();
    let wslb = Wslb::start_with_nofile(&path, 40);
    wslb.wait_for("balancing");
    let idle: Vec<TcpStream> = (0..80).map(|_| TcpStream::connect(lb).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    let mut fresh = connect_within_2s(lb).expect("a speaking client is served");
    assert_echo(&mut fresh, 1, b"beside the silent ones");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    let log = wslb.log.lock().unwrap();
    assert!(
        !log.iter().any(|l| l.contains("backing off")),
        "silent clients reached wslb: {log:#?}"
    );
    drop(log);
    drop(idle);
    let _ = std::fs::remove_dir_all(&dir);
}
