//! TLS termination (wss://) with real clients: Python's `websockets` over `ssl`, the
//! `openssl s_client` CLI and rustls, through an in-process balancer in front of in-process
//! echo backends on 127.0.0.1. The certificates are made at test time (`common::tls`).
//! Hostile input (plaintext, garbage, a stalled or oversized handshake, close_notify with
//! TCP left open) is each followed by proof that the worker still serves a good client.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use common::tls::*;
use common::*;
use tungstenite::Message;
use wslb::Instance;
use wslb::config::{Config, IoDriver};

/// `[tls]` with the one certificate at `cert`/`key`.
fn with_cert(cert: &str, key: &str) -> impl Fn(&mut Config) + use<> {
    let (cert, key) = (cert.to_string(), key.to_string());
    move |c| {
        c.tls.cert = cert.clone();
        c.tls.key = key.clone();
    }
}

/// A CA, a "localhost" leaf, an echo backend and a one-worker TLS balancer before it.
fn tls_balancer(test: &str, tweak: impl FnOnce(&mut Config)) -> (Pki, wslb::EchoServer, Instance) {
    let pki = Pki::new(test);
    let (_, cert, key) = pki.leaf("localhost", &["localhost"]);
    let e = echo();
    let lb = balancer(&[e.local_addr], 1, |c| {
        with_cert(&cert, &key)(c);
        tweak(c);
    });
    (pki, e, lb)
}

// ---- Python `websockets` -------------------------------------------------------------

/// Runs tests/tls/client.py against `lb` (text, binary, 1 MiB, close 4000).
fn python_client(lb: SocketAddr, ca: &std::path::Path) {
    let (port, ca) = (lb.port().to_string(), ca.display().to_string());
    common::python_client(
        "tls/client.py",
        &["--port", &port, "--server-name", "localhost", "--ca", &ca],
        &[
            "ok ALPN",
            "ok text echo",
            "ok binary echo",
            "ok 1 MiB binary echo",
            "ok close code echoed",
        ],
    );
}

fn python_echo_through(driver: IoDriver, test: &str) {
    let (pki, _e, lb) = tls_balancer(test, |c| c.io_driver = driver);
    python_client(lb.local_addr, &pki.ca_file);
    // And the same balancer to rustls + tungstenite, for both versions.
    assert_serves(lb.local_addr, "localhost", &pki.ca);
    let tls12 = tls_connect(
        lb.local_addr,
        "localhost",
        client_config(&pki.ca, &[&rustls::version::TLS12]),
    );
    assert_eq!(
        tls12.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let mut ws = wss_over(tls12, "localhost");
    ws.send(Message::text("over 1.2")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("over 1.2"));
}

#[test]
fn python_websockets_echoes_text_binary_1mib_and_the_close_code() {
    python_echo_through(IoDriver::Auto, "python-auto");
}

#[test]
fn python_websockets_echoes_with_the_epoll_driver() {
    python_echo_through(IoDriver::Epoll, "python-epoll");
}

// ---- openssl s_client: versions, ALPN, SNI ---------------------------------------------

#[test]
fn tls13_and_tls12_are_accepted_tls10_and_tls11_refused() {
    let (pki, _e, lb) = tls_balancer("versions", |_| {});
    for (flag, name) in [("-tls1_3", "TLSv1.3"), ("-tls1_2", "TLSv1.2")] {
        let s = s_client(lb.local_addr, &pki.ca_file, &[flag]);
        assert!(s.ok, "{flag} refused:\n{}", s.out);
        assert!(
            s.out.contains(&format!("New, {name}, Cipher is")),
            "{flag}:\n{}",
            s.out
        );
        assert!(
            s.out.contains("Verify return code: 0 (ok)"),
            "{flag}:\n{}",
            s.out
        );
    }
    for flag in ["-tls1", "-tls1_1"] {
        let s = s_client(
            lb.local_addr,
            &pki.ca_file,
            &[flag, "-cipher", "DEFAULT@SECLEVEL=0"],
        );
        assert!(!s.ok, "{flag} accepted:\n{}", s.out);
        // The refusal is the server's alert, not the client declining to try:
        // protocol_version (70), or handshake_failure (40), which rustls sends first for a
        // TLS 1.0/1.1 hello because such a hello has no signature_algorithms extension.
        assert!(
            s.out.contains("SSL alert number 70") || s.out.contains("SSL alert number 40"),
            "{flag}: no protocol_version or handshake_failure alert from the server:\n{}",
            s.out
        );
    }
    assert_serves(lb.local_addr, "localhost", &pki.ca);
}

#[test]
fn alpn_http11_is_selected() {
    let (pki, _e, lb) = tls_balancer("alpn", |_| {});
    let s = s_client(lb.local_addr, &pki.ca_file, &["-alpn", "http/1.1"]);
    assert!(s.ok, "{}", s.out);
    assert!(s.out.contains("ALPN protocol: http/1.1"), "{}", s.out);
    let t = tls_connect(lb.local_addr, "localhost", client_config(&pki.ca, &[]));
    assert_eq!(t.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    wss_over(t, "localhost").close(None).unwrap();
}

/// A default "localhost" certificate and one for `other.test` and `*.wild.test`, picked
/// by SNI, with `unknown_sni` as given.
fn sni_balancer(test: &str, unknown_sni: &str) -> (Pki, Leaf, Leaf, wslb::EchoServer, Instance) {
    let pki = Pki::new(test);
    let (default, dc, dk) = pki.leaf("default", &["localhost"]);
    let (other, oc, ok) = pki.leaf("other", &["other.test", "*.wild.test"]);
    let e = echo();
    let section = format!(
        "[tls]\ncert = {dc:?}\nkey = {dk:?}\nunknown_sni = {unknown_sni:?}\n\
         [[tls.certificates]]\ncert = {oc:?}\nkey = {ok:?}\n"
    );
    let lb = balancer(&[e.local_addr], 1, |c| {
        tls_section(c, &section);
        c.admin.listen = "127.0.0.1:0".into();
    });
    (pki, default, other, e, lb)
}

#[test]
fn sni_picks_the_certificate_that_names_the_host() {
    let (pki, default, other, _e, lb) = sni_balancer("sni", "default");
    for (name, want) in [
        ("other.test", &other),
        ("a.wild.test", &other),
        ("localhost", &default),
    ] {
        let s = s_client(
            lb.local_addr,
            &pki.ca_file,
            &["-servername", name, "-verify_hostname", name],
        );
        assert!(s.ok, "SNI {name}:\n{}", s.out);
        assert!(
            s.leaf_der() == want.der.as_ref(),
            "SNI {name}: wrong certificate:\n{}",
            s.out
        );
        assert!(s.out.contains("Verify return code: 0 (ok)"), "{}", s.out);
    }
    // No SNI at all: the default.
    let s = s_client(lb.local_addr, &pki.ca_file, &[]);
    assert!(s.ok && s.leaf_der() == default.der.as_ref(), "{}", s.out);
    // rustls verifying the name, through to the echo.
    let t = tls_connect(lb.local_addr, "other.test", client_config(&pki.ca, &[]));
    assert_eq!(presented(&t), other.der);
    assert_serves(lb.local_addr, "other.test", &pki.ca);
    assert_serves(lb.local_addr, "localhost", &pki.ca);
}

#[test]
fn unknown_sni_gets_the_default_certificate() {
    let (pki, default, _, _e, lb) = sni_balancer("sni-default", "default");
    let s = s_client(lb.local_addr, &pki.ca_file, &["-servername", "nobody.test"]);
    assert!(s.ok, "{}", s.out);
    assert!(s.leaf_der() == default.der.as_ref(), "{}", s.out);
}

#[test]
fn unknown_sni_is_refused_when_configured() {
    let (pki, _, other, _e, lb) = sni_balancer("sni-refuse", "refuse");
    let refused = s_client(lb.local_addr, &pki.ca_file, &["-servername", "nobody.test"]);
    assert!(!refused.ok, "accepted:\n{}", refused.out);
    let text = metric_reaches(
        &lb,
        r#"wslb_tls_handshake_failures_total{reason="unknown_sni"}"#,
        1.0,
    );
    assert_eq!(
        sum(&text, "wslb_tls_handshake_failures_total"),
        1.0,
        "{text}"
    );
    let s = s_client(lb.local_addr, &pki.ca_file, &["-servername", "other.test"]);
    assert!(s.ok && s.leaf_der() == other.der.as_ref(), "{}", s.out);
    assert_serves(lb.local_addr, "localhost", &pki.ca);
    // The refusal is an alert: rustls ends a handshake whose certificate resolver found
    // nothing with access_denied (49), not unrecognized_name (112), and offers no hook to
    // choose another; sending 112 would mean parsing the ClientHello before rustls.
    assert!(
        refused.out.contains("alert access denied"),
        "refused without an alert:\n{}",
        refused.out
    );
}

#[test]
fn sessions_resume_tls13_by_ticket_and_tls12_by_the_session_cache() {
    use rustls::HandshakeKind;
    let (pki, _e, lb) = tls_balancer("resumption", |_| {});
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let config = resuming_client_config(&pki.ca, &[version]);
        let first = tls_connect(lb.local_addr, "localhost", config.clone());
        assert_eq!(first.conn.handshake_kind(), Some(HandshakeKind::Full));
        // A message both ways, so the client has read the TLS 1.3 tickets sent after the
        // handshake.
        let mut ws = wss_over(first, "localhost");
        ws.send(Message::text("first")).unwrap();
        assert_eq!(ws.read().unwrap(), Message::text("first"));
        let again = tls_connect(lb.local_addr, "localhost", config);
        assert_eq!(
            again.conn.handshake_kind(),
            Some(HandshakeKind::Resumed),
            "{:?} not resumed",
            again.conn.protocol_version()
        );
        let mut ws = wss_over(again, "localhost");
        ws.send(Message::text("resumed")).unwrap();
        assert_eq!(ws.read().unwrap(), Message::text("resumed"));
    }
}

#[test]
fn a_tls_client_over_its_per_ip_limit_is_closed_before_the_handshake() {
    let (pki, _e, lb) = tls_balancer("per-ip", |c| c.limits.max_connections_per_ip = 1);
    let mut held = wss_connect(lb.local_addr, "localhost", &pki.ca);
    held.send(Message::text("holds its one place")).unwrap();
    assert_eq!(held.read().unwrap(), Message::text("holds its one place"));
    // The same client again: closed with nothing sent, not even a ServerHello (the
    // handshake is the cost the limit spares).
    let got = raw_exchange(lb.local_addr, &client_hello(&pki.ca, "localhost"));
    assert!(
        got.is_empty(),
        "answered: {:?}",
        String::from_utf8_lossy(&got)
    );
    let h = lb.handle();
    let mut refused = 0;
    for _ in 0..500 {
        refused = h
            .snapshot()
            .totals
            .rejected(wslb::metrics::Rejected::PerIpConnections);
        if refused > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(refused, 1);
    assert_eq!(h.snapshot().totals.tls_handshakes.iter().sum::<u64>(), 1);
    held.send(Message::text("still here")).unwrap();
    assert_eq!(held.read().unwrap(), Message::text("still here"));
}

#[test]
fn a_tls_client_over_the_connection_limit_is_closed_and_counted() {
    let (pki, _e, lb) = tls_balancer("limit", |c| c.limits.max_connections = 1);
    let mut held = wss_connect(lb.local_addr, "localhost", &pki.ca);
    held.send(Message::text("holds the only place")).unwrap();
    assert_eq!(held.read().unwrap(), Message::text("holds the only place"));
    // The next one: a TCP close (no HTTP 503 in plaintext on a TLS port).
    let got = raw_exchange(lb.local_addr, &client_hello(&pki.ca, "localhost"));
    assert!(
        !got.windows(8).any(|w| w == b"HTTP/1.1"),
        "plaintext answer on the TLS port: {:?}",
        String::from_utf8_lossy(&got)
    );
    let h = lb.handle();
    let mut limited = 0;
    for _ in 0..500 {
        limited = h.snapshot().totals.rejected(wslb::metrics::Rejected::Limit);
        if limited > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(limited, 1);
    // The held connection is unaffected; once it closes, the place is free again.
    held.send(Message::text("still here")).unwrap();
    assert_eq!(held.read().unwrap(), Message::text("still here"));
    held.close(None).unwrap();
    while held.read().is_ok() {}
    wait_closed(&lb);
    assert_serves(lb.local_addr, "localhost", &pki.ca);
}

// ---- hostile input ------------------------------------------------------------------

/// Issue 20: plain HTTP sent to the TLS port got a TLS alert, which curl shows as
/// `Received HTTP/0.9`. It gets a plaintext 400 saying the port speaks TLS, counted as
/// `plain_http`, and a TLS client is served as before.
#[test]
fn plain_http_on_the_tls_port_gets_a_plaintext_400() {
    let (pki, _e, lb) = tls_balancer("plaintext", |c| c.admin.listen = "127.0.0.1:0".into());
    let plain = "GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/8.5.0\r\n\r\n";
    for request in [plain, &upgrade_request("/")] {
        let got = String::from_utf8(raw_exchange(lb.local_addr, request.as_bytes())).unwrap();
        assert!(got.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{got:?}");
        let (head, body) = got.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("\r\nConnection: close\r\n"), "{got:?}");
        assert!(
            body.contains("https://") && body.contains("wss://"),
            "{got:?}"
        );
    }
    metric_reaches(
        &lb,
        r#"wslb_tls_handshake_failures_total{reason="plain_http"}"#,
        2.0,
    );
    assert_serves(lb.local_addr, "localhost", &pki.ca);
}

/// Deterministic noise (xorshift64), so a failure repeats.
fn noise(n: usize, mut x: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn random_bytes_are_closed() {
    let (pki, _e, lb) = tls_balancer("random", |_| {});
    // Noise from the first byte, and noise inside a plausible handshake record.
    let mut in_record = vec![22, 3, 1, 0x10, 0x00];
    in_record.extend(noise(4096, 0x9e37_79b9_7f4a_7c15));
    for (what, bytes) in [
        ("noise", noise(4096, 0x2545_f491_4f6c_dd1d)),
        ("noise in a handshake record", in_record),
    ] {
        let got = raw_exchange(lb.local_addr, &bytes);
        assert!(only_alerts(&got), "{what}: answered {got:?}");
        assert_serves(lb.local_addr, "localhost", &pki.ca);
    }
}

#[test]
fn stalled_client_hello_is_closed_at_the_handshake_timeout() {
    let (pki, _e, lb) = tls_balancer("stall", |c| c.timeouts.client_handshake_ms = 500);
    let hello = client_hello(&pki.ca, "localhost");
    let mut stalled = std::net::TcpStream::connect(lb.local_addr).unwrap();
    stalled.set_read_timeout(Some(TIMEOUT)).unwrap();
    stalled.write_all(&hello[..hello.len() / 2]).unwrap();
    // The stalled client does not hold the worker up meanwhile.
    assert_serves(lb.local_addr, "localhost", &pki.ca);
    // Then wslb closes it (the read guard is 10 s, the timeout 0.5 s).
    let got = read_until_closed(&mut stalled);
    assert!(only_alerts(&got), "answered {got:?}");
    assert_serves(lb.local_addr, "localhost", &pki.ca);
}

/// How a backend connection ended.
#[derive(Debug, PartialEq)]
enum Ended {
    Close(u16),
    Eof,
}

/// A backend that echoes data frames and reports how its connection ended (answering a
/// close).
fn ending_backend() -> (SocketAddr, mpsc::Receiver<Ended>) {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let addr = scripted_backend(move |mut p| {
        let end = loop {
            match p.recv() {
                Some((_, 8, payload)) => {
                    p.send(true, 8, &payload);
                    break Ended::Close(u16::from_be_bytes([payload[0], payload[1]]));
                }
                Some((fin, op, payload)) => p.send(fin, op, &payload),
                None => break Ended::Eof,
            }
        };
        let _ = tx.lock().unwrap().send(end);
    });
    (addr, rx)
}

fn wait_closed(lb: &Instance) {
    let h = lb.handle();
    for _ in 0..1000 {
        if h.snapshot().totals.open == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!(
        "{} connections still open",
        lb.handle().snapshot().totals.open
    );
}

#[test]
fn close_notify_with_tcp_left_open_ends_the_relay() {
    let pki = Pki::new("close-notify");
    let (_, cert, key) = pki.leaf("localhost", &["localhost"]);
    let (b, ended) = ending_backend();
    let lb = balancer(&[b], 1, with_cert(&cert, &key));
    let mut ws = wss_connect(lb.local_addr, "localhost", &pki.ca);
    ws.send(Message::text("before close_notify")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("before close_notify"));
    assert_eq!(lb.handle().snapshot().totals.open, 1);
    // close_notify, and the TCP connection stays open (no FIN from the client).
    let tls = ws.get_mut();
    tls.conn.send_close_notify();
    while tls.conn.wants_write() {
        tls.conn.write_tls(&mut tls.sock).unwrap();
    }
    let end = ended
        .recv_timeout(TIMEOUT)
        .expect("the backend's connection never ended after the client's close_notify");
    // As for a plaintext client gone without a close: the backend gets 1001.
    assert_eq!(end, Ended::Close(1001));
    wait_closed(&lb);
    // wslb closes the client's TCP connection too.
    read_until_closed(&mut tls.sock);
    assert_serves_via(&lb, &pki);
}

/// [`assert_serves`] for a balancer whose backend is an [`ending_backend`].
fn assert_serves_via(lb: &Instance, pki: &Pki) {
    let mut ws = wss_connect(lb.local_addr, "localhost", &pki.ca);
    ws.send(Message::binary(vec![7u8; 20_000])).unwrap();
    assert_eq!(ws.read().unwrap(), Message::binary(vec![7u8; 20_000]));
}

/// A record header claiming 16 KiB + 2048 + 1 bytes: more than any TLS record may carry.
const OVERSIZED: [u8; 2] = (16384u16 + 2048 + 1).to_be_bytes();

#[test]
fn oversized_record_fails_cleanly() {
    let (pki, _e, lb) = tls_balancer("oversized", |_| {});
    // As the first record (a "ClientHello").
    let mut bytes = vec![22, 3, 1, OVERSIZED[0], OVERSIZED[1]];
    bytes.extend(noise(1024, 7));
    let got = raw_exchange(lb.local_addr, &bytes);
    assert!(only_alerts(&got), "answered {got:?}");
    assert_serves(lb.local_addr, "localhost", &pki.ca);

    // After the handshake and upgrade, as application data.
    let (b, ended) = ending_backend();
    let lb = balancer(&[b], 1, {
        let (c, k) = pki.paths("localhost");
        with_cert(&c, &k)
    });
    let mut ws = wss_connect(lb.local_addr, "localhost", &pki.ca);
    ws.send(Message::text("before")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("before"));
    let sock = &mut ws.get_mut().sock;
    let mut record = vec![23, 3, 3, OVERSIZED[0], OVERSIZED[1]];
    record.extend(noise(1024, 8));
    let _ = sock.write_all(&record);
    // The connection ends (with an encrypted alert, or none) and so does the backend's.
    read_until_closed(sock);
    let end = ended
        .recv_timeout(TIMEOUT)
        .expect("backend never saw the end");
    // As for a plaintext client gone without a close: the backend gets 1001.
    assert_eq!(end, Ended::Close(1001));
    wait_closed(&lb);
    assert_serves_via(&lb, &pki);
}

// ---- what the backend sees ------------------------------------------------------------

#[test]
fn forwarded_upgrade_says_https() {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let b = scripted_backend(move |mut p| {
        let _ = tx.lock().unwrap().send(p.request.clone());
        p.send(true, 1, b"ok");
        let _ = p.recv();
    });
    let pki = Pki::new("forwarded");
    let (_, cert, key) = pki.leaf("localhost", &["localhost"]);
    let lb = balancer(&[b], 1, with_cert(&cert, &key));
    let mut ws = wss_connect(lb.local_addr, "localhost", &pki.ca);
    assert_eq!(ws.read().unwrap(), Message::text("ok"));
    let head = rx.recv_timeout(TIMEOUT).unwrap();
    assert!(head.starts_with("GET /tls-test HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("X-Forwarded-Proto: https\r\n"), "{head}");
    assert!(!head.contains("X-Forwarded-Proto: http\r\n"), "{head}");
    assert!(head.contains("X-Forwarded-For: 127.0.0.1\r\n"), "{head}");
    ws.close(None).unwrap();
}

// ---- certificate reload ----------------------------------------------------------------

#[test]
fn reload_swaps_the_certificate_for_new_handshakes_and_keeps_open_connections() {
    let pki = Pki::new("reload");
    let (first, cert, key) = pki.leaf("localhost", &["localhost"]);
    let e = echo();
    let tweak = with_cert(&cert, &key);
    let lb = balancer(&[e.local_addr], 1, &tweak);
    let open = tls_connect(lb.local_addr, "localhost", client_config(&pki.ca, &[]));
    assert_eq!(presented(&open), first.der);
    let mut open = wss_over(open, "localhost");
    open.send(Message::text("before")).unwrap();
    assert_eq!(open.read().unwrap(), Message::text("before"));

    // New certificate and key in the same files, then a reload.
    let second = pki.ca.leaf(&["localhost"]);
    assert_ne!(second.der, first.der);
    second.write(cert.as_ref(), key.as_ref());
    let applied = lb.reload(&config(&[e.local_addr], 1, &tweak).validate().unwrap());
    assert_eq!(applied.needs_restart, Vec::<&str>::new());
    assert!(applied.tls, "the reload did not see the certificate change");

    // The first handshake after `reload` returned.
    let fresh = tls_connect(lb.local_addr, "localhost", client_config(&pki.ca, &[]));
    let got = presented(&fresh);
    let mut fresh = wss_over(fresh, "localhost");
    fresh.send(Message::text("new")).unwrap();
    assert_eq!(fresh.read().unwrap(), Message::text("new"));
    // The connection opened before the reload is untouched.
    let big = vec![0xa5u8; 100_000];
    open.send(Message::binary(big.clone())).unwrap();
    assert_eq!(open.read().unwrap(), Message::binary(big));
    open.close(None).unwrap();
    if got != second.der {
        let next = presented(&tls_connect(
            lb.local_addr,
            "localhost",
            client_config(&pki.ca, &[]),
        ));
        panic!(
            "the first handshake after reload() returned got the old certificate; the next \
             one got the {}",
            if next == second.der {
                "new one (the swap landed late)"
            } else {
                "old one too"
            }
        );
    }
}

/// Runs a reload with broken files the way `wslb run` does on SIGHUP: a config that does
/// not validate is a failed reload (nothing applied); one that validates is applied and
/// must keep the old certificate by itself.
fn reload_broken(lb: &Instance, config: Config) {
    match config.validate() {
        Ok(s) => {
            lb.reload(&s);
        }
        Err(e) => {
            eprintln!("broken certificate files rejected by validate(): {e}");
            lb.handle().reload_failed();
        }
    }
}

#[test]
fn reload_with_a_broken_key_keeps_the_old_certificate() {
    let pki = Pki::new("reload-broken");
    let (first, cert, key) = pki.leaf("localhost", &["localhost"]);
    let e = echo();
    let tweak = with_cert(&cert, &key);
    let lb = balancer(&[e.local_addr], 1, &tweak);
    let mut open = wss_connect(lb.local_addr, "localhost", &pki.ca);

    // A new certificate with a key file that is not a key.
    let next = pki.ca.leaf(&["localhost"]);
    std::fs::write(&cert, &next.cert_pem).unwrap();
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    reload_broken(&lb, config(&[e.local_addr], 1, &tweak));
    let t = tls_connect(lb.local_addr, "localhost", client_config(&pki.ca, &[]));
    assert!(
        presented(&t) == first.der,
        "the certificate changed on a reload with a broken key"
    );
    drop(t);

    // A well-formed key that belongs to another certificate.
    let unrelated = pki.ca.leaf(&["localhost"]);
    std::fs::write(&key, &unrelated.key_pem).unwrap();
    reload_broken(&lb, config(&[e.local_addr], 1, &tweak));
    let t = tls_connect(lb.local_addr, "localhost", client_config(&pki.ca, &[]));
    assert!(
        presented(&t) == first.der,
        "the certificate changed on a reload with a key that does not match it"
    );
    let mut t = wss_over(t, "localhost");
    t.send(Message::text("served")).unwrap();
    assert_eq!(t.read().unwrap(), Message::text("served"));
    open.send(Message::text("open one")).unwrap();
    assert_eq!(open.read().unwrap(), Message::text("open one"));
}

// ---- metrics -----------------------------------------------------------------------

/// `GET /metrics` on the admin server.
fn metrics(lb: &Instance) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(lb.admin_addr.expect("admin server")).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out.split_once("\r\n\r\n").unwrap().1.to_string()
}

/// The sample whose line starts with `series ` (`None`: not exported).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

/// Polls `/metrics` until `series` reads `want` (the server may count a moment after the
/// client is done); returns the text it read last. Panics if it never does.
fn metric_reaches(lb: &Instance, series: &str, want: f64) -> String {
    let mut text = String::new();
    for _ in 0..500 {
        text = metrics(lb);
        if sample(&text, series) == Some(want) {
            return text;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{series} never reached {want}:\n{text}");
}

/// The sum of every sample of the metric `name` (all label sets).
fn sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

#[test]
fn handshakes_and_failures_are_counted_on_metrics() {
    let (pki, _e, lb) = tls_balancer("metrics", |c| {
        c.admin.listen = "127.0.0.1:0".into();
        c.timeouts.client_handshake_ms = 1000;
    });
    let addr = lb.local_addr;
    // Good: three TLS 1.3 (rustls, through to the echo), two TLS 1.2 (openssl).
    for _ in 0..3 {
        assert_serves(addr, "localhost", &pki.ca);
    }
    for _ in 0..2 {
        let s = s_client(addr, &pki.ca_file, &["-tls1_2"]);
        assert!(s.ok, "{}", s.out);
    }
    // Failures: two old versions, a stall, a hello cut short by a close, plain HTTP, noise.
    for flag in ["-tls1", "-tls1_1"] {
        assert!(!s_client(addr, &pki.ca_file, &[flag, "-cipher", "DEFAULT@SECLEVEL=0"]).ok);
    }
    let hello = client_hello(&pki.ca, "localhost");
    let mut stalled = std::net::TcpStream::connect(addr).unwrap();
    stalled.set_read_timeout(Some(TIMEOUT)).unwrap();
    stalled.write_all(&hello[..hello.len() / 2]).unwrap();
    read_until_closed(&mut stalled);
    {
        let mut cut = std::net::TcpStream::connect(addr).unwrap();
        cut.write_all(&hello[..hello.len() / 2]).unwrap();
        cut.shutdown(std::net::Shutdown::Write).unwrap();
        cut.set_read_timeout(Some(TIMEOUT)).unwrap();
        read_until_closed(&mut cut);
    }
    raw_exchange(addr, upgrade_request("/").as_bytes());
    raw_exchange(addr, &noise(64, 0x2545_f491_4f6c_dd1d));

    // The counts reach what the test did (the server may count a moment after the client
    // is done), then are exact.
    let mut text = String::new();
    for _ in 0..500 {
        text = metrics(&lb);
        if sum(&text, "wslb_tls_handshakes_total") >= 5.0
            && sum(&text, "wslb_tls_handshake_failures_total") >= 6.0
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let handshakes = |v: &str| {
        sample(
            &text,
            &format!("wslb_tls_handshakes_total{{version=\"{v}\"}}"),
        )
    };
    let failures = |r: &str| {
        sample(
            &text,
            &format!("wslb_tls_handshake_failures_total{{reason=\"{r}\"}}"),
        )
    };
    assert_eq!(handshakes("1.3"), Some(3.0), "{text}");
    assert_eq!(handshakes("1.2"), Some(2.0), "{text}");
    assert_eq!(failures("protocol_version"), Some(2.0), "{text}");
    assert_eq!(failures("timeout"), Some(1.0), "{text}");
    assert_eq!(failures("closed"), Some(1.0), "{text}");
    assert_eq!(failures("plain_http"), Some(1.0), "{text}");
    assert_eq!(failures("bad_message"), Some(1.0), "{text}");
    assert_eq!(
        sum(&text, "wslb_tls_handshake_failures_total"),
        6.0,
        "{text}"
    );
    assert_eq!(sum(&text, "wslb_tls_handshakes_total"), 5.0, "{text}");
    // notAfter of the test certificate: 2099-01-01T00:00:00Z, on the series for its file.
    let (cert, _) = pki.paths("localhost");
    let file = format!("file=\"{cert}\"");
    let expiry: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("wslb_tls_certificate_expiry_timestamp_seconds{") && l.contains(&file)
        })
        .collect();
    assert_eq!(expiry.len(), 1, "{text}");
    assert!(expiry[0].ends_with(" 4070908800"), "{}", expiry[0]);
}

// ---- TLS to backends ------------------------------------------------------------------

/// Python's `websockets` serving wss:// with `cert`/`key`, killed on drop.
fn python_backend(cert: &str, key: &str) -> PythonServer {
    python_backend_with(cert, key, &[])
}

/// [`python_backend`] with more arguments for server.py (`--client-ca FILE`).
fn python_backend_with(cert: &str, key: &str, more: &[&str]) -> PythonServer {
    let mut args = vec!["--cert", cert, "--key", key];
    args.extend_from_slice(more);
    python_server("tls/server.py", &args)
}

/// A balancer terminating TLS in front of `backend` (written `wss://127.0.0.1:PORT`,
/// verified as "localhost" against `ca_file`).
fn wss_to_wss(pki: &Pki, backend: u16, ca_file: &std::path::Path) -> Instance {
    wss_to_wss_with(pki, backend, ca_file, |_| {})
}

fn wss_to_wss_with(
    pki: &Pki,
    backend: u16,
    ca_file: &std::path::Path,
    tweak: impl FnOnce(&mut Config),
) -> Instance {
    let (_, cert, key) = pki.leaf("front", &["localhost"]);
    balancer(&[], 1, |c| {
        with_cert(&cert, &key)(c);
        c.backends = vec![format!("wss://127.0.0.1:{backend}").into()];
        c.tls_backend.ca = ca_file.display().to_string();
        c.tls_backend.server_name = "localhost".into();
        tweak(c);
    })
}

#[test]
fn a_backend_reached_over_tls_echoes_everything() {
    let pki = Pki::new("backend-tls");
    let (_, cert, key) = pki.leaf("backend", &["localhost"]);
    let backend = python_backend(&cert, &key);
    let lb = wss_to_wss(&pki, backend.port, &pki.ca_file);
    // Python's websockets on both sides, TLS on both legs: text, binary, 1 MiB, close
    // code 4000 and its reason through the backend's own close reply.
    python_client(lb.local_addr, &pki.ca_file);
    assert_serves(lb.local_addr, "localhost", &pki.ca);
    let snap = lb.handle().snapshot();
    assert_eq!(snap.backends[0].failures, [0, 0, 0], "{:?}", snap.backends);
}

/// A backend that asks for client certificates: wslb presents `[tls_backend] cert/key`;
/// without them the backend refuses it and the client gets 502.
#[test]
fn a_backend_that_wants_a_client_certificate_gets_wslbs() {
    let pki = Pki::new("backend-client-cert");
    let (_, cert, key) = pki.leaf("backend", &["localhost"]);
    let ca = pki.ca_file.display().to_string();
    let backend = python_backend_with(&cert, &key, &["--client-ca", &ca]);
    let wslb_cert = pki.ca.client_leaf("wslb");
    let (client_cert, client_key) = pki.paths("wslb-client");
    wslb_cert.write(
        std::path::Path::new(&client_cert),
        std::path::Path::new(&client_key),
    );
    let lb = wss_to_wss_with(&pki, backend.port, &pki.ca_file, |c| {
        c.tls_backend.cert = client_cert.clone();
        c.tls_backend.key = client_key.clone();
    });
    assert_serves(lb.local_addr, "localhost", &pki.ca);
    let without = wss_to_wss(&pki, backend.port, &pki.ca_file);
    let mut tls = tls_connect(without.local_addr, "localhost", client_config(&pki.ca, &[]));
    tls.write_all(upgrade_request("/").as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut tls, &mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
}

#[test]
fn a_backend_whose_certificate_is_not_trusted_is_not_used() {
    let pki = Pki::new("backend-tls-untrusted");
    let stranger = Pki::new("backend-tls-stranger");
    let (_, cert, key) = stranger.leaf("backend", &["localhost"]);
    let backend = python_backend(&cert, &key);
    // The balancer trusts only `pki`'s CA, and the backend's certificate is from another.
    let lb = wss_to_wss(&pki, backend.port, &pki.ca_file);
    let mut tls = tls_connect(lb.local_addr, "localhost", client_config(&pki.ca, &[]));
    tls.write_all(upgrade_request("/").as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut tls, &mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    // Counted as the backend's failed handshake (the upgrade was never sent to it).
    let snap = lb.handle().snapshot();
    assert_eq!(snap.backends[0].failures[1], 1, "{:?}", snap.backends);
}

// ---- post-handshake messages -------------------------------------------------------------

/// A client's TLS 1.3 KeyUpdate asking for one back: wslb answers with its own KeyUpdate
/// before any record under its new keys, and the echo goes on under the new keys.
#[test]
fn key_update_requested_by_the_client_is_answered() {
    let (pki, _e, lb) = tls_balancer("key-update", |_| {});
    let tls = tls_connect(
        lb.local_addr,
        "localhost",
        client_config(&pki.ca, &[&rustls::version::TLS13]),
    );
    let mut ws = wss_over(tls, "localhost");
    ws.send(Message::text("before")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("before"));
    {
        let s = ws.get_mut();
        s.conn.refresh_traffic_keys().unwrap();
        while s.conn.wants_write() {
            s.conn.write_tls(&mut s.sock).unwrap();
        }
    }
    ws.send(Message::text("after")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("after"));
}

/// Regression test for a worker panic (found in review): the first 3 bytes of a handshake
/// message in one record, then a record with an invalid content type. rustls's deframer
/// still pointed into the reader's buffer when the error freed it, and the writer's next
/// call into rustls (the backend's close reply) indexed out of bounds.
#[test]
fn a_split_handshake_message_then_garbage_ends_only_that_connection() {
    use rustls::crypto::cipher::{OutboundChunks, OutboundPlainMessage};
    use rustls::{ConnectionTrafficSecrets, ContentType, ProtocolVersion};
    use std::io::Read;
    let (pki, _e, lb) = tls_balancer("split-handshake-garbage", |_| {});
    let mut cfg = Arc::unwrap_or_clone(client_config(&pki.ca, &[&rustls::version::TLS13]));
    cfg.enable_secret_extraction = true;
    let mut s = tls_connect(lb.local_addr, "localhost", Arc::new(cfg));
    s.write_all(upgrade_request("/").as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    let rustls::StreamOwned { conn, mut sock } = s;
    let suite = conn.negotiated_cipher_suite().unwrap();
    let (mut seq, tx) = conn.dangerous_extract_secrets().unwrap().tx;
    let (key, iv) = match tx {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
        | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (key, iv),
        _ => panic!("unexpected suite secrets"),
    };
    let mut enc = suite.tls13().unwrap().aead_alg.encrypter(key, iv);
    let m = OutboundPlainMessage {
        typ: ContentType::Handshake,
        version: ProtocolVersion::TLSv1_2,
        payload: OutboundChunks::Single(&[24, 0, 0]),
    };
    let mut bytes = enc.encrypt(m, seq).unwrap().encode();
    seq += 1;
    let _ = seq;
    bytes.extend_from_slice(&[0x99, 3, 3, 0, 1, 0]);
    sock.write_all(&bytes).unwrap();
    // wslb ends this connection (an alert, then the TCP close)...
    let mut got = Vec::new();
    let _ = sock.read_to_end(&mut got);
    // ... and its worker (the only one) lives on.
    assert_serves(lb.local_addr, "localhost", &pki.ca);
}

// ---- client certificates ---------------------------------------------------------------

#[test]
fn client_certificates_are_verified_required_or_optional() {
    let pki = Pki::new("client-ca");
    let (_, cert, key) = pki.leaf("localhost", &["localhost"]);
    let alice = pki.ca.client_leaf("alice");
    let mallory = Ca::new("another CA").client_leaf("mallory");
    let e = echo();
    for (auth, anonymous_ok) in [("required", false), ("optional", true)] {
        let lb = balancer(&[e.local_addr], 1, |c| {
            c.admin.listen = "127.0.0.1:0".into();
            tls_section(
                c,
                &format!(
                    "[tls]\ncert = {cert:?}\nkey = {key:?}\nclient_ca = {:?}\nclient_auth = {auth:?}",
                    pki.ca_file.display().to_string()
                ),
            );
        });
        let with = |leaf: &Leaf| client_config_with_cert(&pki.ca, leaf);
        assert!(
            wss_works(lb.local_addr, "localhost", with(&alice)),
            "{auth}: a client certificate from the CA is let in"
        );
        assert!(
            !wss_works(lb.local_addr, "localhost", with(&mallory)),
            "{auth}: a client certificate from another CA is refused"
        );
        let anonymous = wss_works(lb.local_addr, "localhost", client_config(&pki.ca, &[]));
        assert_eq!(
            anonymous, anonymous_ok,
            "{auth}: a client without a certificate"
        );
        // Mallory's refusal, and with `required` the anonymous one's, counted as such.
        metric_reaches(
            &lb,
            r#"wslb_tls_handshake_failures_total{reason="client_cert"}"#,
            if anonymous_ok { 1.0 } else { 2.0 },
        );
    }
}
