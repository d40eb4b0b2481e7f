//! Moving one message's parts between two streams for the plain HTTP proxy: reading a
//! response head, passing a body on as it is framed (Content-Length, chunked, or until the
//! source closes) through one buffer, with typed failures that say which side failed and
//! how.

use std::time::Duration;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::time::Instant;

use super::framing::{self, Body, Chunked};
use crate::dial::{BackendError, DialError};

/// How a stream failed.
#[derive(Debug)]
pub(super) enum Io {
    /// It ended (EOF) where more was expected.
    Closed,
    /// Nothing came (or went) within the timeout.
    TimedOut,
    Err(std::io::Error),
}

/// How passing on a head or a body failed.
#[derive(Debug)]
pub(super) enum Fail {
    /// Reading the source failed.
    Src(Io),
    /// Writing to the destination failed.
    Dst(Io),
    /// A request body over `http.max_body_bytes`.
    TooLarge,
    Framing(&'static str),
    /// A new connection to replace a reused one the backend had closed failed.
    Dial(DialError),
}

impl Fail {
    /// As the backend's failure, when the backend was the side that failed.
    pub(super) fn backend_error(self) -> BackendError {
        match self {
            Fail::Src(Io::TimedOut) | Fail::Dst(Io::TimedOut) => BackendError::Timeout,
            Fail::Src(Io::Closed) | Fail::Dst(Io::Closed) => BackendError::Closed,
            Fail::Src(Io::Err(e)) | Fail::Dst(Io::Err(e)) => BackendError::Io(e),
            Fail::TooLarge => BackendError::Protocol("body over the limit"),
            Fail::Framing(e) => BackendError::Protocol(e),
            Fail::Dial(e) => BackendError::Dial(e),
        }
    }
}

/// Reads more into `buf`'s spare capacity (growing it when full) within `timeout`;
/// `Ok(0)` at EOF. On timeout the read is cancelled and a new empty buffer returned.
async fn read_more<R: AsyncReadRent>(
    r: &mut R,
    mut buf: Vec<u8>,
    timeout: Duration,
) -> (Result<usize, Io>, Vec<u8>) {
    if buf.len() == buf.capacity() {
        buf.reserve(buf.capacity().max(4096));
    }
    let (len, cap) = (buf.len(), buf.capacity());
    // The kernel owns the spare capacity until the read completes (a TLS stream reads into
    // its own buffer and copies plaintext here). A timeout cancels the read; monoio's
    // driver keeps the buffer until the kernel's completion arrives, then frees it, and a
    // new empty buffer comes back.
    match monoio::time::timeout(timeout, r.read(buf.slice_mut(len..cap))).await {
        Ok((res, slice)) => (res.map_err(Io::Err), slice.into_inner()),
        Err(_) => (Err(Io::TimedOut), Vec::new()),
    }
}

/// Writes `buf[..k]` within `timeout` and removes it from `buf`.
pub(super) async fn write_prefix<W: AsyncWriteRent>(
    w: &mut W,
    buf: Vec<u8>,
    k: usize,
    timeout: Duration,
) -> Result<Vec<u8>, Io> {
    if k == 0 {
        return Ok(buf);
    }
    match monoio::time::timeout(timeout, w.write_all(buf.slice(0..k))).await {
        Ok((Ok(_), slice)) => {
            let mut buf = slice.into_inner();
            buf.drain(..k);
            Ok(buf)
        }
        Ok((Err(e), _)) => Err(Io::Err(e)),
        Err(_) => Err(Io::TimedOut),
    }
}

/// Passes one body from `src` to `dst`: what `buf` already holds first, then reads.
/// Returns what follows the body in `buf` (a pipelined request, or nothing), and the
/// body's bytes passed on.
pub(super) async fn pass_body<R: AsyncReadRent, W: AsyncWriteRent>(
    src: &mut R,
    dst: &mut W,
    mut buf: Vec<u8>,
    body: Body,
    limit: u64,
    timeout: Duration,
) -> Result<(Vec<u8>, u64), Fail> {
    let mut chunked = Chunked::default();
    let mut passed = 0;
    let mut left = match body {
        Body::None => return Ok((buf, 0)),
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
        passed += k as u64;
        if done {
            return Ok((buf, passed));
        }
        let (res, b) = read_more(src, buf, timeout).await;
        buf = b;
        match res {
            Ok(0) if body == Body::UntilClose => return Ok((buf, passed)),
            Ok(0) => return Err(Fail::Src(Io::Closed)),
            Ok(_) => {}
            Err(e) => return Err(Fail::Src(e)),
        }
    }
}

/// Reads a response head into `buf` (which may hold some of it already). Returns it with
/// `buf` holding only what follows the head. On failure, whether nothing had been read: a
/// connection closed before answering (a reused one the backend had closed).
pub(super) async fn read_head<R: AsyncReadRent>(
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
            Ok(0) => return Err((Fail::Src(Io::Closed), nothing)),
            Ok(_) => {}
            Err(e) => return Err((Fail::Src(e), nothing)),
        }
    }
}
