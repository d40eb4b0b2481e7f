//! A TLS stream over monoio's TCP after its handshake (`handshake.rs`), on rustls's
//! unbuffered API: the two halves the relay's pumps read and write concurrently.
//!
//! # Buffers and ownership
//! rustls's unbuffered connections keep no record buffers of their own: every byte they
//! read or write is in a buffer this module owns, so an idle connection pins none.
//! - **Ciphertext in** (`Rx::cipher`): each read that needs bytes from the socket
//!   allocates a vector with room for one whole record ([`RECORD_ROOM`]); it moves into the
//!   io_uring read op (the kernel owns it until the completion) and comes back with the
//!   op's result, to become `Rx::cipher` (or be appended to the partial record waiting
//!   there). Complete records are decrypted at once; a trailing partial record stays, and
//!   once none is left the vector is freed. If a read op is dropped (only when the relay's
//!   close deadline passes or its source is found dead, see `relay/mod.rs`), monoio
//!   cancels it and frees its vector: the connection is ending, nothing wants its bytes.
//! - **Plaintext in** (`Rx::plain`): the part of a decrypted record that did not fit the
//!   reader's buffer (the relay's pool buffer); usually empty and unallocated.
//! - **Ciphertext out**: each write encrypts into a vector of its own, which moves into the
//!   write op and is freed when it completes. Records the reader produced for the peer
//!   (a TLS 1.3 KeyUpdate answer, a fatal alert) wait in `Shared::tx` and go out in front
//!   of the writer's next write, or its shutdown.
//!
//! kTLS would slot in here: after the handshake, `dangerous_into_kernel_connection` hands
//! the traffic secrets to the kernel (`setsockopt(TCP_ULP, "tls")`, `TLS_TX`/`TLS_RX`) and
//! both halves become plain socket halves (no user-space record work, and sendfile/splice
//! stay possible); post-handshake messages then arrive as control messages the reader
//! passes to the `KernelConnection`. This kernel offers no `tls` ULP
//! (`/proc/sys/net/ipv4/tcp_available_ulp`), so it is not built.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::rc::Rc;

use monoio::BufResult;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut, IoVecWrapper, IoVecWrapperMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf};
use monoio::net::TcpStream;
use rustls::unbuffered::{
    ConnectionState, EncryptError, InsufficientSizeError, UnbufferedStatus, WriteTraffic,
};

use super::handshake::{Unbuffered, encode, flush_alert};
use crate::stream::{Halves, Readiness, ready};

/// Room for one whole TLS record as it arrives: 2^14 bytes of plaintext, plus the most
/// either version may add (TLS 1.2 allows 2048 bytes of expansion, TLS 1.3 256), plus the
/// 5-byte header. A read never needs more to make progress.
pub const RECORD_ROOM: usize = (1 << 14) + 2048 + 5;

/// The connection state both halves share. Both halves live in one task (the relay's), and
/// every borrow below ends before an await, so `RefCell`s never conflict.
struct Shared<C> {
    conn: RefCell<C>,
    rx: RefCell<Rx>,
    /// Records for the peer that the reader produced; sent ahead of the next write.
    tx: RefCell<Vec<u8>>,
}

#[derive(Default)]
struct Rx {
    cipher: Vec<u8>,
    plain: Vec<u8>,
    /// The last processing stopped because the reader's buffer was full: whole records
    /// may still be waiting in `cipher`. A flag, not a look at `cipher`'s front: while a
    /// handshake message is joined from several records, rustls keeps the decrypted
    /// fragments there, and only its deframer knows where the records start.
    more: bool,
    /// The peer sent close_notify, or the TLS layer failed: reads return end of stream
    /// once `plain` is empty.
    ended: bool,
    /// rustls reported an error: it is never asked again. Its deframer may point into
    /// `cipher` (a buffer it has not seen would be out of its bounds), and processing the
    /// same bad bytes again would fail again and queue a second fatal alert.
    failed: bool,
}

/// A TLS stream whose handshake is done. `C` is the rustls connection (server side for
/// clients, client side for backends).
pub struct TlsStream<C> {
    rd: TlsReader<C>,
    wr: TlsWriter<C>,
}

pub struct TlsReader<C> {
    tcp: OwnedReadHalf<TcpStream>,
    tls: Rc<Shared<C>>,
}

pub struct TlsWriter<C> {
    tcp: OwnedWriteHalf<TcpStream>,
    tls: Rc<Shared<C>>,
}

impl<C: Unbuffered> TlsStream<C> {
    /// The stream after a handshake: its halves, rustls's connection, the bytes read past
    /// the handshake (a partial record at most), plaintext that came with the peer's last
    /// flight, and records for the peer that wait for the first write.
    pub(super) fn established(
        rd: OwnedReadHalf<TcpStream>,
        wr: OwnedWriteHalf<TcpStream>,
        conn: C,
        mut cipher: Vec<u8>,
        plain: Vec<u8>,
        mut tx: Vec<u8>,
    ) -> Self {
        cipher.shrink_to_fit();
        tx.shrink_to_fit();
        let tls = Rc::new(Shared {
            conn: RefCell::new(conn),
            rx: RefCell::new(Rx {
                cipher,
                plain,
                ..Rx::default()
            }),
            tx: RefCell::new(tx),
        });
        TlsStream {
            rd: TlsReader {
                tcp: rd,
                tls: tls.clone(),
            },
            wr: TlsWriter { tcp: wr, tls },
        }
    }

    /// The negotiated protocol version (`None` only before a handshake).
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.rd.tls.conn.borrow().common().protocol_version()
    }
}

/// Where decrypted bytes go: the spare room of the reader's buffer.
struct Sink {
    ptr: *mut u8,
    cap: usize,
    len: usize,
}

impl Sink {
    fn room(&self) -> usize {
        self.cap - self.len
    }

    /// Copies what fits of `src`; returns how much.
    #[allow(unsafe_code)]
    fn put(&mut self, src: &[u8]) -> usize {
        let n = src.len().min(self.room());
        // SAFETY: `ptr` is the write pointer of an `IoBufMut` owned by the read in progress
        // (see `TlsReader::read`), valid for `cap` bytes; `len + n <= cap`, and `src` is a
        // rustls or `Rx` buffer, which cannot overlap the reader's own buffer.
        unsafe {
            self.ptr
                .add(self.len)
                .copy_from_nonoverlapping(src.as_ptr(), n)
        };
        self.len += n;
        n
    }
}

impl<C: Unbuffered> Shared<C> {
    /// rustls failed: takes the alert it queued (for the writer's shutdown to send) and
    /// marks the stream failed, so that rustls is not asked again (see `Rx::failed`).
    fn fail(&self, conn: &mut C, rx: &mut Rx, e: rustls::Error) -> io::Error {
        flush_alert(conn, &mut rx.cipher, &mut self.tx.borrow_mut());
        rx.failed = true;
        rx.ended = true;
        rx.more = false;
        rx.cipher = Vec::new();
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    /// Decrypts buffered records into `sink` until it is full or no whole record is left.
    /// Returns whether the stream has ended (close_notify, or a TLS error, returned as such
    /// the first time).
    fn decrypt(&self, sink: &mut Sink) -> io::Result<bool> {
        let mut rx = self.rx.borrow_mut();
        let rx = &mut *rx;
        if !rx.plain.is_empty() {
            let n = sink.put(&rx.plain);
            rx.plain.drain(..n);
            if rx.plain.is_empty() {
                rx.plain = Vec::new();
            }
        }
        let mut conn = self.conn.borrow_mut();
        rx.more = false;
        while !rx.ended {
            if sink.room() == 0 {
                rx.more = true;
                break;
            }
            let UnbufferedStatus { mut discard, state } = conn.process(&mut rx.cipher);
            let mut stop = false;
            match state {
                Err(e) => {
                    let _ = discard;
                    return Err(self.fail(&mut conn, rx, e));
                }
                Ok(ConnectionState::ReadTraffic(mut r)) => {
                    while let Some(rec) = r.next_record() {
                        // (rustls 0.23 only pops records it decrypted already.)
                        let Ok(rec) = rec else { break };
                        discard += rec.discard;
                        let n = sink.put(rec.payload);
                        rx.plain.extend_from_slice(&rec.payload[n..]);
                    }
                }
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    encode(&mut e, &mut self.tx.borrow_mut())
                }
                // What was encoded is in `tx`, and goes with the writer's next write.
                Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => {
                    rx.ended = true;
                    stop = true;
                }
                // No whole record left to process.
                Ok(_) => stop = true,
            }
            rx.cipher.drain(..discard);
            if stop {
                break;
            }
        }
        if rx.cipher.is_empty() && rx.cipher.capacity() > 0 {
            rx.cipher = Vec::new();
        }
        Ok(rx.ended && rx.plain.is_empty())
    }

    fn buffered(&self) -> bool {
        let rx = self.rx.borrow();
        !rx.plain.is_empty() || rx.ended || rx.more
    }

    /// Encrypts `plain` (after any records the reader left for the peer) into one vector.
    ///
    /// rustls hands out the right to encrypt only from `process`, which may also look at
    /// received bytes: it is given the reader's ciphertext as it stands (rustls's
    /// handshake deframer may point into a partial record there; another buffer would be
    /// out of its bounds). The reader decrypts every whole record before it waits, so
    /// there is normally nothing for it to process; if there is, it goes to the reader.
    fn encrypt(&self, plain: &[u8], close_notify: bool) -> io::Result<Vec<u8>> {
        let mut out = std::mem::take(&mut *self.tx.borrow_mut());
        let mut conn = self.conn.borrow_mut();
        let mut rx = self.rx.borrow_mut();
        let rx = &mut *rx;
        if rx.failed {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the TLS connection failed",
            ));
        }
        loop {
            let UnbufferedStatus { discard, state } = conn.process(&mut rx.cipher);
            let mut done = false;
            match state {
                Ok(ConnectionState::EncodeTlsData(mut e)) => encode(&mut e, &mut out),
                Ok(ConnectionState::TransmitTlsData(mut t)) => {
                    if let Some(mut w) = t.may_encrypt_app_data() {
                        seal(&mut w, &mut out, plain, close_notify)?;
                        done = true;
                    }
                    t.done();
                }
                Ok(ConnectionState::WriteTraffic(mut w)) => {
                    seal(&mut w, &mut out, plain, close_notify)?;
                    done = true;
                }
                // Records the reader has not decrypted yet (see above): theirs.
                Ok(ConnectionState::ReadTraffic(mut r)) => {
                    while let Some(Ok(rec)) = r.next_record() {
                        rx.plain.extend_from_slice(rec.payload);
                    }
                }
                Ok(ConnectionState::PeerClosed) => rx.ended = true,
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotConnected,
                        "TLS connection closed",
                    ));
                }
                Err(e) => {
                    // The alert goes out with this write's bytes dropped: the connection
                    // is over (the pump sees the write fail), the shutdown sends `tx`.
                    let e = self.fail(&mut conn, rx, e);
                    self.tx.borrow_mut().splice(0..0, out);
                    return Err(e);
                }
            }
            rx.cipher.drain(..discard);
            if done {
                // rustls gives the right to encrypt only once nothing is left to process.
                rx.more = false;
                return Ok(out);
            }
        }
    }
}

/// Appends `plain` encrypted, or a close_notify, to `out`.
fn seal<D>(
    w: &mut WriteTraffic<'_, D>,
    out: &mut Vec<u8>,
    plain: &[u8],
    close_notify: bool,
) -> io::Result<()> {
    write_into(out, plain.len(), |o| {
        if close_notify {
            w.queue_close_notify(o)
        } else {
            w.encrypt(plain, o)
        }
    })
}

/// Appends what `f` writes for `plain` bytes of plaintext into a zeroed tail of `out`,
/// growing it if rustls asks for more.
fn write_into(
    out: &mut Vec<u8>,
    plain: usize,
    mut f: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
) -> io::Result<()> {
    let len = out.len();
    // Each record of up to 2^14 bytes adds at most 29 (TLS 1.2 AES-GCM: header, explicit
    // nonce, tag; TLS 1.3 adds 22); rounded up, so rustls never has to ask twice. Zeroing
    // only this much keeps a 64-byte write from clearing kilobytes.
    let records = plain / (1 << 14) + 1;
    out.resize(len + plain + records * 64, 0);
    loop {
        match f(&mut out[len..]) {
            Ok(n) => {
                out.truncate(len + n);
                return Ok(());
            }
            Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
                out.resize(len + required_size, 0)
            }
            Err(e) => {
                out.truncate(len);
                return Err(io::Error::other(e.to_string()));
            }
        }
    }
}

impl<C: Unbuffered> AsyncReadRent for TlsReader<C> {
    #[allow(unsafe_code)]
    async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        loop {
            let mut sink = Sink {
                ptr: buf.write_ptr(),
                cap: buf.bytes_total(),
                len: 0,
            };
            let ended = match self.tls.decrypt(&mut sink) {
                Ok(ended) => ended,
                Err(e) => return (Err(e), buf),
            };
            if sink.len > 0 || ended || sink.cap == 0 {
                // SAFETY: `sink.len` bytes from the write pointer were just written.
                unsafe { buf.set_init(sink.len) };
                return (Ok(sink.len), buf);
            }
            // Need more ciphertext. A partial record stays where it is (rustls may point
            // into it, and the writer processes it too, see `encrypt`): the read goes
            // into a vector of its own, which moves into the read op (see the module
            // docs) and is then appended, or simply taken when nothing was waiting.
            let incoming = Vec::with_capacity(RECORD_ROOM);
            let (res, incoming) = self.tcp.read(incoming).await;
            {
                let mut rx = self.tls.rx.borrow_mut();
                if rx.cipher.is_empty() {
                    rx.cipher = incoming;
                } else {
                    rx.cipher.extend_from_slice(&incoming);
                }
            }
            match res {
                // A TCP end without close_notify: the end of the stream all the same
                // (a truncation only matters to a peer that frames by connection end;
                // WebSocket frames carry their own lengths).
                Ok(0) => return (Ok(0), buf),
                Ok(_) => {}
                Err(e) => return (Err(e), buf),
            }
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        let n = match IoVecWrapperMut::new(buf) {
            Ok(slice) => {
                let (res, slice) = self.read(slice).await;
                buf = slice.into_inner();
                match res {
                    Ok(n) => n,
                    Err(e) => return (Err(e), buf),
                }
            }
            Err(b) => {
                buf = b;
                0
            }
        };
        (Ok(n), buf)
    }
}

impl<C: Unbuffered> Readiness for TlsReader<C> {
    /// Decrypted bytes, a whole record or the stream's end are here: the socket may be
    /// quiet, the stream is readable.
    fn buffered(&self) -> bool {
        self.tls.buffered()
    }

    fn socket_ready(&self) -> impl Future<Output = io::Result<()>> {
        ready(&self.tcp)
    }
}

impl<C: Unbuffered> TlsWriter<C> {
    async fn send(&mut self, out: Vec<u8>) -> io::Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        self.tcp.write_all(out).await.0.map(|_| ())
    }
}

impl<C: Unbuffered> AsyncWriteRent for TlsWriter<C> {
    #[allow(unsafe_code)]
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        if buf.bytes_init() == 0 {
            // An empty `IoBuf` may have a null read pointer (monoio's `IoVecWrapper` over
            // an empty iovec), which `from_raw_parts` must not get.
            return (Ok(0), buf);
        }
        // SAFETY: an `IoBuf` is valid for `bytes_init` bytes from its read pointer while
        // it is owned, and this future owns it; the slice is gone before the await.
        let plain = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
        let n = plain.len();
        let out = match self.tls.encrypt(plain, false) {
            Ok(out) => out,
            Err(e) => return (Err(e), buf),
        };
        match self.send(out).await {
            Ok(()) => (Ok(n), buf),
            Err(e) => (Err(e), buf),
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        let slice = match IoVecWrapper::new(buf) {
            Ok(slice) => slice,
            Err(buf) => return (Ok(0), buf),
        };
        let (res, slice) = self.write(slice).await;
        (res, slice.into_inner())
    }

    async fn flush(&mut self) -> io::Result<()> {
        let out = std::mem::take(&mut *self.tls.tx.borrow_mut());
        self.send(out).await
    }

    /// Sends close_notify (after anything the reader left for the peer), then ends the
    /// TCP write side.
    async fn shutdown(&mut self) -> io::Result<()> {
        let out = self
            .tls
            .encrypt(&[], true)
            .unwrap_or_else(|_| std::mem::take(&mut *self.tls.tx.borrow_mut()));
        let sent = self.send(out).await;
        let shut = self.tcp.shutdown().await;
        sent.and(shut)
    }
}

impl<C: Unbuffered> AsyncReadRent for TlsStream<C> {
    fn read<T: IoBufMut>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> {
        self.rd.read(buf)
    }
    fn readv<T: IoVecBufMut>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> {
        self.rd.readv(buf)
    }
}

impl<C: Unbuffered> AsyncWriteRent for TlsStream<C> {
    fn write<T: IoBuf>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> {
        self.wr.write(buf)
    }
    fn writev<T: IoVecBuf>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> {
        self.wr.writev(buf)
    }
    fn flush(&mut self) -> impl Future<Output = io::Result<()>> {
        self.wr.flush()
    }
    fn shutdown(&mut self) -> impl Future<Output = io::Result<()>> {
        self.wr.shutdown()
    }
}

impl<C: Unbuffered> Readiness for TlsStream<C> {
    fn buffered(&self) -> bool {
        self.rd.buffered()
    }

    fn socket_ready(&self) -> impl Future<Output = io::Result<()>> {
        self.rd.socket_ready()
    }
}

impl<C: Unbuffered> Halves for TlsStream<C> {
    type Reader = TlsReader<C>;
    type Writer = TlsWriter<C>;
    fn into_halves(self) -> (TlsReader<C>, TlsWriter<C>) {
        (self.rd, self.wr)
    }
}
