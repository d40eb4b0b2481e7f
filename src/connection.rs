//! One client connection's life, top to bottom: read the upgrade, pick and connect a backend,
//! forward the upgrade, relay the `101`, then hand both streams to the frame relay. Generic
//! over the client's stream (`stream.rs`: plain TCP or TLS).

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::time::Instant;

use crate::access_log;
use crate::balancer::{Failure, HashKey, Lease, Pool, Snapshot};
use crate::handshake::{self, Reject};
use crate::listener::Permit;
use crate::metrics::{OpenGuard, Rejected};
use crate::relay::{self, Traffic};
use crate::stream::ClientStream;
use crate::tls;
use crate::worker::WorkerEnv;

/// Why a connection ended before the relay started. Each variant names the side at fault.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("client sent a bad request ({0}); answered {status}", status = .0.status())]
    ClientRejected(Reject),
    #[error("client did not finish its request in time")]
    ClientTimeout,
    #[error("client closed before finishing its request")]
    ClientClosed,
    #[error("client's TLS handshake failed ({})", .0.label())]
    Tls(tls::Failure),
    #[error("client I/O error: {0}")]
    ClientIo(std::io::Error),
    #[error("no route for this host and path; answered 404")]
    NoRoute,
    #[error("every backend is down (health checks); answered 503")]
    AllDown,
    #[error("no backend reachable (tried {tried}); answered 502")]
    NoBackend { tried: usize },
    #[error("backend {addr} failed the handshake: {reason}; answered 502")]
    Backend { addr: SocketAddr, reason: String },
    #[error("backend {addr} refused the upgrade with status {status}; relayed")]
    BackendRefused { addr: SocketAddr, status: u16 },
    /// Not an error: a connection of plain HTTP requests (`http/`) ended.
    #[error("plain HTTP connection done")]
    Served,
}

/// Serves one accepted client until both sides are closed. Never panics on bad input; a
/// connection that fails before the relay logs why (warn when a backend is at fault, debug
/// otherwise), a relayed one logs when it starts and how it ended, at debug. `open` counts
/// the connection in its worker's stats and under the connection limit until the future
/// ends. With `tls`, the client is served over TLS: the handshake, then the upgrade, both
/// within `timeouts.client_handshake_ms`.
///
/// Not an `async fn`, and the handshake runs boxed: the client socket moves straight into
/// the boxed handshake, so neither it nor the handshake's state takes room in the task an
/// idle connection parks, which is then only as large as the relay's future (about 1 KiB).
pub fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    ctx: Rc<WorkerEnv>,
    open: (OpenGuard, Permit),
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let accepted = Instant::now();
    let deadline = accepted + ctx.settings.client_handshake_timeout;
    match tls {
        None => {
            let handshake = Box::pin(upgrade(tcp, peer, ctx.clone(), deadline));
            monoio::spawn(relay_upgraded(handshake, peer, ctx, open, accepted));
        }
        Some(config) => {
            let env = ctx.clone();
            let handshake = Box::pin(async move {
                let client = tls_accept(tcp, config, &env, deadline).await?;
                upgrade(client, peer, env, deadline).await
            });
            monoio::spawn(relay_upgraded(handshake, peer, ctx, open, accepted));
        }
    }
}

/// The TLS handshake with a client, counted by version or failure reason.
async fn tls_accept(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    ctx: &WorkerEnv,
    deadline: Instant,
) -> Result<tls::ServerStream, HandshakeError> {
    let failure = match monoio::time::timeout_at(deadline, tls::accept(tcp, config)).await {
        Ok(Ok(stream)) => {
            ctx.stats
                .tls_handshake(tls::version_index(stream.protocol_version()));
            return Ok(stream);
        }
        Ok(Err(e)) => {
            let reason = tls::Failure::of(&e);
            ctx.stats.tls_failed(reason);
            tracing::debug!("TLS handshake failed ({}): {e}", reason.label());
            reason
        }
        Err(_) => {
            ctx.stats.tls_failed(tls::Failure::Timeout);
            tls::Failure::Timeout
        }
    };
    Err(HandshakeError::Tls(failure))
}

/// Waits for the upgrade, then relays until both sides are closed.
async fn relay_upgraded<C: ClientStream>(
    handshake: std::pin::Pin<
        Box<impl std::future::Future<Output = Result<Upgraded<C>, HandshakeError>>>,
    >,
    peer: SocketAddr,
    ctx: Rc<WorkerEnv>,
    open: (OpenGuard, Permit),
    accepted: Instant,
) {
    // Held until the connection's future ends, whichever way it ends.
    let _open = open;
    let up = match handshake.await {
        Ok(up) => up,
        Err(HandshakeError::Served) => return,
        Err(e) => {
            ctx.stats.rejected(e.reason());
            if let Some(log) = &ctx.access_log {
                log.record(&access_log::Entry {
                    client: peer,
                    backend: e.backend(),
                    path: None,
                    status: None,
                    duration: accepted.elapsed(),
                    outcome: e.reason().label(),
                    traffic: Traffic::default(),
                });
            }
            return match e {
                HandshakeError::NoBackend { .. }
                | HandshakeError::Backend { .. }
                | HandshakeError::AllDown => tracing::warn!(%peer, "{e}"),
                _ => tracing::debug!(%peer, "{e}"),
            };
        }
    };
    ctx.stats.handshake_done(accepted.elapsed().as_secs_f64());
    // Counted among the backend's open connections while the relay runs.
    let (lease, path) = (up.lease, up.path);
    // Logged now rather than carried to the close line: 32 bytes per parked connection.
    tracing::debug!(%peer, backend = %lease.backend().addr, "relaying");
    // Awaited in place: a future first bound to a local and then awaited takes room
    // twice in the enclosing future (rust-lang/rust#62958).
    let id = lease.backend().id;
    let outcome = match up.backend {
        BackendConn::Plain(backend) => {
            relay::run(
                up.client,
                backend,
                up.client_buf,
                up.backend_buf,
                id,
                up.deflate,
                &ctx,
            )
            .await
        }
        // Boxed: a relay to a TLS backend is a different (larger) future, and held inline
        // it would make every connection's task as large.
        BackendConn::Tls(backend) => {
            Box::pin(relay::run(
                up.client,
                backend,
                up.client_buf,
                up.backend_buf,
                id,
                up.deflate,
                &ctx,
            ))
            .await
        }
    };
    tracing::debug!(%peer, ?outcome, "connection closed");
    if let Some(log) = &ctx.access_log {
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

impl HandshakeError {
    /// The backend at fault, where one is.
    fn backend(&self) -> Option<SocketAddr> {
        match self {
            HandshakeError::Backend { addr, .. } | HandshakeError::BackendRefused { addr, .. } => {
                Some(*addr)
            }
            _ => None,
        }
    }

    /// The `wslb_connections_rejected_total` reason.
    fn reason(&self) -> Rejected {
        match self {
            HandshakeError::ClientRejected(r) => Rejected::bad_request(r.status()),
            HandshakeError::ClientTimeout | HandshakeError::Tls(tls::Failure::Timeout) => {
                Rejected::ClientTimeout
            }
            HandshakeError::Tls(_) => Rejected::TlsHandshake,
            HandshakeError::ClientClosed | HandshakeError::ClientIo(_) | HandshakeError::Served => {
                Rejected::ClientGone
            }
            HandshakeError::AllDown => Rejected::AllBackendsDown,
            HandshakeError::NoBackend { .. } | HandshakeError::Backend { .. } => {
                Rejected::BackendFailed
            }
            HandshakeError::BackendRefused { .. } => Rejected::BackendRefused,
            HandshakeError::NoRoute => Rejected::NoRoute,
        }
    }
}

/// A connection whose upgrade went through: both sockets, and the bytes each side sent
/// right behind its handshake head.
struct Upgraded<C> {
    client: C,
    backend: BackendConn,
    client_buf: Vec<u8>,
    backend_buf: Vec<u8>,
    lease: Lease,
    /// The request target, kept only for the access log.
    path: Option<Box<str>>,
    /// The 101 accepted permessage-deflate.
    deflate: bool,
}

use crate::upstream::BackendConn;

mod backend;
use backend::{connect_and_forward, relay_refusal};

/// Reads the client's upgrade, picks and connects a backend, forwards the upgrade and
/// relays the backend's answer.
async fn upgrade<C: ClientStream>(
    mut client: C,
    peer: SocketAddr,
    ctx: Rc<WorkerEnv>,
    deadline: Instant,
) -> Result<Upgraded<C>, HandshakeError> {
    let ctx = &*ctx;
    let s = &ctx.settings;
    // A client that connects and sends nothing holds no buffer: wait until its request
    // starts to arrive. One pool buffer then serves the request head and, unchanged, the
    // client->backend relay (which gives it back once it stands at a frame boundary).
    match monoio::time::timeout_at(deadline, client.ready()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(HandshakeError::ClientIo(e)),
        Err(_) => return Err(HandshakeError::ClientTimeout),
    }
    let limit = s.max_request_bytes;
    let mut buf = ctx.buffers.take(limit);
    let mut deadline = deadline;
    // Plain HTTP requests (`http/`) are served one after another on a kept-alive
    // connection until one is an upgrade (or the connection ends).
    let (client_buf, picked) = loop {
        // The parsed request reaches the pick here, while its bytes are at hand: the key the
        // selector is asked with is borrowed from it (or is the client's address, on the
        // stack), and nothing of the request is copied for later.
        let upgrade = read_upgrade(&mut client, buf, deadline, limit, s.http.enabled, |u| {
            let routes = ctx.routes.current();
            let route = routes.table.find(u.host, u.path)?;
            let snap = routes.pools[route].current();
            let ip = selection_key(peer.ip());
            // A sticky cookie naming a backend that is up wins over the algorithm.
            let cookie = snap.sticky.as_ref().and_then(|s| u.cookie(&s.cookie));
            let sticky = snap.sticky_pick(cookie);
            let first = match sticky {
                Some(n) => crate::balancer::selection::Pick::of(Some(n.backend)),
                None => snap.pick(request_key(snap.key_source(), u, &ip)),
            };
            let path = ctx.access_log.is_some().then(|| Box::from(u.path));
            let ext = routes.table.routes[route].spec.extensions;
            let pick = Pick {
                routes: routes.clone(),
                route,
                snap,
                first,
                sticky,
                ext,
            };
            Some((u.forward_head(peer.ip(), C::SCHEME, ext), pick, path))
        });
        let (b, picked) = upgrade.await?;
        if let Some(picked) = picked {
            break (b, picked);
        }
        match Box::pin(crate::http::proxy(&mut client, b, peer, ctx)).await? {
            None => return Err(HandshakeError::Served),
            Some(mut rest) => {
                if rest.is_empty() {
                    // Kept alive: wait for the next request holding no buffer.
                    ctx.buffers.give(rest);
                    match monoio::time::timeout(s.http.keepalive, client.ready()).await {
                        Ok(Ok(())) => {}
                        _ => return Err(HandshakeError::Served),
                    }
                    rest = ctx.buffers.take(limit);
                } else if rest.capacity() < limit {
                    rest.reserve(limit - rest.len());
                }
                buf = rest;
                deadline = Instant::now() + s.client_handshake_timeout;
            }
        }
    };
    let Some((forward, pick, path)) = picked else {
        let _ = client.write_all(handshake::NOT_FOUND).await;
        return Err(HandshakeError::NoRoute);
    };
    let pool: &Pool = &pick.routes.pools[pick.route];

    let forward = bytes::Bytes::from(forward);
    let (mut backend, lease, backend_buf, response, deadline) =
        match connect_and_forward(ctx, pool, &pick.snap, pick.first, forward).await {
            Ok(b) => b,
            Err(e) => {
                // Counted with every other rejection, by `serve`.
                let answer = match e {
                    HandshakeError::AllDown => handshake::SERVICE_UNAVAILABLE,
                    _ => handshake::BAD_GATEWAY,
                };
                let _ = client.write_all(answer).await;
                return Err(e);
            }
        };
    if response.deflate && pick.ext == handshake::Extensions::Strip {
        // Accepted what was never offered: the client would fail the connection, and the
        // relay could not tell its frames' RSV bits.
        pool.failed(lease.backend(), Failure::Handshake);
        let _ = client.write_all(handshake::BAD_GATEWAY).await;
        return Err(HandshakeError::Backend {
            addr: lease.backend().addr,
            reason: "its 101 accepted permessage-deflate, which was not offered".into(),
        });
    }
    // The 101 gets the sticky cookie unless the request already named this backend with a
    // token of the current key (one of the previous key is replaced: it stops being
    // honoured at the next change of `sticky_secret`).
    let cookie = match &pick.snap.sticky {
        Some(s) if response.status == 101 => {
            let chosen = pick
                .snap
                .backends
                .iter()
                .position(|b| b.id == lease.backend().id);
            chosen
                .filter(|&i| !pick.sticky.is_some_and(|n| n.backend == i && !n.stale))
                .map(|i| s.set_cookie(i, matches!(C::SCHEME, crate::stream::Scheme::Https)))
        }
        _ => None,
    };
    let (res, mut backend_buf) = match cookie {
        None => client
            .write_all(backend_buf.slice(0..response.head_len))
            .await
            .map_buf(),
        Some(line) => {
            // The head without its final CRLF, the cookie's line, the CRLF.
            let mut head = Vec::with_capacity(response.head_len + line.len());
            head.extend_from_slice(&backend_buf[..response.head_len - 2]);
            head.extend_from_slice(line.as_bytes());
            head.extend_from_slice(b"\r\n");
            (client.write_all(head).await.0, backend_buf)
        }
    };
    res.map_err(HandshakeError::ClientIo)?;
    if response.status != 101 {
        // A 5xx answer to an upgrade is the backend failing, not the application refusing
        // (403, 404 ...): counted like a broken handshake, so that it goes down after
        // `fall` of them instead of drawing connections as the emptiest backend (found in
        // review: least-connections sent 997 of 1,000 connections to a backend answering
        // 503, since a refusal holds no lease).
        if response.status >= 500 {
            pool.failed(lease.backend(), Failure::Handshake);
        }
        relay_refusal(&mut client, &mut backend, backend_buf, response, deadline).await;
        return Err(HandshakeError::BackendRefused {
            addr: lease.backend().addr,
            status: response.status,
        });
    }
    backend_buf.drain(..response.head_len);

    Ok(Upgraded {
        client,
        backend,
        client_buf,
        backend_buf,
        lease,
        path,
        deflate: response.deflate,
    })
}

/// Where a request goes: its route (in the worker's copy of the table, held so the route's
/// pool outlives a reload during the handshake), the pool's snapshot, the selector's pick
/// and the backend its sticky cookie named, if any.
struct Pick {
    routes: Rc<crate::routes::LocalTable>,
    route: usize,
    snap: Rc<Snapshot>,
    first: crate::balancer::selection::Pick,
    sticky: Option<crate::balancer::affinity::Named>,
    ext: handshake::Extensions,
}

/// Reads until a complete, valid upgrade request is in `buf` and applies `respond` to it.
/// Returns the buffer holding only the bytes the client sent after the head (its first
/// frames, kept for the relay), and what `respond` made. A rejected request is answered
/// here with its status.
///
/// With `plain`, a complete request that does not ask for a WebSocket is not refused:
/// `None` comes back with `buf` holding it whole, for the plain HTTP proxy.
pub(crate) async fn read_upgrade<C: AsyncReadRent + AsyncWriteRent, T>(
    client: &mut C,
    buf: Vec<u8>,
    deadline: Instant,
    limit: usize,
    plain: bool,
    respond: impl FnOnce(&handshake::Upgrade) -> T,
) -> Result<(Vec<u8>, Option<T>), HandshakeError> {
    let res = read_upgrade_inner(client, buf, deadline, limit, plain, respond).await;
    if let Err(HandshakeError::ClientRejected(r)) = &res {
        let _ = client.write_all(r.response()).await;
    }
    res
}

async fn read_upgrade_inner<C: AsyncReadRent, T>(
    client: &mut C,
    mut buf: Vec<u8>,
    deadline: Instant,
    limit: usize,
    plain: bool,
    respond: impl FnOnce(&handshake::Upgrade) -> T,
) -> Result<(Vec<u8>, Option<T>), HandshakeError> {
    loop {
        // Bytes already here (a request pipelined behind a plain one) are parsed first.
        if !buf.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; handshake::MAX_HEADERS];
            match handshake::parse_request(&buf, &mut headers) {
                Ok(Some(upgrade)) => {
                    let forward = respond(&upgrade);
                    let head_len = upgrade.head_len;
                    buf.drain(..head_len);
                    return Ok((buf, Some(forward)));
                }
                Ok(None) => {}
                // Too many headers is 431 whatever the request asks for. Handed to the plain
                // HTTP proxy, a head that is also over the size limit was only an incomplete
                // head there, and got 400 (issue 19: 1,000 small headers).
                Err(r @ Reject::TooLarge) => return Err(HandshakeError::ClientRejected(r)),
                Err(_) if plain && !handshake::asks_websocket(&buf) => return Ok((buf, None)),
                Err(r) => return Err(HandshakeError::ClientRejected(r)),
            }
        }
        let len = buf.len();
        if len >= limit {
            return Err(HandshakeError::ClientRejected(handshake::over_limit(&buf)));
        }
        // The kernel owns `buf` (as a slice of its spare capacity up to the limit) until the
        // read completes; on timeout the op is cancelled and the buffer freed by the driver.
        let read = client.read(buf.slice_mut(len..limit));
        let (res, slice) = monoio::time::timeout_at(deadline, read)
            .await
            .map_err(|_| HandshakeError::ClientTimeout)?;
        buf = slice.into_inner();
        match res {
            Ok(0) => return Err(HandshakeError::ClientClosed),
            Ok(_) => {}
            Err(e) => return Err(HandshakeError::ClientIo(e)),
        }
    }
}

/// The bytes the selector is asked with: what `hash_key` names, borrowed from the request
/// (a header's value, a cookie's, a query parameter's, as sent), or the client's address
/// (`ip`, on the caller's stack). Empty when the request lacks it (the selector then falls
/// back to least-connections) or when the selector ignores keys (`source` is `None`).
pub(crate) fn request_key<'a>(
    source: Option<&HashKey>,
    u: &'a handshake::Upgrade,
    ip: &'a [u8; 16],
) -> &'a [u8] {
    match source {
        None => &[],
        Some(HashKey::Ip) => ip,
        Some(HashKey::Header(name)) => u.header(name).map_or(&[], <[u8]>::trim_ascii),
        Some(HashKey::Cookie(name)) => u.cookie(name).unwrap_or_default(),
        Some(HashKey::Query(name)) => u.query_param(name).map_or(&[], str::as_bytes),
    }
}

/// The client's address as a selection key (IPv4 as IPv6-mapped, so every address key is
/// 16 bytes, and the same client hashes the same over either family's socket).
pub(crate) fn selection_key(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// `write_all` on a `Slice` returns the slice; this gives back the whole vector.
pub(crate) trait SliceResult {
    fn map_buf(self) -> (std::io::Result<usize>, Vec<u8>);
}

impl SliceResult for monoio::BufResult<usize, monoio::buf::Slice<Vec<u8>>> {
    fn map_buf(self) -> (std::io::Result<usize>, Vec<u8>) {
        (self.0, self.1.into_inner())
    }
}
