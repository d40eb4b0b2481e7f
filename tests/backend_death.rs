//! A backend process killed with SIGKILL under load: every client proxied to it gets a
//! close frame (1011) within a second, clients on the other backend are untouched, and new
//! connections succeed with no failure at all.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn kill_9_of_a_backend_under_load() {
    let victim_addr = dead_addr();
    let mut victim = Child(
        Command::new(env!("CARGO_BIN_EXE_wslb"))
            .args([
                "echo",
                "--listen",
                &victim_addr.to_string(),
                "--workers",
                "1",
            ])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    for _ in 0..100 {
        if std::net::TcpStream::connect(victim_addr).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let survivor = echo();
    let lb = balancer(&[victim_addr, survivor.local_addr], 2, |c| {
        c.health.enabled = true;
        c.health.interval_ms = 100;
        c.health.fall = 2;
    });

    // 40 connections, alternating backends, each with a message in flight now and then.
    let mut peers: Vec<Peer> = (0..40).map(|_| Peer::connect(lb.local_addr)).collect();
    for p in &mut peers {
        assert_echo(p, 2, b"before");
    }
    victim.0.kill().unwrap();
    let killed = Instant::now();
    let _ = victim.0.wait();

    // Every peer either still echoes (it is on the survivor) or gets 1011, within 1 s.
    let (mut closed, mut alive) = (0, 0);
    for p in &mut peers {
        p.stream
            .set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        p.send(true, 2, b"after");
        match p.recv() {
            Some((_, 2, payload)) => {
                assert_eq!(payload, b"after");
                alive += 1;
            }
            Some((_, 8, payload)) => {
                assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1011);
                closed += 1;
            }
            other => panic!("expected an echo or a close, got {other:?}"),
        }
    }
    assert!(
        killed.elapsed() < Duration::from_secs(2),
        "{:?}",
        killed.elapsed()
    );
    assert_eq!((closed, alive), (20, 20));

    // New connections: none fails, the dead backend is taken out of the rotation.
    for _ in 0..30 {
        let mut p = Peer::connect(lb.local_addr);
        assert_echo(&mut p, 1, "new".as_bytes());
    }
    assert_eq!(lb.backends_up(), vec![false, true]);
}
