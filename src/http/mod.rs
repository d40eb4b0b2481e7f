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
    let Sent {
        answer,
        buf,
        request_done,
        body,
    } = sent;
    let answer = match answer {
        Ok(a) => pass_interim(client, &mut backend, a, &req, env).await,
        Err(e) => Err(e),
    };
    let (resp, rbuf) = match answer {
        Ok((r, _)) if r.status == 101 => {
            pool.failed(b, Failure::Handshake);
            let error = BackendError::Protocol("101 to a plain request");
            return Err(Ended::failed_by(b.addr, error, Refusal::BadGateway));
        }
        Ok(a) => a,
        Err(Failed::Client(Fail::TooLarge)) => return Err(Reject::BodyTooLarge.into()),
        Err(Failed::Client(Fail::Framing(e))) => return Err(Reject::Malformed(e).into()),
        Err(Failed::Client(_)) => return Err(Ended::ClientClosed),
        Err(Failed::Backend(e)) => {
            pool.failed(b, Failure::Handshake);
            let answer = match e {
                Fail::Src(Io::TimedOut) => Refusal::GatewayTimeout,
                _ => Refusal::BadGateway,
            };
            return Err(Ended::failed_by(b.addr, e.backend_error(), answer));
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
    let mut out = 0;
    let sent = async {
        if client.write_all(head).await.0.is_err() {
            return Err(Fail::Dst(Io::Closed));
        }
        out = head_bytes;
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
    let out = out + sent.as_ref().map_or(0, |(_, body)| *body);
    let bytes_in = req.forward.len() as u64 + body;
    log(env, peer, &req, b, resp.status, [bytes_in, out], started);
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

/// The access-log line of one exchange: `[bytes_in, bytes_out]` are what went to the
/// backend (the forwarded head and the request's body) and to the client (the response's
/// head and body).
fn log(
    env: &WorkerEnv,
    peer: SocketAddr,
    req: &Plain,
    b: &Backend,
    status: u16,
    [bytes_in, bytes_out]: [u64; 2],
    started: Instant,
) {
    let Some(log) = &env.access_log else {
        return;
    };
    let mut traffic = Traffic::default();
    traffic.bytes[Side::Client.index()] = bytes_in;
    traffic.bytes[Side::Backend.index()] = bytes_out;
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

/// Which side an exchange failed on: the answer (a refusal of the client's request, or
/// 502/504 and a mark against the backend) follows from it, not from how far it got.
enum Failed {
    /// The client left or stalled, or sent a body wslb refuses.
    Client(Fail),
    Backend(Fail),
}

/// What sending a request gave: the backend's first response head (or the failure), what
/// follows the request in the client's buffer, whether the whole request went to the
/// backend, and the body's bytes passed on.
struct Sent {
    answer: Result<Answer, Failed>,
    buf: Vec<u8>,
    request_done: bool,
    body: u64,
}

impl Sent {
    fn failed(f: Failed, buf: Vec<u8>, request_done: bool) -> Self {
        Sent {
            answer: Err(f),
            buf,
            request_done,
            body: 0,
        }
    }
}

/// Sends the request (head, then body) and reads the backend's first response head. A
/// reused connection the backend had closed (the write or the read finds out, before any
/// answer) is replaced by a new one to the same backend, and the request sent again:
/// nothing of it was consumed.
async fn send_request<C: AsyncReadRent + AsyncWriteRent>(
    client: &mut C,
    backend: &mut BackendConn,
    mut reused: bool,
    mut buf: Vec<u8>,
    req: &Plain,
    (snap, b): (&Snapshot, &Backend),
    env: &WorkerEnv,
) -> Sent {
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
            if reused && matches!(answer, Err((Fail::Src(_) | Fail::Dst(_), true))) {
                match dial::connect(snap, b, env.dial_timeouts()).await {
                    Ok((c, _)) => (*backend, reused, rbuf) = (c, false, take()),
                    Err(e) => return Sent::failed(Failed::Backend(Fail::Dial(e)), buf, true),
                }
                continue;
            }
            let answer = answer.map_err(|(e, _)| Failed::Backend(e));
            return Sent {
                answer,
                buf,
                request_done: true,
                body: 0,
            };
        }
        if let Err(e) = written {
            return Sent::failed(Failed::Backend(Fail::Dst(e)), buf, false);
        }
        if req.expect_continue {
            match expect_continue(client, backend, &mut rbuf, req, env).await {
                Ok(None) => {}
                // A final answer before the body: the exchange ends there (and the client
                // connection is then closed, its body unread).
                Ok(Some(answer)) => {
                    let answer = Ok(answer);
                    let (request_done, body) = (false, 0);
                    return Sent {
                        answer,
                        buf,
                        request_done,
                        body,
                    };
                }
                Err(e) => return Sent::failed(e, buf, false),
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
        let body = match passed.await {
            Ok((rest, n)) => {
                buf = rest;
                n
            }
            Err(e @ Fail::Dst(_)) => return Sent::failed(Failed::Backend(e), buf, false),
            // The client's side: its body stalled, ended early, was framed badly or is over
            // the limit.
            Err(e) => return Sent::failed(Failed::Client(e), buf, false),
        };
        if rbuf.capacity() == 0 {
            rbuf = take();
        }
        let answer = read_head(backend, rbuf, req.method, f.backend_handshake_timeout).await;
        return Sent {
            answer: answer.map_err(|(e, _)| Failed::Backend(e)),
            buf,
            request_done: true,
            body,
        };
    }
}

/// Waits up to [`EXPECT_WAIT`] for the backend's `100 Continue` to a request that asked
/// for one, passing other interim responses (102, 103) on to the client. `Ok(None)`: send
/// the body now (the 100 went on to the client, or none came in time: curl also sends
/// its body then). `Ok(Some(..))`: the backend's final answer came before the body.
async fn expect_continue<C: AsyncWriteRent>(
    client: &mut C,
    backend: &mut BackendConn,
    rbuf: &mut Vec<u8>,
    req: &Plain,
    env: &WorkerEnv,
) -> Result<Option<Answer>, Failed> {
    let until = Instant::now() + EXPECT_WAIT;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match read_head(backend, std::mem::take(rbuf), req.method, left).await {
            Ok((r, rest)) if r.status == 100 || (102..200).contains(&r.status) => {
                *rbuf = rest;
                if client.write_all(r.finish_head("", true)).await.0.is_err() {
                    return Err(Failed::Client(Fail::Dst(Io::Closed)));
                }
                if r.status == 100 {
                    return Ok(None);
                }
            }
            Ok(answer) => return Ok(Some(answer)),
            // The timed-out read's buffer stays with the driver (see `body::read_more`).
            Err((Fail::Src(Io::TimedOut), _)) => {
                *rbuf = env.buffers().take(env.fixed.relay_buffer_bytes);
                return Ok(None);
            }
            Err((e, _)) => return Err(Failed::Backend(e)),
        }
    }
}

/// Interim responses (103 ...) go on to the client; the final one comes back.
async fn pass_interim<C: AsyncWriteRent>(
    client: &mut C,
    backend: &mut BackendConn,
    mut answer: Answer,
    req: &Plain,
    env: &WorkerEnv,
) -> Result<Answer, Failed> {
    loop {
        let (r, b) = match answer {
            (r, b) if (100..200).contains(&r.status) && r.status != 101 => (r, b),
            other => return Ok(other),
        };
        if client.write_all(r.finish_head("", true)).await.0.is_err() {
            return Err(Failed::Client(Fail::Dst(Io::Closed)));
        }
        let timeout = env.fixed.backend_handshake_timeout;
        answer = read_head(backend, b, req.method, timeout)
            .await
            .map_err(|(e, _)| Failed::Backend(e))?;
    }
}
