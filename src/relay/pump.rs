//! One direction of a relay: wait for the source, read, walk the frames, write the same
//! bytes on. What it does at the ends of a connection lives in `close.rs`.

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};

use super::End;
use super::close::CloseState;
use super::link::{Link, Waited};
use crate::frame::{Side, Stop, Walker};
use crate::metrics::Event;
use crate::recv_ring::{Chunk, Next, Source};
use crate::relay::registry::{Attention, GoAway};
use crate::stream::Readiness;

/// A read gets at least this much room: a partial header moved into a small vector is
/// never read into directly.
const MIN_READ: usize = 1024;

/// How much of a chunk is copied at a time behind a partial header kept from the chunk
/// before: enough to complete any header and any close or keepalive pong (139 bytes), so
/// that the rest of the chunk is forwarded from the ring's buffer.
const JOIN_STEP: usize = 256;

/// What one read step came to.
enum Read {
    Data,
    /// Something to act on at a frame boundary arrived while waiting (closing began, or
    /// the registry has something due); the loop handles it.
    Interrupted,
    /// EOF or an error on the source.
    Ended,
    /// The close deadline passed.
    Expired,
}

/// One direction of a connection.
pub(super) struct Pump<Src, Dst> {
    /// The side this pump reads (its destination is the other one).
    pub(super) from: Side,
    pub(super) close: CloseState,
    /// The last read filled the buffer: more is waiting, read again without a poll.
    last_read_full: bool,
    src: Src,
    pub(super) dst: Dst,
    pub(super) buf: Vec<u8>,
    /// Frame-level state: payload still to come, fragmentation, largest frame seen.
    pub(super) walker: Walker,
    /// The source's multishot receive through the worker's receive ring, while its frames
    /// fit the ring's buffers (`recv_ring`); `None`: the pump reads into `buf` itself.
    /// The relay closes it when it ends.
    pub(super) recv: Option<Source>,
}

impl<Src, Dst> Pump<Src, Dst>
where
    Src: AsyncReadRent + Readiness,
    Dst: AsyncWriteRent,
{
    pub(super) fn new(from: Side, src: Src, dst: Dst, buf: Vec<u8>, recv: Option<Source>) -> Self {
        Self {
            recv,
            from,
            close: CloseState::Open,
            last_read_full: false,
            src,
            dst,
            buf,
            walker: Walker::default(),
        }
    }

    pub(super) async fn run(&mut self, link: &Link<'_>) -> End {
        loop {
            self.forward_buffered(link).await;
            let at_boundary = self.walker.pending == 0;
            match link.attention(self.from, self.close == CloseState::Open) {
                // The instance drains (1001), the connection idled out (1001), its
                // backend was removed (1012) or it is moved by rebalancing (1012): a close to this pump's destination, at a
                // frame boundary. The peer's close reply is then dropped (a close already
                // went its way), and its TCP end finishes this pump.
                Some(Attention::GoAway(why)) if at_boundary => {
                    // Counted once per connection, by the pump reading the client.
                    let event = match why {
                        GoAway::Idle => Some(Event::IdleClose),
                        GoAway::RemovedBackend => Some(Event::RemovedBackendClose),
                        GoAway::Rebalance => Some(Event::RebalanceClose),
                        GoAway::Drain => None,
                    };
                    if let (Some(e), Side::Client) = (event, self.from) {
                        link.count(e);
                    }
                    let (code, reason) = why.close();
                    // Boxed, like every close path: an idle connection is a parked task the
                    // size of this future, and room for the rarely taken paths would be paid
                    // by every connection.
                    Box::pin(self.send_close(link, code, reason)).await;
                }
                Some(Attention::Ping) if at_boundary => Box::pin(self.send_ping(link)).await,
                Some(Attention::SourceDead) => {
                    link.count(Event::DeadPeer);
                    tracing::info!(
                        from = ?self.from,
                        "peer did not answer a keepalive ping within the idle timeout"
                    );
                    return Box::pin(self.source_ended(link)).await;
                }
                _ => {}
            }
            match self.read(link).await {
                Read::Data | Read::Interrupted => {}
                Read::Ended => return Box::pin(self.source_ended(link)).await,
                Read::Expired => return Box::pin(self.expired(link)).await,
            }
        }
    }

    /// Reads more from the source. At a frame boundary it first gives the buffer back and
    /// waits for readability, so that a quiet connection pins no buffer.
    async fn read(&mut self, link: &Link<'_>) -> Read {
        if self.recv.is_some() {
            return self.receive(link).await;
        }
        let waited = self.walker.pending == 0 && !self.last_read_full;
        if waited && !self.src.buffered() {
            self.release_buffer(link);
            let open = self.close == CloseState::Open;
            let ready = std::pin::pin!(self.src.socket_ready());
            match link
                .wait(ready, link.interrupt(self.from, open, true))
                .await
            {
                Waited::Done(Ok(())) => {}
                Waited::Done(Err(_)) => return Read::Ended,
                Waited::Interrupted => return Read::Interrupted,
                Waited::Expired => return Read::Expired,
            }
        }
        self.take_buffer(link);

        let len = self.buf.len();
        let cap = self.buf.capacity();
        debug_assert!(len < cap, "a partial header never fills the buffer");
        let from = self.from; // one byte: it lives across the await below
        // Boxed: monoio's read future is 256 bytes, and an idle pump (waiting for
        // readability) should not carry room for it. One small allocation per read from
        // mimalloc's thread-local free list costs far less than the read itself.
        // The buffer: the kernel owns its spare capacity (a `SliceMut`) until the read
        // completes; it comes back in `(result, slice)` with `len` advanced by what
        // arrived. A read that may wait (mid-frame, or after a full buffer) also ends when
        // the keepalive finds the source dead. After a readiness wait the data is there and
        // a TCP read completes at once; a TLS read may still wait for the rest of a record,
        // so it is bounded the same way.
        let mut read = Box::pin(
            self.src
                .read(std::mem::take(&mut self.buf).slice_mut(len..cap)),
        );
        let (res, slice) = match link
            .wait(read.as_mut(), link.interrupt(from, true, false))
            .await
        {
            Waited::Done(r) => r,
            // The read was dropped (cancelled): its buffer goes with it, and the pump ends
            // without it.
            Waited::Interrupted => return Read::Ended,
            Waited::Expired => return Read::Expired,
        };
        self.buf = slice.into_inner();
        match res {
            Ok(0) | Err(_) => Read::Ended,
            Ok(n) => {
                link.heard(self.from);
                self.last_read_full = len + n == cap;
                Read::Data
            }
        }
    }

    /// Waits for the next chunk of the source's multishot receive and forwards it. The
    /// pump holds no buffer while it waits (a partial header moves to a vector of its
    /// size). At a frame boundary the wait also ends for what the registry has due, as a
    /// readiness wait does; mid-frame only for a dead source.
    async fn receive(&mut self, link: &Link<'_>) -> Read {
        self.release_buffer(link);
        let at_boundary = self.walker.pending == 0;
        let open = self.close == CloseState::Open;
        let from = self.from;
        let (Some(src), Some(ring)) = (&self.recv, link.recv_ring()) else {
            return Read::Interrupted;
        };
        let next = {
            let next = std::pin::pin!(ring.next(src));
            link.wait(next, link.interrupt(from, open, at_boundary))
                .await
        };
        match next {
            Waited::Done(Next::Chunk(c)) => {
                link.heard(from);
                // Boxed, write included: one allocation per chunk from mimalloc's
                // thread-local free list, and an idle pump carries no room for it.
                Box::pin(self.forward_chunk(link, c)).await;
                Read::Data
            }
            Waited::Done(Next::End(_)) => Read::Ended,
            Waited::Done(Next::Stopped) => {
                // From here on the pump reads its source itself.
                if let Some(src) = self.recv.take() {
                    ring.close(src);
                }
                Read::Interrupted
            }
            Waited::Interrupted if at_boundary => Read::Interrupted,
            Waited::Interrupted => Read::Ended,
            Waited::Expired => Read::Expired,
        }
    }

    /// Forwards one chunk from the ring's buffer: the frames in it are walked and written
    /// from the buffer itself, zero-copy; only a trailing partial header, or a close,
    /// keepalive pong or violation and what follows it, is copied to `buf`, for
    /// `forward_buffered` to handle as a read into `buf` would have it. A partial header
    /// kept from before is completed from the chunk's first bytes (`JOIN_STEP` at a time).
    async fn forward_chunk(&mut self, link: &Link<'_>, chunk: Chunk) {
        let len = chunk.bytes().len();
        let mut at = 0;
        while !self.buf.is_empty() {
            if self.close != CloseState::Open || at == len {
                return;
            }
            let take = (len - at).min(JOIN_STEP);
            self.buf.extend_from_slice(&chunk.bytes()[at..at + take]);
            at += take;
            // Boxed: rare (a header split between two chunks), and every idle pump's
            // future would carry room for it.
            Box::pin(self.forward_buffered(link)).await;
        }
        if self.close != CloseState::Open || at == len {
            return;
        }
        // The walk stops before a close, a keepalive pong or a violation without taking
        // it into its state (the frame is checked again from `buf`), and its state at
        // `ready` is that of the bytes before.
        let w = self
            .walker
            .walk(&chunk.bytes()[at..], link.rules(self.from));
        let end = at + w.ready;
        if end < len {
            self.buf.extend_from_slice(&chunk.bytes()[end..]);
        }
        if self.walker.want_capacity > link.recv_buffer_bytes() {
            // A frame larger than the ring's buffers: it would move in pieces, a write
            // each. The pump goes back to its own buffers, which grow to fit it.
            if let (Some(src), Some(ring)) = (&self.recv, link.recv_ring()) {
                ring.stop(src);
            }
        }
        if w.ready == 0 || self.close == CloseState::DstFailed {
            return;
        }
        // The chunk moves into the write op (see "Buffer ownership" in `recv_ring`) and
        // goes back to the ring when the op returns it, here or, for a write dropped at the
        // close deadline, when the kernel is done with it. Not boxed: this whole future is
        // (see `receive`).
        let ok = {
            let write = std::pin::pin!(self.dst.write_all(chunk.slice(at..end)));
            matches!(
                link.wait(write, std::future::pending()).await,
                Waited::Done((Ok(_), _))
            )
        };
        if ok {
            link.relayed(self.from, end - at, w.frames);
        } else {
            self.dst_failed(link);
        }
    }

    /// Makes sure `buf` is a pool buffer big enough for the largest frame seen, keeping the
    /// partial header it may hold.
    fn take_buffer(&mut self, link: &Link<'_>) {
        let want = (self.walker.want_capacity as usize).max(self.buf.len() + 1);
        if self.buf.capacity() >= want && self.buf.capacity() >= MIN_READ {
            return;
        }
        let mut b = link.buffers().take(want);
        b.extend_from_slice(&self.buf);
        link.buffers().give(std::mem::replace(&mut self.buf, b));
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
        link.buffers().give(std::mem::replace(&mut self.buf, rest));
    }

    /// Walks the frames in the buffer, writes every complete header and every payload byte
    /// received so far to the destination in one write, and keeps a trailing partial header.
    async fn forward_buffered(&mut self, link: &Link<'_>) {
        if self.close != CloseState::Open {
            // A close already went to the destination: nothing more may follow it (RFC 6455
            // §5.5.1), so what the source still sends is dropped; its TCP end finishes
            // this pump. Payload of a frame under way when the destination failed goes
            // nowhere either.
            self.walker.pending = 0;
            self.buf.clear();
            return;
        }
        // Only small values live across the awaits below: every idle connection's task
        // carries room for them twice (one per pump).
        loop {
            let w = self.walker.walk(&self.buf, link.rules(self.from));
            let Some(stop) = w.stop else {
                self.forward(link, w.ready, w.frames).await;
                return;
            };
            match stop {
                Stop::KeepalivePong(n) => {
                    // wslb's pong, if it awaits one from this source, is taken out of the
                    // stream (the destination never sent that ping); any other is
                    // forwarded. The walk goes on after it.
                    let own = link.awaits_pong(self.from);
                    let (upto, frames) = if own {
                        (w.ready, w.frames)
                    } else {
                        (w.ready + n, w.frames + 1)
                    };
                    Box::pin(self.forward(link, upto, frames)).await;
                    if own {
                        self.buf.drain(..n);
                        link.pong_received(self.from);
                    }
                    if self.close != CloseState::Open {
                        return self.buf.clear();
                    }
                }
                Stop::Close { len, code } => {
                    // The destination broke the protocol: it gets the code it is owed
                    // instead of the source's close reply.
                    if link.has_owed(self.from) {
                        self.forward(link, w.ready, w.frames).await;
                        self.buf.clear();
                        return Box::pin(self.send_owed_close(link)).await;
                    }
                    self.buf.truncate(w.ready + len);
                    self.forward(link, w.ready + len, w.frames + 1).await;
                    if self.close != CloseState::DstFailed {
                        link.closed(self.from.into(), code);
                    }
                    self.close_sent(link);
                    return;
                }
                Stop::Violation(v) => {
                    self.forward(link, w.ready, w.frames).await;
                    self.buf.clear();
                    return Box::pin(self.on_violation(v, link)).await;
                }
            }
        }
    }

    /// Writes the first `upto` bytes of the buffer (holding `frames` frame headers) to the
    /// destination and keeps the rest at the front.
    async fn forward(&mut self, link: &Link<'_>, upto: usize, frames: u32) {
        if upto > 0 && self.close != CloseState::DstFailed {
            // The filled prefix moves into the write op as a `Slice`: the kernel owns it
            // until the write completes, and it comes back with the op's result. Boxed for
            // the same reason as the read.
            let buf = std::mem::take(&mut self.buf);
            let mut write = Box::pin(self.dst.write_all(buf.slice(0..upto)));
            let ok = match link.wait(write.as_mut(), std::future::pending()).await {
                Waited::Done((res, slice)) => {
                    self.buf = slice.into_inner();
                    if res.is_ok() {
                        link.relayed(self.from, upto, frames);
                    }
                    res.is_ok()
                }
                // The destination did not take the bytes before the deadline; the op and
                // the buffer went with it, and so does the connection.
                Waited::Expired | Waited::Interrupted => false,
            };
            drop(write);
            if !ok {
                self.dst_failed(link);
                if self.buf.capacity() == 0 {
                    return;
                }
            }
        }
        self.buf.drain(..upto);
    }
}
