//! Plain HTTP beside WebSocket upgrades, through the real balancer against a real HTTP
//! backend (Python's http.server, tests/http/backend.py): keep-alive, Content-Length and
//! chunked bodies both ways, a large upload and download streamed, the sticky cookie on a
//! plain response and a later upgrade reaching the same backend, request smuggling refused
//! by exact bytes, a slow client and a slow backend cut at their timeouts.

mod common;

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// tests/http/backend.py: GET /size/N answers N bytes (chunked with ?chunked), POST
/// answers the sha256 and length of its body, /slow sleeps, /whoami names the server.
fn backend(name: &str) -> PythonServer {
    python_server("http/backend.py", &["--name", name])
}

/// One response read off `s`: status, headers (lowercase names), body (de-chunked).
fn response(s: &mut TcpStream) -> (u16, Vec<(String, String)>, Vec<u8>) {
    read_response(s, false)
}

/// [`response`], for a HEAD request when `head` (no body follows).
fn read_response(s: &mut TcpStream, head: bool) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut r = std::io::BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line.split(' ').nth(1).expect(&line).parse().unwrap();
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':').unwrap();
        headers.push((n.to_ascii_lowercase(), v.trim().to_string()));
    }
    let get = |n: &str| headers.iter().find(|h| h.0 == n).map(|h| h.1.clone());
    let mut body = Vec::new();
    if head {
    } else if let Some(n) = get("content-length") {
        body.resize(n.parse().unwrap(), 0);
        r.read_exact(&mut body).unwrap();
    } else if get("transfer-encoding").as_deref() == Some("chunked") {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap(), 16).unwrap();
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if status >= 200 && status != 204 && status != 304 {
        r.read_to_end(&mut body).unwrap();
    }
    (status, headers, body)
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|x| x.0 == name).map(|x| x.1.as_str())
}

fn client(lb: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(lb).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s
}

fn sha256(data: &[u8]) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(data)?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn keep_alive_with_length_and_chunked_bodies_both_ways() {
    let b = backend("a");
    let lb = balancer(&[b.addr], 1, |_| {});
    let mut s = client(lb.local_addr);
    // Several requests on one connection: a GET with a Content-Length answer, one answered
    // chunked, a POST with a Content-Length body, a chunked POST, a HEAD.
    s.write_all(b"GET /size/1000 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let (st, h, body) = response(&mut s);
    assert_eq!((st, body.len()), (200, 1000));
    assert_eq!(header(&h, "connection"), Some("keep-alive"));
    s.write_all(b"GET /size/70000?chunked HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let (st, h, body) = response(&mut s);
    assert_eq!((st, body.len()), (200, 70000));
    assert_eq!(header(&h, "transfer-encoding"), Some("chunked"));
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello world")
        .unwrap();
    let (st, _, body) = response(&mut s);
    assert_eq!(st, 200);
    assert_eq!(
        String::from_utf8(body).unwrap(),
        format!("11 {}", sha256(b"hello world"))
    );
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
    )
    .unwrap();
    let (st, _, body) = response(&mut s);
    assert_eq!(st, 200);
    assert_eq!(
        String::from_utf8(body).unwrap(),
        format!("11 {}", sha256(b"hello world"))
    );
    s.write_all(b"HEAD /size/5 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let (st, h, _) = read_response(&mut s, true);
    assert_eq!((st, header(&h, "content-length")), (200, Some("5")));
    // Two pipelined requests in one write.
    s.write_all(b"GET /size/3 HTTP/1.1\r\nHost: t\r\n\r\nGET /size/4 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(response(&mut s).2.len(), 3);
    let (_, h, body) = response(&mut s);
    assert_eq!((body.len(), header(&h, "connection")), (4, Some("close")));
    let mut rest = Vec::new();
    assert_eq!(
        s.read_to_end(&mut rest).unwrap(),
        0,
        "closed after Connection: close"
    );
    // The backend connections were reused between requests without a body.
    let t = lb.handle().snapshot().totals;
    assert!(t.http_reused >= 2, "{}", t.http_reused);
    assert_eq!(t.http[1], 7, "2xx responses");
}

#[test]
fn a_large_upload_and_download_stream_without_being_held_whole() {
    let b = backend("a");
    let lb = balancer(&[b.addr], 1, |_| {});
    let mut s = client(lb.local_addr);
    let big: Vec<u8> = (0..(24u32 << 20)).map(|i| (i * 31 % 251) as u8).collect();
    let head = format!(
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        big.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&big).unwrap();
    let (st, _, body) = response(&mut s);
    assert_eq!(st, 200);
    assert_eq!(
        String::from_utf8(body).unwrap(),
        format!("{} {}", big.len(), sha256(&big))
    );
    s.write_all(b"GET /size/33554432 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let (st, _, body) = response(&mut s);
    assert_eq!((st, body.len()), (200, 32 << 20));
}

/// Sends `raw` and returns everything wslb answers until it closes.
fn answer_to(lb: SocketAddr, raw: &[u8]) -> String {
    let mut s = client(lb);
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn smuggling_attempts_are_refused_with_400_before_reaching_a_backend() {
    let b = backend("a");
    let lb = balancer(&[b.addr], 1, |_| {});
    for raw in [
        &b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX"[..],
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\nX",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding:\tchunked\r\nTransfer-Encoding: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nX-Folded: a\r\n b\r\n\r\n",
        b"GET / HTTP/1.1\nHost: t\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nX: y\nContent-Length: 5\r\n\r\nhello",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
    ] {
        let got = answer_to(lb.local_addr, raw);
        assert!(
            got.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{:?} -> {got:?}",
            String::from_utf8_lossy(raw)
        );
    }
    // None of them reached the backend.
    let t = lb.handle().snapshot().totals;
    assert_eq!(t.http, [0; 5], "{:?}", t.http);
}

#[test]
fn a_slow_client_and_a_slow_backend_are_cut_at_their_timeouts() {
    let b = backend("a");
    let lb = balancer(&[b.addr], 1, |c| {
        c.http.body_timeout_ms = 300;
        c.timeouts.backend_handshake_ms = 500;
    });
    // A client that stops in the middle of its body.
    let mut s = client(lb.local_addr);
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly part")
        .unwrap();
    let t = Instant::now();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // A backend that takes longer than backend_handshake_ms to answer: 504.
    let got = answer_to(lb.local_addr, b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(got.starts_with("HTTP/1.1 504 Gateway Timeout\r\n"), "{got}");
    // Over max_body_bytes: 413 before anything is sent.
    let lb = balancer(&[b.addr], 1, |c| c.http.max_body_bytes = 10);
    let got = answer_to(
        lb.local_addr,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello world",
    );
    assert!(got.starts_with("HTTP/1.1 413"), "{got}");
}

#[test]
fn a_sticky_cookie_from_a_poll_brings_the_upgrade_to_the_same_backend() {
    let (a, b) = (backend("a"), backend("b"));
    let lb = balancer(&[a.addr, b.addr], 1, |c| {
        c.sticky = wslb::config::StickyMode::Cookie;
    });
    let mut s = client(lb.local_addr);
    s.write_all(b"GET /whoami HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let (_, h, body) = response(&mut s);
    let home = String::from_utf8(body).unwrap();
    let cookie = header(&h, "set-cookie")
        .expect("a sticky cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    // Every poll with the cookie reaches the same backend (round robin would alternate).
    for _ in 0..5 {
        let mut s = client(lb.local_addr);
        s.write_all(
            format!("GET /whoami HTTP/1.1\r\nHost: t\r\nCookie: {cookie}\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let (_, h, body) = response(&mut s);
        assert_eq!(String::from_utf8(body).unwrap(), home);
        assert_eq!(header(&h, "set-cookie"), None);
    }
    // And so does the upgrade that follows (backend.py refuses upgrades with its name in
    // a 403, relayed: enough to see where it went).
    let mut s = client(lb.local_addr);
    s.write_all(
        format!(
            "GET /ws HTTP/1.1\r\nHost: t\r\nCookie: {cookie}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let (st, _, body) = response(&mut s);
    assert_eq!((st, String::from_utf8(body).unwrap()), (403, home));
}

#[test]
fn a_pooled_connection_the_backend_closed_is_retried_on_a_new_one() {
    // A backend that answers one request per connection as if keeping it alive, then
    // closes it: the pooled connection is stale when the next request takes it.
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    let addr = scripted_backend_raw(move |mut s| {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap_or(0) == 1 {
            head.push(b[0]);
        }
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        std::thread::sleep(Duration::from_millis(50));
    });
    let lb = balancer(&[addr], 1, |_| {});
    for i in 0..3 {
        let mut c = client(lb.local_addr);
        c.write_all(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let (st, _, body) = response(&mut c);
        assert_eq!((st, body), (200, b"ok".to_vec()), "request {i}");
        std::thread::sleep(Duration::from_millis(150));
    }
    let t = lb.handle().snapshot().totals;
    assert_eq!(t.http[1], 3);
    assert!(
        t.http_reused >= 1,
        "the stale connection was taken from the pool"
    );
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "one new connection per request"
    );
}

/// Review of issue 20: an interim response (103 Early Hints) that comes before the `100
/// Continue` goes on to the client, and the wait for the 100 goes on. It used to end the
/// wait as if it were the final answer: the body was never sent, the backend waited for
/// it, and the client got no answer at all.
#[test]
fn early_hints_before_100_continue_do_not_end_the_wait() {
    let backend = scripted_backend_raw(|mut s| {
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap_or(0) == 1 {
            head.push(b[0]);
        }
        let _ = s.write_all(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n\
              HTTP/1.1 100 Continue\r\n\r\n",
        );
        let mut body = [0u8; 5];
        if s.read_exact(&mut body).is_ok() {
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}",
                String::from_utf8_lossy(&body).to_uppercase()
            );
            let _ = s.write_all(reply.as_bytes());
        }
    });
    let lb = balancer(&[backend], 1, |_| {});
    let mut c = Peer::client(lb.local_addr);
    c.send_raw(
        b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\
          Connection: close\r\n\r\n",
    );
    let hints = c.read_head();
    assert!(hints.starts_with("HTTP/1.1 103 "), "{hints}");
    let cont = c.read_head();
    assert!(cont.starts_with("HTTP/1.1 100 "), "{cont}");
    c.send_raw(b"hello");
    let answer = c.read_to_end();
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.ends_with("HELLO"), "{answer}");
}

/// Issue 20: a plain request's access-log line has its status and its bytes each way (it
/// said only `outcome=http`).
#[test]
fn a_plain_request_is_logged_with_its_status_and_bytes() {
    const RESPONSE: &[u8] = b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone";
    let backend = scripted_backend_raw(|mut s| {
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap_or(0) == 1 {
            head.push(b[0]);
        }
        let mut body = [0u8; 3];
        if s.read_exact(&mut body).is_ok() {
            let _ = s.write_all(RESPONSE);
        }
    });
    let dir = test_dir("plain-access-log");
    let path = dir.join("access.log");
    let lb = balancer(&[backend], 1, |c| {
        c.access_log.enabled = true;
        c.access_log.path = path.to_string_lossy().into_owned();
    });
    let mut c = Peer::client(lb.local_addr);
    c.send_raw(
        b"POST /items?x=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    );
    let answer = c.read_to_end();
    assert!(answer.starts_with("HTTP/1.1 201 "), "{answer}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains("outcome=http")) {
            break l.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no outcome=http line in {text:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let field = |k: &str| {
        line.split(' ')
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("no {k} in {line}"))
            .to_string()
    };
    assert_eq!(field("status"), "201", "{line}");
    assert_eq!(field("path"), "\"/items?x=1\"", "{line}");
    // In: the head as forwarded (X-Forwarded-* added) and the 3-byte body; out: the head as
    // the client got it and the 4-byte body.
    let bytes_in: usize = field("bytes_in").parse().unwrap();
    assert!(bytes_in > 3 + 40, "{line}");
    let bytes_out: usize = field("bytes_out").parse().unwrap();
    assert_eq!(bytes_out, answer.len(), "{line}");
    let _ = std::fs::remove_dir_all(&dir);
}
