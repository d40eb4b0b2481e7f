//! The admin server, over real sockets: each endpoint's status, headers and body, the
//! refusals (404, 405, 400, 431), `/readyz` following the instance, the loopback rule, and
//! the stop on drop. `/metrics` is checked by a real parser, and by `promtool check
//! metrics` when `promtool` is on PATH (Debian: `apt-get install prometheus`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wslb::admin::{self, AdminServer, AdminView};
use wslb::metrics::{BackendView, Process, Snapshot, Totals, prometheus};

/// An instance whose state the test sets: ready unless draining or every backend is down,
/// as the real one.
struct Fake {
    snap: Mutex<Snapshot>,
}

impl AdminView for Fake {
    fn snapshot(&self) -> Snapshot {
        self.snap.lock().unwrap().clone()
    }

    fn ready(&self) -> Result<(), String> {
        let s = self.snap.lock().unwrap();
        if s.draining {
            Err("draining".into())
        } else if !s.backends.iter().any(|b| b.up) {
            Err("every backend is down".into())
        } else {
            Ok(())
        }
    }
}

impl Fake {
    fn set(&self, f: impl FnOnce(&mut Snapshot)) {
        f(&mut self.snap.lock().unwrap());
    }
}

fn backend(addr: &str, up: bool, open: u64, selected: u64, failures: [u64; 3]) -> BackendView {
    BackendView {
        route: "default".into(),
        addr: addr.parse().unwrap(),
        up,
        open,
        selected,
        failures,
    }
}

fn snapshot() -> Snapshot {
    let mut totals = Totals {
        accepted: 120,
        open: 7,
        bytes: [64_000, 32_000],
        frames: [900, 450],
        handshake_sum_secs: 0.25,
        ..Totals::default()
    };
    totals.handshake_buckets[2] = 100;
    totals.handshake_buckets[4] = 13;
    totals.rejected[0] = 3;
    totals.closes[0][0] = 5;
    Snapshot {
        rebalance: Vec::new(),
        totals,
        backends: vec![
            backend("127.0.0.1:9001", true, 4, 60, [0, 0, 0]),
            backend("127.0.0.1:9002", true, 3, 57, [1, 2, 0]),
            backend("[::1]:9003", false, 0, 3, [4, 0, 9]),
        ],
        draining: false,
        reloads_ok: 2,
        reloads_failed: 1,
        last_reload_success: 1.7e9,
        io_driver: "io_uring",
        process: Process {
            cpu_seconds: 1.5,
            resident_bytes: 10 << 20,
            virtual_bytes: 100 << 20,
            open_fds: 12,
            max_fds: 1024,
            start_time: 1.7e9,
        },
        certificates: vec![wslb::tls::CertInfo {
            file: "/etc/wslb/chat \"example\".pem".into(),
            names: vec!["chat.example.com".into(), "*.example.com".into()],
            not_after: 1_800_000_000,
        }],
    }
}

fn start() -> (AdminServer, Arc<Fake>) {
    let fake = Arc::new(Fake {
        snap: Mutex::new(snapshot()),
    });
    let server = admin::spawn("127.0.0.1:0".parse().unwrap(), fake.clone()).unwrap();
    (server, fake)
}

/// One response as read off the wire.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    // A guard against hanging the suite if the server never answers, not a measurement.
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

/// Sends `raw` and reads until the server closes.
fn exchange(addr: SocketAddr, raw: &[u8]) -> Vec<u8> {
    let mut s = connect(addr);
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    out
}

/// Splits a byte stream into the responses in it (Content-Length framed).
fn replies(mut bytes: &[u8]) -> Vec<Reply> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(n) = r.parse(bytes).unwrap() else {
            panic!("incomplete response: {:?}", String::from_utf8_lossy(bytes));
        };
        let headers: Vec<(String, String)> = r
            .headers
            .iter()
            .map(|h| {
                let v = String::from_utf8(h.value.to_vec()).unwrap();
                (h.name.to_string(), v)
            })
            .collect();
        let status = r.code.unwrap();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .expect("every response has a Content-Length")
            .1
            .parse()
            .unwrap();
        let body = String::from_utf8(bytes[n..n + len].to_vec()).unwrap();
        bytes = &bytes[n + len..];
        out.push(Reply {
            status,
            headers,
            body,
        });
    }
    out
}

fn request(addr: SocketAddr, method: &str, path: &str) -> Reply {
    let raw = format!("{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    let mut r = replies(&exchange(addr, raw.as_bytes()));
    assert_eq!(r.len(), 1, "{r:?}");
    r.remove(0)
}

fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path)
}

#[test]
fn metrics_is_the_rendered_snapshot_and_parses() {
    let (server, fake) = start();
    let r = get(server.local_addr(), "/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(r.body, prometheus::render(&fake.snapshot()));

    let lines = r.body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    let value = |name: &str, label: Option<(&str, &str)>| {
        let s = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .unwrap_or_else(|| panic!("no {name} {label:?}"));
        match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name}: {other:?}"),
        }
    };
    assert_eq!(value("wslb_connections_accepted_total", None), 120.0);
    assert_eq!(value("wslb_connections_open", None), 7.0);
    let b3 = Some(("backend", "[::1]:9003"));
    assert_eq!(value("wslb_backend_up", b3), 0.0);
    assert_eq!(
        value("wslb_backend_up", Some(("backend", "127.0.0.1:9002"))),
        1.0
    );
    assert_eq!(value("wslb_backend_selected_total", b3), 3.0);
    let c2b = Some(("direction", "client_to_backend"));
    assert_eq!(value("wslb_relayed_frames_total", c2b), 900.0);
    assert_eq!(value("process_open_fds", None), 12.0);
    // Every family has its HELP and a TYPE the parser understood.
    assert!(!scrape.docs.is_empty());
    for s in &scrape.samples {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                s.metric
                    .strip_suffix(suffix)
                    .filter(|f| scrape.docs.contains_key(*f))
            })
            .unwrap_or(&s.metric);
        assert!(scrape.docs.contains_key(family), "{} has no HELP", s.metric);
    }
    let histogram = scrape
        .samples
        .iter()
        .find(|s| s.metric == "wslb_handshake_duration_seconds")
        .expect("the handshake histogram");
    let prometheus_parse::Value::Histogram(buckets) = &histogram.value else {
        panic!("{:?}", histogram.value);
    };
    assert_eq!(buckets.last().map(|b| b.count), Some(113.0));

    promtool_check(&r.body);
}

/// `promtool check metrics` (the Prometheus project's own linter) finds no problem.
fn promtool_check(text: &str) {
    let spawned = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = spawned else {
        eprintln!("promtool not on PATH: skipping `promtool check metrics`");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}"
    );
}

#[test]
fn healthz_is_ok() {
    let (server, _) = start();
    let r = get(server.local_addr(), "/healthz");
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
}

#[test]
fn readyz_follows_draining_and_backend_health() {
    let (server, fake) = start();
    let addr = server.local_addr();
    let ready = || {
        let r = get(addr, "/readyz");
        (r.status, r.body)
    };
    assert_eq!(ready(), (200, "ready\n".into()));
    fake.set(|s| s.draining = true);
    assert_eq!(ready(), (503, "draining\n".into()));
    fake.set(|s| s.draining = false);
    assert_eq!(ready(), (200, "ready\n".into()));
    fake.set(|s| s.backends.iter_mut().for_each(|b| b.up = false));
    assert_eq!(ready(), (503, "every backend is down\n".into()));
    fake.set(|s| s.backends[2].up = true);
    assert_eq!(ready(), (200, "ready\n".into()));
}

#[test]
fn backends_is_a_json_array_of_each_backend() {
    let (server, fake) = start();
    let r = get(server.local_addr(), "/backends");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        v,
        serde_json::json!([
            {"route": "default", "address": "127.0.0.1:9001", "up": true, "open": 4, "selected": 60,
             "failures": {"connect": 0, "handshake": 0, "health_check": 0}},
            {"route": "default", "address": "127.0.0.1:9002", "up": true, "open": 3, "selected": 57,
             "failures": {"connect": 1, "handshake": 2, "health_check": 0}},
            {"route": "default", "address": "[::1]:9003", "up": false, "open": 0, "selected": 3,
             "failures": {"connect": 4, "handshake": 0, "health_check": 9}},
        ])
    );
    fake.set(|s| {
        s.backends.truncate(1);
        s.backends[0].open = 11;
    });
    let v: serde_json::Value =
        serde_json::from_str(&get(server.local_addr(), "/backends").body).unwrap();
    assert_eq!(v.as_array().map(Vec::len), Some(1));
    assert_eq!(v[0]["open"], 11);
}

#[test]
fn stats_json_carries_what_the_page_shows() {
    let (server, fake) = start();
    let addr = server.local_addr();
    let stats = || -> serde_json::Value {
        let r = get(addr, "/stats.json");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("application/json"));
        serde_json::from_str(&r.body).unwrap()
    };
    let v = stats();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["io_driver"], "io_uring");
    assert_eq!(v["draining"], false);
    assert_eq!(v["ready"], true);
    assert_eq!(v["not_ready"], serde_json::Value::Null);
    assert_eq!(v["connections"]["open"], 7);
    assert_eq!(v["connections"]["accepted"], 120);
    assert_eq!(v["connections"]["rejected"], 3);
    assert_eq!(v["connections"]["handshakes"], 113);
    assert_eq!(v["frames"]["client_to_backend"], 900);
    assert_eq!(v["frames"]["backend_to_client"], 450);
    assert_eq!(v["bytes"]["client_to_backend"], 64_000);
    assert_eq!(v["backends"][2]["address"], "[::1]:9003");
    assert!(v["time"].as_f64().unwrap() > 1.0e9);
    fake.set(|s| {
        s.draining = true;
        s.totals.frames[0] += 100;
    });
    let v = stats();
    assert_eq!(v["draining"], true);
    assert_eq!(v["ready"], false);
    assert_eq!(v["not_ready"], "draining");
    assert_eq!(v["frames"]["client_to_backend"], 1000);
}

#[test]
fn status_page_is_self_contained_html() {
    let (server, _) = start();
    let r = get(server.local_addr(), "/");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let csp = r.header("content-security-policy").expect("a CSP");
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"));
    assert!(r.body.starts_with("<!doctype html>"), "{}", &r.body[..40]);
    assert!(r.body.contains("/stats.json"));
    for external in [
        "src=\"http",
        "href=\"http",
        "url(http",
        "@import",
        "src=\"//",
    ] {
        assert!(!r.body.contains(external), "page loads {external}...");
    }
}

#[test]
fn unknown_paths_are_404_and_other_methods_405() {
    let (server, _) = start();
    let addr = server.local_addr();
    for path in ["/nope", "/metrics/", "/favicon.ico", "/backends.json"] {
        assert_eq!(get(addr, path).status, 404, "{path}");
    }
    for method in ["POST", "PUT", "DELETE", "HEAD", "OPTIONS"] {
        let r = request(addr, method, "/metrics");
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.header("allow"), Some("GET"), "{method}");
    }
    // The query string is not part of the path.
    assert_eq!(get(addr, "/healthz?verbose=1").status, 200);
}

#[test]
fn bad_requests_get_their_status_and_a_close() {
    let (server, _) = start();
    let addr = server.local_addr();
    let one = |raw: &[u8]| {
        let mut r = replies(&exchange(addr, raw));
        assert_eq!(r.len(), 1, "{r:?}");
        let r = r.remove(0);
        assert_eq!(r.header("connection"), Some("close"));
        r.status
    };
    assert_eq!(one(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"), 400); // a TLS hello
    assert_eq!(one(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"), 400);
    assert_eq!(one(b"GET http://example.com/ HTTP/1.1\r\n\r\n"), 400);
    let mut big = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
    big.resize(9 * 1024, b'a');
    assert_eq!(one(&big), 431);
    let many: String = (0..100).map(|i| format!("X-{i}: v\r\n")).collect();
    assert_eq!(one(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()), 431);
    // The server is still there.
    assert_eq!(get(addr, "/healthz").status, 200);
}

#[test]
fn keep_alive_serves_pipelined_requests_until_close() {
    let (server, _) = start();
    let raw = "GET /healthz HTTP/1.1\r\n\r\nGET /readyz HTTP/1.1\r\n\r\n\
               GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n";
    let r = replies(&exchange(server.local_addr(), raw.as_bytes()));
    let got: Vec<(u16, &str, Option<&str>)> = r
        .iter()
        .map(|r| (r.status, r.body.as_str(), r.header("connection")))
        .collect();
    assert_eq!(
        got,
        [
            (200, "ok\n", None),
            (200, "ready\n", None),
            (404, "not found\n", Some("close"))
        ]
    );
}

#[test]
fn listen_addresses_must_be_loopback_unless_allowed() {
    let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
    assert!(admin::check_listen(addr("127.0.0.1:9091"), false).is_ok());
    assert!(admin::check_listen(addr("[::1]:9091"), false).is_ok());
    for remote in ["0.0.0.0:9091", "[::]:9091", "192.0.2.7:9091"] {
        let err = admin::check_listen(addr(remote), false).unwrap_err();
        assert!(err.contains("loopback"), "{err}");
        assert!(admin::check_listen(addr(remote), true).is_ok());
    }
}

#[test]
fn a_taken_port_is_an_error_at_spawn() {
    let (server, fake) = start();
    let err = admin::spawn(server.local_addr(), fake)
        .err()
        .expect("port taken");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
}

#[test]
fn drop_stops_the_server_and_its_connections() {
    let (server, _) = start();
    let addr = server.local_addr();
    // A kept-alive connection after one answer, and one that sent half a head: the stop
    // must end both, not wait for their head timeouts.
    let mut idle = connect(addr);
    idle.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
    let mut first = [0u8; 256];
    let n = idle.read(&mut first).unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200 OK\r\n"));
    let mut half = connect(addr);
    half.write_all(b"GET /metr").unwrap();
    // Run the drop on a thread so a server that never stops fails the test instead of
    // hanging it.
    let (done_tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(server);
        let _ = done_tx.send(());
    });
    done.recv_timeout(Duration::from_secs(60))
        .expect("dropping the server returns (its thread stopped and was joined)");
    for mut c in [idle, half] {
        // Closed: an end of stream, or a reset when the stop came before the server had
        // read (or accepted) what the client sent. Not a read timeout.
        let mut rest = Vec::new();
        match c.read_to_end(&mut rest) {
            Ok(n) => assert_eq!(n, 0, "closed without a word"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
    }
    let refused = TcpStream::connect(addr).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
}
