//! Frame forwarding both ways between a client and its backend, the close handshake, teardown.
//!
//! Each direction is a [`Pump`]: one source read half, one destination write half, one buffer.
//! It reads with io_uring into the buffer, walks the frame headers in it (validating each, see
//! `frame.rs`), and writes the same bytes to the destination: payloads are never copied,
//! unmasked or re-encoded, and client frames stay masked on their way to the backend.
//!
//! Each destination has exactly one writer (its pump), so wslb's own frames (closes, and
//! keepalive pings, see `registry.rs`) are only ever written by that pump, at a frame
//! boundary; the pong a peer sends back to wslb's ping is taken out of the stream by the
//! pump reading that peer. When a source breaks the protocol, its
//! pump sends the destination a close and asks the opposite pump, through [`Link`], for the
//! close code owed to the offender. That pump keeps forwarding what the other peer still
//! sends (answers to messages the offender sent before its bad frame arrive, as they would
//! without wslb), puts the owed close in place of that peer's close reply, or sends it when
//! the peer ends or the close grace runs out. Its pending read is cancelled so the grace
//! deadline starts at once.
//!
//! # Buffer ownership
//! An idle connection holds no relay buffer. A pump at a frame boundary first waits for its
//! source to become readable (io_uring `POLL_ADD`; the epoll driver's readiness), and only
//! then takes a buffer from its worker's `BufferPool` and reads. The pump owns that
//! `Vec<u8>` between operations. For a read, the vector moves into the read op as a
//! `SliceMut` over its spare capacity: the kernel owns it until the completion, and it comes
//! back in the op's `(result, buf)` with `len` advanced by the bytes received, also on error
//! and on cancellation (`ECANCELED` through a canceller, see `link.rs`). For a write, the
//! filled prefix moves into the op as a `Slice` and comes back the same way. Once everything
//! read is forwarded and the pump stands at a frame boundary, the buffer goes back to the pool;
//! a trailing partial header (at most 13 bytes, or a partial close frame of at most 138)
//! moves into a small vector of its own size. Mid-frame (payload still to come) and after a
//! read that filled the buffer (more is surely waiting), the pump keeps the buffer and reads
//! again at once. If a pump's future is dropped mid-op (the close-grace timeout), monoio
//! cancels the op and keeps the buffer alive until the kernel's completion arrives, then
//! frees it; the connection is ending, so nothing wants it back.

use std::task::Poll;
use std::time::Duration;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, CancelableAsyncReadRent, OwnedReadHalf,
    OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;

use crate::frame::{self, Limits, Sender, Stop, Violation, Walker};
use crate::metrics::Event;
use crate::worker::WorkerEnv;

mod closing;
mod link;
pub mod registry;
use link::{Link, Readiness, stream_of};
use registry::{Attention, GoAway};

/// What a relay needs from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct RelayConfig {
    /// The limits on each pump's source, by pump index (see [`RelayConfig::new`]).
    limits: [Limits; 2],
    /// Time a peer gets to finish the close handshake once it is under way.
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
        let mut limits = [client; 2];
        limits[usize::from(DOWN)] = backend;
        Self {
            limits,
            close_grace,
        }
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
    /// The source did not close its TCP within the close grace; wslb closed it.
    GraceExpired,
}

/// How both directions ended, for the connection's log line and for tests.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub client_to_backend: End,
    pub backend_to_client: End,
    /// The first protocol violation seen from either side, if any.
    pub violation: Option<(Sender, Violation)>,
}

/// A read gets at least this much room: a partial header moved into a small vector is
/// never read into directly.
const MIN_READ: usize = 1024;

const UP: u8 = 0; // client -> backend
const DOWN: u8 = 1; // backend -> client

/// What one read step came to.
enum Read {
    Data,
    /// A close request arrived while waiting; the loop handles it.
    Interrupted,
    /// EOF or an error on the source.
    Ended,
    /// The close grace ran out.
    Expired,
}

/// Relays frames until both sides have closed (or the close grace ran out), then drops both
/// sockets. `client_buf`/`backend_buf` hold bytes already read past each handshake head
/// (frames an eager peer sent together with it); their capacity is the relay buffer size.
/// `backend_id` is the backend's pool id (a reload that removes it may close this relay).
///
/// Not an `async fn`: the sockets are split and the pumps built before the future exists,
/// so the future does not also keep the arguments' slots (a parked idle connection is this
/// future, so every byte of it counts per connection).
pub fn run<'p>(
    client: TcpStream,
    backend: TcpStream,
    client_buf: Vec<u8>,
    backend_buf: Vec<u8>,
    backend_id: u32,
    env: &'p WorkerEnv,
) -> impl std::future::Future<Output = Outcome> + 'p {
    let (client_rd, client_wr) = client.into_split();
    let (backend_rd, backend_wr) = backend.into_split();
    let mut up = Pump::new(UP, client_rd, backend_wr, client_buf);
    let mut down = Pump::new(DOWN, backend_rd, client_wr, backend_buf);
    async move {
        let task = std::future::poll_fn(|cx| Poll::Ready(cx.waker().clone())).await;
        let link = Link::new(task, env, backend_id);
        let (client_to_backend, backend_to_client) = {
            let mut up_fut = std::pin::pin!(up.run(&link));
            let mut down_fut = std::pin::pin!(down.run(&link));
            // When one direction has ended, the other gets the close grace to finish; after
            // that its future is dropped (see "Buffer ownership") and both sockets close with
            // the halves.
            monoio::select! {
                a = &mut up_fut => (a, Box::pin(finish(down_fut, env.relay.close_grace)).await),
                b = &mut down_fut => (Box::pin(finish(up_fut, env.relay.close_grace)).await, b),
            }
        };
        env.buffers.give(std::mem::take(&mut up.buf));
        env.buffers.give(std::mem::take(&mut down.buf));
        Outcome {
            client_to_backend,
            backend_to_client,
            violation: link.violation.get(),
        }
    }
}

async fn finish(rest: impl std::future::Future<Output = End>, grace: Duration) -> End {
    monoio::time::timeout(grace, rest)
        .await
        .unwrap_or(End::GraceExpired)
}

/// One direction of a connection.
struct Pump<Src, Dst: AsyncWriteRent> {
    /// UP or DOWN (a u8: every idle connection carries two pumps). Who sends what this
    /// pump reads follows from it (see [`Pump::sender`]).
    me: u8,
    src: OwnedReadHalf<Src>,
    dst: OwnedWriteHalf<Dst>,
    buf: Vec<u8>,
    /// Frame-level state: payload still to come, fragmentation, largest frame seen.
    walker: Walker,
    /// A close frame went to the destination: anything further from the source is dropped
    /// (RFC 6455 §5.5.1: no frames after a close), and the source must end its TCP before
    /// `deadline`.
    close_sent: bool,
    /// The destination's socket failed; nothing more is written to it.
    dst_failed: bool,
    /// On the worker registry's 32-bit millisecond clock (see `Registry::deadline_in`):
    /// half the size of an `Instant`, in a struct every idle connection carries twice.
    deadline: Option<u32>,
    /// The last read filled the buffer: more is waiting, read again without a poll.
    last_read_full: bool,
    /// This pump has sent (or tried to send) a close of wslb's own to its destination
    /// because the instance drains, the connection idled out or its backend was removed.
    going_away_sent: bool,
}

impl<Src, Dst> Pump<Src, Dst>
where
    Src: CancelableAsyncReadRent + Readiness,
    Dst: AsyncWriteRent,
{
    fn new(me: u8, src: OwnedReadHalf<Src>, dst: OwnedWriteHalf<Dst>, buf: Vec<u8>) -> Self {
        Self {
            me,
            src,
            dst,
            buf,
            walker: Walker::default(),
            close_sent: false,
            dst_failed: false,
            deadline: None,
            last_read_full: false,
            going_away_sent: false,
        }
    }

    /// This pump's index in the `Link`'s per-pump arrays.
    fn me(&self) -> usize {
        usize::from(self.me)
    }

    /// Who sends the frames this pump reads: the client for UP, the backend for DOWN.
    fn sender(&self) -> Sender {
        if self.me == UP {
            Sender::Client
        } else {
            Sender::Backend
        }
    }

    async fn run(&mut self, link: &Link<'_>) -> End {
        loop {
            self.forward_buffered(link).await;
            match link.attention(self.me(), self.going_away_sent) {
                // The instance drains (1001), the connection idled out (1001) or its
                // backend was removed (1012): a close to this pump's destination, at a
                // frame boundary. The peer's close reply is then dropped (a close already
                // went its way), and its TCP end finishes this pump.
                Some(Attention::GoAway(why)) if self.walker.pending == 0 => {
                    self.going_away_sent = true;
                    // Counted once per connection, by the client->backend pump.
                    let event = match why {
                        GoAway::Idle => Some(Event::IdleClose),
                        GoAway::RemovedBackend => Some(Event::RemovedBackendClose),
                        GoAway::Drain => None,
                    };
                    if let (Some(e), UP) = (event, self.me) {
                        link.env.stats.count(e);
                    }
                    let (code, reason) = why.close();
                    Box::pin(self.send_close(link, code, reason)).await;
                }
                Some(Attention::Ping) if self.walker.pending == 0 => {
                    Box::pin(self.send_ping(link)).await;
                }
                Some(Attention::SourceDead) => {
                    link.env.stats.count(Event::DeadPeer);
                    tracing::info!(
                        from = ?self.sender(),
                        "peer did not answer a keepalive ping within the idle timeout"
                    );
                    return Box::pin(self.source_ended(link)).await;
                }
                _ => {}
            }
            if link.close_request[self.me()].get().is_some() && self.deadline.is_none() {
                self.deadline = Some(link.env.registry.deadline_in(link.env.relay.close_grace));
            }
            match self.read(link).await {
                Read::Data | Read::Interrupted => {}
                // Boxed, like the other close paths: an idle connection is a parked task the
                // size of this future, and space for the rarely taken paths would be paid
                // by every connection.
                Read::Ended => return Box::pin(self.source_ended(link)).await,
                Read::Expired => {
                    let owed = self.take_owed(link);
                    if let (Some((code, reason)), 0) = (owed, self.walker.pending) {
                        Box::pin(self.send_close(link, code, reason)).await;
                    }
                    return End::GraceExpired;
                }
            }
        }
    }

    /// Reads more from the source. At a frame boundary it first gives the buffer back and
    /// waits for readability, so that a quiet connection pins no buffer.
    async fn read(&mut self, link: &Link<'_>) -> Read {
        let waited = self.walker.pending == 0 && !self.last_read_full;
        if waited {
            self.release_buffer(link);
            let ready = stream_of(&self.src).ready();
            let res = match self.deadline {
                None => monoio::select! {
                    r = ready => Some(r),
                    _ = link.interrupted(self.me(), self.going_away_sent) => None,
                },
                Some(d) => match Box::pin(monoio::time::timeout_at(
                    link.env.registry.instant_of(d),
                    ready,
                ))
                .await
                {
                    Ok(r) => Some(r),
                    Err(_) => return Read::Expired,
                },
            };
            match res {
                None => return Read::Interrupted,
                Some(Err(_)) => return Read::Ended,
                Some(Ok(())) => {}
            }
        }
        self.take_buffer(link);

        let len = self.buf.len();
        let cap = self.buf.capacity();
        debug_assert!(len < cap, "a partial header never fills the buffer");
        // Boxed: monoio's read future is 256 bytes, and an idle pump (waiting for
        // readability) should not carry room for it. One small allocation per read from
        // mimalloc's thread-local free list costs far less than the read itself.
        // After a readiness wait the data is there and the read completes at once, so it
        // needs no canceller (the wait is strict on epoll too, see `Readiness`).
        let me = self.me; // a u8: it lives across the await below
        let slice = std::mem::take(&mut self.buf).slice_mut(len..cap);
        type ReadFut<'a> = std::pin::Pin<
            Box<
                dyn std::future::Future<
                        Output = monoio::BufResult<usize, monoio::buf::SliceMut<Vec<u8>>>,
                    > + 'a,
            >,
        >;
        let read: ReadFut<'_> = if waited {
            Box::pin(self.src.read(slice))
        } else {
            Box::pin(self.src.cancelable_read(slice, link.reader(self.me())))
        };
        let (res, slice) = match self.deadline {
            None if waited => read.await,
            // A read that may wait (mid-frame) also ends when the keepalive finds the
            // source dead. Dropping it cancels the op; the buffer is then freed by monoio
            // once the kernel lets go of it, and the pump ends without it.
            None => monoio::select! {
                r = read => r,
                _ = link.source_dead(usize::from(me)) => return Read::Ended,
            },
            Some(d) => match Box::pin(monoio::time::timeout_at(
                link.env.registry.instant_of(d),
                read,
            ))
            .await
            {
                Ok(r) => r,
                Err(_) => return Read::Expired,
            },
        };
        self.buf = slice.into_inner();
        match res {
            Ok(0) => Read::Ended,
            Ok(n) => {
                link.env.registry.heard(link.key, self.me());
                self.last_read_full = len + n == cap;
                Read::Data
            }
            // A close request from the other pump: handled at the top of the loop.
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => Read::Interrupted,
            Err(_) => Read::Ended,
        }
    }

    /// Makes sure `buf` is a pool buffer big enough for the largest frame seen, keeping the
    /// partial header it may hold.
    fn take_buffer(&mut self, link: &Link<'_>) {
        let want = (self.walker.want_capacity as usize).max(self.buf.len() + 1);
        if self.buf.capacity() >= want && self.buf.capacity() >= MIN_READ {
            return;
        }
        let mut b = link.env.buffers.take(want);
        b.extend_from_slice(&self.buf);
        link.env.buffers.give(std::mem::replace(&mut self.buf, b));
    }

    /// Gives the buffer back to the pool; a partial header moves to a vector of its size.
    fn release_buffer(&mut self, link: &Link<'_>) {
        if self.buf.capacity() == 0 {
            return;
        }
        let rest = if self.buf.is_empty() {
            Vec::new()
        } else {
            self.buf.to_vec()
        };
        link.env
            .buffers
            .give(std::mem::replace(&mut self.buf, rest));
    }

    /// Walks the frames in the buffer, writes every complete header and every payload byte
    /// received so far to the destination in one write, and keeps a trailing partial header.
    async fn forward_buffered(&mut self, link: &Link<'_>) {
        // Only small values live across the awaits below: every idle connection's task
        // carries room for them twice (one per pump).
        let stop = loop {
            let w = self.walk(link);
            if let Some(Stop::OwnPong(n)) = w.stop {
                // The pong to wslb's keepalive ping: forward what precedes it, drop it,
                // walk on.
                Box::pin(self.forward(link, w.ready, w.keep_to, w.close_forwarded)).await;
                self.buf.drain(..n);
                link.env.registry.pong_received(link.key, self.me());
                continue;
            }
            self.forward(link, w.ready, w.keep_to, w.close_forwarded)
                .await;
            break w.stop;
        };
        // What stays is a partial header (<= 138 bytes). Growing the buffer to fit the
        // largest frame seen is `take_buffer`'s job, before the next read.
        match stop {
            // The destination broke the protocol: it gets the code it is owed instead of
            // the source's close reply.
            Some(Stop::OwedClose) => {
                if let Some((code, reason)) = self.take_owed(link) {
                    Box::pin(self.send_close(link, code, reason)).await;
                }
            }
            Some(Stop::Violation(v)) => Box::pin(self.on_violation(v, link)).await,
            Some(Stop::OwnPong(_)) | None => {}
        }
    }

    fn walk(&mut self, link: &Link<'_>) -> frame::Walk {
        let me = self.me();
        self.walker.walk(
            &self.buf,
            self.sender(),
            link.env.relay.limits[me],
            self.close_sent,
            link.env.registry.awaits_pong(link.key, me),
            || link.close_request[me].get().is_some(),
        )
    }

    /// Writes the first `ready` bytes of the buffer to the destination and keeps
    /// `ready..keep_to` at the front (what follows `keep_to` is dropped).
    async fn forward(
        &mut self,
        link: &Link<'_>,
        ready: usize,
        keep_to: usize,
        close_forwarded: bool,
    ) {
        if close_forwarded {
            self.mark_close_sent(link);
        }
        if ready > 0 && !self.dst_failed {
            let buf = std::mem::take(&mut self.buf);
            // Boxed for the same reason as the read.
            let (res, slice) = Box::pin(self.dst.write_all(buf.slice(0..ready))).await;
            self.buf = slice.into_inner();
            if res.is_err() {
                // The other pump reads from this destination and will see it fail too.
                self.dst_failed = true;
                self.mark_close_sent(link);
            }
        }
        self.buf.copy_within(ready..keep_to, 0);
        self.buf.truncate(keep_to - ready);
    }
}

#[cfg(test)]
pub(crate) fn test_env() -> WorkerEnv {
    let settings = crate::config::Config {
        backends: vec!["127.0.0.1:1".into()],
        ..Default::default()
    }
    .validate()
    .unwrap();
    let pool = std::sync::Arc::new(crate::balancer::Pool::new(settings.backends.clone(), 1));
    WorkerEnv::new(0, std::sync::Arc::new(settings), pool, Default::default())
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
            let f = run(a, b, Vec::new(), Vec::new(), 0, &env);
            let size = std::mem::size_of_val(&f);
            eprintln!("relay::run future: {size} bytes");
            assert!(size <= 1024, "relay future grew to {size} bytes");
        });
    }
}
