//! WebSocket frame headers on the relay path: parse, validate, and build wslb's own close frames.
//!
//! The relay forwards frames as the bytes they arrived as; this module only reads headers
//! (RFC 6455 §5.2) and, for close frames, the two-byte code and UTF-8 reason. Opcode and
//! close-code rules come from `fastwebsockets` (`OpCode`, `CloseCode::is_allowed`), the mask
//! from its SIMD `unmask`, and synthesized frames from its `Frame::close`.
//!
//! Why not `fastwebsockets::WebSocket::read_frame` itself: its header parser is private,
//! reads from a tokio `AsyncRead` into its own buffer, is not cancel-safe, and buffers each
//! whole frame before returning it (a 16 MiB frame = 16 MiB per connection). The relay
//! instead streams payloads through one fixed buffer per direction owned by io_uring reads.

use fastwebsockets::{CloseCode, Frame, OpCode};

mod walker;
pub use walker::{Stop, Walk, Walker};

/// Longest possible header: 2 + 8 (64-bit length) + 4 (mask).
pub const MAX_HEADER_LEN: usize = 14;
/// Control frames carry at most 125 payload bytes (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: u64 = 125;

/// A parsed frame header. `raw_opcode` is kept unvalidated; see [`Header::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    /// RSV1..3 as the low three bits.
    pub rsv: u8,
    pub raw_opcode: u8,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
    /// Bytes of header before the payload (2..=14).
    pub len: usize,
}

/// Why a frame must not be forwarded; each maps to the close code sent back to its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("reserved bits set without a negotiated extension")]
    ReservedBits,
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    #[error("client frame is not masked")]
    Unmasked,
    #[error("server frame is masked")]
    Masked,
    #[error("control frame is fragmented")]
    FragmentedControl,
    #[error("control frame payload over 125 bytes")]
    ControlTooLong,
    #[error("continuation frame outside a fragmented message")]
    UnexpectedContinuation,
    #[error("new data frame inside a fragmented message")]
    ExpectedContinuation,
    #[error("64-bit payload length has its top bit set")]
    BadLength,
    #[error("frame payload of {0} bytes is over the limit")]
    TooBig(u64),
    #[error("message of at least {0} bytes is over the limit")]
    MessageTooBig(u64),
    #[error("close frame with a 1-byte payload")]
    CloseTooShort,
    #[error("close frame with code {0} that may not be sent")]
    BadCloseCode(u16),
    #[error("close frame reason is not UTF-8")]
    CloseReasonNotUtf8,
}

impl Violation {
    /// The close code RFC 6455 §7.4.1 gives for this violation.
    pub fn close_code(self) -> u16 {
        match self {
            Violation::TooBig(_) | Violation::MessageTooBig(_) => 1009,
            Violation::CloseReasonNotUtf8 => 1007,
            _ => 1002,
        }
    }
}

/// Parses the header at the start of `buf`. `None` means more bytes are needed.
#[inline]
pub fn parse_header(buf: &[u8]) -> Option<Header> {
    if buf.len() < 2 {
        return None;
    }
    let (b0, b1) = (buf[0], buf[1]);
    let masked = b1 & 0x80 != 0;
    let (payload_len, mut len) = match b1 & 0x7f {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as u64,
            4,
        ),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?), 10),
        n => (n as u64, 2),
    };
    let mask = if masked {
        let m: [u8; 4] = buf.get(len..len + 4)?.try_into().ok()?;
        len += 4;
        Some(m)
    } else {
        None
    };
    Some(Header {
        fin: b0 & 0x80 != 0,
        rsv: (b0 >> 4) & 0x7,
        raw_opcode: b0 & 0x0f,
        mask,
        payload_len,
        len,
    })
}

/// Per-direction message state needed to validate fragmentation and message size: the
/// payload bytes of the current message's frames so far (saturating), and in the top bit
/// whether a fragmented message is under way. One word, as every idle connection carries
/// two.
#[derive(Debug, Default, Clone, Copy)]
pub struct MessageState(u64);

const IN_FRAGMENTED: u64 = 1 << 63;

impl MessageState {
    fn in_fragmented_message(self) -> bool {
        self.0 & IN_FRAGMENTED != 0
    }

    fn so_far(self) -> u64 {
        self.0 & !IN_FRAGMENTED
    }
}

/// Size limits applied to one direction's frames (`u64::MAX`: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest data frame payload.
    pub frame: u64,
    /// Largest message: the payloads of a data frame and its continuations together.
    pub message: u64,
    /// Buffer capacity a direction may grow to (see [`Walker::want_capacity`]).
    pub buffer: usize,
}

impl Limits {
    /// No size limits, 64 KiB buffers: a backend's frames.
    pub const NONE: Limits = Limits {
        frame: u64::MAX,
        message: u64::MAX,
        buffer: 64 << 10,
    };
}

/// One peer of a relay: the one encoding of a direction in wslb. Frames are checked by
/// the side that sent them, and each relay direction (pump) is named by the side it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Frames from the client must be masked.
    Client,
    /// Frames from the backend must not be masked.
    Backend,
}

impl Side {
    pub const BOTH: [Side; 2] = [Side::Client, Side::Backend];

    /// The peer across the relay.
    #[inline]
    pub fn other(self) -> Side {
        match self {
            Side::Client => Side::Backend,
            Side::Backend => Side::Client,
        }
    }

    /// Index into per-side arrays (`[T; 2]`, client first).
    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }
}

/// What one direction's frames must obey: who sends them (and so whether they are
/// masked) and the size limits. Built once per worker and shared by its relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    pub from: Side,
    pub limits: Limits,
    /// RSV1 is allowed on the first frame of a data message: the backend's 101 accepted
    /// permessage-deflate (RFC 7692 §6). Never on control or continuation frames.
    pub rsv1: bool,
}

impl Header {
    /// Validates this header against RFC 6455 for frames from `from` and returns its
    /// opcode. `limits` apply to data frames (counting wire bytes: compressed ones, with
    /// permessage-deflate). `rsv1`: RSV1 may mark the first frame of a data message
    /// (permessage-deflate negotiated). Updates the fragmentation and size state.
    #[inline]
    pub fn check(
        &self,
        from: Side,
        state: &mut MessageState,
        limits: Limits,
        rsv1: bool,
    ) -> Result<OpCode, Violation> {
        let allowed = if rsv1 { RSV1 } else { 0 };
        if self.rsv & !allowed != 0 {
            return Err(Violation::ReservedBits);
        }
        let opcode = OpCode::try_from(self.raw_opcode)
            .map_err(|_| Violation::ReservedOpcode(self.raw_opcode))?;
        if self.rsv != 0 && !matches!(opcode, OpCode::Text | OpCode::Binary) {
            // RSV1 marks a compressed message on its first frame only.
            return Err(Violation::ReservedBits);
        }
        match (from, self.mask.is_some()) {
            (Side::Client, false) => return Err(Violation::Unmasked),
            (Side::Backend, true) => return Err(Violation::Masked),
            _ => {}
        }
        if self.payload_len >> 63 != 0 {
            return Err(Violation::BadLength);
        }
        if matches!(opcode, OpCode::Close | OpCode::Ping | OpCode::Pong) {
            if !self.fin {
                return Err(Violation::FragmentedControl);
            }
            if self.payload_len > MAX_CONTROL_PAYLOAD {
                return Err(Violation::ControlTooLong);
            }
            return Ok(opcode);
        }
        match (opcode, state.in_fragmented_message()) {
            (OpCode::Continuation, false) => return Err(Violation::UnexpectedContinuation),
            (OpCode::Text | OpCode::Binary, true) => return Err(Violation::ExpectedContinuation),
            _ => {}
        }
        if self.payload_len > limits.frame {
            return Err(Violation::TooBig(self.payload_len));
        }
        let so_far = if opcode == OpCode::Continuation {
            state.so_far().saturating_add(self.payload_len)
        } else {
            self.payload_len
        };
        if so_far > limits.message {
            return Err(Violation::MessageTooBig(so_far));
        }
        // `payload_len` < 2^63 (checked above), and the sum saturates below the flag bit.
        let fragmented = if self.fin { 0 } else { IN_FRAGMENTED };
        *state = MessageState(so_far.min(!IN_FRAGMENTED) | fragmented);
        Ok(opcode)
    }
}

/// RSV1 in [`Header::rsv`].
const RSV1: u8 = 0b100;

/// Validates a close frame's payload (still masked if `mask` is set) and returns its code
/// (`None` for an empty close).
pub fn check_close_payload(
    payload: &[u8],
    mask: Option<[u8; 4]>,
) -> Result<Option<u16>, Violation> {
    let mut tmp = [0u8; MAX_CONTROL_PAYLOAD as usize];
    let p = unmasked(payload, mask, &mut tmp);
    match p.len() {
        0 => Ok(None),
        1 => Err(Violation::CloseTooShort),
        _ => {
            let code = u16::from_be_bytes([p[0], p[1]]);
            if !CloseCode::from(code).is_allowed() {
                return Err(Violation::BadCloseCode(code));
            }
            if std::str::from_utf8(&p[2..]).is_err() {
                return Err(Violation::CloseReasonNotUtf8);
            }
            Ok(Some(code))
        }
    }
}

/// The payload of wslb's keepalive pings: its pong is recognised by it and dropped.
pub const PING_PAYLOAD: &[u8] = b"wslb-keepalive";

fn is_own_pong(payload: &[u8], mask: Option<[u8; 4]>) -> bool {
    let mut tmp = [0u8; PING_PAYLOAD.len()];
    payload.len() == PING_PAYLOAD.len() && unmasked(payload, mask, &mut tmp) == PING_PAYLOAD
}

/// A control frame's payload (at most 125 bytes, `tmp` at least as long), unmasked in a
/// copy on the stack: the relay forwards the original bytes as they are.
fn unmasked<'t>(payload: &[u8], mask: Option<[u8; 4]>, tmp: &'t mut [u8]) -> &'t [u8] {
    let p = &mut tmp[..payload.len()];
    p.copy_from_slice(payload);
    if let Some(m) = mask {
        fastwebsockets::unmask(p, m);
    }
    p
}

/// Encodes wslb's keepalive ping: unmasked towards a client, masked towards a backend.
pub fn encode_ping(masked: bool) -> Vec<u8> {
    encode(
        Frame::new(true, OpCode::Ping, None, PING_PAYLOAD.into()),
        masked,
    )
}

fn encode(mut frame: Frame<'_>, masked: bool) -> Vec<u8> {
    if masked {
        frame.mask();
    }
    let mut out = Vec::with_capacity(MAX_HEADER_LEN + frame.payload.len());
    let n = frame.write(&mut out).len();
    out.truncate(n);
    out
}

/// Encodes a close frame wslb sends on its own behalf: unmasked towards a client, masked
/// (as RFC 6455 §5.3 requires of a client) towards a backend.
pub fn encode_close(code: u16, reason: &str, masked: bool) -> Vec<u8> {
    encode(Frame::close(code, reason.as_bytes()), masked)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) const LIM: Limits = Limits {
        frame: 1 << 20,
        message: 1 << 21,
        buffer: 1 << 16,
    };
    const LIM1000: Limits = Limits {
        frame: 1000,
        message: 1500,
        buffer: 1 << 16,
    };

    /// A frame header with these fields.
    pub(crate) fn encode(fin: bool, opcode: u8, mask: Option<[u8; 4]>, len: u64) -> Vec<u8> {
        let mut v = vec![(fin as u8) << 7 | opcode];
        let m = if mask.is_some() { 0x80 } else { 0 };
        if len < 126 {
            v.push(m | len as u8);
        } else if len < 65536 {
            v.push(m | 126);
            v.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            v.push(m | 127);
            v.extend_from_slice(&len.to_be_bytes());
        }
        if let Some(k) = mask {
            v.extend_from_slice(&k);
        }
        v
    }

    proptest! {
        #[test]
        fn parse_roundtrips_and_needs_every_header_byte(
            fin: bool, op in 0u8..16, mask: Option<[u8; 4]>, len in 0u64..(1 << 40)
        ) {
            let bytes = encode(fin, op, mask, len);
            for cut in 0..bytes.len() {
                prop_assert_eq!(parse_header(&bytes[..cut]), None);
            }
            let h = parse_header(&bytes).unwrap();
            prop_assert_eq!(h, Header { fin, rsv: 0, raw_opcode: op, mask, payload_len: len, len: bytes.len() });
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..20)) {
            if let Some(h) = parse_header(&bytes) {
                prop_assert!(h.len <= bytes.len() && h.len <= MAX_HEADER_LEN);
            }
        }
    }

    #[test]
    fn rules() {
        let m = Some([1, 2, 3, 4]);
        let ok = |fin, op, mask, len, s: &mut MessageState, who| {
            parse_header(&encode(fin, op, mask, len))
                .unwrap()
                .check(who, s, LIM1000, false)
        };
        let c = Side::Client;
        let mut s = MessageState::default();
        assert_eq!(ok(true, 1, m, 5, &mut s, c), Ok(OpCode::Text));
        assert_eq!(ok(true, 1, None, 5, &mut s, c), Err(Violation::Unmasked));
        assert_eq!(
            ok(true, 1, m, 5, &mut s, Side::Backend),
            Err(Violation::Masked)
        );
        assert_eq!(
            ok(true, 3, m, 5, &mut s, c),
            Err(Violation::ReservedOpcode(3))
        );
        assert_eq!(
            ok(true, 0xb, m, 5, &mut s, c),
            Err(Violation::ReservedOpcode(0xb))
        );
        assert_eq!(
            ok(false, 9, m, 5, &mut s, c),
            Err(Violation::FragmentedControl)
        );
        assert_eq!(
            ok(true, 9, m, 126, &mut s, c),
            Err(Violation::ControlTooLong)
        );
        assert_eq!(
            ok(true, 0, m, 5, &mut s, c),
            Err(Violation::UnexpectedContinuation)
        );
        assert_eq!(
            ok(true, 2, m, 1001, &mut s, c),
            Err(Violation::TooBig(1001))
        );
        // A fragmented message may interleave control frames but not new data frames.
        assert_eq!(ok(false, 1, m, 5, &mut s, c), Ok(OpCode::Text));
        assert_eq!(ok(true, 9, m, 5, &mut s, c), Ok(OpCode::Ping));
        assert_eq!(
            ok(true, 2, m, 5, &mut s, c),
            Err(Violation::ExpectedContinuation)
        );
        assert_eq!(ok(true, 0, m, 5, &mut s, c), Ok(OpCode::Continuation));
        assert_eq!(
            ok(true, 0, m, 5, &mut s, c),
            Err(Violation::UnexpectedContinuation)
        );
        // Message size: the frames of one message add up (LIM1000 allows 1500 in all).
        assert_eq!(ok(false, 2, m, 1000, &mut s, c), Ok(OpCode::Binary));
        assert_eq!(ok(true, 10, m, 4, &mut s, c), Ok(OpCode::Pong));
        assert_eq!(
            ok(true, 0, m, 600, &mut s, c),
            Err(Violation::MessageTooBig(1600))
        );
        let mut s = MessageState::default();
        assert_eq!(ok(false, 2, m, 1000, &mut s, c), Ok(OpCode::Binary));
        assert_eq!(ok(true, 0, m, 500, &mut s, c), Ok(OpCode::Continuation));
        assert_eq!(
            ok(true, 2, m, 1000, &mut s, c),
            Ok(OpCode::Binary),
            "a new message"
        );
        let mut rsv = encode(true, 1, m, 5);
        rsv[0] |= 0x40;
        assert_eq!(
            parse_header(&rsv).unwrap().check(c, &mut s, LIM1000, false),
            Err(Violation::ReservedBits)
        );
    }

    #[test]
    fn rsv1_marks_a_compressed_message_on_its_first_frame_only() {
        let (c, m) = (Side::Client, Some([1, 2, 3, 4]));
        let with = |fin, op, bits: u8, s: &mut MessageState, deflate| {
            let mut f = encode(fin, op, m, 5);
            f[0] |= bits << 4;
            parse_header(&f).unwrap().check(c, s, LIM1000, deflate)
        };
        let mut s = MessageState::default();
        assert_eq!(with(true, 1, 0b100, &mut s, true), Ok(OpCode::Text));
        assert_eq!(with(false, 2, 0b100, &mut s, true), Ok(OpCode::Binary));
        assert_eq!(
            with(false, 0, 0b100, &mut s, true),
            Err(Violation::ReservedBits),
            "not on a continuation"
        );
        assert_eq!(with(true, 0, 0, &mut s, true), Ok(OpCode::Continuation));
        for (op, bits) in [
            (9, 0b100),
            (8, 0b100),
            (10, 0b100),
            (1, 0b010),
            (1, 0b001),
            (1, 0b110),
        ] {
            let mut s = MessageState::default();
            assert_eq!(
                with(true, op, bits, &mut s, true),
                Err(Violation::ReservedBits),
                "opcode {op} rsv {bits:03b}"
            );
        }
        let mut s = MessageState::default();
        assert_eq!(
            with(true, 1, 0b100, &mut s, false),
            Err(Violation::ReservedBits),
            "nothing negotiated"
        );
    }

    #[test]
    fn close_payloads() {
        let mask = [9, 8, 7, 6];
        let masked = |p: &[u8]| {
            let mut v = p.to_vec();
            fastwebsockets::unmask(&mut v, mask);
            v
        };
        assert_eq!(check_close_payload(&[], None), Ok(None));
        assert_eq!(
            check_close_payload(&masked(&[3, 232]), Some(mask)),
            Ok(Some(1000))
        );
        assert_eq!(
            check_close_payload(&[3], None),
            Err(Violation::CloseTooShort)
        );
        assert_eq!(
            check_close_payload(&[3, 237], None),
            Err(Violation::BadCloseCode(1005))
        );
        assert_eq!(
            check_close_payload(&[0, 0], None),
            Err(Violation::BadCloseCode(0))
        );
        assert_eq!(
            check_close_payload(&[3, 232, 0xff], None),
            Err(Violation::CloseReasonNotUtf8)
        );
    }

    #[test]
    fn encoded_close_frames_parse() {
        let f = encode_close(1011, "backend gone", false);
        let h = parse_header(&f).unwrap();
        assert_eq!((h.raw_opcode, h.mask, h.payload_len), (8, None, 14));
        assert_eq!(check_close_payload(&f[h.len..], None), Ok(Some(1011)));
        let f = encode_close(1001, "", true);
        let h = parse_header(&f).unwrap();
        assert!(h.mask.is_some());
        assert_eq!(check_close_payload(&f[h.len..], h.mask), Ok(Some(1001)));
    }
}
