//! HTTP/1.1 Upgrade: parse a request head (once, for upgrades and plain requests alike),
//! validate an upgrade, rewrite it for the backend, and parse the backend's answer.
//!
//! Everything here is pure (bytes in, decision out) so it can be unit-tested and fuzzed;
//! the socket I/O around it lives in `connection.rs`. Parsing is `httparse`'s: monoio-http
//! cannot hand back the bytes a client sent after the request head, and those bytes (the
//! first frames of an eager client) must reach the backend.

use std::net::IpAddr;

pub use crate::config::Extensions;

use base64::Engine;
use sha1::{Digest, Sha1};

/// The scheme a client reached wslb with, as `X-Forwarded-Proto` tells the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// Most header lines accepted in a request or response. Browsers send 10-20.
pub const MAX_HEADERS: usize = 64;

/// A request wslb refuses, with the HTTP status it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("malformed HTTP request: {0}")]
    Malformed(&'static str),
    #[error("method is not GET")]
    NotGet,
    #[error("not a WebSocket upgrade: {0}")]
    NotUpgrade(&'static str),
    #[error("unsupported Sec-WebSocket-Version (only 13)")]
    BadVersion,
    #[error("request head over the size or header-count limit")]
    TooLarge,
    /// The request line alone is over the head size limit: only its target can be that
    /// long (see [`over_limit`]).
    #[error("request target over the head size limit")]
    UriTooLong,
    #[error("request body over http.max_body_bytes")]
    BodyTooLarge,
}

impl Reject {
    pub fn status(self) -> u16 {
        match self {
            Reject::Malformed(_) => 400,
            Reject::NotGet => 405,
            Reject::NotUpgrade(_) | Reject::BadVersion => 426,
            Reject::TooLarge => 431,
            Reject::UriTooLong => 414,
            Reject::BodyTooLarge => 413,
        }
    }
}

/// A valid WebSocket upgrade request, borrowing the client's bytes. Reads as its
/// [`View`] (`u.path`, `u.host`, `u.cookie(..)`).
#[derive(Debug)]
pub struct Upgrade<'b, 'h> {
    /// Bytes of the request head including the final CRLFCRLF; bytes after it are frames.
    pub head_len: usize,
    pub key: &'b [u8],
    /// The target was absolute-form: the backend gets `host` as its Host header, in place
    /// of the client's.
    absolute: bool,
    view: View<'b, 'h>,
}

impl<'b, 'h> std::ops::Deref for Upgrade<'b, 'h> {
    type Target = View<'b, 'h>;
    fn deref(&self) -> &View<'b, 'h> {
        &self.view
    }
}

/// What routing and selection read of a request, an upgrade or a plain one alike: its
/// host, its target, its headers. One reading for both, so a session's polls and its later
/// upgrade find the same route, cookie and hash key.
#[derive(Debug, Clone, Copy)]
pub struct View<'b, 'h> {
    /// The request target in origin-form: path and query (an absolute-form target's, whose
    /// scheme and authority are not part of it).
    pub path: &'b str,
    /// The request's host: an absolute-form target's authority, else the `Host` header's
    /// value (exactly one Host header is required either way).
    pub host: &'b [u8],
    headers: &'h [httparse::Header<'b>],
}

fn eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Does a comma-separated header value contain `token` (case-insensitive)?
fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&c| c == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// A request head as httparse reads it, for upgrades and plain requests alike.
pub struct RequestHead<'b, 'h> {
    pub head_len: usize,
    pub method: &'b str,
    /// Origin-form (path and query) or `*` ([`target::parse`]).
    pub target: &'b str,
    /// The authority of an absolute-form target: the request's host ([`target::host`]).
    pub authority: Option<&'b [u8]>,
    /// HTTP/1.`minor`.
    pub minor: u8,
    pub headers: &'h [httparse::Header<'b>],
}

/// Parses the request head at the start of `buf`: `Ok(None)` while incomplete, 431 for
/// too many headers, 400 for anything httparse refuses, a request line without all its
/// parts, or a target in a form wslb does not serve ([`target::parse`]).
pub fn parse_head<'b, 'h>(
    buf: &'b [u8],
    headers: &'h mut [httparse::Header<'b>; MAX_HEADERS],
) -> Result<Option<RequestHead<'b, 'h>>, Reject> {
    let mut req = httparse::Request::new(headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Reject::TooLarge),
        Err(_) => return Err(Reject::Malformed("unparseable request head")),
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(Reject::Malformed("incomplete request line"));
    };
    let target = target::parse(method, target)?;
    Ok(Some(RequestHead {
        head_len,
        method,
        target: target.path,
        authority: target.authority,
        minor,
        headers: req.headers,
    }))
}

/// Why `buf`, a valid but incomplete head that fills the head size limit, is refused: 414
/// when its request line has not ended, 431 otherwise.
///
/// RFC 9112 §3: a request-target longer than the server wants to parse MUST get 414. The
/// method is a short token and the version 8 bytes, so a request line that does not end
/// within `limits.max_request_bytes` (1 KiB or more) has a target that long; NGINX
/// answers such a line with 414 too. A line without its first space is a method that
/// long, which is no URI: 431 as before. One scan of bytes already read, not a parse.
pub fn over_limit(buf: &[u8]) -> Reject {
    let line = buf.split(|&c| c == b'\n').next().unwrap_or_default();
    if line.len() == buf.len() && line.contains(&b' ') {
        Reject::UriTooLong
    } else {
        Reject::TooLarge
    }
}

/// Parses and validates a WebSocket upgrade request at the start of `buf`.
///
/// `Ok(None)`: the head is incomplete, read more (unless `buf` already holds the size limit,
/// which the caller turns into [`over_limit`]'s answer).
pub fn parse_request<'b, 'h>(
    buf: &'b [u8],
    headers: &'h mut [httparse::Header<'b>; MAX_HEADERS],
) -> Result<Option<Upgrade<'b, 'h>>, Reject> {
    match parse_head(buf, headers)? {
        Some(head) => upgrade(head).map(Some),
        None => Ok(None),
    }
}

impl RequestHead<'_, '_> {
    /// The request asks for a WebSocket (an `Upgrade` header naming websocket): one that
    /// fails validation is refused as a bad upgrade; any other may be plain HTTP (`http/`).
    pub fn asks_websocket(&self) -> bool {
        self.headers
            .iter()
            .any(|h| eq(h.name, "upgrade") && has_token(h.value, "websocket"))
    }
}

/// Validates a parsed head as a WebSocket upgrade (RFC 6455 §4.2.1).
pub fn upgrade<'b, 'h>(head: RequestHead<'b, 'h>) -> Result<Upgrade<'b, 'h>, Reject> {
    let RequestHead {
        head_len,
        method,
        target: path,
        authority,
        minor: version,
        headers,
    } = head;
    if method != "GET" {
        return Err(Reject::NotGet);
    }
    if version != 1 {
        return Err(Reject::Malformed("websocket needs HTTP/1.1"));
    }

    let mut hosts = 0;
    let mut host: &[u8] = b"";
    let mut upgrade: Option<&[u8]> = None;
    let mut upgrades = 0;
    let mut connection_upgrade = false;
    let mut key: Option<&[u8]> = None;
    let mut keys = 0;
    let mut versions = 0;
    let mut version_ok = false;
    for h in headers {
        let n = h.name;
        if eq(n, "host") {
            hosts += 1;
            host = h.value.trim_ascii();
        } else if eq(n, "upgrade") {
            upgrades += 1;
            upgrade = Some(h.value);
        } else if eq(n, "connection") {
            connection_upgrade |= has_token(h.value, "upgrade");
        } else if eq(n, "sec-websocket-key") {
            keys += 1;
            key = Some(h.value.trim_ascii());
        } else if eq(n, "sec-websocket-version") {
            versions += 1;
            version_ok = h.value.trim_ascii() == b"13";
        } else if eq(n, "content-length") {
            if h.value.trim_ascii() != b"0" {
                return Err(Reject::Malformed("upgrade request with a body"));
            }
        } else if eq(n, "transfer-encoding") {
            return Err(Reject::Malformed("upgrade request with a body"));
        }
    }
    if hosts != 1 {
        return Err(Reject::Malformed("need exactly one Host header"));
    }
    let host = target::host(authority, host)?;
    match upgrade {
        None => return Err(Reject::NotUpgrade("no Upgrade header")),
        Some(_) if upgrades > 1 => return Err(Reject::Malformed("duplicate Upgrade header")),
        Some(v) if !has_token(v, "websocket") => {
            return Err(Reject::NotUpgrade("Upgrade is not websocket"));
        }
        Some(_) => {}
    }
    if !connection_upgrade {
        return Err(Reject::Malformed("Connection header lacks upgrade"));
    }
    if versions != 1 || !version_ok {
        return Err(Reject::BadVersion);
    }
    let key = match key {
        Some(k) if keys == 1 && is_valid_key(k) => k,
        _ => return Err(Reject::Malformed("bad Sec-WebSocket-Key")),
    };
    Ok(Upgrade {
        head_len,
        key,
        absolute: authority.is_some(),
        view: View {
            path,
            host,
            headers,
        },
    })
}

/// A key is base64 of exactly 16 bytes (RFC 6455 §4.1), so 24 characters.
fn is_valid_key(k: &[u8]) -> bool {
    k.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode(k)
            .is_ok_and(|d| d.len() == 16)
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 §4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

impl<'b, 'h> View<'b, 'h> {
    pub fn new(path: &'b str, host: &'b [u8], headers: &'h [httparse::Header<'b>]) -> Self {
        View {
            path,
            host,
            headers,
        }
    }
}

impl<'b> View<'b, '_> {
    /// The path without the query.
    pub fn path_only(&self) -> &str {
        self.path.split_once('?').map_or(self.path, |(p, _)| p)
    }

    /// The query (after `?`), if any.
    pub fn query(&self) -> Option<&str> {
        self.path.split_once('?').map(|(_, q)| q)
    }

    /// The value of the first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'b [u8]> {
        self.headers
            .iter()
            .find(|h| eq(h.name, name))
            .map(|h| h.value)
    }

    /// The value of the cookie `name` (case-sensitive, RFC 6265), from the first `Cookie`
    /// header that has it, as sent (quotes and all).
    pub fn cookie(&self, name: &str) -> Option<&'b [u8]> {
        self.headers
            .iter()
            .filter(|h| eq(h.name, "cookie"))
            .flat_map(|h| h.value.split(|&c| c == b';'))
            .find_map(|pair| {
                let pair = pair.trim_ascii();
                let eq = pair.iter().position(|&c| c == b'=')?;
                (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
            })
    }

    /// The value of the first query parameter `name` (`?name=value&...`), as sent: not
    /// percent-decoded, so two spellings of one value are two keys. A parameter without
    /// `=` has the empty value.
    pub fn query_param(&self, name: &str) -> Option<&'b str> {
        let path: &'b str = self.path;
        let (_, query) = path.split_once('?')?;
        query.split('&').find_map(|pair| {
            let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
            (n == name).then_some(v)
        })
    }
}

impl<'b> Upgrade<'b, '_> {
    /// The request head sent to the backend: path and query (in origin-form), and every
    /// header as the client sent them, except:
    /// - `Host`: for an absolute-form target, its authority, in place of the client's.
    /// - `Sec-WebSocket-Extensions`: with [`Extensions::Pass`], only its permessage-deflate
    ///   offers are kept (any other extension is removed, as wslb cannot know its RSV
    ///   bits); with [`Extensions::Strip`] the header is dropped and no extension is
    ///   negotiated, so both peers fall back to uncompressed frames (RFC 6455 §9.1).
    /// - `X-Forwarded-For` gets the client's address appended; `X-Forwarded-Proto` is set
    ///   to the scheme the client reached wslb with.
    pub fn forward_head(&self, client_ip: IpAddr, scheme: Scheme, ext: Extensions) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.head_len + 64);
        out.extend_from_slice(b"GET ");
        out.extend_from_slice(self.path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let extensions = |h: &&httparse::Header<'_>| eq(h.name, "sec-websocket-extensions");
        if ext == Extensions::Pass {
            for h in self.headers.iter().filter(extensions) {
                let kept = deflate_offers(h.value);
                if !kept.is_empty() {
                    out.extend_from_slice(b"Sec-WebSocket-Extensions: ");
                    out.extend_from_slice(&kept);
                    out.extend_from_slice(b"\r\n");
                }
            }
        }
        copy_forwarded(
            &mut out,
            self.headers,
            |h| extensions(&h),
            self.absolute.then_some(self.host),
            client_ip,
            scheme,
        );
        out.extend_from_slice(b"\r\n");
        out
    }

    /// Whether the client offers permessage-deflate (what [`Upgrade::forward_head`] passes
    /// on with [`Extensions::Pass`]).
    pub fn offers_deflate(&self) -> bool {
        self.headers
            .iter()
            .any(|h| eq(h.name, "sec-websocket-extensions") && !deflate_offers(h.value).is_empty())
    }

    /// The `101 Switching Protocols` a WebSocket server (the echo backend) answers with.
    pub fn switching_protocols(&self) -> Vec<u8> {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            accept_key(self.key)
        )
        .into_bytes()
    }
}

/// Copies `headers` to `out` as `Name: value` lines, except those `skip` takes and the
/// `X-Forwarded-*` ones, then adds `X-Forwarded-For` (the client's address appended to the
/// request's own list) and `X-Forwarded-Proto` (the scheme the client reached wslb with),
/// each with its CRLF. With `host` (an absolute-form target's authority), that is the one
/// Host line, first, and the client's are left out: the backend gets the origin-form, and
/// its Host must name what the target did (RFC 9112 §3.2.2). For upgrades and plain HTTP
/// requests alike.
pub(crate) fn copy_forwarded(
    out: &mut Vec<u8>,
    headers: &[httparse::Header<'_>],
    skip: impl Fn(&httparse::Header<'_>) -> bool,
    host: Option<&[u8]>,
    client_ip: IpAddr,
    scheme: Scheme,
) {
    if let Some(host) = host {
        out.extend_from_slice(b"Host: ");
        out.extend_from_slice(host);
        out.extend_from_slice(b"\r\n");
    }
    let mut xff = Vec::new();
    for h in headers {
        if skip(h) || eq(h.name, "x-forwarded-proto") || host.is_some() && eq(h.name, "host") {
            continue;
        }
        if eq(h.name, "x-forwarded-for") {
            xff.extend_from_slice(h.value.trim_ascii());
            xff.extend_from_slice(b", ");
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    out.extend_from_slice(&xff);
    out.extend_from_slice(client_ip.to_string().as_bytes());
    out.extend_from_slice(b"\r\nX-Forwarded-Proto: ");
    out.extend_from_slice(scheme.as_str().as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The permessage-deflate offers of one `Sec-WebSocket-Extensions` value, comma-joined
/// as sent (parameters and all); other extensions' offers are left out.
fn deflate_offers(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for offer in value.split(|&c| c == b',') {
        let offer = offer.trim_ascii();
        let name = offer.split(|&c| c == b';').next().unwrap_or_default();
        if name
            .trim_ascii()
            .eq_ignore_ascii_case(b"permessage-deflate")
        {
            if !out.is_empty() {
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(offer);
        }
    }
    out
}

/// The head of a backend's response to the forwarded upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub head_len: usize,
    /// `Content-Length` of a non-101 response, if given.
    pub content_length: Option<u64>,
    /// The 101 accepted permessage-deflate (`Sec-WebSocket-Extensions`).
    pub deflate: bool,
}

/// Parses a backend response head. `Ok(None)` means more bytes are needed.
pub fn parse_response(buf: &[u8]) -> Result<Option<Response>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("backend response is not HTTP/1.1"),
    };
    let status = resp.code.ok_or("backend response has no status")?;
    let content_length = resp
        .headers
        .iter()
        .find(|h| eq(h.name, "content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok());
    let mut deflate = false;
    if status == 101 {
        let accepted = resp
            .headers
            .iter()
            .filter(|h| eq(h.name, "sec-websocket-extensions"))
            .flat_map(|h| h.value.split(|&c| c == b','))
            .map(|e| {
                e.split(|&c| c == b';')
                    .next()
                    .unwrap_or_default()
                    .trim_ascii()
            })
            .filter(|name| !name.is_empty());
        for name in accepted {
            // Only what wslb forwarded can have been accepted, and only once (RFC 7692
            // §5: one permessage-deflate); anything else would leave the relay unable to
            // tell the frames' RSV bits.
            if !name.eq_ignore_ascii_case(b"permessage-deflate") || deflate {
                return Err("backend's 101 accepted an extension that was not offered");
            }
            deflate = true;
        }
    }
    Ok(Some(Response {
        status,
        head_len,
        content_length,
        deflate,
    }))
}

mod target;
pub(crate) use target::host as request_host;

#[cfg(test)]
mod tests;
