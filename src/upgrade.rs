//! The upgrade's exchange with a backend, for a request [`dispatch`](crate::dispatch) has
//! decided: dial (failing over), forward the rewritten upgrade, read the answer, and relay
//! the `101` (with the affinity cookie) or pass the backend's refusal on to the client.
//! The sibling of `http/` (plain requests); `connection.rs` hands the result to the relay.

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::time::Instant;

use crate::balancer::{Failure, Lease};
use crate::dial::{self, BackendConn, BackendError, Dialed};
use crate::dispatch::Decision;
use crate::handshake::{self, Extensions, Scheme};
use crate::outcome::{Ended, Refusal};
use crate::worker::WorkerEnv;

/// The rewritten upgrade for the backend.
#[derive(Debug)]
pub struct Forward {
    pub head: bytes::Bytes,
    /// It carries a permessage-deflate offer: only then may the 101 accept one.
    pub deflate_offered: bool,
}

/// A backend that answered the upgrade with `101`: its connection, counted open while the
/// relay runs, and the bytes it sent right behind its head (its first frames).
pub struct Upgraded {
    pub backend: BackendConn,
    pub backend_buf: Vec<u8>,
    pub lease: Lease,
    /// The 101 accepted permessage-deflate.
    pub deflate: bool,
}

/// Forwards the rewritten upgrade (`forward`) to the decision's backends and relays the
/// answer to `client`. A backend counts as failed (and the next is tried) when the connect
/// is refused or times out, or when the connection breaks before the first byte of a
/// response: the upgrade is a GET the backend has not answered, so sending it elsewhere
/// is safe (a backend dying during `kill -9` can accept a connect and reset it). A
/// response that is not HTTP, or none within `backend_handshake_ms`, is not retried, so a
/// client waits at most one handshake timeout.
pub async fn upgrade<C: AsyncWriteRent>(
    client: &mut C,
    scheme: Scheme,
    forward: Forward,
    decision: &Decision,
    env: &WorkerEnv,
) -> Result<Upgraded, Ended> {
    let Forward {
        head: forward,
        deflate_offered,
    } = forward;
    let (pool, snap) = (decision.pool(), decision.snapshot());
    let mut candidates = decision.candidates();
    let mut tried = 0;
    let (mut backend, lease, buf, response, deadline) = loop {
        let timeouts = env.dial_timeouts();
        let Dialed {
            mut conn,
            lease,
            deadline,
            ..
        } = dial::dial(pool, snap, &mut candidates, &mut tried, timeouts, None).await?;
        let buf = env.buffers().take(env.fixed.relay_buffer_bytes);
        let addr = lease.backend().addr;
        match exchange(&mut conn, forward.clone(), buf, deadline).await {
            Ok((buf, response)) => break (conn, lease, buf, response, deadline),
            Err((error, 0)) => {
                tracing::warn!(backend = %addr, "{error} before answering; trying the next backend");
                pool.failed(lease.backend(), Failure::Handshake);
            }
            // Not retried (see above), but counted: a backend answering garbage or nothing
            // goes down like one that refuses connects.
            Err((error, _)) => {
                pool.failed(lease.backend(), Failure::Handshake);
                return Err(Ended::failed_by(addr, error, Refusal::BadGateway));
            }
        }
    };
    pool.connected(lease.backend());
    let addr = lease.backend().addr;
    if response.deflate && (!deflate_offered || decision.extensions == Extensions::Strip) {
        // Accepted what was never offered (the client offered none, or the route strips
        // offers): the client would fail the connection, and the relay could not tell its
        // frames' RSV bits.
        pool.failed(lease.backend(), Failure::Handshake);
        let what = "its 101 accepted permessage-deflate, which was not offered";
        let error = BackendError::Protocol(what);
        return Err(Ended::failed_by(addr, error, Refusal::BadGateway));
    }
    let cookie = match response.status {
        101 => decision.set_cookie(lease.backend(), scheme),
        _ => None,
    };
    let mut backend_buf = send_head(client, buf, response.head_len, cookie).await?;
    if response.status != 101 {
        // A 5xx answer to an upgrade is the backend failing, not the application refusing
        // (403, 404 ...): counted like a broken handshake, so that it goes down after
        // `fall` of them instead of drawing connections as the emptiest backend (found in
        // review: least-connections sent 997 of 1,000 connections to a backend answering
        // 503, since a refusal holds no lease).
        if response.status >= 500 {
            pool.failed(lease.backend(), Failure::Handshake);
        }
        relay_refusal(client, &mut backend, backend_buf, response, deadline).await;
        let status = response.status;
        return Err(Ended::BackendRefused { addr, status });
    }
    backend_buf.drain(..response.head_len);
    Ok(Upgraded {
        backend,
        backend_buf,
        lease,
        deflate: response.deflate,
    })
}

/// Writes the backend's response head (`buf[..head_len]`) to the client, with `cookie`'s
/// `Set-Cookie` line added. Returns `buf`, which still holds the head.
async fn send_head<C: AsyncWriteRent>(
    client: &mut C,
    buf: Vec<u8>,
    head_len: usize,
    cookie: Option<String>,
) -> Result<Vec<u8>, Ended> {
    let (res, buf) = match cookie {
        None => {
            let (res, slice) = client.write_all(buf.slice(0..head_len)).await;
            (res, slice.into_inner())
        }
        Some(line) => {
            // The head without the empty line that ends it (CRLF, or a bare LF, which
            // httparse accepts too), the cookie's line, the same empty line.
            let end = if buf[..head_len].ends_with(b"\r\n\r\n") {
                2
            } else {
                1
            };
            let mut head = Vec::with_capacity(head_len + line.len());
            head.extend_from_slice(&buf[..head_len - end]);
            head.extend_from_slice(line.as_bytes());
            head.extend_from_slice(&buf[head_len - end..head_len]);
            (client.write_all(head).await.0, buf)
        }
    };
    res.map_err(Ended::ClientIo)?;
    Ok(buf)
}

/// Sends the rewritten upgrade and reads the backend's response head into `buf`. On
/// failure, how many response bytes had arrived (0: the backend may be skipped for the
/// next one).
async fn exchange<B: AsyncReadRent + AsyncWriteRent>(
    backend: &mut B,
    forward: bytes::Bytes,
    mut buf: Vec<u8>,
    deadline: Instant,
) -> Result<(Vec<u8>, handshake::Response), (BackendError, usize)> {
    let io = async move {
        if let Err(e) = backend.write_all(forward).await.0 {
            return Err((BackendError::Io(e), 0));
        }
        loop {
            let len = buf.len();
            if len == buf.capacity() {
                let what = "response head larger than the relay buffer";
                return Err((BackendError::Protocol(what), len));
            }
            let cap = buf.capacity();
            // The kernel owns the spare capacity until the read completes (a TLS stream
            // reads into its own buffer and copies plaintext here). On timeout the read is
            // cancelled; monoio's driver keeps the buffer until the kernel's completion
            // arrives, then frees it: the exchange has failed, nothing wants it back.
            let (res, slice) = backend.read(buf.slice_mut(len..cap)).await;
            buf = slice.into_inner();
            match res {
                Ok(0) => return Err((BackendError::Closed, len)),
                Ok(_) => {}
                Err(e) => return Err((BackendError::Io(e), len)),
            }
            match handshake::parse_response(&buf) {
                Ok(Some(r)) => return Ok((buf, r)),
                Ok(None) => {}
                Err(e) => return Err((BackendError::Protocol(e), buf.len())),
            }
        }
    };
    monoio::time::timeout_at(deadline, io)
        .await
        .map_err(|_| (BackendError::Timeout, usize::MAX))?
}

/// The backend answered something other than 101 (403, 404, a redirect ...): pass its
/// body on to the client (up to `Content-Length`, at most 64 KiB), then close both.
async fn relay_refusal<C: AsyncWriteRent>(
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
                let (res, slice) = client.write_all(buf.slice(0..n)).await;
                buf = slice.into_inner();
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
            let (res, slice) = backend.read(buf.slice_mut(0..cap)).await;
            buf = slice.into_inner();
            if !matches!(res, Ok(n) if n > 0) {
                return;
            }
        }
    };
    let _ = monoio::time::timeout_at(deadline, copy).await;
}
