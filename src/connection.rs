//! One client connection's life, top to bottom: (TLS,) read a request head and parse it
//! once, classify it (an upgrade or a plain request), run [`dispatch`] on it, hand it to
//! [`upgrade`] or to the plain HTTP proxy (`http/`), and, once upgraded, to the relay.
//! Every way it ends is recorded here, once: counters, the access log, a log line. Generic
//! over the client's stream (`stream.rs`: plain TCP or TLS).

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::time::Instant;

use crate::access_log::{self, Traffic};
use crate::dial::BackendConn;
use crate::dispatch::{Decision, dispatch};
use crate::handshake::{self, Extensions, Reject, Scheme};
use crate::http::{self, Plain};
use crate::listener::Permit;
use crate::metrics::OpenGuard;
use crate::outcome::Ended;
use crate::relay;
use crate::stream::ClientStream;
use crate::tls;
use crate::upgrade::{Forward, Upgraded, upgrade};
use crate::worker::WorkerEnv;

/// Serves one accepted client until both sides are closed. Never panics on bad input; a
/// connection that fails before the relay logs why (warn when a backend is at fault, debug
/// otherwise), a relayed one logs when it starts and how it ended, at debug. `open` counts
/// the connection in its worker's stats and under the connection limit until the future
/// ends. With `tls`, the client is served over TLS: the handshake, then the request, both
/// within `timeouts.client_handshake_ms`.
///
/// Not an `async fn`, and the handshake runs boxed: the client socket moves straight into
/// the boxed handshake, so neither it nor the handshake's state takes room in the task an
/// idle connection parks, which is then only as large as the relay's future (about 1 KiB).
pub fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    env: Rc<WorkerEnv>,
    open: (OpenGuard, Permit),
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let accepted = Instant::now();
    let deadline = accepted + env.fixed.client_handshake_timeout;
    match tls {
        None => {
            let requests = Box::pin(requests(tcp, peer, env.clone(), deadline));
            monoio::spawn(relay_upgraded(requests, peer, env, open, accepted));
        }
        Some(config) => {
            let e = env.clone();
            let requests = Box::pin(async move {
                let client = tls_accept(tcp, config, &e, deadline).await?;
                requests(client, peer, e, deadline).await
            });
            monoio::spawn(relay_upgraded(requests, peer, env, open, accepted));
        }
    }
}

/// The TLS handshake with a client, counted by version or failure reason.
async fn tls_accept(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    env: &WorkerEnv,
    deadline: Instant,
) -> Result<tls::ServerStream, Ended> {
    let failure = match monoio::time::timeout_at(deadline, tls::accept(tcp, config)).await {
        Ok(Ok(stream)) => {
            let version = tls::version_index(stream.protocol_version());
            env.stats().tls_handshake(version);
            return Ok(stream);
        }
        Ok(Err(e)) => {
            let reason = tls::Failure::of(&e);
            tracing::debug!("TLS handshake failed ({}): {e}", reason.label());
            reason
        }
        Err(_) => tls::Failure::Timeout,
    };
    env.stats().tls_failed(failure);
    Err(Ended::Tls(failure))
}

/// A connection whose upgrade went through: the client, the backend, and the bytes each
/// sent right behind its handshake head.
struct ToRelay<C> {
    client: C,
    client_buf: Vec<u8>,
    up: Upgraded,
    /// The request target, kept only for the access log.
    path: Option<Box<str>>,
}

/// Waits for the requests to end in an upgrade, then relays until both sides are closed.
/// `None` from `requests`: a connection of plain requests ended (each was recorded).
async fn relay_upgraded<C: ClientStream>(
    requests: std::pin::Pin<
        Box<impl std::future::Future<Output = Result<Option<ToRelay<C>>, Ended>>>,
    >,
    peer: SocketAddr,
    env: Rc<WorkerEnv>,
    open: (OpenGuard, Permit),
    accepted: Instant,
) {
    // Held until the connection's future ends, whichever way it ends.
    let _open = open;
    let conn = match requests.await {
        Ok(Some(conn)) => conn,
        Ok(None) => return,
        Err(e) => return ended(&env, peer, accepted, &e),
    };
    env.stats().handshake_done(accepted.elapsed().as_secs_f64());
    // Counted among the backend's open connections while the relay runs. Only `lease` and
    // `path` (and the arguments) live across the relay's await: each such local takes room
    // in every parked connection's task, so `conn` is taken apart, not kept.
    let (lease, path) = (conn.up.lease, conn.path);
    // Logged now rather than carried to the close line: 32 bytes per parked connection.
    tracing::debug!(%peer, backend = %lease.backend().addr, "relaying");
    // Awaited in place: a future first bound to a local and then awaited takes room
    // twice in the enclosing future (rust-lang/rust#62958).
    let (id, relay) = (lease.backend().id, &env.relay);
    let (client, client_buf) = (conn.client, conn.client_buf);
    let (backend_buf, deflate) = (conn.up.backend_buf, conn.up.deflate);
    let outcome = match conn.up.backend {
        BackendConn::Plain(b) => {
            relay::run(client, b, client_buf, backend_buf, id, deflate, relay).await
        }
        // Boxed: a relay to a TLS backend is a different (larger) future, and held inline
        // it would make every connection's task as large.
        BackendConn::Tls(b) => {
            Box::pin(relay::run(
                client,
                b,
                client_buf,
                backend_buf,
                id,
                deflate,
                relay,
            ))
            .await
        }
    };
    tracing::debug!(%peer, ?outcome, "connection closed");
    if let Some(log) = &env.access_log {
        log.record(&access_log::Entry {
            client: peer,
            backend: Some(lease.backend().addr),
            path: path.as_deref(),
            status: Some(101),
            duration: accepted.elapsed(),
            outcome: "relayed",
            traffic: outcome.traffic,
        });
    }
    drop(lease);
}

/// Records a connection that ended before its relay: counted by reason, logged (at warn
/// when the backends failed), and written to the access log.
fn ended(env: &WorkerEnv, peer: SocketAddr, accepted: Instant, e: &Ended) {
    env.stats().rejected(e.reason());
    if let Some(log) = &env.access_log {
        log.record(&access_log::Entry {
            client: peer,
            backend: e.backend(),
            path: None,
            duration: accepted.elapsed(),
            outcome: e.reason().label(),
            status: e.status(),
            traffic: Traffic::default(),
        });
    }
    if e.backend_failed() {
        tracing::warn!(%peer, "{e}");
    } else {
        tracing::debug!(%peer, "{e}");
    }
}

/// A request, parsed once and decided: what the rest of its path needs, owned (the
/// request's bytes are gone from the buffer by then).
enum Request {
    Upgrade {
        forward: Forward,
        path: Option<Box<str>>,
        decision: Decision,
    },
    Plain(Plain, Decision),
}

/// Serves the client's requests: plain ones one after another on a kept-alive connection
/// until one is an upgrade (`Some`, for the relay) or the connection ends (`None`). A
/// refusal is answered here, and ends the connection.
async fn requests<C: ClientStream>(
    mut client: C,
    peer: SocketAddr,
    env: Rc<WorkerEnv>,
    deadline: Instant,
) -> Result<Option<ToRelay<C>>, Ended> {
    let res = serve_requests(&mut client, peer, &env, deadline).await;
    match res {
        Ok(Some((client_buf, up, path))) => Ok(Some(ToRelay {
            client,
            client_buf,
            up,
            path,
        })),
        Ok(None) => Ok(None),
        Err(e) => {
            if let Some(answer) = e.answer() {
                let _ = client.write_all(answer.response().into_owned()).await;
            }
            Err(e)
        }
    }
}

/// The request loop of [`requests`], the client borrowed.
async fn serve_requests<C: ClientStream>(
    client: &mut C,
    peer: SocketAddr,
    env: &WorkerEnv,
    mut deadline: Instant,
) -> Result<Option<(Vec<u8>, Upgraded, Option<Box<str>>)>, Ended> {
    let fixed = &env.fixed;
    // A client that connects and sends nothing holds no buffer: wait until its request
    // starts to arrive. One pool buffer then serves the request head and, unchanged, the
    // client->backend relay (which gives it back once it stands at a frame boundary).
    match monoio::time::timeout_at(deadline, client.ready()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(Ended::ClientIo(e)),
        Err(_) => return Err(Ended::ClientTimeout),
    }
    let limit = fixed.max_request_bytes;
    let mut buf = env.buffers().take(limit);
    let mut kept_alive = false;
    loop {
        let read = read_request(client, buf, deadline, limit, peer, C::SCHEME, env).await?;
        let (rest, request) = match read {
            Some(r) => r,
            // A kept-alive connection's client closed between requests: a normal end.
            None if kept_alive => return Ok(None),
            None => return Err(Ended::ClientClosed),
        };
        let (plain, decision) = match request {
            Request::Upgrade {
                forward,
                path,
                decision,
            } => {
                let up = upgrade(client, C::SCHEME, forward, &decision, env).await?;
                return Ok(Some((rest, up, path)));
            }
            Request::Plain(plain, decision) => (plain, decision),
        };
        let served = Box::pin(http::proxy(
            client,
            rest,
            plain,
            &decision,
            peer,
            C::SCHEME,
            env,
        ));
        let Some(mut rest) = served.await? else {
            return Ok(None);
        };
        // Not held while the connection idles: a kept-alive client would pin the route
        // table and pool snapshot it last used across reloads.
        drop(decision);
        if rest.is_empty() {
            // Kept alive: wait for the next request holding no buffer.
            env.buffers().give(rest);
            match monoio::time::timeout(fixed.http.keepalive, client.ready()).await {
                Ok(Ok(())) => {}
                _ => return Ok(None),
            }
            rest = env.buffers().take(limit);
        } else if rest.capacity() < limit {
            rest.reserve(limit - rest.len());
        }
        buf = rest;
        kept_alive = true;
        deadline = Instant::now() + fixed.client_handshake_timeout;
    }
}

/// Reads until `buf` holds a complete request head, parses it once, classifies it and
/// runs [`dispatch`]. Returns the buffer with the head removed (an upgrade's first frames,
/// or a plain request's body and what is pipelined behind it) and the decided request;
/// `None` when the client closed before sending a byte of it.
///
/// With plain HTTP off, every request must be a valid upgrade; with it on, one that does
/// not ask for a WebSocket is a plain request, and one that asks but is invalid is refused
/// as a bad upgrade.
async fn read_request<C: AsyncReadRent>(
    client: &mut C,
    mut buf: Vec<u8>,
    deadline: Instant,
    limit: usize,
    peer: SocketAddr,
    scheme: Scheme,
    env: &WorkerEnv,
) -> Result<Option<(Vec<u8>, Request)>, Ended> {
    loop {
        // Bytes already here (a request pipelined behind a plain one) are parsed first.
        if !buf.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; handshake::MAX_HEADERS];
            if let Some(head) = handshake::parse_head(&buf, &mut headers)? {
                let head_len = head.head_len;
                let request = classify(head, &buf, peer, scheme, env)?;
                buf.drain(..head_len);
                return Ok(Some((buf, request)));
            }
        }
        let len = buf.len();
        if len >= limit {
            return Err(handshake::over_limit(&buf).into());
        }
        // The kernel owns `buf` (as a slice of its spare capacity up to the limit) until the
        // read completes; on timeout the op is cancelled and the buffer freed by the driver.
        let read = client.read(buf.slice_mut(len..limit));
        let (res, slice) = monoio::time::timeout_at(deadline, read)
            .await
            .map_err(|_| Ended::ClientTimeout)?;
        buf = slice.into_inner();
        match res {
            Ok(0) if len == 0 => return Ok(None),
            Ok(0) => return Err(Ended::ClientClosed),
            // Reset before a byte of the request: as much an end as a FIN, for a kept-alive
            // client (the caller decides).
            Err(e) if len == 0 && is_reset(&e) => return Ok(None),
            Ok(_) => {}
            Err(e) => return Err(Ended::ClientIo(e)),
        }
    }
}

/// Classifies a parsed head and decides it, while its bytes are at hand.
fn classify(
    head: handshake::RequestHead<'_, '_>,
    buf: &[u8],
    peer: SocketAddr,
    scheme: Scheme,
    env: &WorkerEnv,
) -> Result<Request, Ended> {
    let http = env.fixed.http;
    if http.enabled && !head.asks_websocket() {
        let req = http::framing::from_head(head, buf)?;
        if matches!(req.body, http::framing::Body::Length(n) if n > http.max_body_bytes) {
            return Err(Reject::BodyTooLarge.into());
        }
        let decision = dispatch(&env.routes, peer.ip(), &req.view())?;
        let plain = Plain::new(&req, peer.ip(), scheme, env.access_log.is_some());
        return Ok(Request::Plain(plain, decision));
    }
    let u = handshake::upgrade(head)?;
    let decision = dispatch(&env.routes, peer.ip(), &u)?;
    let ext = decision.extensions;
    let forward = Forward {
        head: bytes::Bytes::from(u.forward_head(peer.ip(), scheme, ext)),
        deflate_offered: ext == Extensions::Pass && u.offers_deflate(),
    };
    Ok(Request::Upgrade {
        forward,
        path: env.access_log.is_some().then(|| Box::from(u.path)),
        decision,
    })
}

fn is_reset(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
    matches!(e.kind(), ConnectionReset | ConnectionAborted | BrokenPipe)
}
