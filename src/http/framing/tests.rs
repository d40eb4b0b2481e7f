use super::*;
use crate::handshake::MAX_HEADERS;

fn parse(raw: &str) -> Result<Option<(Body, bool, usize)>, Reject> {
    let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
    parse_request(raw.as_bytes(), &mut h).map(|r| r.map(|r| (r.body, r.keep_alive, r.head_len)))
}

#[test]
fn framing_of_requests() {
    let get = "GET /a?b=1 HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(parse(get), Ok(Some((Body::None, true, get.len()))));
    assert_eq!(
        parse("POST /u HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\nhello"),
        Ok(Some((Body::Length(12), true, 49)))
    );
    assert_eq!(
        parse(
            "POST /u HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        ),
        Ok(Some((Body::Chunked, false, 76)))
    );
    assert_eq!(
        parse("GET / HTTP/1.0\r\n\r\n"),
        Ok(Some((Body::None, false, 18)))
    );
    assert_eq!(
        parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"),
        Ok(Some((Body::None, true, 42)))
    );
    assert_eq!(parse("GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None));
}

#[test]
fn ambiguous_framing_is_refused() {
    for raw in [
        // CL.TE and TE.CL
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        // duplicate Content-Length, even equal; lists; signs; spaces inside
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x5\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5 5\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n\r\n",
        // Transfer-Encoding other than a lone chunked
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n",
        "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        // obsolete folding, bare LF
        "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n 2\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\t2\r\n\r\n",
        "GET / HTTP/1.1\nHost: x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nX: a\nTransfer-Encoding: chunked\r\n\r\n",
        // Host missing or twice (absolute-form or not); targets for forward proxies, other
        // schemes, a bad authority or Host with an absolute-form target
        "GET / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET http://a/ HTTP/1.1\r\n\r\n",
        "GET http://a/ HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
        "CONNECT evil:443 HTTP/1.1\r\nHost: evil\r\n\r\n",
        "GET ftp://evil/ HTTP/1.1\r\nHost: evil\r\n\r\n",
        "GET * HTTP/1.1\r\nHost: evil\r\n\r\n",
        "GET http://u@evil/ HTTP/1.1\r\nHost: evil\r\n\r\n",
        "GET http://evil/ HTTP/1.1\r\nHost: a/b\r\n\r\n",
    ] {
        assert!(
            matches!(parse(raw), Err(Reject::Malformed(_))),
            "{raw:?}: {:?}",
            parse(raw)
        );
    }
    // A bare LF is refused before the head is even complete.
    assert!(parse("GET / HTTP/1.1\nHost: x").is_err());
}

/// Issue 19: a plain request in absolute-form was refused with 400; it goes to the
/// backend in origin-form, with the authority as its one Host header (over a Host header
/// that disagrees, and where HTTP/1.0 sent none).
#[test]
fn absolute_form_is_forwarded_in_origin_form_with_the_authority_as_host() {
    for (raw, line, host) in [
        (
            "GET http://a.example/p?q=1 HTTP/1.1\r\nHost: b.example\r\nX: y\r\n\r\n",
            "GET /p?q=1 HTTP/1.1\r\n",
            "a.example",
        ),
        (
            "OPTIONS HTTPS://a.example:8443 HTTP/1.1\r\nX: y\r\nHost: a.example:8443\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\n",
            "a.example:8443",
        ),
        (
            "GET http://a.example/old HTTP/1.0\r\nX: y\r\n\r\n",
            "GET /old HTTP/1.1\r\n",
            "a.example",
        ),
    ] {
        let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let r = parse_request(raw.as_bytes(), &mut h).unwrap().unwrap();
        assert_eq!(r.host, host.as_bytes(), "{raw:?}");
        let f = r.forward_head("127.0.0.9".parse().unwrap(), Scheme::Http);
        let f = String::from_utf8(f).unwrap();
        assert!(
            f.starts_with(&format!("{line}Host: {host}\r\nX: y\r\n")),
            "{f}"
        );
        assert_eq!(f.matches("Host:").count(), 1, "{f}");
        // The backend reads the same target and host from it.
        let mut h2 = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let again = parse_request(f.as_bytes(), &mut h2).unwrap().unwrap();
        assert_eq!((again.target, again.host), (r.target, r.host));
    }
}

#[test]
fn forwarded_heads_drop_hop_by_hop_headers() {
    let raw = "POST /up HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: 5\r\n\
               X-Secret: 1\r\nTE: trailers\r\nUpgrade: h2c\r\nTransfer-Encoding: chunked\r\n\
               X-Forwarded-For: 10.0.0.1\r\nCookie: a=b\r\n\r\n";
    let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let r = parse_request(raw.as_bytes(), &mut h).unwrap().unwrap();
    let f = String::from_utf8(r.forward_head("127.0.0.9".parse().unwrap(), Scheme::Https)).unwrap();
    assert!(f.starts_with("POST /up HTTP/1.1\r\nHost: x\r\n"), "{f}");
    for gone in [
        "Keep-Alive",
        "X-Secret",
        "TE:",
        "Upgrade",
        "keep-alive, X-Secret",
    ] {
        assert!(!f.contains(gone), "{gone} in {f}");
    }
    assert!(f.contains("Transfer-Encoding: chunked\r\n"));
    assert!(f.contains("Cookie: a=b\r\n"));
    assert!(f.contains("X-Forwarded-For: 10.0.0.1, 127.0.0.9\r\n"));
    assert!(f.ends_with("X-Forwarded-Proto: https\r\nConnection: keep-alive\r\n\r\n"));
}

#[test]
fn framing_of_responses() {
    let p = |raw: &str, method| {
        parse_response(raw.as_bytes(), method).map(|r| r.map(|r| (r.status, r.body, r.keep_alive)))
    };
    assert_eq!(
        p("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", "GET"),
        Ok(Some((200, Body::Length(3), true)))
    );
    assert_eq!(
        p("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", "HEAD"),
        Ok(Some((200, Body::None, true)))
    );
    assert_eq!(
        p("HTTP/1.1 204 No\r\n\r\n", "GET"),
        Ok(Some((204, Body::None, true)))
    );
    assert_eq!(
        p("HTTP/1.1 100 Continue\r\n\r\n", "POST"),
        Ok(Some((100, Body::None, true)))
    );
    assert_eq!(
        p("HTTP/1.1 200 OK\r\n\r\n", "GET"),
        Ok(Some((200, Body::UntilClose, false)))
    );
    assert_eq!(
        p(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            "GET"
        ),
        Ok(Some((200, Body::Chunked, false)))
    );
    assert_eq!(
        p("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", "GET"),
        Ok(Some((200, Body::Length(1), false)))
    );
    assert!(
        p(
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "GET"
        )
        .is_err()
    );
    assert!(
        p(
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET"
        )
        .is_err()
    );
    let r = parse_response(b"HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nSet-Cookie: s=1\r\nContent-Length: 0\r\n\r\n", "GET").unwrap().unwrap();
    let head = String::from_utf8(r.finish_head("Set-Cookie: wslb=t\r\n", true)).unwrap();
    assert_eq!(
        head,
        "HTTP/1.1 200 OK\r\nSet-Cookie: s=1\r\nContent-Length: 0\r\nSet-Cookie: wslb=t\r\nConnection: keep-alive\r\n\r\n"
    );
}

fn scan_all(body: &[u8], step: usize) -> Result<(usize, bool, u64), &'static str> {
    let mut c = Chunked::default();
    let mut used = 0;
    for piece in body.chunks(step) {
        let (n, done) = c.scan(piece)?;
        used += n;
        if done {
            return Ok((used, true, c.data));
        }
    }
    Ok((used, false, c.data))
}

#[test]
fn chunked_bodies_end_where_they_end_in_any_pieces() {
    let body = b"5\r\nhello\r\n1A;name=\"v\"\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: 1\r\n\r\nGET /next";
    let end = body.len() - "GET /next".len();
    for step in [1, 2, 3, 7, 64] {
        assert_eq!(scan_all(body, step), Ok((end, true, 31)), "step {step}");
    }
    assert_eq!(scan_all(b"0\r\n\r\n", 1), Ok((5, true, 0)));
    assert_eq!(scan_all(b"5\r\nhel", 4), Ok((6, false, 3)));
    for bad in [
        &b"x\r\n"[..],
        b"5\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloXX0\r\n\r\n",
        b"0\r\n\n",
        b"0\r\nX: 1\n\r\n",
        b"ffffffffffffffffff\r\n",
        b"5 6\r\n",
    ] {
        assert!(
            scan_all(bad, 1).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}
