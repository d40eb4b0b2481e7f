//! The admin server's HTTP/1.1, pure: a request head's bytes in, a [`Head`] or the status
//! to refuse it with out; a [`Response`] to bytes. No I/O here, so every case is a unit test.

/// The most bytes a request head may take. A browser's GET with its usual headers is well
/// under 2 KiB; 8 KiB leaves room for long cookies on a shared host name and is the
/// buffer one connection holds while it waits (an admin server has a handful of them).
pub const HEAD_MAX: usize = 8 * 1024;

/// Header lines parsed per request (more is 431). Browsers send about 15.
const MAX_HEADERS: usize = 48;

/// The parts of a request the router needs, owned so the read buffer can move on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Only GET is served; any other method is answered 405.
    pub get: bool,
    /// The path without its query string.
    pub path: String,
    /// The client asked to close after this response (`Connection: close`, or HTTP/1.0
    /// without `keep-alive`).
    pub close: bool,
    /// Bytes of the buffer the head took (what follows is the next request's).
    pub len: usize,
}

/// Parses the request head at the start of `buf`: `Ok(None)` while it is incomplete
/// (the caller reads more, up to [`HEAD_MAX`]), `Err(status)` for a request this server
/// refuses (the connection closes after the answer).
pub fn parse(buf: &[u8]) -> Result<Option<Head>, u16> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= HEAD_MAX => return Err(431),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(431),
        Err(_) => return Err(400),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(400);
    };
    let mut close = version == 0;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && version == 0 {
                    close = false;
                }
            }
        }
        // This server reads no bodies: one would be taken for the next request's head
        // (request smuggling's start), so a request announcing one is refused.
        let body = (h.name.eq_ignore_ascii_case("content-length") && h.value.trim_ascii() != b"0")
            || h.name.eq_ignore_ascii_case("transfer-encoding");
        if body {
            return Err(400);
        }
    }
    // Origin form only ("/path?query"); absolute and authority forms are for proxies.
    if !target.starts_with('/') {
        return Err(400);
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    Ok(Some(Head {
        get: method == "GET",
        path: path.to_string(),
        close,
        len,
    }))
}

/// One response: status, content type, body, and `Allow` for a 405.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Extra header lines, each `Name: value` without the CRLF.
    pub headers: Vec<&'static str>,
}

pub const TEXT: &str = "text/plain; charset=utf-8";
pub const JSON: &str = "application/json";
pub const HTML: &str = "text/html; charset=utf-8";

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            content_type,
            body: body.into(),
            headers: Vec::new(),
        }
    }

    /// A plain-text answer: `text` and a newline.
    pub fn text(status: u16, text: &str) -> Self {
        Response::new(status, TEXT, format!("{text}\n"))
    }

    pub fn with_header(mut self, line: &'static str) -> Self {
        self.headers.push(line);
        self
    }

    /// The response's bytes, head and body; `close` adds `Connection: close`.
    pub fn encode(&self, close: bool) -> Vec<u8> {
        use std::fmt::Write;
        let mut head = String::with_capacity(256);
        let _ = write!(
            head,
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        // Every answer is the state of now: never from a cache.
        head.push_str("Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n");
        for h in &self.headers {
            let _ = write!(head, "{h}\r\n");
        }
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

/// The reason phrase of `status` (of those this server sends).
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Head {
        parse(raw.as_bytes()).unwrap().unwrap()
    }

    #[test]
    fn a_get_parses_with_its_path_and_keep_alive() {
        let raw = "GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\n";
        let h = head(raw);
        assert_eq!(
            h,
            Head {
                get: true,
                path: "/metrics".into(),
                close: false,
                len: 38,
            }
        );
        assert_eq!(&raw[h.len..], "GET / HTTP/1.1\r\n");
    }

    #[test]
    fn close_follows_connection_header_and_version() {
        assert!(head("GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n").close);
        assert!(head("GET / HTTP/1.0\r\n\r\n").close);
        assert!(!head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").close);
        assert!(!head("GET / HTTP/1.1\r\nConnection: upgrade\r\n\r\n").close);
    }

    #[test]
    fn other_methods_parse_as_not_get() {
        assert!(!head("POST / HTTP/1.1\r\n\r\n").get);
        assert!(!head("HEAD / HTTP/1.1\r\n\r\n").get);
    }

    #[test]
    fn partial_heads_wait_and_oversized_ones_are_431() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost:"), Ok(None));
        assert_eq!(parse(b""), Ok(None));
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(HEAD_MAX, b'a');
        assert_eq!(parse(&big), Err(431));
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("H{i}: v\r\n"))
            .collect();
        assert_eq!(
            parse(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()),
            Err(431)
        );
    }

    #[test]
    fn garbage_bodies_and_proxy_forms_are_400() {
        assert_eq!(parse(b"\x00\x01\x02 / HTTP/1.1\r\n\r\n"), Err(400));
        assert_eq!(parse(b"GET / HTTP/2.0\r\n\r\n"), Err(400));
        let body = b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(parse(body), Err(400));
        let chunked = b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse(chunked), Err(400));
        assert_eq!(parse(b"GET http://a/ HTTP/1.1\r\n\r\n"), Err(400));
        assert!(parse(b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").is_ok());
    }

    #[test]
    fn responses_encode_length_type_and_extra_headers() {
        let r = Response::text(405, "method not allowed").with_header("Allow: GET");
        let bytes = String::from_utf8(r.encode(true)).unwrap();
        assert_eq!(
            bytes,
            "HTTP/1.1 405 Method Not Allowed\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 19\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n\
             Allow: GET\r\nConnection: close\r\n\r\nmethod not allowed\n"
        );
        let kept = String::from_utf8(Response::text(200, "ok").encode(false)).unwrap();
        assert!(!kept.contains("Connection:"), "{kept}");
    }
}
