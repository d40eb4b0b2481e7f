//! The metrics against traffic these tests generate: every count is what the test did.

mod common;

use std::time::Duration;

use common::*;
use wslb::frame::Side;
use wslb::metrics::{ClosedBy, Rejected, prometheus};

#[test]
fn thirty_connections_over_three_backends_are_counted_exactly() {
    let backends: Vec<_> = (0..3).map(|_| echo()).collect();
    let addrs: Vec<_> = backends.iter().map(|b| b.local_addr).collect();
    let lb = balancer(&addrs, 2, |_| {});
    let h = lb.handle();
    let mut peers: Vec<Peer> = (0..30).map(|_| Peer::connect(lb.local_addr)).collect();
    // Sizes across the 7-bit, 16-bit and 64-bit length forms.
    let sizes = [5usize, 125, 126, 1000, 70_000];
    let mut sent = 0u64;
    for p in &mut peers {
        for &n in &sizes {
            let payload = vec![b'x'; n];
            assert_echo(p, 2, &payload);
            // What went over the wire: the masked frame the client sent, and the
            // unmasked echo (4 bytes less: no mask key).
            sent += frame(true, 2, &payload, Some([0; 4])).len() as u64;
        }
    }
    let s = h.snapshot();
    let selected: Vec<u64> = s.backends.iter().map(|b| b.selected).collect();
    let open: Vec<u64> = s.backends.iter().map(|b| b.open).collect();
    assert_eq!(selected, [10, 10, 10]);
    assert_eq!(open, [10, 10, 10]);
    assert_eq!(s.totals.accepted, 30);
    assert_eq!(s.totals.open, 30);
    assert_eq!(s.totals.handshakes(), 30);
    let frames = 30 * sizes.len() as u64;
    assert_eq!(s.totals.bytes(Side::Client), sent);
    assert_eq!(s.totals.bytes(Side::Backend), sent - 4 * frames);
    assert_eq!(s.totals.frames(Side::Client), frames);
    assert_eq!(s.totals.frames(Side::Backend), frames);

    // Every client closes with 1000; the echo backend answers 1000.
    for p in &mut peers {
        p.send(true, 8, &close_payload(1000, "bye"));
        assert_eq!(p.expect_close().0, 1000);
        assert!(p.sees_eof());
    }
    drop(peers);
    let s = wait_until(&h, |s| s.totals.open == 0);
    assert_eq!(s.totals.closes(ClosedBy::Client, Some(1000)), 30);
    assert_eq!(s.totals.closes(ClosedBy::Backend, Some(1000)), 30);
    assert_eq!(s.totals.closes(ClosedBy::Wslb, Some(1001)), 0);
    assert!(s.backends.iter().all(|b| b.open == 0));
    // Close frames count as relayed frames too.
    assert_eq!(s.totals.frames(Side::Client), frames + 30);

    let text = prometheus::render(&s);
    for (series, v) in [
        (r#"wslb_connections_accepted_total"#, 30.0),
        (r#"wslb_closes_total{code="1000",by="client"}"#, 30.0),
        (
            r#"wslb_relayed_frames_total{direction="backend_to_client"}"#,
            (frames + 30) as f64,
        ),
        (r#"wslb_handshake_duration_seconds_count"#, 30.0),
    ] {
        assert_eq!(value(&text, series), v, "{series}");
    }
    for a in &addrs {
        let series = format!("wslb_backend_selected_total{{route=\"default\",backend=\"{a}\"}}");
        assert_eq!(value(&text, &series), 10.0);
    }
}

#[test]
fn rejections_are_counted_by_reason() {
    let backend = echo();
    let dead = reserve_addr();
    let lb = balancer(&[backend.local_addr, dead.addr], 1, |c| {
        c.limits.max_connections = 3;
        // With plain HTTP off, a request that is not an upgrade gets 426 (with it on it is
        // proxied: tests/http.rs).
        c.http.enabled = false;
    });
    let h = lb.handle();
    // 405 and 426.
    let mut post = Peer::client(lb.local_addr);
    post.send_raw(upgrade_request("/").replacen("GET", "POST", 1).as_bytes());
    assert!(post.read_to_end().starts_with("HTTP/1.1 405"));
    let mut plain = Peer::client(lb.local_addr);
    plain.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(plain.read_to_end().starts_with("HTTP/1.1 426"));
    // Round robin: the first upgrade goes to the echo, the second to the dead backend,
    // which fails over to the echo (a connect failure, not a rejection).
    let a = Peer::connect(lb.local_addr);
    let b = Peer::connect(lb.local_addr);
    let c = Peer::connect(lb.local_addr);
    // The limit (3) is reached: the fourth gets 503.
    let mut d = Peer::client(lb.local_addr);
    d.send_raw(upgrade_request("/").as_bytes());
    assert!(d.read_to_end().starts_with("HTTP/1.1 503"));
    let s = wait_until(&h, |s| {
        s.totals.rejected(Rejected::MethodNotAllowed405) == 1
    });
    assert_eq!(s.totals.rejected(Rejected::UpgradeRequired426), 1);
    assert_eq!(s.totals.rejected(Rejected::Limit), 1);
    assert_eq!(s.totals.rejected(Rejected::BackendFailed), 0);
    let dead_view = s.backends.iter().find(|v| v.addr == dead.addr).unwrap();
    assert!(
        dead_view.failures[0] >= 1,
        "connect failures: {dead_view:?}"
    );
    drop((a, b, c));
}

#[test]
fn readiness_follows_backends_and_the_drain() {
    let dead = reserve_addr();
    let backend = echo();
    let lb = balancer(&[dead.addr, backend.local_addr], 1, |c| {
        c.health.enabled = true;
        c.health.interval_ms = 50;
        c.health.timeout_ms = 200;
        c.health.fall = 1;
        c.health.rise = 1;
    });
    let h = lb.handle();
    wait_until(&h, |s| s.backends.iter().filter(|b| b.up).count() == 1);
    assert_eq!(h.ready(), Ok(()), "one backend is up");
    let s = h.snapshot();
    assert!(
        s.backends.iter().any(|b| b.failures[2] >= 1),
        "health check failures"
    );
    drop(backend);
    wait_until(&h, |s| s.backends.iter().all(|b| !b.up));
    assert_eq!(h.ready(), Err("every backend is down".to_string()));

    let other = echo();
    let lb = balancer(&[other.local_addr], 1, |_| {});
    let h = lb.handle();
    assert_eq!(h.ready(), Ok(()));
    assert!(!h.snapshot().draining);
    let drained = std::thread::spawn({
        let h = h.clone();
        move || h.drain(Duration::from_millis(100), Duration::from_millis(100))
    });
    wait_until(&h, |s| s.draining);
    assert_eq!(h.ready(), Err("draining".to_string()));
    drained.join().unwrap();
    assert_eq!(
        value(&prometheus::render(&h.snapshot()), "wslb_draining"),
        1.0
    );
}

#[test]
fn reloads_are_counted_by_result() {
    let (a, b) = (echo(), echo());
    let lb = balancer(&[a.local_addr], 1, |_| {});
    let h = lb.handle();
    let before = h.snapshot().last_reload_success;
    let mut c = wslb::config::Config {
        listen: "127.0.0.1:0".into(),
        backends: vec![b.local_addr.to_string().into()],
        workers: 1,
        ..Default::default()
    };
    c.health.enabled = false;
    c.admin.listen = String::new();
    h.reload(&c.validate().unwrap());
    h.reload_failed();
    let s = h.snapshot();
    assert_eq!((s.reloads_ok, s.reloads_failed), (1, 1));
    assert!(s.last_reload_success >= before);
    let text = prometheus::render(&s);
    assert_eq!(
        value(&text, r#"wslb_config_reloads_total{result="success"}"#),
        1.0
    );
    assert_eq!(
        value(&text, r#"wslb_config_reloads_total{result="failure"}"#),
        1.0
    );
}

#[test]
fn the_access_log_has_a_line_per_connection() {
    let backend = echo();
    let dir = test_dir("access-log");
    let path = dir.join("access.log");
    let lb = balancer(&[backend.local_addr], 1, |c| {
        c.access_log.enabled = true;
        c.access_log.format = wslb::access_log::Format::Json;
        c.access_log.path = path.to_string_lossy().into_owned();
        c.http.enabled = false;
    });
    let h = lb.handle();
    let started = unix_ms(std::time::SystemTime::now());
    let mut p = Peer::client(lb.local_addr);
    p.send_raw(upgrade_request("/room/7?user=a").as_bytes());
    assert!(p.read_head().starts_with("HTTP/1.1 101"));
    assert_echo(&mut p, 1, b"hello");
    p.send(true, 8, &close_payload(1000, ""));
    assert_eq!(p.expect_close().0, 1000);
    assert!(p.sees_eof());
    drop(p);
    let mut bad = Peer::client(lb.local_addr);
    bad.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(bad.read_to_end().starts_with("HTTP/1.1 426"));
    wait_until(&h, |s| s.totals.open == 0);
    let ended = unix_ms(std::time::SystemTime::now());
    let text = std::fs::read_to_string(&path).unwrap();
    // Each line leads with its time: RFC 3339, UTC, milliseconds, when the connection
    // was accepted (so within the test, and the relayed connection, accepted first, no
    // later than the refused one).
    let times: Vec<i64> = text
        .lines()
        .map(|l| {
            let t = l
                .strip_prefix(r#"{"time":""#)
                .unwrap_or_else(|| panic!("{l}"));
            let t = rfc3339_ms(&t[..24]).unwrap_or_else(|| panic!("{l}"));
            assert!(
                started <= t && t <= ended,
                "{started} <= {t} <= {ended}: {l}"
            );
            t
        })
        .collect();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    let relayed = lines
        .iter()
        .position(|l| l["outcome"] == "relayed")
        .unwrap();
    assert!(times[relayed] <= times[1 - relayed], "{text}");
    let relayed = &lines[relayed];
    assert_eq!(relayed["status"], 101);
    assert_eq!(relayed["path"], "/room/7?user=a");
    assert_eq!(relayed["backend"], backend.local_addr.to_string());
    // "hello" masked (2 + 4 + 5) and the close (2 + 4 + 2), and back unmasked.
    assert_eq!(relayed["bytes_in"], 11 + 8);
    assert_eq!(relayed["bytes_out"], 7 + 4);
    assert_eq!(
        (
            relayed["frames_in"].as_u64(),
            relayed["frames_out"].as_u64()
        ),
        (Some(2), Some(2))
    );
    assert_eq!(relayed["close"]["code"], 1000);
    assert_eq!(relayed["close"]["by"], "client");
    let rejected = lines.iter().find(|l| l["outcome"] != "relayed").unwrap();
    assert_eq!(rejected["outcome"], "bad_request_426");
    assert_eq!(
        rejected["status"], 426,
        "wslb's own answer is the line's status"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn unix_ms(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Milliseconds since the epoch of `YYYY-MM-DDTHH:MM:SS.mmmZ`, `None` if it is not that
/// (days_from_civil: an independent check of the log's civil_from_days).
fn rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let shape = "dddd-dd-ddTdd:dd:dd.dddZ".as_bytes();
    let fits = b.len() == shape.len()
        && b.iter().zip(shape).all(|(&c, &want)| match want {
            b'd' => c.is_ascii_digit(),
            _ => c == want,
        });
    if !fits {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s[r].parse::<i64>().unwrap();
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let days = 365 * y + y / 4 - y / 100 + y / 400 + (153 * m + 2) / 5 + d - 1 - 719_468;
    let secs = days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19);
    Some(secs * 1000 + n(20..23))
}

/// Polls the snapshot until `done` holds (events, not time: the deadline is only a
/// guard against hanging).
fn wait_until(
    h: &wslb::Handle,
    done: impl Fn(&wslb::metrics::Snapshot) -> bool,
) -> wslb::metrics::Snapshot {
    for _ in 0..500 {
        let s = h.snapshot();
        if done(&s) {
            return s;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("condition never held: {:#?}", h.snapshot().totals);
}

/// The value of the sample whose line starts with `series `.
fn value(text: &str, series: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.strip_prefix(series).is_some_and(|r| r.starts_with(' ')))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"));
    line[series.len() + 1..].parse().unwrap()
}

/// `GET path` on the admin server: (status, body).
fn admin_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw[9..12].parse().unwrap();
    let body = raw
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// The admin server's address, as the binary logs it when it starts.
fn admin_addr(wslb: &Wslb) -> std::net::SocketAddr {
    let line = wslb.wait_for("admin server on http://");
    line.split("http://")
        .nth(1)
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap()
}

/// The real binary with its admin server: scraped after traffic, ready, then not ready
/// while it drains (a Kubernetes or L4 check takes it out before it stops).
#[test]
fn the_binary_serves_metrics_and_readiness_and_is_unready_while_draining() {
    let backend = echo();
    let lb = reserve_addr();
    let dir = test_dir("admin-binary");
    let path = dir.join("wslb.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"{}\"\nworkers = 1\nbackends = [\"{}\"]\n[health]\nenabled = false\n\
             [timeouts]\nshutdown_grace_ms = 5000\n",
            lb.addr, backend.local_addr
        ),
    )
    .unwrap();
    let wslb = Wslb::start(&path, &["--admin", "127.0.0.1:0"]);
    let admin = admin_addr(&wslb);
    wslb.wait_for("balancing");
    let mut p = Peer::connect(lb.addr);
    assert_echo(&mut p, 1, b"scraped");
    let (status, text) = admin_get(admin, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(value(&text, "wslb_connections_accepted_total"), 1.0);
    assert_eq!(value(&text, "wslb_connections_open"), 1.0);
    let series = format!(
        "wslb_backend_connections_open{{route=\"default\",backend=\"{}\"}}",
        backend.local_addr
    );
    assert_eq!(value(&text, &series), 1.0);
    assert!(value(&text, "process_resident_memory_bytes") > 0.0);
    assert_eq!(admin_get(admin, "/readyz").0, 200);
    assert_eq!(admin_get(admin, "/healthz").0, 200);

    // SIGTERM with a connection open: the drain waits for it, and meanwhile readiness
    // says no.
    wslb.signal(libc::SIGTERM);
    wslb.wait_for("draining");
    let (status, body) = admin_get(admin, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("draining"), "{body}");
    assert_eq!(value(&admin_get(admin, "/metrics").1, "wslb_draining"), 1.0);
    p.send(true, 8, &close_payload(1000, ""));
    assert_eq!(p.expect_close().0, 1000);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The real binary relays through its workers' io_uring receive rings (issue 19): every
/// byte the relays received came through a ring, as `/metrics` tells. A worker that fell
/// back to polls and reads (a kernel refusing the ring, a regression in its set-up) fails
/// this instead of passing unnoticed; the ring's own tests pin how it works.
#[test]
fn the_binary_relays_through_the_receive_ring() {
    let backend = echo();
    let lb = reserve_addr();
    let dir = test_dir("recv-ring-binary");
    let path = dir.join("wslb.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"{}\"\nworkers = 2\nbackends = [\"{}\"]\n[health]\nenabled = false\n",
            lb.addr, backend.local_addr
        ),
    )
    .unwrap();
    let wslb = Wslb::start(&path, &["--admin", "127.0.0.1:0"]);
    let admin = admin_addr(&wslb);
    wslb.wait_for("balancing");
    // Both workers (SO_REUSEPORT spreads 20 connections over them), frames within a ring
    // buffer (4 KiB), both directions.
    let mut peers: Vec<Peer> = (0..20).map(|_| Peer::connect(lb.addr)).collect();
    for p in &mut peers {
        for n in [1usize, 125, 1000, 4000] {
            assert_echo(p, 2, &vec![b'r'; n]);
        }
    }
    let text = admin_get(admin, "/metrics").1;
    let relayed = value(
        &text,
        r#"wslb_relayed_bytes_total{direction="client_to_backend"}"#,
    ) + value(
        &text,
        r#"wslb_relayed_bytes_total{direction="backend_to_client"}"#,
    );
    let ring = value(&text, "wslb_recv_ring_bytes_total");
    assert!(relayed > 20.0 * 5126.0, "relayed {relayed}");
    assert_eq!(ring, relayed, "bytes relayed without the receive ring");
    assert_eq!(value(&text, "wslb_recv_ring_large_frames_total"), 0.0);
    drop(peers);
    let _ = std::fs::remove_dir_all(&dir);
}
