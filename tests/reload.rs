//! Reload (SIGHUP): added backends take new connections, removed ones get none while their
//! connections carry on until the drain deadline (then close 1012), nobody is dropped, an
//! invalid config changes nothing, and a changed `sticky_secret` signs new cookies while
//! the previous secret's are still honoured.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use wslb::config::Config;

/// An echo backend that counts the connections it accepted and records close codes.
struct Backend {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    closes: Arc<Mutex<Vec<u16>>>,
}

fn backend() -> Backend {
    let accepted = Arc::new(AtomicUsize::new(0));
    let closes = Arc::new(Mutex::new(Vec::new()));
    let (a, c) = (accepted.clone(), closes.clone());
    let addr = scripted_backend(move |mut p| {
        a.fetch_add(1, Ordering::SeqCst);
        while let Some((fin, op, payload)) = p.recv() {
            if op == 8 {
                c.lock()
                    .unwrap()
                    .push(u16::from_be_bytes([payload[0], payload[1]]));
                return p.send(true, 8, &payload);
            }
            p.send(fin, op, &payload);
        }
    });
    Backend {
        addr,
        accepted,
        closes,
    }
}

/// How one client under load ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ended {
    /// Still echoing when the test stopped it.
    Running,
    /// Got a close frame with this code at `at`, after `after_reload` of its messages were
    /// sent and echoed after the reload was applied.
    Closed {
        code: u16,
        at: Instant,
        after_reload: usize,
    },
}

/// What the load clients share with the test.
#[derive(Default)]
struct Load {
    /// Set by the test: clients still running return.
    stop: AtomicBool,
    /// When the reload was applied.
    reloaded: OnceLock<Instant>,
    /// Clients that got a close frame.
    closed: AtomicUsize,
}

/// A client that has had one echo (so its backend has counted it) and then, on its own
/// thread, echoes a numbered message every 10 ms until `stop`, checking each echo, and
/// answers a close. Panics on a lost or wrong message, or a dropped connection.
fn load_client(lb: SocketAddr, load: Arc<Load>) -> std::thread::JoinHandle<Ended> {
    let mut c = Peer::connect(lb);
    assert_echo(&mut c, 1, b"first");
    std::thread::spawn(move || {
        let (mut n, mut after_reload) = (0, 0);
        while !load.stop.load(Ordering::Relaxed) {
            let msg = format!("message {n}");
            let sent_after_reload = load.reloaded.get().is_some();
            c.send(true, 1, msg.as_bytes());
            let (_, op, p) = c.recv().expect("connection dropped without a close frame");
            if op == 8 {
                let at = Instant::now();
                let code = u16::from_be_bytes([p[0], p[1]]);
                c.send(true, 8, &p);
                assert!(c.sees_eof(), "no TCP close after the close handshake");
                load.closed.fetch_add(1, Ordering::SeqCst);
                return Ended::Closed {
                    code,
                    at,
                    after_reload,
                };
            }
            assert_eq!(p, msg.as_bytes(), "echo {n} lost or changed");
            n += 1;
            after_reload += sent_after_reload as usize;
            std::thread::sleep(Duration::from_millis(10));
        }
        Ended::Running
    })
}

#[test]
fn reload_under_load_moves_new_connections_and_drains_removed_backends_without_loss() {
    let (a, b, c) = (backend(), backend(), backend());
    const DRAIN: Duration = Duration::from_millis(800);
    let lb = balancer(&[a.addr, b.addr], 2, |cfg| {
        cfg.timeouts.removed_backend_drain_ms = DRAIN.as_millis() as u64;
    });
    let load = Arc::new(Load::default());
    let before: Vec<_> = (0..20)
        .map(|_| load_client(lb.local_addr, load.clone()))
        .collect();
    assert_eq!(a.accepted.load(Ordering::SeqCst), 10);
    assert_eq!(b.accepted.load(Ordering::SeqCst), 10);

    // Remove a, add c.
    let mut new = Config {
        listen: "127.0.0.1:0".into(),
        backends: vec![b.addr.to_string().into(), c.addr.to_string().into()],
        workers: 2,
        ..Config::default()
    };
    new.timeouts.removed_backend_drain_ms = DRAIN.as_millis() as u64;
    new.timeouts.backend_connect_ms = 1000;
    new.timeouts.close_grace_ms = 2000;
    new.health.enabled = false;
    new.admin.listen = String::new();
    // wslb sets the deadline inside `reload`, so no earlier than this.
    let earliest_deadline = Instant::now() + DRAIN;
    let applied = lb.reload(&new.validate().unwrap());
    load.reloaded.set(Instant::now()).unwrap();
    assert_eq!(applied.backends.added, vec![c.addr]);
    assert_eq!(applied.backends.removed.len(), 1);
    assert_eq!(applied.needs_restart, Vec::<&str>::new());

    // New connections go to b and c only, half each.
    let after: Vec<_> = (0..20)
        .map(|_| load_client(lb.local_addr, load.clone()))
        .collect();
    assert_eq!(
        a.accepted.load(Ordering::SeqCst),
        10,
        "a got new connections"
    );
    assert_eq!(b.accepted.load(Ordering::SeqCst), 20);
    assert_eq!(c.accepted.load(Ordering::SeqCst), 10);

    // Wait for the 10 clients on a to be closed, then stop everyone.
    let waited = Instant::now();
    while load.closed.load(Ordering::SeqCst) < 10 {
        assert!(
            waited.elapsed() < TIMEOUT,
            "only {} clients closed",
            load.closed.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    load.stop.store(true, Ordering::Relaxed);
    let before: Vec<Ended> = before.into_iter().map(|t| t.join().unwrap()).collect();
    let after: Vec<Ended> = after.into_iter().map(|t| t.join().unwrap()).collect();

    // The 10 on a carried on after the reload (no message lost: the clients check each
    // echo) and got 1012 only once the drain deadline had passed; the 10 on b never
    // noticed; every connection opened after the reload is still running.
    let closed: Vec<&Ended> = before
        .iter()
        .filter(|e| matches!(e, Ended::Closed { .. }))
        .collect();
    assert_eq!(closed.len(), 10, "{before:?}");
    for e in &closed {
        let Ended::Closed {
            code,
            at,
            after_reload,
        } = e
        else {
            unreachable!()
        };
        assert_eq!(*code, 1012);
        assert!(
            *at >= earliest_deadline,
            "closed {:?} before the drain deadline",
            earliest_deadline - *at
        );
        assert!(*after_reload > 0, "no echo after the reload: {e:?}");
    }
    assert!(after.iter().all(|e| *e == Ended::Running), "{after:?}");
    assert_eq!(a.closes.lock().unwrap().as_slice(), [1012; 10]);
    let counted: u64 = lb
        .stats
        .iter()
        .map(|w| w.events(wslb::metrics::Event::RemovedBackendClose))
        .sum();
    assert_eq!(counted, 10);
    // (b's clients were stopped just now, so b may see their 1001s, but never a 1012.)
    assert!(!b.closes.lock().unwrap().contains(&1012));
}

#[test]
fn sighup_applies_a_valid_config_and_keeps_running_on_an_invalid_one() {
    let (a, b) = (backend(), backend());
    let reserved = reserve_addr();
    let port = reserved.addr.port();
    let dir = test_dir("reload");
    let path = dir.join("wslb.toml");
    let config = |backends: &[SocketAddr]| {
        let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
        format!(
            "listen = \"127.0.0.1:{port}\"\nworkers = 1\nbackends = [{}]\n[health]\nenabled = false\n",
            list.join(", ")
        )
    };
    std::fs::write(&path, config(&[a.addr])).unwrap();
    let wslb = Wslb::start(&path, &[]);
    wslb.wait_for("balancing");
    let lb: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut long_lived = Peer::connect(lb);
    assert_echo(&mut long_lived, 1, b"on a");

    // Invalid: every problem is logged, nothing changes, nobody is dropped.
    std::fs::write(
        &path,
        "listen = \"nowhere\"\nbackends = []\n[keepalive]\nping_interval_ms = 5\nidle_timeout_ms = 5\n",
    )
    .unwrap();
    wslb.signal(libc::SIGHUP);
    wslb.wait_for("reload rejected");
    for field in ["listen", "backends", "keepalive.idle_timeout_ms"] {
        wslb.wait_for(&format!("{field}:"));
    }
    assert_echo(&mut long_lived, 1, b"still on a");
    assert_echo(&mut Peer::connect(lb), 1, b"new, on a");
    assert_eq!(a.accepted.load(Ordering::SeqCst), 2);

    // Valid: b replaces a for new connections; the open one on a carries on.
    std::fs::write(&path, config(&[b.addr])).unwrap();
    wslb.signal(libc::SIGHUP);
    wslb.wait_for("reload done: 1 backend added, 1 removed; applied: backends");
    assert_echo(&mut Peer::connect(lb), 1, b"new, on b");
    assert_eq!(b.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(a.accepted.load(Ordering::SeqCst), 2);
    assert_echo(&mut long_lived, 1, b"the old one still flows");

    // The log line names each changed setting as applied or as needing a restart.
    std::fs::write(
        &path,
        format!(
            "backlog = 100\nsticky_secret = \"a secret of 16+ bytes\"\n{}",
            config(&[b.addr])
        ),
    )
    .unwrap();
    wslb.signal(libc::SIGHUP);
    wslb.wait_for(
        "reload done: 0 backends added, 0 removed; applied: sticky_secret; \
         not applied until a restart: backlog",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends an upgrade with `extra` header lines and returns the response head and the
/// client, after one echo (so the backend has counted the connection).
fn sticky_upgrade(lb: SocketAddr, extra: &str) -> (String, Peer) {
    let mut p = Peer::client(lb);
    p.send_raw(
        format!(
            "GET / HTTP/1.1\r\nHost: t\r\n{extra}Upgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .as_bytes(),
    );
    let head = p.read_head();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_echo(&mut p, 1, b"counted");
    (head, p)
}

/// The `srv` cookie's value in a 101's `Set-Cookie`, if there is one.
fn srv_cookie(head: &str) -> Option<String> {
    let line = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))?;
    let value = line.split_once("srv=")?.1;
    Some(value.split(';').next()?.to_string())
}

/// Issue 19: `sticky_secret` was read at start only, so a SIGHUP that changed it was
/// neither applied nor reported. Now new cookies are signed with the new secret, a cookie
/// of the previous one still brings its client home (and is replaced by a new one), and a
/// cookie two changes old names nothing.
#[test]
fn a_reloaded_sticky_secret_signs_new_cookies_and_honours_the_previous_ones_once() {
    let backends = [backend(), backend(), backend()];
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let accepted = || -> Vec<usize> {
        backends
            .iter()
            .map(|b| b.accepted.load(Ordering::SeqCst))
            .collect()
    };
    let with_secret = |secret: &'static str| {
        move |c: &mut Config| {
            c.sticky = wslb::config::StickyMode::Cookie;
            c.sticky_cookie = "srv".into();
            c.sticky_secret = secret.into();
        }
    };
    let (a, b, c) = (
        "the first secret, 16+ bytes",
        "the second secret, 16+ bytes",
        "the third secret, 16+ bytes",
    );
    let mut held = Vec::new();
    let lb = balancer(&addrs, 1, with_secret(a));
    let (head, p) = sticky_upgrade(lb.local_addr, "");
    held.push(p);
    let old = srv_cookie(&head).expect("the 101 sets the cookie");
    let home = accepted().iter().position(|&n| n == 1).unwrap();

    let applied = lb.reload(&config(&addrs, 1, with_secret(b)).validate().unwrap());
    assert_eq!(applied.needs_restart, Vec::<&str>::new());

    // The cookie of the previous secret still brings its client home, three times out of
    // three (round robin alone would spread them), and is replaced by one of the new.
    let before = accepted();
    let mut renewed = Vec::new();
    for _ in 0..3 {
        let (head, p) = sticky_upgrade(lb.local_addr, &format!("Cookie: srv={old}\r\n"));
        held.push(p);
        renewed.push(srv_cookie(&head).expect("a cookie of the new secret replaces it"));
    }
    let mut want = before.clone();
    want[home] += 3;
    assert_eq!(
        accepted(),
        want,
        "the previous secret's cookie keeps its backend"
    );
    assert!(renewed.iter().all(|t| *t != old && *t == renewed[0]));
    // The renewed cookie is current: it brings the client home and is not replaced.
    let (head, p) = sticky_upgrade(lb.local_addr, &format!("Cookie: srv={}\r\n", renewed[0]));
    held.push(p);
    assert_eq!(srv_cookie(&head), None, "{head}");
    want[home] += 1;
    assert_eq!(accepted(), want);

    // A fresh client's cookie is signed with the new secret: an instance that only ever
    // had the new secret takes it as its own (same backend, not replaced) and ignores the
    // old one.
    let (head, p) = sticky_upgrade(lb.local_addr, "");
    held.push(p);
    let fresh = srv_cookie(&head).expect("a fresh client gets a cookie");
    let after = accepted();
    let fresh_home = (0..3).find(|&i| after[i] == want[i] + 1).unwrap();
    let other = balancer(&addrs, 1, with_secret(b));
    let before = accepted();
    let (head, p) = sticky_upgrade(other.local_addr, &format!("Cookie: srv={fresh}\r\n"));
    held.push(p);
    assert_eq!(
        srv_cookie(&head),
        None,
        "signed with the new secret: {head}"
    );
    assert_eq!(accepted()[fresh_home], before[fresh_home] + 1);
    let (head, p) = sticky_upgrade(other.local_addr, &format!("Cookie: srv={old}\r\n"));
    held.push(p);
    assert!(srv_cookie(&head).is_some_and(|t| t != old), "{head}");
    drop(other);

    // A second change: the first secret's cookie names nothing any more (round robin
    // spreads its three clients, one per backend), the second's is still honoured.
    lb.reload(&config(&addrs, 1, with_secret(c)).validate().unwrap());
    let before = accepted();
    for _ in 0..3 {
        let (head, p) = sticky_upgrade(lb.local_addr, &format!("Cookie: srv={old}\r\n"));
        held.push(p);
        assert!(srv_cookie(&head).is_some_and(|t| t != old), "{head}");
    }
    let spread: Vec<usize> = accepted().iter().zip(&before).map(|(n, b)| n - b).collect();
    assert_eq!(spread, [1, 1, 1], "a cookie two secrets old is ignored");
    let before = accepted();
    for _ in 0..3 {
        let (head, p) = sticky_upgrade(lb.local_addr, &format!("Cookie: srv={fresh}\r\n"));
        held.push(p);
        assert!(
            srv_cookie(&head).is_some_and(|t| t != fresh),
            "replaced: {head}"
        );
    }
    assert_eq!(accepted()[fresh_home], before[fresh_home] + 3);
}
