//! The backend side of an upgrade: connect to the pick (failing over), forward the
//! rewritten request, read the answer; and pass a refusal's body on to the client.

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::time::Instant;

use super::{HandshakeError, SliceResult};
use crate::balancer::{Failure, Lease, Pool, Snapshot};
use crate::handshake;
use crate::tls;
use crate::upstream::{self, BackendConn};
use crate::worker::WorkerEnv;

/// Connects to the selector's pick (`first`) and forwards the upgrade to it; failing that,
/// to each other healthy backend once. A backend counts as failed (and the next is tried) when the
/// connect is refused or times out, or when the connection breaks before the first byte
/// of a response: the upgrade is a GET the backend has not answered, so sending it
/// elsewhere is safe. (A backend dying during `kill -9` can accept a connect and reset it.)
/// A response that is not HTTP, or none within `backend_handshake_ms`, is not retried, so
/// a client waits at most one handshake timeout.
pub(super) async fn connect_and_forward(
    ctx: &WorkerEnv,
    pool: &Pool,
    snap: &Snapshot,
    first: crate::balancer::selection::Pick,
    forward: bytes::Bytes,
) -> Result<(BackendConn, Lease, Vec<u8>, handshake::Response, Instant), HandshakeError> {
    let s = &ctx.settings;
    let mut tried = 0;
    for b in snap.failover(first) {
        let addr = b.addr;
        tried += 1;
        pool.selected(b);
        // Counted open from now (least-connections sees it at once); dropped, and so no
        // longer counted, if this backend fails.
        let lease = Lease::new(b.clone());
        let tcp = match upstream::connect_tcp(addr, s.backend_connect_timeout).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(backend = %addr, "connect failed: {e}; trying the next backend");
                pool.failed(b, Failure::Connect);
                continue;
            }
        };
        let buf = ctx.buffers.take(s.relay_buffer_bytes);
        // The TLS handshake (for a `wss://` backend) and the upgrade's answer share
        // `backend_handshake_ms`.
        let deadline = Instant::now() + s.backend_handshake_timeout;
        let tls = snap
            .tls
            .as_ref()
            .and_then(|t| Some((t, t.name(addr)?.clone())));
        let exchanged = match tls {
            None => {
                let mut tcp = tcp;
                exchange(&mut tcp, forward.clone(), buf, deadline)
                    .await
                    .map(|(buf, r)| (BackendConn::Plain(tcp), buf, r))
            }
            Some((t, name)) => {
                match monoio::time::timeout_at(deadline, tls::connect(tcp, t, name)).await {
                    Ok(Ok(mut stream)) => exchange(&mut stream, forward.clone(), buf, deadline)
                        .await
                        .map(|(buf, r)| (BackendConn::Tls(stream), buf, r)),
                    // Nothing was forwarded: another backend may be tried.
                    Ok(Err(e)) => Err(Exchange::Broke(e.to_string())),
                    Err(_) => Err(Exchange::Bad("no TLS handshake in time".to_string())),
                }
            }
        };
        match exchanged {
            Ok((backend, buf, response)) => {
                pool.connected(b);
                return Ok((backend, lease, buf, response, deadline));
            }
            Err(Exchange::Broke(reason)) => {
                tracing::warn!(backend = %addr, "{reason} before answering; trying the next backend");
                pool.failed(b, Failure::Handshake);
            }
            Err(Exchange::Bad(reason)) => {
                // Not retried (see above), but counted: a backend answering garbage or
                // nothing goes down like one that refuses connects.
                pool.failed(b, Failure::Handshake);
                return Err(HandshakeError::Backend { addr, reason });
            }
        }
    }
    if tried == 0 {
        return Err(HandshakeError::AllDown);
    }
    Err(HandshakeError::NoBackend { tried })
}

/// How forwarding the upgrade to one backend failed.
enum Exchange {
    /// The connection broke before any response byte: another backend may be tried.
    Broke(String),
    /// A bad or late response: answered 502.
    Bad(String),
}

/// Sends the rewritten upgrade and reads the backend's response head into `buf`.
async fn exchange<B: AsyncReadRent + AsyncWriteRent>(
    backend: &mut B,
    forward: bytes::Bytes,
    mut buf: Vec<u8>,
    deadline: Instant,
) -> Result<(Vec<u8>, handshake::Response), Exchange> {
    let io = async move {
        let broke = |what: String, got: usize| {
            if got == 0 {
                Exchange::Broke(what)
            } else {
                Exchange::Bad(what)
            }
        };
        if let Err(e) = backend.write_all(forward).await.0 {
            return Err(Exchange::Broke(e.to_string()));
        }
        loop {
            let len = buf.len();
            if len == buf.capacity() {
                return Err(Exchange::Bad(
                    "response head larger than the relay buffer".to_string(),
                ));
            }
            let cap = buf.capacity();
            let (res, slice) = backend.read(buf.slice_mut(len..cap)).await;
            buf = slice.into_inner();
            match res {
                Ok(0) => return Err(broke("closed the connection".to_string(), len)),
                Ok(_) => {}
                Err(e) => return Err(broke(e.to_string(), len)),
            }
            match handshake::parse_response(&buf) {
                Ok(Some(r)) => return Ok((buf, r)),
                Ok(None) => {}
                Err(e) => return Err(Exchange::Bad(e.to_string())),
            }
        }
    };
    monoio::time::timeout_at(deadline, io)
        .await
        .map_err(|_| Exchange::Bad("no response in time".to_string()))?
}

/// The backend answered something other than 101 (403, 404, a redirect ...): pass its
/// body on to the client (up to `Content-Length`, at most 64 KiB), then close both.
pub(super) async fn relay_refusal<C: AsyncWriteRent>(
    client: &mut C,
    backend: &mut BackendConn,
    mut buf: Vec<u8>,
    response: handshake::Response,
    deadline: Instant,
) {
    const MAX_BODY: u64 = 64 << 10;
    let mut left = response.content_length.unwrap_or(MAX_BODY).min(MAX_BODY);
    buf.drain(..response.head_len);
    let copy = async {
        loop {
            let n = (buf.len() as u64).min(left) as usize;
            if n > 0 {
                let (res, b) = client.write_all(buf.slice(0..n)).await.map_buf();
                buf = b;
                if res.is_err() {
                    return;
                }
                left -= n as u64;
            }
            if left == 0 {
                return;
            }
            buf.clear();
            let cap = buf.capacity();
            let read = buf.slice_mut(0..cap);
            let (res, slice) = backend.read(read).await;
            buf = slice.into_inner();
            if !matches!(res, Ok(n) if n > 0) {
                return;
            }
        }
    };
    let _ = monoio::time::timeout_at(deadline, copy).await;
}
