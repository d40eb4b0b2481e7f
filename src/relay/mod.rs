//! Frame forwarding both ways between a client and its backend, the close handshake, teardown.
//!
//! Each direction is a pump (`pump.rs`): one source read half, one destination write half.
//! On io_uring over plain TCP (the default), the source's bytes arrive through the
//! worker's receive ring (`recv_ring/`, a multishot receive into buffers the kernel
//! picks); otherwise (epoll, a TLS stream, the ring off or a frame larger than its
//! buffers) the pump waits for readability and reads into a buffer of its own. Either way
//! it walks the frame headers in what arrived (validating each, see `frame.rs`), and writes
//! the same bytes to the destination: payloads are never copied, unmasked or re-encoded,
//! and client frames stay masked on their way to the backend. A pump is named by the
//! [`Side`] it reads.
//!
//! Each destination has exactly one writer (its pump), so wslb's own frames (closes, and
//! keepalive pings, see `registry.rs`) are only ever written by that pump, at a frame
//! boundary (`close.rs`); the pong a peer sends back to wslb's ping is taken out of the
//! stream by the pump reading that peer. When a source breaks the protocol, its pump sends
//! the destination a close and, through the `Link` the two pumps share, owes the
//! offender the close code for its violation. The other pump keeps forwarding what the
//! other peer still sends (answers to messages the offender sent before its bad frame
//! arrive, as they would without wslb), and puts the owed close in place of that peer's
//! close reply, or sends it when the peer ends or the deadline passes.
//!
//! One close grace bounds the end of a relay: when closing begins (the first close sent
//! either way, a close owed, or a side ended), the link's deadline is set to
//! `close_grace` from then, and every wait of both pumps (readiness, reads, writes) ends by
//! it. A relay is over by then whatever its peers do.
//!
//! # Buffer ownership
//! The receive ring's buffers and their ownership are described in `recv_ring/`. What
//! follows is the path without the ring, and the pool buffer a ring pump takes for a frame
//! split across chunks.
//!
//! An idle connection holds no relay buffer. A pump at a frame boundary first waits for its
//! source to become readable (io_uring `POLL_ADD`; the epoll driver's readiness), and only
//! then takes a buffer from its worker's `BufferPool` and reads. The pump owns that
//! `Vec<u8>` between operations. For a read, the vector moves into the read op as a
//! `SliceMut` over its spare capacity: the kernel owns it until the completion, and it comes
//! back in the op's `(result, buf)` with `len` advanced by the bytes received, also on
//! error. For a write, the filled prefix moves into the op as a `Slice` and comes back the
//! same way. Once everything read is forwarded and the pump stands at a frame boundary, the
//! buffer goes back to the pool; a trailing partial header (at most 13 bytes, or a partial
//! close frame or keepalive pong of at most 138) moves into a small vector of its own size.
//! Mid-frame (payload still to come) and after a read that filled the buffer (more is surely
//! waiting), the pump keeps the buffer and reads again at once. An op is dropped only when
//! the close deadline passes, or a mid-frame read when the keepalive finds its source dead:
//! monoio then cancels the op and keeps the buffer alive until the kernel's completion
//! arrives, and frees it; the connection is ending, so nothing wants it back. Nothing else
//! interrupts an op, so no byte a read received is ever lost.

use std::task::Poll;
use std::time::Duration;

#[cfg(test)]
use monoio::net::TcpStream;

use crate::buffers::BufferPool;
use crate::frame::{Limits, Rules, Side, Violation};
use crate::metrics::WorkerStats;
use crate::recv_ring::RecvRing;
use crate::stream::{Halves, Readiness};
use registry::Registry;

mod close;
mod link;
mod pump;
pub mod registry;
use link::Link;
use pump::Pump;

/// What relays use of their worker, and nothing else: the frame rules, the buffer pool,
/// the registry of open relays, the worker's counters and its receive ring. One per worker,
/// owned by its thread; a relay holds a reference.
#[derive(Debug)]
pub struct Context {
    pub rules: RelayConfig,
    /// Relay buffers (handshake reads borrow from here too).
    pub buffers: BufferPool,
    /// Wakes relays when the instance drains (close 1001 to both sides), a keepalive ping
    /// or idle close is due, or their backend was removed (close 1012).
    pub registry: Registry,
    /// The worker's counters (pings, dead peers, protocol errors ...).
    pub stats: std::sync::Arc<WorkerStats>,
    /// The worker's receive ring for relay sockets (`recv_ring`); `None` on epoll, where
    /// the kernel refuses it, or when `recv_ring_buffers` is 0.
    pub recv: Option<RecvRing>,
}

/// What a relay needs from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct RelayConfig {
    /// The rules for each side's frames, by [`Side::index`]: without an extension, and
    /// with permessage-deflate negotiated (RSV1 allowed on a message's first frame).
    rules: [[Rules; 2]; 2],
    /// Time the peers get to finish the close handshake once closing has begun.
    pub close_grace: Duration,
}

impl RelayConfig {
    /// `client`: the largest client frame and message (over: close 1009 to the client),
    /// and how far a pump's buffer grows to fit the largest frame seen. A backend's
    /// frames get the same buffer cap and no size limit.
    pub fn new(client: Limits, close_grace: Duration) -> Self {
        let backend = Limits {
            buffer: client.buffer,
            ..Limits::NONE
        };
        let rules = |rsv1| {
            [
                Rules {
                    from: Side::Client,
                    limits: client,
                    rsv1,
                },
                Rules {
                    from: Side::Backend,
                    limits: backend,
                    rsv1,
                },
            ]
        };
        Self {
            rules: [rules(false), rules(true)],
            close_grace,
        }
    }

    /// The rules for `from`'s frames; `deflate`: permessage-deflate was negotiated.
    pub fn rules(&self, from: Side, deflate: bool) -> &Rules {
        &self.rules[usize::from(deflate)][from.index()]
    }
}

/// How one direction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The source closed its TCP after a close frame went to the destination.
    Closed,
    /// The source's TCP ended or failed without a close frame; one was synthesized unless
    /// the source stopped mid-frame (then the destination only sees the TCP close).
    SourceLost { mid_frame: bool },
    /// The source did not close its TCP by the close deadline; wslb closed it.
    GraceExpired,
}

/// How both directions ended, for the connection's log lines and for tests.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub client_to_backend: End,
    pub backend_to_client: End,
    /// The first protocol violation seen from either side, if any.
    pub violation: Option<(Side, Violation)>,
    pub traffic: Traffic,
}

/// What one relay moved (defined with the access log, which prints it).
pub use crate::access_log::Traffic;

/// Relays frames until both sides have closed (or the close deadline passed), then drops
/// both sockets. `client_buf`/`backend_buf` hold bytes already read past each handshake
/// head (frames an eager peer sent together with it); their capacity is the relay buffer
/// size. `backend_id` is the backend's pool id (a reload that removes it may close this
/// relay).
///
/// Not an `async fn`: the sockets are split and the pumps built before the future exists,
/// so the future does not also keep the arguments' slots (a parked idle connection is this
/// future, so every byte of it counts per connection).
pub fn run<'e, C: Halves, B: Halves>(
    client: C,
    backend: B,
    client_buf: Vec<u8>,
    backend_buf: Vec<u8>,
    backend_id: u32,
    deflate: bool,
    env: &'e Context,
) -> impl std::future::Future<Output = Outcome> + 'e {
    let (client_rd, client_wr) = client.into_halves();
    let (backend_rd, backend_wr) = backend.into_halves();
    // Plain TCP sources are received through the worker's receive ring where it runs.
    let recv = |fd: Option<std::os::fd::RawFd>| env.recv.as_ref().and_then(|r| r.open(fd?));
    let up_recv = recv(client_rd.tcp_fd());
    let down_recv = recv(backend_rd.tcp_fd());
    if let (Some(r), true) = (&env.recv, up_recv.is_some() || down_recv.is_some()) {
        r.submit();
    }
    let mut up = Pump::new(Side::Client, client_rd, backend_wr, client_buf, up_recv);
    let mut down = Pump::new(Side::Backend, backend_rd, client_wr, backend_buf, down_recv);
    async move {
        let task = std::future::poll_fn(|cx| Poll::Ready(cx.waker().clone())).await;
        let link = Link::new(task, env, backend_id, deflate);
        let (client_to_backend, backend_to_client) = {
            let mut up_fut = std::pin::pin!(up.run(&link));
            let mut down_fut = std::pin::pin!(down.run(&link));
            // When one direction has ended, closing has begun (if it had not): the other
            // finishes by the close deadline, as every one of its waits is bounded by it.
            monoio::select! {
                a = &mut up_fut => {
                    link.start_closing();
                    (a, down_fut.await)
                }
                b = &mut down_fut => {
                    link.start_closing();
                    (up_fut.await, b)
                }
            }
        };
        env.buffers.give(std::mem::take(&mut up.buf));
        env.buffers.give(std::mem::take(&mut down.buf));
        if let Some(ring) = &env.recv {
            for src in [up.recv.take(), down.recv.take()].into_iter().flatten() {
                ring.close(src);
            }
        }
        Outcome {
            client_to_backend,
            backend_to_client,
            violation: link.violation(),
            traffic: link.traffic(),
        }
    }
}

#[cfg(test)]
pub(crate) fn test_env() -> Context {
    Context {
        rules: RelayConfig::new(Limits::NONE, Duration::from_secs(1)),
        buffers: BufferPool::new(4096, 1 << 20),
        registry: Registry::new(registry::Keepalive::default()),
        stats: Default::default(),
        recv: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every idle proxied connection is one parked task the size of this future (plus a
    /// little), so it is most of wslb's user-space memory per connection. Regression test
    /// for 4.3 KiB: the rarely taken close paths, timeouts and monoio's 256-byte read and
    /// write futures were all held inline.
    #[test]
    fn relay_future_stays_under_1_kib() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let b = l.accept().unwrap().0;
            let [a, b] = [a, b].map(|s| TcpStream::from_std(s).unwrap());
            let env = test_env();
            let f = run(a, b, Vec::new(), Vec::new(), 0, false, &env);
            let size = std::mem::size_of_val(&f);
            eprintln!("relay::run future: {size} bytes");
            assert!(size <= 1024, "relay future grew to {size} bytes");
        });
    }
}
