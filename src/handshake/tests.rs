use super::*;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn req(extra: &str) -> String {
    format!(
        "GET /chat?room=1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

fn parse(s: &str) -> Result<Option<usize>, Reject> {
    let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
    parse_request(s.as_bytes(), &mut h).map(|o| o.map(|u| u.head_len))
}

#[test]
fn valid_request_and_accept_key() {
    let r = req("");
    assert_eq!(parse(&r), Ok(Some(r.len())));
    // RFC 6455 §1.3 example.
    assert_eq!(accept_key(KEY.as_bytes()), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

#[test]
fn partial_needs_more() {
    let r = req("");
    assert_eq!(parse(&r[..r.len() - 1]), Ok(None));
}

#[test]
fn rejections() {
    use Reject::*;
    let cases: &[(String, u16)] = &[
        (req("").replacen("GET", "POST", 1), 405),
        (req("").replace("Upgrade: websocket\r\n", ""), 426),
        (req("").replace("Upgrade: websocket", "Upgrade: h2c"), 426),
        (req("Upgrade: websocket\r\n"), 400),
        (req("").replace("keep-alive, Upgrade", "keep-alive"), 400),
        (req("").replace("Version: 13", "Version: 8"), 426),
        (req("").replace("Sec-WebSocket-Version: 13\r\n", ""), 426),
        (req("").replace(KEY, "short"), 400),
        (req("").replace("Sec-WebSocket-Key", "X-Key"), 400),
        (req(&format!("Sec-WebSocket-Key: {KEY}\r\n")), 400),
        (req("").replace("Host: x\r\n", ""), 400),
        (req("Content-Length: 99999999999\r\n"), 400),
        (req("Transfer-Encoding: chunked\r\n"), 400),
        (req("").replace("HTTP/1.1", "HTTP/1.0"), 400),
        ("GARBAGE\x01\r\n\r\n".to_string(), 400),
        (req(&"X-A: b\r\n".repeat(MAX_HEADERS)), 431),
    ];
    for (r, status) in cases {
        let got = parse(r).expect_err(r);
        assert_eq!(got.status(), *status, "{r:?} -> {got:?}");
    }
    assert_eq!(NotGet.status(), 405);
}

/// Issue 19: an upgrade in absolute-form got 404 (routed on the whole URI as a path). It
/// is its origin-form and its authority, which wins over the Host header, and the backend
/// gets both; a target in any other form is 400.
#[test]
fn absolute_form_upgrade_is_its_path_and_authority() {
    let r = req("").replacen("/chat?room=1", "HTTP://a.example:81/chat?room=1", 1);
    let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let u = parse_request(r.as_bytes(), &mut h).unwrap().unwrap();
    assert_eq!((u.path, u.host), ("/chat?room=1", &b"a.example:81"[..]));
    assert_eq!(u.query_param("room"), Some("1"));
    let ip = "127.0.0.9".parse().unwrap();
    let f = u.forward_head(ip, Scheme::Http, Extensions::Strip);
    let f = String::from_utf8(f).unwrap();
    assert!(
        f.starts_with("GET /chat?room=1 HTTP/1.1\r\nHost: a.example:81\r\nUpgrade:"),
        "{f}"
    );
    assert_eq!(f.matches("Host:").count(), 1, "{f}");
    let mut h2 = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let again = parse_request(f.as_bytes(), &mut h2).unwrap().unwrap();
    assert_eq!((again.path, again.host), (u.path, u.host));
    for target in [
        "*",
        "a.example:443",
        "ftp://a.example/",
        "http://u@a.example/",
    ] {
        let r = req("").replacen("/chat?room=1", target, 1);
        assert!(matches!(parse(&r), Err(Reject::Malformed(_))), "{target}");
    }
    let bad_host = req("").replacen("/chat?room=1", "http://a/", 1);
    let bad_host = bad_host.replace("Host: x", "Host: x y");
    assert!(matches!(parse(&bad_host), Err(Reject::Malformed(_))));
}

#[test]
fn forward_head_keeps_headers_and_strips_extensions() {
    let r = req(
        "Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\
         X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\nCookie: a=b\r\n",
    );
    let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let u = parse_request(r.as_bytes(), &mut h).unwrap().unwrap();
    let f = String::from_utf8(u.forward_head(
        "127.0.0.9".parse().unwrap(),
        Scheme::Http,
        Extensions::Strip,
    ))
    .unwrap();
    assert!(f.starts_with("GET /chat?room=1 HTTP/1.1\r\n"), "{f}");
    assert!(f.contains("Sec-WebSocket-Protocol: chat\r\n"));
    assert!(f.contains("Cookie: a=b\r\n"));
    assert!(f.contains(&format!("Sec-WebSocket-Key: {KEY}\r\n")));
    assert!(!f.to_ascii_lowercase().contains("extensions"));
    assert!(f.contains("X-Forwarded-For: 10.0.0.1, 127.0.0.9\r\n"));
    assert_eq!(
        (u.host, u.path_only(), u.query()),
        (&b"x"[..], "/chat", Some("room=1"))
    );
    assert_eq!(u.header("cookie"), Some(&b"a=b"[..]));
    assert_eq!(u.query_param("room"), Some("1"));
    assert_eq!(u.query_param("roo"), None);
    let tls = String::from_utf8(u.forward_head(
        "127.0.0.9".parse().unwrap(),
        Scheme::Https,
        Extensions::Strip,
    ))
    .unwrap();
    assert!(
        tls.contains("X-Forwarded-Proto: https\r\n"),
        "follows the listener"
    );
    assert!(f.contains("X-Forwarded-Proto: http\r\n") && !f.contains("https"));
    assert!(f.ends_with("\r\n\r\n"));
    let mut h2 = [httparse::EMPTY_HEADER; MAX_HEADERS];
    assert!(parse_request(f.as_bytes(), &mut h2).unwrap().is_some());
}

#[test]
fn cookies_and_query_parameters() {
    let r = req("Cookie: a=1; sid=abc ; b\r\nCookie: sid=second; c=\"q\"\r\n").replacen(
        "/chat?room=1",
        "/chat?x&room=1&user=u%20v&room=2",
        1,
    );
    let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let u = parse_request(r.as_bytes(), &mut h).unwrap().unwrap();
    assert_eq!(u.cookie("sid"), Some(&b"abc"[..]), "the first one");
    assert_eq!(u.cookie("c"), Some(&b"\"q\""[..]));
    assert_eq!(u.cookie("SID"), None, "names are case-sensitive");
    assert_eq!(u.cookie("b"), None, "no = : not a cookie");
    assert_eq!(u.query_param("room"), Some("1"));
    assert_eq!(u.query_param("user"), Some("u%20v"));
    assert_eq!(u.query_param("x"), Some(""));
    assert_eq!(u.query_param("y"), None);
}

/// Issue 19: a head over the size limit is 431 however it got there, and 414 when its
/// request line alone fills it (only the target can be that long).
#[test]
fn a_full_head_is_431_or_414_when_its_request_line_has_not_ended() {
    let long = format!("GET /{} HTTP/1.1", "a".repeat(8192));
    assert_eq!(over_limit(&long.as_bytes()[..8192]), Reject::UriTooLong);
    assert_eq!(over_limit(long.as_bytes()), Reject::UriTooLong);
    let headers = format!("GET / HTTP/1.1\r\n{}", "X-A: b\r\n".repeat(2000));
    assert_eq!(over_limit(&headers.as_bytes()[..8192]), Reject::TooLarge);
    let value = format!("GET / HTTP/1.1\r\nX-Big: {}", "a".repeat(9000));
    assert_eq!(over_limit(&value.as_bytes()[..8192]), Reject::TooLarge);
    // No space yet: a method that long is no URI.
    assert_eq!(over_limit("G".repeat(8192).as_bytes()), Reject::TooLarge);
    assert_eq!(Reject::UriTooLong.status(), 414);
}

#[test]
fn responses() {
    let r = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x00";
    let p = parse_response(r).unwrap().unwrap();
    assert_eq!((p.status, p.head_len), (101, r.len() - 2));
    assert_eq!(parse_response(b"HTTP/1.1 101 Swi"), Ok(None));
    assert!(parse_response(b"\x00\x01garbage\r\n\r\n").is_err());
    let p = parse_response(b"HTTP/1.1 404 No\r\nContent-Length: 5\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!((p.status, p.content_length), (404, Some(5)));
    assert!(!p.deflate);
}

#[test]
fn extensions_pass_forwards_only_deflate_offers_and_reads_the_choice() {
    let r = req(
        "Sec-WebSocket-Extensions: x-webkit-deflate-frame, permessage-deflate; client_max_window_bits\r\n\
         Sec-WebSocket-Extensions: foo;bar=1,PerMessage-Deflate;server_no_context_takeover\r\n\
         Sec-WebSocket-Extensions: x-unknown\r\n",
    );
    let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let u = parse_request(r.as_bytes(), &mut h).unwrap().unwrap();
    let ip = "127.0.0.9".parse().unwrap();
    let f = String::from_utf8(u.forward_head(ip, Scheme::Http, Extensions::Pass)).unwrap();
    let ext: Vec<&str> = f
        .lines()
        .filter(|l| l.starts_with("Sec-WebSocket-Extensions"))
        .collect();
    assert_eq!(
        ext,
        [
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
            "Sec-WebSocket-Extensions: PerMessage-Deflate;server_no_context_takeover"
        ]
    );
    let stripped = String::from_utf8(u.forward_head(ip, Scheme::Http, Extensions::Strip)).unwrap();
    assert!(!stripped.to_ascii_lowercase().contains("extensions"));

    let ok = b"HTTP/1.1 101 S\r\nSec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10\r\n\r\n";
    assert!(parse_response(ok).unwrap().unwrap().deflate);
    for bad in [
        &b"HTTP/1.1 101 S\r\nSec-WebSocket-Extensions: x-unknown\r\n\r\n"[..],
        b"HTTP/1.1 101 S\r\nSec-WebSocket-Extensions: permessage-deflate, permessage-deflate\r\n\r\n",
    ] {
        assert!(parse_response(bad).is_err(), "{}", String::from_utf8_lossy(bad));
    }
}
