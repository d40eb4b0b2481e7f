//! Request targets and head sizes as RFC 9112 has them, through the real balancer over ws
//! and wss, for upgrades and plain HTTP alike, byte by byte as a client sends them:
//! - an absolute-form target (§3.2.2, which a server MUST accept) is routed on its path,
//!   with its authority as the host even where the Host header disagrees, and the backend
//!   gets the origin-form and a Host header that is the authority (issue 19: upgrades got
//!   404, plain requests 400); other forms (another scheme, authority-form, asterisk-form
//!   but for OPTIONS, userinfo, an empty host, a bad Host) get 400;
//! - a head over `limits.max_request_bytes` gets 431 however it overflows (issue 19: 1,000
//!   small headers got 400), and a request line that alone overflows it gets 414.
//!
//! Each test ends with a good upgrade on the same instance: no refusal cost the worker
//! anything.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::{Mutex, mpsc};

use common::tls::*;
use common::*;
use wslb::Instance;
use wslb::config::RouteConfig;

/// How a client reaches the balancer.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Via {
    Ws,
    Wss,
}

/// A client connection of either kind, read and written as bytes.
trait Conn: Read + Write {}
impl<T: Read + Write> Conn for T {}

/// One balancer under test (with its certificates when it speaks TLS) and the heads its
/// backends received, each with the name of the backend.
struct Lb {
    lb: Instance,
    pki: Option<Pki>,
    heads: mpsc::Receiver<(&'static str, String)>,
}

/// A head read byte by byte up to its blank line (or whatever came before EOF or an
/// error).
fn read_head(s: &mut impl Read) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A backend named `name` that passes every request head it gets to `tx`, answers an
/// upgrade with 101 (then holds the connection until wslb closes it) and a plain request
/// with `200` on a kept-alive connection.
fn recording_backend(name: &'static str, tx: mpsc::Sender<(&'static str, String)>) -> SocketAddr {
    let tx = Mutex::new(tx);
    scripted_backend_raw(move |mut s| {
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        loop {
            let head = read_head(&mut s);
            if !head.ends_with("\r\n\r\n") {
                return;
            }
            let key = head
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .map(|k| k.trim().to_string());
            let _ = tx.lock().unwrap().send((name, head));
            let answer = match &key {
                Some(k) => format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                    wslb::handshake::accept_key(k.as_bytes())
                ),
                None => "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".into(),
            };
            if s.write_all(answer.as_bytes()).is_err() {
                return;
            }
            if key.is_some() {
                let _ = s.read_to_end(&mut Vec::new());
                return;
            }
        }
    })
}

/// A balancer with two routes: `chat` (host `chat.example`, any path) to the backend
/// named "chat", and the default route (any host, `/`) to the one named "default".
fn start(via: Via, test: &str) -> Lb {
    let (tx, heads) = mpsc::channel();
    let chat = recording_backend("chat", tx.clone());
    let default = recording_backend("default", tx);
    let pki = (via == Via::Wss).then(|| Pki::new(test));
    let leaf = pki.as_ref().map(|p| p.leaf("localhost", &["localhost"]));
    let lb = balancer(&[default], 1, |c| {
        c.routes = vec![RouteConfig {
            name: "chat".into(),
            host: "chat.example".into(),
            path_prefix: "/".into(),
            backends: vec![chat.to_string().into()],
            ..RouteConfig::default()
        }];
        if let Some((_, cert, key)) = leaf {
            c.tls.cert = cert;
            c.tls.key = key;
        }
    });
    Lb { lb, pki, heads }
}

impl Lb {
    fn connect(&self) -> Box<dyn Conn> {
        let addr = self.lb.local_addr;
        match &self.pki {
            None => {
                let s = std::net::TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(TIMEOUT)).unwrap();
                Box::new(s)
            }
            Some(pki) => Box::new(tls_connect(addr, "localhost", client_config(&pki.ca, &[]))),
        }
    }

    /// Sends `request` on a new connection and returns the answer's head with the
    /// connection (open, for a 101). Writing may fail once wslb has refused the request
    /// and closed; its answer is read all the same.
    fn send(&self, request: &[u8]) -> (String, Box<dyn Conn>) {
        let mut c = self.connect();
        let _ = c.write_all(request).and_then(|()| c.flush());
        (read_head(&mut c), c)
    }

    /// Asserts that `request` gets `status`, and returns the head.
    fn expect(&self, request: &[u8], status: u16) -> String {
        let (head, _) = self.send(request);
        let shown = String::from_utf8_lossy(&request[..request.len().min(200)]);
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status} ")),
            "{shown:?} -> {head:?} (wanted {status})"
        );
        head
    }

    /// Asserts that `request` reaches the backend named `backend` as `forwarded`: its
    /// request line, and its Host header once and nothing else for Host.
    fn expect_forwarded(&self, request: &[u8], status: u16, backend: &str, line: &str, host: &str) {
        let (head, _c) = self.send(request);
        let shown = String::from_utf8_lossy(request);
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status} ")),
            "{shown:?} -> {head:?} (wanted {status})"
        );
        let (name, got) = self.heads.recv_timeout(TIMEOUT).expect("a forwarded head");
        assert_eq!(name, backend, "{shown:?} reached {name}: {got:?}");
        assert!(
            got.starts_with(&format!("{line}\r\n")),
            "{shown:?} was forwarded as {got:?}"
        );
        let hosts: Vec<&str> = got
            .lines()
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.eq_ignore_ascii_case("host"))
            .map(|(_, v)| v.trim())
            .collect();
        assert_eq!(hosts, [host], "{shown:?} was forwarded as {got:?}");
    }

    /// A good upgrade still goes through.
    fn assert_serves(&self) {
        self.expect_forwarded(
            upgrade_request("/still").as_bytes(),
            101,
            "default",
            "GET /still HTTP/1.1",
            "test",
        );
    }
}

fn upgrade(target: &str, host: &str) -> Vec<u8> {
    format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

fn plain(method: &str, target: &str, host: &str) -> Vec<u8> {
    format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
}

/// Targets no form of which a server accepts here, and Host headers and authorities that
/// are not valid: 400 for an upgrade and a plain request alike.
const REFUSED: [(&str, &str); 9] = [
    ("ftp://chat.example/chat", "chat.example"),
    ("ws://chat.example/chat", "chat.example"),
    ("chat.example:443", "chat.example"),
    ("*", "chat.example"),
    ("http://user@chat.example/chat", "chat.example"),
    ("http:///chat", "chat.example"),
    ("http://chat.example:80x/chat", "chat.example"),
    ("http//chat.example/chat", "chat.example"),
    ("http://chat.example/chat", "chat.example/x"),
];

/// Issue 19: `GET http://127.0.0.1/chat` with an upgrade got 404 (routes matched the whole
/// absolute-form target as a path), though RFC 9112 §3.2.2 says a server MUST accept it.
fn absolute_form_upgrade_is_routed_on_its_path_and_authority_not_404(via: Via, test: &str) {
    let lb = start(via, test);
    // The report's request: routed on /chat, the authority as the host.
    lb.expect_forwarded(
        &upgrade("http://127.0.0.1/chat", "127.0.0.1"),
        101,
        "default",
        "GET /chat HTTP/1.1",
        "127.0.0.1",
    );
    // The authority wins over a Host header that disagrees, both for routing and for the
    // Host the backend sees; a scheme in capitals, a port and a query are kept.
    lb.expect_forwarded(
        &upgrade("HTTPS://chat.example:8443/room?id=7", "other.example"),
        101,
        "chat",
        "GET /room?id=7 HTTP/1.1",
        "chat.example:8443",
    );
    lb.expect_forwarded(
        &upgrade("http://other.example/chat", "chat.example"),
        101,
        "default",
        "GET /chat HTTP/1.1",
        "other.example",
    );
    // No path: the origin-form is "/".
    lb.expect_forwarded(
        &upgrade("http://chat.example", "chat.example"),
        101,
        "chat",
        "GET / HTTP/1.1",
        "chat.example",
    );
    for (target, host) in REFUSED {
        lb.expect(&upgrade(target, host), 400);
    }
    lb.assert_serves();
}

/// Issue 19: a plain request in absolute-form got 400; HAProxy and NGINX accept it and
/// send the backend the origin-form.
fn absolute_form_plain_request_is_proxied_in_origin_form_not_400(via: Via, test: &str) {
    let lb = start(via, test);
    lb.expect_forwarded(
        &plain("GET", "http://chat.example/poll?sid=1", "other.example"),
        200,
        "chat",
        "GET /poll?sid=1 HTTP/1.1",
        "chat.example",
    );
    lb.expect_forwarded(
        &plain("GET", "https://127.0.0.1:8443/", "127.0.0.1"),
        200,
        "default",
        "GET / HTTP/1.1",
        "127.0.0.1:8443",
    );
    // HTTP/1.0 needs no Host header: the authority is the host.
    lb.expect_forwarded(
        b"GET http://chat.example/old HTTP/1.0\r\n\r\n",
        200,
        "chat",
        "GET /old HTTP/1.1",
        "chat.example",
    );
    for (target, host) in REFUSED {
        lb.expect(&plain("GET", target, host), 400);
    }
    lb.expect(&plain("CONNECT", "chat.example:443", "chat.example"), 400);
    // HTTP/1.1 still needs exactly one Host header (RFC 9112 §3.2), absolute-form or not.
    lb.expect(b"GET http://chat.example/ HTTP/1.1\r\n\r\n", 400);
    lb.assert_serves();
}

/// Issue 19: a head of 1,000 small headers (over `max_request_bytes`, 8 KiB by default)
/// got 400 where a head of 70 got 431: the read loop handed a head it could not parse to
/// the plain HTTP proxy, which found it incomplete. A request line that alone is over the
/// limit is a URI too long: 414.
fn oversized_heads_get_431_not_400_and_long_request_lines_414(via: Via, test: &str) {
    let lb = start(via, test);
    let small: String = (0..1000).map(|i| format!("X{i}: v\r\n")).collect();
    assert!(small.len() > 8192);
    let seventy: String = (0..70).map(|i| format!("X{i}: v\r\n")).collect();
    let big = format!("X-Big: {}\r\n", "a".repeat(9000));
    for headers in [&small, &seventy, &big] {
        let up = upgrade("/chat", "chat.example");
        let up = String::from_utf8(up).unwrap();
        let up = up.replace("\r\n\r\n", &format!("\r\n{headers}\r\n"));
        lb.expect(up.as_bytes(), 431);
        let get = format!("GET /poll HTTP/1.1\r\nHost: chat.example\r\n{headers}\r\n");
        lb.expect(get.as_bytes(), 431);
        let post = format!("POST /poll HTTP/1.1\r\n{headers}Host: chat.example\r\n\r\n");
        lb.expect(post.as_bytes(), 431);
    }
    let long = format!("/{}", "a".repeat(9000));
    lb.expect(&upgrade(&long, "chat.example"), 414);
    lb.expect(&plain("GET", &long, "chat.example"), 414);
    lb.expect(
        &plain("GET", &format!("http://chat.example{long}"), "x"),
        414,
    );
    lb.assert_serves();
}

#[test]
fn absolute_form_upgrade_is_routed_not_404_over_ws() {
    absolute_form_upgrade_is_routed_on_its_path_and_authority_not_404(Via::Ws, "abs-up-ws");
}

#[test]
fn absolute_form_upgrade_is_routed_not_404_over_wss() {
    absolute_form_upgrade_is_routed_on_its_path_and_authority_not_404(Via::Wss, "abs-up-wss");
}

#[test]
fn absolute_form_plain_request_is_proxied_not_400_over_ws() {
    absolute_form_plain_request_is_proxied_in_origin_form_not_400(Via::Ws, "abs-http-ws");
}

#[test]
fn absolute_form_plain_request_is_proxied_not_400_over_wss() {
    absolute_form_plain_request_is_proxied_in_origin_form_not_400(Via::Wss, "abs-http-wss");
}

#[test]
fn oversized_head_gets_431_not_400_over_ws() {
    oversized_heads_get_431_not_400_and_long_request_lines_414(Via::Ws, "big-ws");
}

#[test]
fn oversized_head_gets_431_not_400_over_wss() {
    oversized_heads_get_431_not_400_and_long_request_lines_414(Via::Wss, "big-wss");
}
