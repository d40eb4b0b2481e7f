//! The TLS handshake over monoio's TCP, client or server side, on rustls's unbuffered API:
//! records read into a buffer of the handshake's own (none until the peer sends), flights
//! written as rustls encodes them, until application data may flow; then the connection
//! becomes a [`TlsStream`] (`stream.rs`).

use monoio::buf::IoBufMut;
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;
use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, InsufficientSizeError, UnbufferedStatus,
};
use std::io;

use super::plain_http;
use super::stream::{RECORD_ROOM, TlsStream};
use crate::stream::ready;

/// rustls's unbuffered connection, client or server side: what the stream needs of it.
pub trait Unbuffered: 'static {
    type Data;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
    fn common(&self) -> &rustls::CommonState;
    /// What to send instead of a TLS alert when the peer's first bytes (`first`) are not
    /// TLS; `None`: the alert. Only a server answers (plain HTTP, `plain_http.rs`).
    fn not_tls_answer(_first: &[u8]) -> Option<&'static [u8]> {
        None
    }
}

impl Unbuffered for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
    fn common(&self) -> &rustls::CommonState {
        self
    }
    fn not_tls_answer(first: &[u8]) -> Option<&'static [u8]> {
        plain_http::is_request(first).then_some(plain_http::RESPONSE)
    }
}

impl Unbuffered for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
    fn common(&self) -> &rustls::CommonState {
        self
    }
}

/// Why a TLS handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeFailure {
    #[error("TLS: {0}")]
    Tls(rustls::Error),
    #[error("peer closed the connection during the TLS handshake")]
    Closed,
    #[error("I/O error during the TLS handshake: {0}")]
    Io(io::Error),
    /// The client's first bytes were a plain HTTP request; answered 400 in plain HTTP.
    #[error("plain HTTP sent to the TLS port; answered 400")]
    PlainHttp,
}

/// Runs the handshake of `conn` over `tcp` until application data may flow. Plaintext that
/// arrives with the peer's last flight (a client's request right behind its Finished) is
/// kept for the first read. Not bounded in time: the caller bounds it.
pub async fn handshake<C: Unbuffered>(
    tcp: TcpStream,
    mut conn: C,
) -> Result<TlsStream<C>, HandshakeFailure> {
    let (mut rd, mut wr) = tcp.into_split();
    let mut incoming: Vec<u8> = Vec::new();
    let mut outgoing: Vec<u8> = Vec::new();
    let mut plain: Vec<u8> = Vec::new();
    // Whether rustls has taken a record yet: until then `incoming` starts with the peer's
    // first byte.
    let mut started = false;
    loop {
        let t_handshaking = conn.common().is_handshaking();
        let UnbufferedStatus { discard, state } = conn.process(&mut incoming);
        let mut transmit = false;
        let mut need_more = false;
        let mut done = false;
        match state {
            Err(e) => {
                let bytes = (&mut incoming, std::mem::take(&mut outgoing));
                return Err(refuse(&mut wr, &mut conn, bytes, started, e).await);
            }
            Ok(ConnectionState::EncodeTlsData(mut e)) => encode(&mut e, &mut outgoing),
            Ok(ConnectionState::TransmitTlsData(t)) => {
                t.done();
                // What TLS 1.3 sends once the handshake is done (a server's session
                // tickets, a client's Finished) waits for the first write (the 101, the
                // upgrade request) instead of a send and a TCP segment of its own: the
                // peer needs none of it before that. (Not TLS 1.2: its server's last
                // flight carries the Finished the client waits for.)
                transmit = t_handshaking
                    || conn.common().protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3);
            }
            Ok(ConnectionState::BlockedHandshake) => need_more = true,
            Ok(ConnectionState::WriteTraffic(_)) => done = true,
            Ok(ConnectionState::ReadTraffic(mut r)) => {
                while let Some(rec) = r.next_record() {
                    match rec {
                        Ok(rec) => plain.extend_from_slice(rec.payload),
                        Err(e) => return Err(HandshakeFailure::Tls(e)),
                    }
                }
            }
            // No early data is accepted (`max_early_data_size` is 0), so rustls never
            // offers it; a peer that ends the connection ends the handshake.
            Ok(ConnectionState::ReadEarlyData(_)) => {
                return Err(HandshakeFailure::Tls(rustls::Error::General(
                    "early data".into(),
                )));
            }
            Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => {
                return Err(HandshakeFailure::Closed);
            }
            Ok(_) => return Err(HandshakeFailure::Closed),
        }
        incoming.drain(..discard);
        started |= discard > 0;
        if transmit && !outgoing.is_empty() {
            let (res, mut back) = wr.write_all(std::mem::take(&mut outgoing)).await;
            res.map_err(HandshakeFailure::Io)?;
            back.clear();
            outgoing = back;
        }
        if done {
            break;
        }
        if need_more {
            read_more(&mut rd, &mut incoming).await?;
        }
    }
    Ok(TlsStream::established(
        rd, wr, conn, incoming, plain, outgoing,
    ))
}

/// A handshake rustls refused: bytes that are not TLS from the first get a plain answer
/// (a plain HTTP request: `plain_http.rs`), looked at only now, so a handshake that goes
/// well pays nothing for it; then a FIN, or a RST if the client sent more than the first
/// read took (room for a TLS record, 16 KiB and more; curl and browsers send a request
/// head in one write). Otherwise the alert rustls queued to tell the peer why goes out,
/// best effort.
async fn refuse<C: Unbuffered>(
    wr: &mut OwnedWriteHalf<TcpStream>,
    conn: &mut C,
    (incoming, mut outgoing): (&mut Vec<u8>, Vec<u8>),
    started: bool,
    e: rustls::Error,
) -> HandshakeFailure {
    if !started && let Some(answer) = C::not_tls_answer(incoming) {
        let _ = wr.write_all(answer).await;
        let _ = wr.shutdown().await;
        return HandshakeFailure::PlainHttp;
    }
    // The same bytes go back in: rustls's handshake deframer may still point into them,
    // and a different buffer would be out of its bounds.
    flush_alert(conn, incoming, &mut outgoing);
    if !outgoing.is_empty() {
        let _ = wr.write_all(outgoing).await;
    }
    HandshakeFailure::Tls(e)
}

/// Reads more of the handshake into `incoming`'s spare capacity (the kernel owns it until
/// the read completes). A client that connects and says nothing holds no buffer: the read
/// waits for readiness first.
async fn read_more(
    rd: &mut OwnedReadHalf<TcpStream>,
    incoming: &mut Vec<u8>,
) -> Result<(), HandshakeFailure> {
    if incoming.is_empty() && incoming.capacity() == 0 {
        ready(rd).await.map_err(HandshakeFailure::Io)?;
    }
    let len = incoming.len();
    if incoming.capacity() - len < 4096 {
        incoming.reserve(RECORD_ROOM);
    }
    let cap = incoming.capacity();
    let (res, slice) = rd.read(std::mem::take(incoming).slice_mut(len..cap)).await;
    *incoming = slice.into_inner();
    match res {
        Ok(0) => Err(HandshakeFailure::Closed),
        Ok(_) => Ok(()),
        Err(e) => Err(HandshakeFailure::Io(e)),
    }
}

/// Encodes one handshake record into `out`, growing it as rustls asks.
pub(super) fn encode<D>(e: &mut EncodeTlsData<'_, D>, out: &mut Vec<u8>) {
    let len = out.len();
    out.resize(len + 512, 0);
    loop {
        match e.encode(&mut out[len..]) {
            Ok(n) => {
                out.truncate(len + n);
                return;
            }
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                out.resize(len + required_size, 0)
            }
            Err(_) => {
                out.truncate(len);
                return;
            }
        }
    }
}

/// After a fatal error, takes the alert rustls queued for the peer into `out`. `incoming`
/// is the buffer the failed call was given, unchanged (rustls's handshake deframer may
/// still point into it; a different buffer would be out of its bounds).
///
/// One call only: the alert is the only record queued (every earlier one was taken as it
/// came), and once the queue is empty rustls would process `incoming` again, fail again
/// and queue a second alert.
pub(super) fn flush_alert<C: Unbuffered>(conn: &mut C, incoming: &mut [u8], out: &mut Vec<u8>) {
    if let Ok(ConnectionState::EncodeTlsData(mut e)) = conn.process(incoming).state {
        encode(&mut e, out);
    }
}
