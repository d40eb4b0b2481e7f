//! A connection to a backend: plain TCP or TLS (a `wss://` backend), one type for the
//! upgrade path (`connection.rs`) and plain HTTP (`http/`), readable and writable like
//! either stream.

use std::net::SocketAddr;
use std::time::Duration;

use monoio::BufResult;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::TcpStream;

use crate::balancer::Snapshot;
use crate::tls;

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

/// TCP connect with `timeout`, Nagle off (frames and heads are written whole).
pub async fn connect_tcp(addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let stream = monoio::time::timeout(timeout, TcpStream::connect_addr(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Connects to `addr` of `snap`: TCP within `connect`, then TLS within `handshake` when
/// the snapshot reaches it over TLS.
pub async fn open(
    snap: &Snapshot,
    addr: SocketAddr,
    connect: Duration,
    handshake: Duration,
) -> Result<BackendConn, String> {
    let tcp = connect_tcp(addr, connect)
        .await
        .map_err(|e| format!("connect failed: {e}"))?;
    let Some((t, name)) = snap
        .tls
        .as_ref()
        .and_then(|t| Some((t, t.name(addr)?.clone())))
    else {
        return Ok(BackendConn::Plain(tcp));
    };
    match monoio::time::timeout(handshake, tls::connect(tcp, t, name)).await {
        Ok(Ok(s)) => Ok(BackendConn::Tls(s)),
        Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
        Err(_) => Err("no TLS handshake in time".into()),
    }
}
