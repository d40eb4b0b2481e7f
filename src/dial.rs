//! The one way to a backend, for upgrades and plain requests alike: a connection to one
//! backend (TCP, then TLS for a `wss://`/`https://` backend) with typed errors, and the
//! failover over a [`Decision`](crate::dispatch::Decision)'s candidates, each leased and
//! counted as it is tried. [`BackendConn`] reads and writes like either stream.

mod idle;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use monoio::BufResult;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::TcpStream;
use monoio::time::Instant;

use crate::balancer::{Backend, Failure, Lease, Pool, Snapshot};
use crate::tls;

pub use idle::IdleConns;

/// Why a connection to one backend could not be made: the backend's failure, but for
/// `NoTlsConfig`, which is wslb's own configuration's.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("connect failed: {0}")]
    Connect(std::io::Error),
    #[error("no TLS handshake in time")]
    TlsTimeout,
    #[error("TLS handshake failed: {0}")]
    Tls(tls::HandshakeFailure),
    #[error("reached over TLS, but no [tls_backend] client config is loaded")]
    NoTlsConfig,
}

impl DialError {
    /// The backend's failure kind (`wslb_backend_failures_total{kind}`, and towards its
    /// `fall`); `None` when the backend is not at fault (wslb's own configuration is).
    pub fn failure(&self) -> Option<Failure> {
        match self {
            DialError::ConnectTimeout | DialError::Connect(_) => Some(Failure::Connect),
            DialError::TlsTimeout | DialError::Tls(_) => Some(Failure::Handshake),
            DialError::NoTlsConfig => None,
        }
    }

    /// Whether another backend may be tried: nothing was sent, the client has not yet
    /// waited a handshake timeout (one that timed out its TLS handshake has), and another
    /// backend could fare better (not without a TLS client config).
    pub fn retry(&self) -> bool {
        !matches!(self, DialError::TlsTimeout | DialError::NoTlsConfig)
    }
}

/// How an exchange with a connected backend failed: what it did, not the text of it, so
/// the answer (502 or 504) and whether another backend may be tried follow from the type.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{0}")]
    Dial(DialError),
    #[error("closed the connection before answering")]
    Closed,
    #[error("I/O error: {0}")]
    Io(std::io::Error),
    #[error("sent no response in time")]
    Timeout,
    /// It answered something wslb cannot pass on (not HTTP, a head too large, a 101 to a
    /// plain request, an extension that was not offered).
    #[error("{0}")]
    Protocol(&'static str),
}

/// How long a dial may take: the TCP connect, then, from the moment it is connected, the
/// backend's handshake time, which the TLS handshake and the exchange that follows share.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub handshake: Duration,
}

/// Connects to `b`: TCP within `timeouts.connect`, Nagle off (frames and heads are
/// written whole); then, for a backend reached over TLS, the handshake with `snap`'s
/// client config. Returns the connection and the end of the backend's handshake time,
/// counted from the TCP connect (the TLS handshake and the answer to what is sent next
/// share it).
pub async fn connect(
    snap: &Snapshot,
    b: &Backend,
    timeouts: Timeouts,
) -> Result<(BackendConn, Instant), DialError> {
    let tls = match &b.tls {
        None => None,
        // Loaded with every snapshot that has a TLS backend (`tls::load`); typed rather
        // than assumed, so that a pool configured without it fails the dial, not the worker.
        Some(name) => Some((snap.tls.as_ref().ok_or(DialError::NoTlsConfig)?, name)),
    };
    let tcp = connect_tcp(b.addr, timeouts.connect).await?;
    let deadline = Instant::now() + timeouts.handshake;
    let Some((t, name)) = tls else {
        return Ok((BackendConn::Plain(tcp), deadline));
    };
    match monoio::time::timeout_at(deadline, tls::connect(tcp, t, name.clone())).await {
        Ok(Ok(s)) => Ok((BackendConn::Tls(s), deadline)),
        Ok(Err(e)) => Err(DialError::Tls(e)),
        Err(_) => Err(DialError::TlsTimeout),
    }
}

/// TCP connect within `timeout`, Nagle off.
async fn connect_tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, DialError> {
    let stream = monoio::time::timeout(timeout, TcpStream::connect_addr(addr))
        .await
        .map_err(|_| DialError::ConnectTimeout)?
        .map_err(DialError::Connect)?;
    stream.set_nodelay(true).map_err(DialError::Connect)?;
    Ok(stream)
}

/// A connected backend, leased: counted among its open connections until dropped.
pub struct Dialed {
    pub conn: BackendConn,
    pub lease: Lease,
    /// Taken from the idle connections, not new: one the backend has closed meanwhile
    /// fails at its first use.
    pub reused: bool,
    /// The end of the backend's handshake time (the TLS handshake and the answer to what
    /// is sent next share it).
    pub deadline: Instant,
}

/// Why no backend could be dialled.
#[derive(Debug, thiserror::Error)]
pub enum NoBackend {
    /// Health checks have every backend down: none was tried.
    #[error("every backend is down (health checks)")]
    AllDown,
    #[error("no backend reachable (tried {tried})")]
    Exhausted { tried: usize },
    /// A failure after which no other backend is tried.
    #[error("backend {addr}: {error}")]
    Failed { addr: SocketAddr, error: DialError },
}

/// Tries `candidates` in order until one connects. Each is counted as selected and leased
/// as soon as it is tried (least-connections sees it at once; a burst does not all see the
/// same counts); a failure is counted against it (a backend failing `fall` times in a row
/// goes down) and the next is tried. With `idle`, a kept connection to the candidate is
/// taken before a new one is made.
pub async fn dial<'a>(
    pool: &Pool,
    snap: &Snapshot,
    candidates: &mut impl Iterator<Item = &'a Arc<Backend>>,
    tried: &mut usize,
    timeouts: Timeouts,
    idle: Option<(&IdleConns, Duration)>,
) -> Result<Dialed, NoBackend> {
    for b in candidates {
        *tried += 1;
        pool.selected(b);
        let lease = Lease::new(b.clone());
        if let Some(conn) = idle.and_then(|(idle, max)| idle.take(b.id, max)) {
            return Ok(Dialed {
                conn,
                lease,
                reused: true,
                deadline: Instant::now() + timeouts.handshake,
            });
        }
        match connect(snap, b, timeouts).await {
            Ok((conn, deadline)) => {
                return Ok(Dialed {
                    conn,
                    lease,
                    reused: false,
                    deadline,
                });
            }
            Err(error) => {
                if let Some(kind) = error.failure() {
                    pool.failed(b, kind);
                }
                if !error.retry() {
                    let addr = b.addr;
                    return Err(NoBackend::Failed { addr, error });
                }
                tracing::warn!(backend = %b.addr, "{error}; trying the next backend");
            }
        }
    }
    Err(match *tried {
        0 => NoBackend::AllDown,
        tried => NoBackend::Exhausted { tried },
    })
}

/// A connected backend.
pub enum BackendConn {
    Plain(TcpStream),
    Tls(tls::BackendStream),
}

impl AsyncReadRent for BackendConn {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            BackendConn::Plain(s) => s.read(buf).await,
            BackendConn::Tls(s) => s.read(buf).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            BackendConn::Plain(s) => s.readv(buf).await,
            BackendConn::Tls(s) => s.readv(buf).await,
        }
    }
}

impl AsyncWriteRent for BackendConn {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            BackendConn::Plain(s) => s.write(buf).await,
            BackendConn::Tls(s) => s.write(buf).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            BackendConn::Plain(s) => s.writev(buf).await,
            BackendConn::Tls(s) => s.writev(buf).await,
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        match self {
            BackendConn::Plain(s) => s.flush().await,
            BackendConn::Tls(s) => s.flush().await,
        }
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        match self {
            BackendConn::Plain(s) => s.shutdown().await,
            BackendConn::Tls(s) => s.shutdown().await,
        }
    }
}
