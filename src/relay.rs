//! Frame forwarding both ways between a client and its backend, the close handshake, teardown.
//!
//! Each direction is a [`Pump`]: one source read half, one destination write half, one buffer.
//! It reads with io_uring into the buffer, walks the frame headers in it (validating each, see
//! `frame.rs`), and writes the same bytes to the destination: payloads are never copied,
//! unmasked or re-encoded, and client frames stay masked on their way to the backend.
//!
//! Each destination has exactly one writer (its pump), so wslb's own close frames are only
//! ever written by that pump, at a frame boundary. When a source breaks the protocol, its
//! pump sends the destination a close and asks the opposite pump, through [`Link`], for the
//! close code owed to the offender. That pump keeps forwarding what the other peer still
//! sends (answers to messages the offender sent before its bad frame arrive, as they would
//! without wslb), puts the owed close in place of that peer's close reply, or sends it when
//! the peer ends or the close grace runs out. Its pending read is cancelled so the grace
//! deadline starts at once.
//!
//! # Buffer ownership
//! A pump owns its `Vec<u8>` between operations. For a read, the vector moves into the read
//! op as a `SliceMut` over its spare capacity: the kernel owns it until the completion, and
//! it comes back in the op's `(result, buf)` with `len` advanced by the bytes received, also
//! on error and on cancellation (`ECANCELED` through the [`Canceller`]). For a write, the
//! filled prefix moves into the op as a `Slice` and comes back the same way. If a pump's
//! future is dropped mid-op (the close-grace timeout), monoio cancels the op and keeps the
//! buffer alive until the kernel's completion arrives, then frees it; the connection is
//! ending, so nothing wants it back. Between reads, a pump holds only a trailing partial
//! header (at most 13 bytes, or a partial close frame of at most 138) at the buffer's start.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use fastwebsockets::OpCode;
use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{
    AsyncWriteRent, AsyncWriteRentExt, CancelableAsyncReadRent, Canceller, OwnedReadHalf,
    OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;
use monoio::time::Instant;

use crate::frame::{self, MessageState, Sender, Violation};

/// What a relay needs from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct RelayConfig {
    /// Largest client frame payload; larger closes the client with 1009.
    pub max_client_frame: u64,
    /// Time a peer gets to finish the close handshake once it is under way.
    pub close_grace: Duration,
    /// A pump's buffer grows to fit the largest frame seen, up to this many bytes.
    pub max_buffer: usize,
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

const UP: usize = 0; // client -> backend
const DOWN: usize = 1; // backend -> client

/// The state the two pumps of one connection share. Both run in the same task, so plain
/// `Cell`/`RefCell` suffice; a borrow is never held across an await.
#[derive(Default)]
struct Link {
    /// A close owed to this pump's destination (which broke the protocol), to be sent in
    /// place of the source's close reply, or when the source ends or the grace runs out.
    close_request: [Cell<Option<(u16, &'static str)>>; 2],
    /// Cancels this pump's pending read so that it sees a close request promptly.
    readers: [RefCell<Canceller>; 2],
    violation: Cell<Option<(Sender, Violation)>>,
}

impl Link {
    fn request_close(&self, pump: usize, code: u16, reason: &'static str) {
        self.close_request[pump].set(Some((code, reason)));
        let fresh = self.readers[pump].take().cancel();
        self.readers[pump].replace(fresh);
    }
}

/// Relays frames until both sides have closed (or the close grace ran out), then drops both
/// sockets. `client_buf`/`backend_buf` hold bytes already read past each handshake head
/// (frames an eager peer sent together with it); their capacity is the relay buffer size.
pub async fn run(
    client: TcpStream,
    backend: TcpStream,
    client_buf: Vec<u8>,
    backend_buf: Vec<u8>,
    cfg: RelayConfig,
) -> Outcome {
    let (client_rd, client_wr) = client.into_split();
    let (backend_rd, backend_wr) = backend.into_split();
    let link = Link::default();
    let mut up = Pump::new(UP, Sender::Client, client_rd, backend_wr, client_buf, cfg);
    let mut down = Pump::new(
        DOWN,
        Sender::Backend,
        backend_rd,
        client_wr,
        backend_buf,
        cfg,
    );

    let mut up_fut = std::pin::pin!(up.run(&link));
    let mut down_fut = std::pin::pin!(down.run(&link));
    // When one direction has ended, the other gets the close grace to finish; after that its
    // future is dropped (see "Buffer ownership") and both sockets close with the halves.
    let (client_to_backend, backend_to_client) = monoio::select! {
        a = &mut up_fut => (a, finish(down_fut, cfg.close_grace).await),
        b = &mut down_fut => (finish(up_fut, cfg.close_grace).await, b),
    };
    Outcome {
        client_to_backend,
        backend_to_client,
        violation: link.violation.get(),
    }
}

async fn finish(rest: impl std::future::Future<Output = End>, grace: Duration) -> End {
    monoio::time::timeout(grace, rest)
        .await
        .unwrap_or(End::GraceExpired)
}

/// One direction of a connection.
struct Pump<Src, Dst: AsyncWriteRent> {
    me: usize,
    sender: Sender,
    src: OwnedReadHalf<Src>,
    dst: OwnedWriteHalf<Dst>,
    buf: Vec<u8>,
    /// Payload bytes of the frame being forwarded that have not arrived yet.
    pending: u64,
    msg: MessageState,
    /// Capacity that would hold the largest frame seen so far (capped at `max_buffer`).
    /// Growing to it lets the next such frame arrive in one read and leave in one write:
    /// a 16 KiB message is 16 392 bytes framed, and a 16 KiB buffer would take two of each.
    want_capacity: usize,
    /// A close frame went to the destination: anything further from the source is dropped
    /// (RFC 6455 §5.5.1: no frames after a close), and the source must end its TCP before
    /// `deadline`.
    close_sent: bool,
    /// The destination's socket failed; nothing more is written to it.
    dst_failed: bool,
    deadline: Option<Instant>,
    cfg: RelayConfig,
}

impl<Src, Dst> Pump<Src, Dst>
where
    Src: CancelableAsyncReadRent,
    Dst: AsyncWriteRent,
{
    fn new(
        me: usize,
        sender: Sender,
        src: OwnedReadHalf<Src>,
        dst: OwnedWriteHalf<Dst>,
        buf: Vec<u8>,
        cfg: RelayConfig,
    ) -> Self {
        Self {
            me,
            sender,
            src,
            dst,
            buf,
            pending: 0,
            msg: MessageState::default(),
            want_capacity: 0,
            close_sent: false,
            dst_failed: false,
            deadline: None,
            cfg,
        }
    }

    async fn run(&mut self, link: &Link) -> End {
        loop {
            self.forward_buffered(link).await;
            if link.close_request[self.me].get().is_some() && self.deadline.is_none() {
                self.deadline = Some(Instant::now() + self.cfg.close_grace);
            }

            let len = self.buf.len();
            let cap = self.buf.capacity();
            debug_assert!(len < cap, "a partial header never fills the buffer");
            let read = self.src.cancelable_read(
                std::mem::take(&mut self.buf).slice_mut(len..cap),
                link.readers[self.me].borrow().handle(),
            );
            let (res, slice) = match self.deadline {
                None => read.await,
                Some(d) => match monoio::time::timeout_at(d, read).await {
                    Ok(r) => r,
                    Err(_) => {
                        let owed = link.close_request[self.me].take();
                        if let (Some((code, reason)), 0) = (owed, self.pending) {
                            self.send_close(code, reason).await;
                        }
                        return End::GraceExpired;
                    }
                },
            };
            self.buf = slice.into_inner();
            match res {
                Ok(0) => return self.source_ended(link).await,
                Ok(_) => {}
                // A close request from the other pump: handled at the top of the loop.
                Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => {}
                Err(_) => return self.source_ended(link).await,
            }
        }
    }

    /// Walks the frames in the buffer, writes every complete header and every payload byte
    /// received so far to the destination in one write, and keeps a trailing partial header.
    async fn forward_buffered(&mut self, link: &Link) {
        let len = self.buf.len();
        let mut ready = 0; // bytes [0, ready) are forwarded
        let mut keep_to = len; // bytes [ready, keep_to) stay for the next round
        let mut violation = None;
        let mut owed_close = None;
        while ready < len {
            if self.pending > 0 {
                let take = self.pending.min((len - ready) as u64);
                ready += take as usize;
                self.pending -= take;
                continue;
            }
            if self.close_sent {
                keep_to = ready; // after a close, drop the rest
                break;
            }
            let Some(h) = frame::parse_header(&self.buf[ready..len]) else {
                break;
            };
            let max = match self.sender {
                Sender::Client => self.cfg.max_client_frame,
                Sender::Backend => u64::MAX,
            };
            let opcode = match h.check(self.sender, &mut self.msg, max) {
                Ok(op) => op,
                Err(v) => {
                    violation = Some(v);
                    keep_to = ready;
                    break;
                }
            };
            if opcode == OpCode::Close {
                // Close frames are checked whole (at most 139 bytes) before they go out, so
                // a bad code or reason is answered instead of forwarded.
                let end = ready + h.len + h.payload_len as usize;
                if end > len {
                    break;
                }
                if let Err(v) = frame::check_close_payload(&self.buf[ready + h.len..end], h.mask) {
                    violation = Some(v);
                    keep_to = ready;
                    break;
                }
                if let Some(owed) = link.close_request[self.me].take() {
                    // The destination broke the protocol: it gets the code it is owed
                    // instead of this close reply.
                    owed_close = Some(owed);
                    keep_to = ready;
                    break;
                }
                ready = end;
                self.mark_close_sent();
                continue;
            }
            ready += h.len;
            self.pending = h.payload_len;
            let framed = (h.len as u64 + h.payload_len).min(self.cfg.max_buffer as u64) as usize;
            self.want_capacity = self.want_capacity.max(framed);
        }

        if ready > 0 && !self.dst_failed {
            let buf = std::mem::take(&mut self.buf);
            let (res, slice) = self.dst.write_all(buf.slice(0..ready)).await;
            self.buf = slice.into_inner();
            if res.is_err() {
                // The other pump reads from this destination and will see it fail too.
                self.dst_failed = true;
                self.mark_close_sent();
            }
        }
        self.buf.copy_within(ready..keep_to, 0);
        self.buf.truncate(keep_to - ready);
        if self.want_capacity > self.buf.capacity() {
            // Only a partial header (<= 138 bytes) is moved by the reallocation.
            self.buf.reserve_exact(self.want_capacity - self.buf.len());
        }

        if let Some((code, reason)) = owed_close {
            self.send_close(code, reason).await;
        }
        if let Some(v) = violation {
            self.on_violation(v, link).await;
        }
    }

    /// The source broke the protocol: tell the destination the source is gone, and have the
    /// other pump send the source the close code RFC 6455 gives for the violation.
    async fn on_violation(&mut self, v: Violation, link: &Link) {
        tracing::debug!(from = ?self.sender, "protocol violation: {v}");
        if link.violation.get().is_none() {
            link.violation.set(Some((self.sender, v)));
        }
        let reason = match self.sender {
            Sender::Client => "client protocol error",
            Sender::Backend => "backend protocol error",
        };
        link.request_close(1 - self.me, v.close_code(), reason);
        let (code, why) = self.lost_source_close();
        self.send_close(code, why).await;
    }

    /// The close wslb sends the destination when the source is gone: 1001 (going away) to a
    /// backend whose client left, 1011 (unexpected condition) to a client whose backend
    /// failed.
    fn lost_source_close(&self) -> (u16, &'static str) {
        match self.sender {
            Sender::Client => (1001, "client went away"),
            Sender::Backend => (1011, "backend connection lost"),
        }
    }

    async fn send_close(&mut self, code: u16, reason: &'static str) {
        if self.close_sent || self.dst_failed {
            return;
        }
        self.mark_close_sent();
        // Towards a backend wslb speaks as a client, and client frames must be masked.
        let frame = frame::encode_close(code, reason, self.sender == Sender::Client);
        if self.dst.write_all(frame).await.0.is_err() {
            self.dst_failed = true;
        }
    }

    fn mark_close_sent(&mut self) {
        self.close_sent = true;
        if self.deadline.is_none() {
            self.deadline = Some(Instant::now() + self.cfg.close_grace);
        }
    }

    /// EOF or an error on the source: pass a close on (if none went yet and the destination
    /// is at a frame boundary), then end the destination's write side.
    async fn source_ended(&mut self, link: &Link) -> End {
        let end = if self.close_sent {
            End::Closed
        } else {
            let mid_frame = self.pending > 0;
            if !mid_frame {
                let owed = link.close_request[self.me].take();
                let (code, reason) = owed.unwrap_or_else(|| self.lost_source_close());
                self.send_close(code, reason).await;
            }
            End::SourceLost { mid_frame }
        };
        if !self.dst_failed {
            let _ = self.dst.shutdown().await;
        }
        end
    }
}
