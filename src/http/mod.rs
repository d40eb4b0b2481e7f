//! Plain HTTP/1.1 beside WebSocket upgrades: a request that is not an upgrade (Socket.IO's
//! and SignalR's polling, a health page, API calls) is proxied to the backend its route
//! and affinity choose, the same sticky cookie or hash key as an upgrade, so one
//! session's polls and its later upgrade reach the same backend.
//!
//! One exchange at a time per client connection, kept alive between them
//! (`connection.rs` loops: the next request may be plain or an upgrade; it has parsed the
//! head and run `dispatch` on it, so this is the sibling of `upgrade.rs` for plain requests). Bodies stream
//! both ways through one pool buffer, never whole (Content-Length, chunked, or until the
//! backend closes), with `http.body_timeout_ms` between reads either way and
//! `http.max_body_bytes` on requests. Framing and hop-by-hop headers: `framing.rs`.
//! Backend connections are reused from the worker's idle ones (`dial::IdleConns`) for requests without
//! a body (one that turns out closed is retried once on a new connection: nothing of the
//! request was consumed); a request with a body always gets a new connection, so it is
//! never sent twice. Not a web server: no caching, no rewriting, no HTTP/2.
//!
//! Why not monoio-http's codec: it decodes bodies into its own chunks and owns the
//! connection, while a proxy here must pass chunked bodies on as they are (trailers and
//! extensions included), keep the bytes pipelined behind a request, and share one buffer
//! pool with the relay. httparse plus `framing.rs` is what that needs.

mod body;
pub mod framing;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::time::Instant;

use crate::access_log::{self, Traffic};
use crate::balancer::{Backend, Failure, Snapshot};
use crate::dial::{self, BackendConn, BackendError, Dialed};
use crate::dispatch::Decision;
use crate::frame::Side;
use crate::handshake::{Reject, Scheme};
use crate::outcome::{Ended, Refusal};
use crate::worker::WorkerEnv;
use body::{Fail, Io, pass_body, read_head, write_prefix};
use framing::Body;

/// How long a client that sent `Expect: 100-continue` waits for the backend's 100 before
/// its body is sent anyway (curl waits 1 s too).
const EXPECT_WAIT: Duration = Duration::from_secs(1);

/// A plain request, parsed and decided: what its exchange needs of it, owned (its head's
/// bytes are gone from the client's buffer by then).
#[derive(Debug)]
pub struct Plain {
    /// The head for the backend ([`framing::Request::forward_head`]).
    forward: Vec<u8>,
    /// The method the response is read for: only `HEAD` changes its framing.
    method: &'static str,
    body: Body,
    keep_alive: bool,
    expect_continue: bool,
    /// The request target, kept only for the access log.
    target: Option<Box<str>>,
}

impl Plain {
    /// `log`: keep the target for the access log.
    pub fn new(req: &framing::Request<'_, '_>, client: IpAddr, scheme: Scheme, log: bool) -> Self {
        Plain {
            forward: req.forward_head(client, scheme),
            method: if req.method == "HEAD" { "HEAD" } else { "GET" },
            body: req.body,
            keep_alive: req.keep_alive,
            expect_continue: req.expect_continue,
            target: log.then(|| req.target.into()),
        }
    }
}

/// What one exchange with a backend gave: the response head and what follows it.
type Answer = (framing::Response, Vec<u8>);

/// Serves one plain request; `buf` holds what followed its head. Returns the bytes that
/// follow the exchange (a pipelined request) when the client connection stays open,
/// `None` when it is to be closed. An error is a refusal or failure the caller answers
/// and records; one after the response head went out is only logged (`None`).
pub async fn proxy<C: AsyncReadRent + AsyncWriteRent>(
    client: &mut C,
    buf: Vec<u8>,
    req: Plain,
    decision: &Decision,
    peer: SocketAddr,
    scheme: Scheme,
    env: &WorkerEnv,
) -> Result<Option<Vec<u8>>, Ended> {
    let started = Instant::now();
    let (pool, snap, h) = (decision.pool(), decision.snapshot(), env.fixed.http);
    // A kept connection for a request without a body, else a new one: a body is never
    // sent twice.
    let idle = (req.body == Body::None).then_some((&env.idle, h.pool_idle));
    let (mut candidates, mut tried) = (decision.candidates(), 0);
    let timeouts = env.dial_timeouts();
    let Dialed {
        conn: mut backend,
        lease,
        reused,
        ..
    } = dial::dial(pool, snap, &mut candidates, &mut tried, timeouts, idle).await?;
    if reused {
        env.stats().http_reused();
    }
    let b = lease.backend();
    let sent = send_request(client, &mut backend, reused, buf, &req, (snap, b), env).await;
    let (answer, buf, request_done) = sent;
    let answer = pass_interim(client, &mut backend, answer, &req, env).await;
    let (resp, rbuf) = match answer {
        Ok((r, _)) if r.status == 101 => {
            pool.failed(b, Failure::Handshake);
            let error = BackendError::Protocol("101 to a plain request");
            return Err(backend_failed(b, error, Refusal::BadGateway));
        }
        Ok(a) => a,
        Err((Fail::TooLarge, _)) => return Err(Reject::BodyTooLarge.into()),
        Err((Fail::Framing(e), _)) if !request_done => return Err(Reject::Malformed(e).into()),
        Err((Fail::Src(_), _)) if !request_done => return Err(Ended::ClientClosed),
        Err((e, _)) => {
            pool.failed(b, Failure::Handshake);
            let timed_out = matches!(e, Fail::Src(Io::TimedOut));
            let answer = match timed_out {
                true => Refusal::GatewayTimeout,
                false => Refusal::BadGateway,
            };
            return Err(backend_failed(b, e.backend_error(), answer));
        }
    };
    pool.connected(b);

    // The response, with the sticky cookie unless the request named this backend with a
    // token of the current key.
    let cookie = decision.set_cookie(b, scheme).unwrap_or_default();
    let keep = req.keep_alive && request_done && resp.body != Body::UntilClose;
    env.stats().http_response(resp.status);
    let head = resp.finish_head(&cookie, keep);
    let head_bytes = head.len() as u64;
    let sent = async {
        if client.write_all(head).await.0.is_err() {
            return Err(Fail::Dst(Io::Closed));
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
    let body_bytes = sent.as_ref().map_or(0, |(_, body)| *body);
    log(
        env,
        peer,
        &req,
        b,
        resp.status,
        head_bytes + body_bytes,
        started,
    );
    match sent {
        Ok((rest, _)) => {
            if resp.keep_alive && request_done && rest.is_empty() {
                env.idle.put(b.id, backend, h.pool_size);
            }
            env.buffers().give(rest);
            Ok(keep.then_some(buf))
        }
        Err(e) => {
            tracing::debug!(%peer, backend = %b.addr, "response cut: {e:?}");
            Ok(None)
        }
    }
}

/// The access-log line of one exchange: `sent` is the response's bytes (head and body).
fn log(
    env: &WorkerEnv,
    peer: SocketAddr,
    req: &Plain,
    b: &Backend,
    status: u16,
    sent: u64,
    started: Instant,
) {
    let Some(log) = &env.access_log else {
        return;
    };
    let mut traffic = Traffic::default();
    traffic.bytes[Side::Client.index()] = req.forward.len() as u64;
    traffic.bytes[Side::Backend.index()] = sent;
    log.record(&access_log::Entry {
        client: peer,
        backend: Some(b.addr),
        path: req.target.as_deref(),
        status: Some(status),
        duration: started.elapsed(),
        outcome: "http",
        traffic,
    });
}

fn backend_failed(b: &Backend, error: BackendError, answer: Refusal) -> Ended {
    Ended::Backend {
        addr: b.addr,
        error,
        answer,
    }
}

/// Sends the request (head, then body) and reads the backend's first response head.
/// Returns it, what follows the request in `buf`, and whether the whole request was
/// sent. A reused connection the backend had closed (the write or the read finds out,
/// before any answer) is replaced by a new one to the same backend, and the request sent
/// again: nothing of it was consumed.
async fn send_request<C: AsyncReadRent + AsyncWriteRent>(
    client: &mut C,
    backend: &mut BackendConn,
    mut reused: bool,
    mut buf: Vec<u8>,
    req: &Plain,
    (snap, b): (&Snapshot, &Backend),
    env: &WorkerEnv,
) -> (Result<Answer, (Fail, bool)>, Vec<u8>, bool) {
    let (f, h) = (&env.fixed, env.fixed.http);
    let take = || env.buffers().take(f.relay_buffer_bytes);
    let mut rbuf = take();
    loop {
        let head = req.forward.clone();
        let written = write_prefix(backend, head, req.forward.len(), h.body_timeout).await;
        if req.body == Body::None {
            let answer = match written {
                Ok(_) => read_head(backend, rbuf, req.method, f.backend_handshake_timeout).await,
                Err(e) => Err((Fail::Dst(e), true)),
            };
            // A reused connection the backend had closed: the same request again on a new one.
            if !(reused && matches!(answer, Err((Fail::Src(_) | Fail::Dst(_), true)))) {
                return (answer, buf, true);
            }
            let deadline = Instant::now() + f.backend_handshake_timeout;
            match dial::connect(snap, b, f.backend_connect_timeout, deadline).await {
                Ok(c) => (*backend, reused, rbuf) = (c, false, take()),
                Err(e) => return (Err((Fail::Dial(e), true)), buf, true),
            }
            continue;
        }
        if let Err(e) = written {
            return (Err((Fail::Dst(e), true)), buf, false);
        }
        // With a body: wait a moment for a 100 if the client asked for one; a final answer
        // instead ends the exchange before the body (the client connection is then closed).
        if req.expect_continue {
            let wait = read_head(backend, std::mem::take(&mut rbuf), req.method, EXPECT_WAIT);
            match monoio::time::timeout(EXPECT_WAIT, wait).await {
                Ok(Ok((r, b))) if r.status == 100 => {
                    rbuf = b;
                    if client.write_all(r.finish_head("", true)).await.0.is_err() {
                        return (Err((Fail::Src(Io::Closed), false)), buf, false);
                    }
                }
                Ok(answer) => return (answer, buf, false),
                Err(_) => rbuf = take(),
            }
        }
        let body = std::mem::take(&mut buf);
        let passed = pass_body(
            client,
            backend,
            body,
            req.body,
            h.max_body_bytes,
            h.body_timeout,
        );
        match passed.await {
            Ok((rest, _)) => buf = rest,
            Err(e) => return (Err((e, false)), buf, false),
        }
        if rbuf.capacity() == 0 {
            rbuf = take();
        }
        let answer = read_head(backend, rbuf, req.method, f.backend_handshake_timeout).await;
        return (answer, buf, true);
    }
}

/// Interim responses (103 ...) go on to the client; the final one comes back.
async fn pass_interim<C: AsyncWriteRent>(
    client: &mut C,
    backend: &mut BackendConn,
    mut answer: Result<Answer, (Fail, bool)>,
    req: &Plain,
    env: &WorkerEnv,
) -> Result<Answer, (Fail, bool)> {
    loop {
        let (r, b) = match answer {
            Ok((r, b)) if (100..200).contains(&r.status) && r.status != 101 => (r, b),
            other => return other,
        };
        if client.write_all(r.finish_head("", true)).await.0.is_err() {
            return Err((Fail::Dst(Io::Closed), false));
        }
        let timeout = env.fixed.backend_handshake_timeout;
        answer = read_head(backend, b, req.method, timeout).await;
    }
}
