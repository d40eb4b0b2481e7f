//! The built-in echo backend (`wslb echo`): a complete WebSocket server for tests, benches
//! and the demo. It echoes every text and binary message unchanged (fragmented ones as one
//! message), answers ping with pong and close with close, and fails bad input with the
//! RFC 6455 close code, so it passes the Autobahn|Testsuite on its own.
//!
//! Unlike the relay, the echo needs whole messages with UTF-8 validation, which is exactly
//! what `fastwebsockets::FragmentCollector` provides; it runs on monoio's poll-io bridge.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use fastwebsockets::{FragmentCollector, Frame, OpCode, Role, WebSocket, WebSocketError};
use monoio::io::{AsyncWriteRentExt, IntoPollIo};
use monoio::net::TcpStream;
use monoio::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use monoio::buf::IoBufMut;
use monoio::io::AsyncReadRent;

use crate::handshake;
use crate::outcome::Refusal;

/// Request heads up to 8 KiB, like the balancer's default.
const MAX_REQUEST: usize = 8192;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one connection: handshake, then echo until the client closes.
pub async fn serve(mut stream: TcpStream) {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let Some((leftover, response)) = read_upgrade(&mut stream, deadline).await else {
        return;
    };
    if stream.write_all(response).await.0.is_err() {
        return;
    }
    let Ok(io) = stream.into_poll_io() else {
        return;
    };
    let mut ws = FragmentCollector::new(WebSocket::after_handshake(
        Prefixed {
            prefix: leftover,
            pos: 0,
            inner: io,
        },
        Role::Server,
    ));
    loop {
        let frame = match ws.read_frame().await {
            Ok(f) => f,
            Err(e) => {
                if let Some(code) = close_code_for(&e) {
                    let _ = ws.write_frame(Frame::close(code, b"")).await;
                }
                return;
            }
        };
        match frame.opcode {
            OpCode::Text | OpCode::Binary => {
                let echo = Frame::new(true, frame.opcode, None, frame.payload);
                if ws.write_frame(echo).await.is_err() {
                    return;
                }
            }
            // fastwebsockets has already answered the close (auto_close).
            OpCode::Close => return,
            _ => {}
        }
    }
}

/// Reads a valid upgrade request: the bytes after its head, and the 101 to answer it with.
/// `None` for anything else; a bad request is answered with its status first, as wslb
/// answers it (a plain request proxied here gets 426).
async fn read_upgrade(stream: &mut TcpStream, deadline: Instant) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::with_capacity(MAX_REQUEST);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; handshake::MAX_HEADERS];
        match handshake::parse_request(&buf, &mut headers) {
            Ok(Some(u)) => {
                let (response, head_len) = (u.switching_protocols(), u.head_len);
                buf.drain(..head_len);
                return Some((buf, response));
            }
            Ok(None) => {}
            Err(reject) => {
                let answer = Refusal::from(reject).response().into_owned();
                let _ = stream.write_all(answer).await;
                return None;
            }
        }
        let len = buf.len();
        if len == MAX_REQUEST {
            let answer = Refusal::from(handshake::over_limit(&buf))
                .response()
                .into_owned();
            let _ = stream.write_all(answer).await;
            return None;
        }
        let read = stream.read(buf.slice_mut(len..MAX_REQUEST));
        let (res, slice) = monoio::time::timeout_at(deadline, read).await.ok()?;
        buf = slice.into_inner();
        if !matches!(res, Ok(n) if n > 0) {
            return None;
        }
    }
}

/// The close code for a read error, or `None` when the connection is simply gone.
fn close_code_for(e: &WebSocketError) -> Option<u16> {
    match e {
        WebSocketError::InvalidUTF8 => Some(1007),
        WebSocketError::FrameTooLarge => Some(1009),
        WebSocketError::UnexpectedEOF
        | WebSocketError::ConnectionClosed
        | WebSocketError::IoError(_) => None,
        _ => Some(1002),
    }
}

/// A stream that first yields bytes already read past the handshake head. fastwebsockets
/// has no way to pre-seed its read buffer, so the leftover is served from here (copied
/// once into fastwebsockets' buffer; it is at most one read's worth).
struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.pos);
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
