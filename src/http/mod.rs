//! Plain HTTP/1.1 beside WebSocket upgrades: a request that is not an upgrade (Socket.IO's
//! and SignalR's polling, a health page, API calls) is proxied to the backend its route
//! and affinity choose, the same sticky cookie or hash key as an upgrade, so one
//! session's polls and its later upgrade reach the same backend.
//!
//! One exchange at a time per client connection, kept alive between them
//! (`connection.rs` loops: the next request may be plain or an upgrade). Bodies stream
//! both ways through one pool buffer, never whole (Content-Length, chunked, or until the
//! backend closes), with `http.body_timeout_ms` between reads either way and
//! `http.max_body_bytes` on requests. Framing and hop-by-hop headers: `framing.rs`.
//! Backend connections are reused from the worker's [`BackendPool`] for requests without
//! a body (one that turns out closed is retried once on a new connection: nothing of the
//! request was consumed); a request with a body always gets a new connection, so it is
//! never sent twice. Not a web server: no caching, no rewriting, no HTTP/2.
//!
//! Why not monoio-http's codec: it decodes bodies into its own chunks and owns the
//! connection, while a proxy here must pass chunked bodies on as they are (trailers and
//! extensions included), keep the bytes pipelined behind a request, and share one buffer
//! pool with the relay. httparse plus `framing.rs` is what that needs.

pub mod framing;
mod pool;

use std::net::SocketAddr;
use std::time::Duration;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::time::Instant;

use crate::access_log;
use crate::balancer::{Failure, Lease};
use crate::connection::HandshakeError;
use crate::handshake::{self, Reject};
use crate::stream::ClientStream;
use crate::upstream;
use crate::worker::WorkerEnv;
use framing::{Body, Chunked};

pub use pool::BackendPool;

/// 504: the backend sent no response head within `timeouts.backend_handshake_ms`.
const GATEWAY_TIMEOUT: &[u8] = b"HTTP/1.1 504 Gateway Timeout\r\nContent-Type: text/plain\r\n\
Connection: close\r\nContent-Length: 27\r\n\r\nthe backend did not answer\n";
/// How long a client that sent `Expect: 100-continue` waits for the backend's 100 before
/// its body is sent anyway (curl waits 1 s too).
const EXPECT_WAIT: Duration = Duration::from_secs(1);

/// How passing on a body, or a response head, failed.
#[derive(Debug)]
enum Fail {
    /// The source closed or failed, or was quiet for the body timeout.
    Src(String),
    /// Writing to the destination failed.
    Dst(String),
    TooLarge,
    Framing(&'static str),
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fail::Src(e) => write!(f, "reading: {e}"),
            Fail::Dst(e) => write!(f, "writing: {e}"),
            Fail::TooLarge => f.write_str("body over http.max_body_bytes"),
            Fail::Framing(e) => f.write_str(e),
        }
    }
}

/// Reads more into `buf`'s spare capacity (growing it when full) within `timeout`;
/// `Ok(0)` at EOF. On timeout the read is cancelled and a new empty buffer returned.
async fn read_more<R: AsyncReadRent>(
    r: &mut R,
    mut buf: Vec<u8>,
    timeout: Duration,
) -> (Result<usize, String>, Vec<u8>) {
    if buf.len() == buf.capacity() {
        buf.reserve(buf.capacity().max(4096));
    }
    let (len, cap) = (buf.len(), buf.capacity());
    match monoio::time::timeout(timeout, r.read(buf.slice_mut(len..cap))).await {
        Ok((res, slice)) => (res.map_err(|e| e.to_string()), slice.into_inner()),
        Err(_) => (Err("timed out".into()), Vec::new()),
    }
}

/// Writes `buf[..k]` within `timeout` and removes it from `buf`.
async fn write_prefix<W: AsyncWriteRent>(
    w: &mut W,
    buf: Vec<u8>,
    k: usize,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    if k == 0 {
        return Ok(buf);
    }
    match monoio::time::timeout(timeout, w.write_all(buf.slice(0..k))).await {
        Ok((Ok(_), slice)) => {
            let mut buf = slice.into_inner();
            buf.drain(..k);
            Ok(buf)
        }
        Ok((Err(e), _)) => Err(e.to_string()),
        Err(_) => Err("write timed out".into()),
    }
}

/// Passes one body from `src` to `dst`: what `buf` already holds first, then reads.
/// Returns what follows the body in `buf` (a pipelined request, or nothing).
async fn pass_body<R: AsyncReadRent, W: AsyncWriteRent>(
    src: &mut R,
    dst: &mut W,
    mut buf: Vec<u8>,
    body: Body,
    limit: u64,
    timeout: Duration,
) -> Result<Vec<u8>, Fail> {
    let mut chunked = Chunked::default();
    let mut left = match body {
        Body::None => return Ok(buf),
        Body::Length(n) => n,
        Body::Chunked | Body::UntilClose => u64::MAX,
    };
    loop {
        let (k, done) = match body {
            Body::Length(_) => {
                let k = (buf.len() as u64).min(left) as usize;
                left -= k as u64;
                (k, left == 0)
            }
            Body::Chunked => {
                let (k, done) = chunked.scan(&buf).map_err(Fail::Framing)?;
                if chunked.data > limit {
                    return Err(Fail::TooLarge);
                }
                (k, done)
            }
            _ => (buf.len(), false),
        };
        buf = write_prefix(dst, buf, k, timeout)
            .await
            .map_err(Fail::Dst)?;
        if done {
            return Ok(buf);
        }
        let (res, b) = read_more(src, buf, timeout).await;
        buf = b;
        match res {
            Ok(0) if body == Body::UntilClose => return Ok(buf),
            Ok(0) => return Err(Fail::Src("closed in the middle of a body".into())),
            Ok(_) => {}
            Err(e) => return Err(Fail::Src(e)),
        }
    }
}

/// Reads a response head into `buf` (which may hold some of it already). Returns it with
/// `buf` holding only what follows the head. `Src` with nothing read: the connection was
/// closed before answering (a reused one the backend had closed).
async fn read_head<R: AsyncReadRent>(
    r: &mut R,
    mut buf: Vec<u8>,
    method: &str,
    timeout: Duration,
) -> Result<(framing::Response, Vec<u8>), (Fail, bool)> {
    let deadline = Instant::now() + timeout;
    loop {
        match framing::parse_response(&buf, method) {
            Ok(Some(r)) => {
                buf.drain(..r.head_len);
                return Ok((r, buf));
            }
            Ok(None) if buf.len() >= 64 << 10 => {
                return Err((Fail::Framing("response head over 64 KiB"), false));
            }
            Ok(None) => {}
            Err(e) => return Err((Fail::Framing(e), false)),
        }
        let nothing = buf.is_empty();
        let (res, b) = read_more(r, buf, deadline.saturating_duration_since(Instant::now())).await;
        buf = b;
        match res {
            Ok(0) => return Err((Fail::Src("closed before answering".into()), nothing)),
            Ok(_) => {}
            Err(e) => return Err((Fail::Src(e), nothing)),
        }
    }
}

/// What one exchange with a backend gave: the response head and what follows it.
type Answer = (framing::Response, Vec<u8>);

/// Serves one plain request, whose head starts `buf`. Returns the bytes that follow the
/// exchange (a pipelined request) when the client connection stays open, `None` when it
/// is to be closed; an error only where a rejection is counted.
pub(crate) async fn proxy<C: ClientStream>(
    client: &mut C,
    buf: Vec<u8>,
    peer: SocketAddr,
    ctx: &WorkerEnv,
) -> Result<Option<Vec<u8>>, HandshakeError> {
    let started = Instant::now();
    let (s, h) = (&ctx.settings, ctx.settings.http);
    let mut headers = [httparse::EMPTY_HEADER; handshake::MAX_HEADERS];
    let req = match framing::parse_request(&buf, &mut headers) {
        Ok(Some(r)) => r,
        Ok(None) => return reject(client, Reject::Malformed("incomplete request head")).await,
        Err(r) => return reject(client, r).await,
    };
    if matches!(req.body, Body::Length(n) if n > h.max_body_bytes) {
        let _ = client.write_all(Reject::BodyTooLarge.response()).await;
        return Err(HandshakeError::ClientRejected(Reject::BodyTooLarge));
    }
    let routes = ctx.routes.current();
    let Some(route) = routes.table.find(req.host, req.target) else {
        let _ = client.write_all(handshake::NOT_FOUND).await;
        return Err(HandshakeError::NoRoute);
    };
    let pool = &routes.pools[route];
    let snap = pool.current();
    let view = handshake::Upgrade::for_selection(req.target, req.host, req.headers);
    let ip = crate::connection::selection_key(peer.ip());
    let cookie = snap.sticky.as_ref().and_then(|st| view.cookie(&st.cookie));
    let sticky = snap.sticky_pick(cookie);
    let first = match sticky {
        Some(n) => crate::balancer::selection::Pick::of(Some(n.backend)),
        None => snap.pick(crate::connection::request_key(
            snap.key_source(),
            &view,
            &ip,
        )),
    };
    let forward = bytes::Bytes::from(req.forward_head(peer.ip(), C::SCHEME));
    let method = if req.method == "HEAD" { "HEAD" } else { "GET" };
    let (body, client_keep, expect) = (req.body, req.keep_alive, req.expect_continue);
    let target: Option<Box<str>> = ctx.access_log.is_some().then(|| req.target.into());
    let head_len = req.head_len;
    let mut buf = buf;
    buf.drain(..head_len);

    // A backend: a pooled connection for a request without a body, else a new one.
    let mut candidates = snap.failover(first);
    let mut tried = 0;
    let (mut backend, lease, mut reused) = loop {
        let Some(b) = candidates.next() else {
            let answer = if tried == 0 {
                handshake::SERVICE_UNAVAILABLE
            } else {
                handshake::BAD_GATEWAY
            };
            let _ = client.write_all(answer).await;
            return Err(if tried == 0 {
                HandshakeError::AllDown
            } else {
                HandshakeError::NoBackend { tried }
            });
        };
        tried += 1;
        pool.selected(b);
        let lease = Lease::new(b.clone());
        if body == Body::None
            && let Some(c) = ctx.http_pool.take(b.id, h.pool_idle)
        {
            ctx.stats.http_reused();
            break (c, lease, true);
        }
        match upstream::open(
            &snap,
            b.addr,
            s.backend_connect_timeout,
            s.backend_handshake_timeout,
        )
        .await
        {
            Ok(c) => break (c, lease, false),
            Err(e) => {
                tracing::warn!(backend = %b.addr, "{e}; trying the next backend");
                pool.failed(b, Failure::Connect);
            }
        }
    };
    let addr = lease.backend().addr;

    // The request, then the response head.
    let mut rbuf = ctx.buffers.take(s.relay_buffer_bytes);
    let mut request_done = body == Body::None;
    let answer: Result<Answer, (Fail, bool)> = loop {
        let written = write_prefix(
            &mut backend,
            forward.to_vec(),
            forward.len(),
            h.body_timeout,
        )
        .await;
        if body == Body::None {
            let answer = match written {
                Ok(_) => {
                    let rb = std::mem::take(&mut rbuf);
                    read_head(&mut backend, rb, method, s.backend_handshake_timeout).await
                }
                Err(e) => Err((Fail::Dst(e), true)),
            };
            match answer {
                // A reused connection the backend had closed (the write or the read finds
                // out): the same request again on a new one (nothing of it was consumed).
                Err((Fail::Src(_) | Fail::Dst(_), true)) if reused => {
                    rbuf = ctx.buffers.take(s.relay_buffer_bytes);
                    match upstream::open(
                        &snap,
                        addr,
                        s.backend_connect_timeout,
                        s.backend_handshake_timeout,
                    )
                    .await
                    {
                        Ok(c) => {
                            backend = c;
                            reused = false;
                            continue;
                        }
                        Err(e) => break Err((Fail::Dst(e), true)),
                    }
                }
                other => break other,
            }
        }
        if let Err(e) = written {
            break Err((Fail::Dst(e), true));
        }
        // With a body: wait a moment for a 100 if the client asked for one; a final answer
        // instead ends the exchange before the body (the client connection is then closed).
        if expect {
            match monoio::time::timeout(
                EXPECT_WAIT,
                read_head(&mut backend, std::mem::take(&mut rbuf), method, EXPECT_WAIT),
            )
            .await
            {
                Ok(Ok((r, b))) if r.status == 100 => {
                    rbuf = b;
                    if client.write_all(r.finish_head("", true)).await.0.is_err() {
                        break Err((Fail::Src("client gone".into()), false));
                    }
                }
                Ok(Ok(answer)) => break Ok(answer),
                Ok(Err(e)) => break Err(e),
                Err(_) => rbuf = ctx.buffers.take(s.relay_buffer_bytes),
            }
        }
        match pass_body(
            client,
            &mut backend,
            std::mem::take(&mut buf),
            body,
            h.max_body_bytes,
            h.body_timeout,
        )
        .await
        {
            Ok(rest) => {
                buf = rest;
                request_done = true;
            }
            Err(e) => break Err((e, false)),
        }
        if rbuf.capacity() == 0 {
            rbuf = ctx.buffers.take(s.relay_buffer_bytes);
        }
        break read_head(&mut backend, rbuf, method, s.backend_handshake_timeout).await;
    };
    // Interim responses (103 ...) go on to the client; the final one follows.
    let mut answer = answer;
    loop {
        let (r, b) = match answer {
            Ok((r, b)) if (100..200).contains(&r.status) && r.status != 101 => (r, b),
            other => {
                answer = other;
                break;
            }
        };
        if client.write_all(r.finish_head("", true)).await.0.is_err() {
            answer = Err((Fail::Dst("client gone".into()), false));
            break;
        }
        answer = read_head(&mut backend, b, method, s.backend_handshake_timeout).await;
    }
    let (resp, rbuf) = match answer {
        Ok((r, _)) if r.status == 101 => {
            pool.failed(lease.backend(), Failure::Handshake);
            let _ = client.write_all(handshake::BAD_GATEWAY).await;
            return Err(HandshakeError::Backend {
                addr,
                reason: "101 to a plain request".into(),
            });
        }
        Ok(a) => a,
        Err((Fail::TooLarge, _)) => {
            let _ = client.write_all(Reject::BodyTooLarge.response()).await;
            return Err(HandshakeError::ClientRejected(Reject::BodyTooLarge));
        }
        Err((Fail::Framing(e), _)) if !request_done => {
            let _ = client.write_all(Reject::Malformed(e).response()).await;
            return Err(HandshakeError::ClientRejected(Reject::Malformed(e)));
        }
        Err((Fail::Src(e), _)) if !request_done => {
            tracing::debug!(%peer, "client stopped in its request body: {e}");
            return Err(HandshakeError::ClientClosed);
        }
        Err((e, _)) => {
            pool.failed(lease.backend(), Failure::Handshake);
            let timed_out = matches!(&e, Fail::Src(m) if m == "timed out");
            let _ = client
                .write_all(if timed_out {
                    GATEWAY_TIMEOUT
                } else {
                    handshake::BAD_GATEWAY
                })
                .await;
            return Err(HandshakeError::Backend {
                addr,
                reason: e.to_string(),
            });
        }
    };
    pool.connected(lease.backend());

    // The response, with the sticky cookie unless the request named this backend with a
    // token of the current key.
    let cookie = match &snap.sticky {
        Some(st) => snap
            .backends
            .iter()
            .position(|b| b.id == lease.backend().id)
            .filter(|&i| !sticky.is_some_and(|n| n.backend == i && !n.stale))
            .map(|i| st.set_cookie(i, matches!(C::SCHEME, crate::stream::Scheme::Https)))
            .unwrap_or_default(),
        None => String::new(),
    };
    let keep = client_keep && request_done && resp.body != Body::UntilClose;
    ctx.stats.http_response(resp.status);
    let sent = async {
        let head = resp.finish_head(&cookie, keep);
        if client.write_all(head).await.0.is_err() {
            return Err(Fail::Dst("client gone".into()));
        }
        pass_body(
            &mut backend,
            client,
            rbuf,
            resp.body,
            u64::MAX,
            h.body_timeout,
        )
        .await
    }
    .await;
    if let Some(log) = &ctx.access_log {
        log.record(&access_log::Entry {
            client: peer,
            backend: Some(addr),
            path: target.as_deref(),
            status: Some(resp.status),
            duration: started.elapsed(),
            outcome: "http",
            traffic: Default::default(),
        });
    }
    match sent {
        Ok(rest) => {
            if resp.keep_alive && request_done && rest.is_empty() {
                ctx.http_pool.put(lease.backend().id, backend, h.pool_size);
            }
            ctx.buffers.give(rest);
            Ok(keep.then_some(buf))
        }
        Err(e) => {
            tracing::debug!(%peer, backend = %addr, "response cut: {e}");
            Ok(None)
        }
    }
}

async fn reject<C: AsyncWriteRent>(
    client: &mut C,
    r: Reject,
) -> Result<Option<Vec<u8>>, HandshakeError> {
    let _ = client.write_all(r.response()).await;
    Err(HandshakeError::ClientRejected(r))
}
