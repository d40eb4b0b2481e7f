//! Zero-downtime binary upgrade with the real binary: a new wslb takes over the listening
//! sockets while clients keep connecting; nobody is refused, the old process drains its
//! connections (close 1001 after the grace) and exits 0, and the new one can be upgraded
//! in turn.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// Waits up to 10 s for the process to exit; returns its exit code.
fn exit_code(w: &mut Wslb) -> Option<i32> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Some(status) = w.child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn a_new_process_takes_over_the_sockets_without_refusing_anyone() {
    upgrade_under_load("auto");
}

/// On epoll the old process's idle relays once missed the drain's wake-up, so its clients
/// got no 1001 (see `Readiness` in relay/link.rs).
#[test]
fn binary_upgrade_on_the_epoll_driver() {
    upgrade_under_load("epoll");
}

fn upgrade_under_load(io_driver: &str) {
    let backend = echo();
    let lb = dead_addr();
    let dir = test_dir(&format!("handover-{io_driver}"));
    let (path, sock) = (dir.join("wslb.toml"), dir.join("upgrade.sock"));
    std::fs::write(
        &path,
        format!(
            "listen = \"{lb}\"\nworkers = 2\nio_driver = \"{io_driver}\"\nbackends = [\"{}\"]\nupgrade_socket = \"{}\"\n\
             [timeouts]\nshutdown_grace_ms = 1000\n[health]\nenabled = false\n",
            backend.local_addr,
            sock.display()
        ),
    )
    .unwrap();
    let mut old = Wslb::start(&path, &[]);
    old.wait_for("offering the listening sockets");

    // Long-lived clients on the old process.
    let mut long_lived: Vec<Peer> = (0..10).map(|_| Peer::connect(lb)).collect();
    for c in &mut long_lived {
        assert_echo(c, 1, b"before the upgrade");
    }
    // A stream of new clients through the whole switch: each must upgrade and echo.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failures) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(Mutex::new(Vec::new())),
    );
    let connectors: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let attempt = std::panic::catch_unwind(|| {
                        let mut c = Peer::connect(lb);
                        assert_echo(&mut c, 2, b"during the upgrade");
                        c.send(true, 8, &close_payload(1000, ""));
                        let _ = c.recv();
                    });
                    match attempt {
                        Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => {
                            failures.lock().unwrap().push(Instant::now());
                            0
                        }
                    };
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));

    let new = Wslb::start(&path, &["--takeover"]);
    new.wait_for("binary upgrade: serving");
    old.wait_for("took over the listening sockets; draining");
    // The old process's clients carry on during its grace...
    for c in &mut long_lived {
        assert_echo(c, 1, b"during the old one's grace");
    }
    // ...then get going away, and the old process exits 0.
    for c in &mut long_lived {
        assert_eq!(c.expect_close().0, 1001);
        c.send(true, 8, &close_payload(1001, ""));
    }
    assert_eq!(
        exit_code(&mut old),
        Some(0),
        "{:#?}",
        old.log.lock().unwrap()
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for c in connectors {
        c.join().unwrap();
    }
    let served = ok.load(Ordering::Relaxed);
    let failed = failures.lock().unwrap().len();
    eprintln!("new connections during the upgrade: {served} served, {failed} failed");
    assert_eq!(failed, 0);
    assert!(served > 50, "only {served} connections tried");

    // The new process serves, and can itself be upgraded the same way.
    let mut newer = Wslb::start(&path, &["--takeover"]);
    newer.wait_for("binary upgrade: serving");
    let mut new = new;
    assert_eq!(exit_code(&mut new), Some(0));
    assert_echo(&mut Peer::connect(lb), 1, b"after two upgrades");
    newer.signal(libc::SIGTERM);
    assert_eq!(exit_code(&mut newer), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn takeover_without_a_running_wslb_fails_clearly() {
    let dir = test_dir("handover-none");
    let path = dir.join("wslb.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:{}\"\nbackends = [\"127.0.0.1:9\"]\nupgrade_socket = \"{}\"\n",
            dead_addr().port(),
            dir.join("nobody.sock").display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wslb"))
        .args(["run", "--takeover", "--admin", "", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no wslb to take over"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
