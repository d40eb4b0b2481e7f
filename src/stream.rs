//! The stream seam: what one connection's path (handshake, relay) needs of a client's or a
//! backend's stream. Plain TCP, or TLS (`tls/stream.rs`) over it.

use std::future::Future;

use monoio::io::{AsyncReadRent, AsyncWriteRent, OwnedReadHalf, OwnedWriteHalf, Splitable};
use monoio::net::TcpStream;

pub use crate::handshake::Scheme;

/// Waiting for a stream to become readable without holding a buffer. Asked of the stream,
/// not of its socket: a stream that keeps bytes of its own (a TLS stream's decrypted
/// plaintext, a whole record) is readable while its socket is quiet, and says so with
/// [`Readiness::buffered`]. Readable means: a read will return data or the stream's end
/// without waiting for more than the rest of what has begun to arrive.
pub trait Readiness {
    /// Bytes (or the stream's end) are held by the stream itself: readable now.
    fn buffered(&self) -> bool {
        false
    }

    /// Waits until the socket under the stream is readable. Two calls rather than one
    /// future that checks `buffered` first: the relay's pumps park in this future, and a
    /// wrapper around it would cost every idle connection its size twice.
    fn socket_ready(&self) -> impl Future<Output = std::io::Result<()>>;

    /// The descriptor of a plain TCP socket whose bytes are the stream's bytes, which the
    /// worker's receive ring may then read in its place (`recv_ring`); `None` for a stream
    /// that transforms what it reads (TLS).
    fn tcp_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }

    /// Waits until the stream is readable (buffered bytes, or the socket).
    fn ready(&self) -> impl Future<Output = std::io::Result<()>> {
        let buffered = self.buffered();
        let socket = (!buffered).then(|| self.socket_ready());
        async move {
            match socket {
                None => Ok(()),
                Some(f) => f.await,
            }
        }
    }
}

impl Readiness for TcpStream {
    fn socket_ready(&self) -> impl Future<Output = std::io::Result<()>> {
        // Strict (`relaxed = false`): on the epoll driver a relaxed check answers from the
        // readiness cached since the last event, so after a read that did not drain the
        // socket to EAGAIN it says "readable" on an idle socket. The pump then parked in a
        // plain read that nothing interrupts, and a drain's 1001, a keepalive ping or an
        // idle close never went out (regression test: tests/drain.rs, epoll). The strict
        // check costs a poll(2) per wait on epoll; io_uring ignores the flag.
        self.readable(false)
    }
}

/// A stream the connection path can carry: read and written through owned buffers,
/// readable-without-a-buffer ([`Readiness`]), and split into halves that work concurrently
/// for the relay's two pumps.
pub trait Halves: AsyncReadRent + AsyncWriteRent + Readiness + 'static {
    type Reader: AsyncReadRent + Readiness + 'static;
    type Writer: AsyncWriteRent + 'static;
    fn into_halves(self) -> (Self::Reader, Self::Writer);
}

impl Halves for TcpStream {
    type Reader = OwnedReadHalf<TcpStream>;
    type Writer = OwnedWriteHalf<TcpStream>;
    fn into_halves(self) -> (Self::Reader, Self::Writer) {
        self.into_split()
    }
}

impl Readiness for OwnedReadHalf<TcpStream> {
    fn socket_ready(&self) -> impl Future<Output = std::io::Result<()>> {
        ready(self)
    }

    #[allow(unsafe_code)]
    fn tcp_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        // SAFETY: as in `ready`: a `&T` used only here, while no op of the write half is
        // being started (the relay asks before its pumps run).
        Some(unsafe { &*self.0.get() }.as_raw_fd())
    }
}

/// A client's stream, reached through a known [`Scheme`] (which `X-Forwarded-Proto` tells
/// the backend). Plain TCP here; the TLS stream implements it in `tls/` (which sits above
/// this seam).
pub trait ClientStream: Halves {
    const SCHEME: Scheme;
}

impl ClientStream for TcpStream {
    const SCHEME: Scheme = Scheme::Http;
}

/// Waits until the socket behind a TCP read half is readable (see [`Readiness`]).
///
/// Only for plain TCP halves, not generic over [`Readiness`]: its soundness rests on what
/// monoio's `TcpStream::readable` does with the `&TcpStream` it is given, which a trait
/// implementation elsewhere could not be held to by the type system.
#[allow(unsafe_code)]
pub fn ready(half: &OwnedReadHalf<TcpStream>) -> impl Future<Output = std::io::Result<()>> + '_ {
    // SAFETY: the halves share the stream through an `Rc<UnsafeCell<TcpStream>>`, and
    // monoio's own halves each make a `&mut TcpStream` from it for every op they start (the
    // contract of its `unsafe trait Split`, which `TcpStream` implements: reads and writes
    // of such a stream are independent and may run concurrently). The `&TcpStream` made
    // here is dereferenced only in the returned future's first poll: monoio 0.2's
    // `TcpStream::readable` (an `async fn`) then clones the stream's `SharedFd` into the
    // poll op it submits, and from then on waits on that op alone (it keeps the reference
    // as its argument, never reading through it again). The relay's pump and the
    // TLS reader poll this future at once, in the same turn of the task and before the
    // other half (the write half's only user) runs again, so no `&mut TcpStream` is made
    // while the `&TcpStream` is in use.
    let stream = unsafe { &*half.0.get() };
    stream.socket_ready()
}
