//! The frame walk: one pass over each buffer a relay direction reads, validating every
//! header and deciding what is forwarded, kept for the next read, dropped or answered.

use fastwebsockets::OpCode;

use super::{
    Limits, MessageState, Sender, Violation, check_close_payload, is_own_pong, parse_header,
};

/// Where one pass over a relay buffer stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Walk {
    /// Bytes `[0, ready)` are whole headers and payload bytes to forward as they are.
    pub ready: usize,
    /// Bytes `[ready, keep_to)` (a partial header, or a close frame not yet whole) stay for
    /// the next pass; bytes past `keep_to` are dropped (after a close, or a violation).
    pub keep_to: usize,
    /// A close frame from the source is among the forwarded bytes.
    pub close_forwarded: bool,
    pub stop: Option<Stop>,
}

/// Why a pass stopped before the end of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The source broke the protocol with the frame at `ready`.
    Violation(Violation),
    /// The pong to wslb's own keepalive ping, this many bytes long, is at `ready`: it is
    /// dropped, not forwarded (the destination never sent that ping).
    OwnPong(usize),
    /// A valid close frame is at `ready`, but the destination is owed a close of wslb's own
    /// (it broke the protocol), which goes out instead.
    OwedClose,
}

/// The frame-level state of one relay direction: walks the frames in each buffer that
/// arrives, validating headers, without touching payloads.
#[derive(Debug, Default, Clone)]
pub struct Walker {
    /// Payload bytes of the frame being forwarded that have not arrived yet.
    pub pending: u64,
    msg: MessageState,
    /// Capacity that would hold the largest frame seen so far (capped by `walk`'s
    /// `max_buffer`), so that such a frame can arrive in one read and leave in one write.
    /// (u32: `max_buffer` is at most 16 MiB, and every idle connection carries two.)
    pub want_capacity: u32,
}

impl Walker {
    /// One pass over `buf` (which starts at a frame boundary or inside the payload counted
    /// by `pending`). `close_sent`: a close already went to the destination, so nothing
    /// more is forwarded. `own_pong`: wslb awaits the pong to its keepalive ping from this
    /// source. `owed` says whether the destination is owed a close of wslb's own.
    #[inline]
    pub fn walk(
        &mut self,
        buf: &[u8],
        sender: Sender,
        limits: Limits,
        mut close_sent: bool,
        own_pong: bool,
        owed: impl Fn() -> bool,
    ) -> Walk {
        let len = buf.len();
        let mut w = Walk {
            ready: 0,
            keep_to: len,
            close_forwarded: false,
            stop: None,
        };
        while w.ready < len {
            if self.pending > 0 {
                let take = self.pending.min((len - w.ready) as u64);
                w.ready += take as usize;
                self.pending -= take;
                continue;
            }
            if close_sent {
                w.keep_to = w.ready; // after a close, drop the rest (RFC 6455 §5.5.1)
                break;
            }
            let Some(h) = parse_header(&buf[w.ready..]) else {
                break;
            };
            let opcode = match h.check(sender, &mut self.msg, limits) {
                Ok(op) => op,
                Err(v) => {
                    w.stop = Some(Stop::Violation(v));
                    w.keep_to = w.ready;
                    break;
                }
            };
            if opcode == OpCode::Close {
                // Close frames are checked whole (at most 139 bytes) before they go out, so
                // a bad code or reason is answered instead of forwarded.
                let end = w.ready + h.len + h.payload_len as usize;
                if end > len {
                    break;
                }
                if let Err(v) = check_close_payload(&buf[w.ready + h.len..end], h.mask) {
                    w.stop = Some(Stop::Violation(v));
                    w.keep_to = w.ready;
                    break;
                }
                if owed() {
                    w.stop = Some(Stop::OwedClose);
                    w.keep_to = w.ready;
                    break;
                }
                w.ready = end;
                w.close_forwarded = true;
                close_sent = true;
                continue;
            }
            if opcode == OpCode::Pong && own_pong {
                // Checked whole too (at most 139 bytes): only wslb's own pong is dropped.
                let end = w.ready + h.len + h.payload_len as usize;
                if end > len {
                    break;
                }
                if is_own_pong(&buf[w.ready + h.len..end], h.mask) {
                    w.stop = Some(Stop::OwnPong(end - w.ready));
                    break;
                }
            }
            w.ready += h.len;
            self.pending = h.payload_len;
            let framed = (h.len as u64 + h.payload_len).min(limits.buffer as u64) as u32;
            self.want_capacity = self.want_capacity.max(framed);
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::tests::{LIM, encode};
    use proptest::prelude::*;

    /// Feeds `stream` to a walker in pieces cut at `cuts`, the way reads deliver it, and
    /// returns the forwarded bytes and the walks.
    fn feed(stream: &[u8], cuts: &[usize], close_sent: bool) -> (Vec<u8>, Vec<Walk>) {
        let mut w = Walker::default();
        let (mut buf, mut out, mut walks) = (Vec::new(), Vec::new(), Vec::new());
        let mut at = 0;
        for &c in cuts.iter().chain([&stream.len()]) {
            let c = c.clamp(at, stream.len());
            buf.extend_from_slice(&stream[at..c]);
            at = c;
            let r = w.walk(&buf, Sender::Client, LIM, close_sent, false, || false);
            out.extend_from_slice(&buf[..r.ready]);
            buf = buf[r.ready..r.keep_to].to_vec();
            walks.push(r);
            if r.stop.is_some() {
                break;
            }
        }
        (out, walks)
    }

    fn masked(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
        let k = [9, 8, 7, 6];
        let mut v = encode(fin, op, Some(k), payload.len() as u64);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        v
    }

    proptest! {
        #[test]
        fn walker_forwards_every_byte_of_valid_frames_however_they_are_cut(
            sizes in proptest::collection::vec(0usize..3000, 1..8),
            cuts in proptest::collection::vec(0usize..30000, 0..12),
        ) {
            let mut stream = Vec::new();
            for (i, n) in sizes.iter().enumerate() {
                // Binary messages, with pings (control frames: at most 125 bytes) between.
                let op = if i % 2 == 1 && *n <= 125 { 9 } else { 2 };
                stream.extend(masked(true, op, &vec![i as u8; *n]));
            }
            let mut cuts = cuts;
            cuts.sort();
            let (out, walks) = feed(&stream, &cuts, false);
            prop_assert_eq!(out, stream);
            prop_assert!(walks.iter().all(|w| w.stop.is_none()));
        }
    }

    #[test]
    fn walker_drops_what_follows_a_close_and_stops_at_violations() {
        let mut s = masked(true, 1, b"hi");
        s.extend(masked(true, 8, &1000u16.to_be_bytes()));
        let after = s.len();
        s.extend(masked(true, 1, b"late"));
        let (out, walks) = feed(&s, &[], false);
        assert_eq!(out, &s[..after]);
        assert!(walks[0].close_forwarded);
        assert_eq!(
            walks[0].keep_to, walks[0].ready,
            "bytes after the close are dropped"
        );

        let mut bad = masked(true, 2, b"ok");
        let ok_len = bad.len();
        bad.extend(encode(true, 2, None, 0)); // unmasked client frame
        let (out, walks) = feed(&bad, &[], false);
        assert_eq!(out, &bad[..ok_len]);
        assert_eq!(walks[0].stop, Some(Stop::Violation(Violation::Unmasked)));

        let mut w = Walker::default();
        let close = masked(true, 8, &1000u16.to_be_bytes());
        let r = w.walk(&close, Sender::Client, LIM, false, false, || true);
        assert_eq!((r.ready, r.stop), (0, Some(Stop::OwedClose)));
    }

    #[test]
    fn walker_drops_only_wslbs_own_pong_and_only_when_awaited() {
        let own = masked(true, 10, crate::frame::PING_PAYLOAD);
        let other = masked(true, 10, b"someone else's");
        let mut s = masked(true, 1, b"a");
        let before = s.len();
        s.extend(&own);
        s.extend(masked(true, 1, b"b"));
        let mut w = Walker::default();
        let r = w.walk(&s, Sender::Client, LIM, false, true, || false);
        assert_eq!((r.ready, r.stop), (before, Some(Stop::OwnPong(own.len()))));
        // Not awaited, or another payload: forwarded like any pong.
        let r = Walker::default().walk(&s, Sender::Client, LIM, false, false, || false);
        assert_eq!((r.ready, r.stop), (s.len(), None));
        let r = Walker::default().walk(&other, Sender::Client, LIM, false, true, || false);
        assert_eq!((r.ready, r.stop), (other.len(), None));
        // Awaited and cut short: kept whole for the next read, like a close.
        let cut = own.len() - 3; // the header and part of the payload
        let r = Walker::default().walk(&own[..cut], Sender::Client, LIM, false, true, || false);
        assert_eq!((r.ready, r.keep_to, r.stop), (0, cut, None));
    }
}
