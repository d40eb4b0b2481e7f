//! Plain HTTP/1.1 messages as a proxy must read them (RFC 9112): where a request's or a
//! response's body ends, the heads rewritten for the other side (hop-by-hop headers per
//! RFC 9110 §7.6.1), and a chunked-body scanner that finds the end of a body it passes on
//! unchanged. Pure (bytes in, decision out): unit-tested and fuzzed (`fuzz/`).
//!
//! Request smuggling is the classic failure of a proxy: two parsers disagreeing on where a
//! body ends. Everything ambiguous is refused with 400 before a byte reaches a backend:
//! both Content-Length and Transfer-Encoding, more than one Content-Length (even equal),
//! a Content-Length that is not plain digits, a Transfer-Encoding other than a lone
//! `chunked`, obsolete line folding, a bare LF anywhere in the head, a header name with
//! whitespace before its colon, and a missing or repeated Host.

use std::net::IpAddr;

use crate::handshake::{Reject, RequestHead, Scheme, View};

/// Where a body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    None,
    Length(u64),
    Chunked,
    /// A response without framing: it ends when the backend closes.
    UntilClose,
}

/// A plain (not upgrade) request head, borrowing the client's bytes.
#[derive(Debug)]
pub struct Request<'b, 'h> {
    pub head_len: usize,
    pub method: &'b str,
    /// Origin-form (path and query; an absolute-form target's without its scheme and
    /// authority), or `*` for `OPTIONS *`.
    pub target: &'b str,
    /// HTTP/1.`minor`.
    pub minor: u8,
    /// An absolute-form target's authority, else the Host header's value (empty without
    /// one, which only HTTP/1.0 may leave out).
    pub host: &'b [u8],
    /// The target was absolute-form: the backend gets `host` as its Host header.
    pub absolute: bool,
    pub body: Body,
    /// The client wants the connection kept open after the response.
    pub keep_alive: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    pub headers: &'h [httparse::Header<'b>],
}

fn eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&c| c == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Refuses a bare LF (a line ending that is not CRLF) in a head, and a head whose header
/// lines continue with whitespace (obsolete folding): parsers that accept them see other
/// headers than those that do not.
fn check_line_endings(head: &[u8]) -> Result<(), &'static str> {
    for (i, &c) in head.iter().enumerate() {
        if c == b'\n' {
            if i == 0 || head[i - 1] != b'\r' {
                return Err("bare LF in the head");
            }
            if matches!(head.get(i + 1), Some(b' ' | b'\t')) {
                return Err("obsolete line folding");
            }
        }
    }
    Ok(())
}

/// Where the head ends (after CRLFCRLF), if it is complete.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// The body framing of a message's headers: `Err` for anything ambiguous.
fn framing(headers: &[httparse::Header<'_>]) -> Result<Option<Body>, &'static str> {
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut te = 0;
    for h in headers {
        if eq(h.name, "content-length") {
            if length.is_some() {
                return Err("more than one Content-Length");
            }
            let v = h.value.trim_ascii();
            if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
                return Err("Content-Length is not a number");
            }
            length = Some(
                std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or("Content-Length is not a number")?,
            );
        } else if eq(h.name, "transfer-encoding") {
            te += 1;
            if te > 1 || !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err("Transfer-Encoding other than a lone chunked");
            }
            chunked = true;
        }
    }
    match (length, chunked) {
        (Some(_), true) => Err("both Content-Length and Transfer-Encoding"),
        (Some(n), false) => Ok(Some(Body::Length(n))),
        (None, true) => Ok(Some(Body::Chunked)),
        (None, false) => Ok(None),
    }
}

/// Parses a plain request head at the start of `buf` as `connection.rs` does (one
/// httparse pass over the whole buffer, then [`from_head`]). `Ok(None)`: incomplete.
pub fn parse_request<'b, 'h>(
    buf: &'b [u8],
    headers: &'h mut [httparse::Header<'b>; crate::handshake::MAX_HEADERS],
) -> Result<Option<Request<'b, 'h>>, Reject> {
    match crate::handshake::parse_head(buf, headers)? {
        Some(head) => from_head(head, buf).map(Some),
        // A bare LF can also hide a head's end from a parser that wants CRLFCRLF: refuse
        // it as soon as it is seen.
        None => check_line_endings(buf)
            .map(|()| None)
            .map_err(Reject::Malformed),
    }
}

/// A request head parsed by [`crate::handshake::parse_head`] (from the start of `buf`),
/// validated as a plain request: its line endings, Host and body framing.
pub fn from_head<'b, 'h>(head: RequestHead<'b, 'h>, buf: &[u8]) -> Result<Request<'b, 'h>, Reject> {
    check_line_endings(&buf[..head.head_len]).map_err(Reject::Malformed)?;
    let RequestHead {
        head_len,
        method,
        target,
        authority,
        minor,
        headers,
    } = head;
    let mut hosts = 0;
    let mut host: &[u8] = b"";
    let mut close = minor == 0;
    let mut expect_continue = false;
    for h in headers {
        if eq(h.name, "host") {
            hosts += 1;
            host = h.value.trim_ascii();
        } else if eq(h.name, "connection") {
            if has_token(h.value, "close") {
                close = true;
            }
            if minor == 0 && has_token(h.value, "keep-alive") {
                close = false;
            }
        } else if eq(h.name, "expect") && h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue")
        {
            expect_continue = true;
        }
    }
    if hosts > 1 || (minor == 1 && hosts == 0) {
        return Err(Reject::Malformed("need exactly one Host header"));
    }
    let host = crate::handshake::request_host(authority, host)?;
    // `Content-Length: 0` is no body: such a request may reuse an idle connection and
    // waits for no `100 Continue` (the header itself is passed on as sent).
    let body = match framing(headers).map_err(Reject::Malformed)? {
        None | Some(Body::Length(0)) => Body::None,
        Some(body) => body,
    };
    if body == Body::Chunked && minor == 0 {
        return Err(Reject::Malformed("chunked request from HTTP/1.0"));
    }
    Ok(Request {
        head_len,
        method,
        target,
        minor,
        host,
        absolute: authority.is_some(),
        body,
        keep_alive: !close,
        expect_continue,
        headers,
    })
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), which a proxy does not pass on, and those
/// `Connection` names; `Transfer-Encoding` is left to the caller (a chunked body is
/// passed on as it is, so its header goes with it).
fn hop_by_hop(name: &str, connection: &[&[u8]]) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    ]
    .iter()
    .any(|h| eq(name, h))
        || connection.iter().any(|v| {
            v.split(|&c| c == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
        })
}

fn connection_values<'b>(headers: &[httparse::Header<'b>]) -> Vec<&'b [u8]> {
    headers
        .iter()
        .filter(|h| eq(h.name, "connection"))
        .map(|h| h.value)
        .collect()
}

impl<'b, 'h> Request<'b, 'h> {
    /// What routing and selection read of it, as of an upgrade.
    pub fn view(&self) -> View<'b, 'h> {
        View::new(self.target, self.host, self.headers)
    }

    /// The head for the backend: the request line as HTTP/1.1 with the target in
    /// origin-form (as HAProxy and NGINX send it), end-to-end headers as sent (but Host
    /// for an absolute-form target: its authority), `X-Forwarded-For` (appended) and
    /// `X-Forwarded-Proto`, and `Connection: keep-alive` (backend connections are reused).
    pub fn forward_head(&self, client_ip: IpAddr, scheme: Scheme) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.head_len + 96);
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let connection = connection_values(self.headers);
        let skip = |h: &httparse::Header<'_>| hop_by_hop(h.name, &connection);
        let host = self.absolute.then_some(self.host);
        crate::handshake::copy_forwarded(&mut out, self.headers, skip, host, client_ip, scheme);
        out.extend_from_slice(b"Connection: keep-alive\r\n\r\n");
        out
    }
}

/// A backend's response head, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub head_len: usize,
    pub body: Body,
    /// The backend keeps the connection open after this response.
    pub keep_alive: bool,
    /// The head for the client (hop-by-hop headers removed, `Connection` added by the
    /// caller through [`Response::finish_head`]), without its final CRLF.
    head: Vec<u8>,
}

/// Parses a response head at the start of `buf` (to a request of `method`). `Ok(None)`:
/// incomplete. A 1xx has no body; the caller forwards it and reads the next head.
pub fn parse_response(buf: &[u8], method: &str) -> Result<Option<Response>, &'static str> {
    let Some(end) = head_end(buf) else {
        check_line_endings(buf)?;
        return Ok(None);
    };
    check_line_endings(&buf[..end])?;
    let mut headers = [httparse::EMPTY_HEADER; crate::handshake::MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(&buf[..end]) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("backend response is not HTTP/1.1"),
    };
    let (Some(status), Some(minor)) = (resp.code, resp.version) else {
        return Err("backend response has no status");
    };
    let framed = framing(resp.headers)?;
    let no_body =
        method == "HEAD" || (100..200).contains(&status) || status == 204 || status == 304;
    let body = match (no_body, framed) {
        (true, _) => Body::None,
        (false, Some(b)) => b,
        (false, None) => Body::UntilClose,
    };
    let connection = connection_values(resp.headers);
    let close = minor == 0 && !connection.iter().any(|v| has_token(v, "keep-alive"))
        || connection.iter().any(|v| has_token(v, "close"));
    let mut head = Vec::with_capacity(head_len + 64);
    head.extend_from_slice(
        format!("HTTP/1.1 {status} {}\r\n", resp.reason.unwrap_or("")).as_bytes(),
    );
    for h in resp.headers.iter() {
        if hop_by_hop(h.name, &connection) {
            continue;
        }
        head.extend_from_slice(h.name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(h.value);
        head.extend_from_slice(b"\r\n");
    }
    Ok(Some(Response {
        status,
        head_len,
        body,
        keep_alive: !close && body != Body::UntilClose,
        head,
    }))
}

impl Response {
    /// The head for the client: `extra` header lines (each with its CRLF, e.g. a sticky
    /// cookie), then `Connection: keep-alive` or `close`, then the blank line.
    pub fn finish_head(&self, extra: &str, keep_alive: bool) -> Vec<u8> {
        let mut out = self.head.clone();
        out.extend_from_slice(extra.as_bytes());
        if (100..200).contains(&self.status) {
            out.extend_from_slice(b"\r\n");
            return out;
        }
        out.extend_from_slice(if keep_alive {
            b"Connection: keep-alive\r\n\r\n".as_slice()
        } else {
            b"Connection: close\r\n\r\n".as_slice()
        });
        out
    }
}

/// Finds the end of a chunked body in the bytes passing through (which it does not
/// change): chunk sizes, their data, the CRLF after each, and the trailer section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chunked {
    state: ChunkState,
    /// Body bytes (chunk data) seen, for the size limit.
    pub data: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ChunkState {
    /// In a chunk-size line: the size so far, digits seen, and bytes of the line.
    #[default]
    Start,
    Size {
        size: u64,
        digits: u8,
        line: u16,
        ext: Ext,
    },
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// In the trailer section: bytes of the current line, and whether it ended with CR.
    Trailer {
        line: u16,
        cr: bool,
    },
    Done,
}

/// Where a chunk-size line stands after its digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ext {
    /// Still in the digits.
    None,
    /// Whitespace after them: a `;` must follow.
    Space,
    /// In an extension (after `;`).
    In,
}

/// The longest chunk-size line (with extensions) and trailer line accepted.
const MAX_LINE: u16 = 4096;

impl Chunked {
    /// Scans `buf` (the next bytes of the body). Returns how many belong to the body
    /// (all of `buf` unless the body ends inside it) and whether it has ended.
    pub fn scan(&mut self, buf: &[u8]) -> Result<(usize, bool), &'static str> {
        let mut i = 0;
        while i < buf.len() {
            let c = buf[i];
            self.state = match self.state {
                ChunkState::Done => return Ok((i, true)),
                ChunkState::Start => match hex(c) {
                    Some(d) => ChunkState::Size {
                        size: d,
                        digits: 1,
                        line: 1,
                        ext: Ext::None,
                    },
                    None => return Err("bad chunk size"),
                },
                ChunkState::Size {
                    size,
                    digits,
                    line,
                    ext,
                } => {
                    if line >= MAX_LINE {
                        return Err("chunk-size line too long");
                    }
                    let next = |ext| ChunkState::Size {
                        size,
                        digits,
                        line: line + 1,
                        ext,
                    };
                    match (c, ext) {
                        (b'\r', _) => ChunkState::SizeLf { size },
                        (b'\n', _) => return Err("bare LF in a chunk-size line"),
                        (_, Ext::None) if hex(c).is_some() => {
                            if digits >= 15 {
                                return Err("chunk size too large");
                            }
                            let d = hex(c).unwrap_or_default();
                            ChunkState::Size {
                                size: size << 4 | d,
                                digits: digits + 1,
                                line: line + 1,
                                ext,
                            }
                        }
                        // Whitespace may come before a `;` (BWS), and then only a `;`.
                        (b' ' | b'\t', Ext::None | Ext::Space) => next(Ext::Space),
                        (b';', Ext::None | Ext::Space) => next(Ext::In),
                        // An extension: any visible byte, spaces, tabs.
                        (c, Ext::In) if c == b'\t' || (b' '..=b'~').contains(&c) || c >= 0x80 => {
                            next(Ext::In)
                        }
                        _ => return Err("bad chunk size"),
                    }
                }
                ChunkState::SizeLf { size } => match c {
                    b'\n' if size == 0 => ChunkState::Trailer { line: 0, cr: false },
                    b'\n' => ChunkState::Data { left: size },
                    _ => return Err("chunk-size line without CRLF"),
                },
                ChunkState::Data { left } => {
                    let take = (left as usize).min(buf.len() - i);
                    self.data += take as u64;
                    i += take;
                    self.state = if take as u64 == left {
                        ChunkState::DataCr
                    } else {
                        ChunkState::Data {
                            left: left - take as u64,
                        }
                    };
                    continue;
                }
                ChunkState::DataCr => match c {
                    b'\r' => ChunkState::DataLf,
                    _ => return Err("chunk data without CRLF"),
                },
                ChunkState::DataLf => match c {
                    b'\n' => ChunkState::Start,
                    _ => return Err("chunk data without CRLF"),
                },
                ChunkState::Trailer { line, cr } => match (c, cr) {
                    (b'\n', true) if line == 0 => ChunkState::Done,
                    (b'\n', true) => ChunkState::Trailer { line: 0, cr: false },
                    (b'\n', false) => return Err("bare LF in the trailer"),
                    (b'\r', false) => ChunkState::Trailer { line, cr: true },
                    (_, true) => return Err("CR without LF in the trailer"),
                    _ if line >= MAX_LINE => return Err("trailer line too long"),
                    _ => ChunkState::Trailer {
                        line: line + 1,
                        cr: false,
                    },
                },
            };
            i += 1;
        }
        Ok((buf.len(), self.state == ChunkState::Done))
    }
}

fn hex(c: u8) -> Option<u64> {
    (c as char).to_digit(16).map(u64::from)
}

#[cfg(test)]
mod tests;
