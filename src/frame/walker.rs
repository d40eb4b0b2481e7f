//! The frame walk: one pass over each buffer a relay direction reads, validating every
//! header and deciding what is forwarded, kept for the next read, dropped or answered.

use fastwebsockets::OpCode;

use super::{
    MessageState, PING_PAYLOAD, Rules, Violation, check_close_payload, is_own_pong, parse_header,
};

/// Where one pass over a relay buffer stopped.
///
/// Bytes `[0, ready)` are whole headers and payload bytes to forward as they are. With no
/// `stop`, the bytes from `ready` on (a partial header, or a close or keepalive pong not yet
/// whole) are to be kept for the next pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Walk {
    pub ready: usize,
    pub stop: Option<Stop>,
    /// Frame headers in `[0, ready)`.
    pub frames: u32,
}

/// A frame at `ready` that the walk leaves to its caller. What to do with it (forward it,
/// drop it, answer it) is the caller's policy; the walker only reports what the frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The frame at `ready` breaks the protocol. Nothing from `ready` on is valid.
    Violation(Violation),
    /// A whole, valid close frame `len` bytes long, with its code (`None`: no payload).
    /// Nothing valid follows a close (RFC 6455 §5.5.1): the walk is over for this
    /// direction.
    Close { len: usize, code: Option<u16> },
    /// A whole pong frame this many bytes long carrying [`PING_PAYLOAD`], the payload of
    /// wslb's keepalive pings. The walk may go on after it.
    KeepalivePong(usize),
}

/// The frame-level state of one relay direction: walks the frames in each buffer that
/// arrives, validating headers, without touching payloads.
#[derive(Debug, Default, Clone)]
pub struct Walker {
    /// Payload bytes of the frame being forwarded that have not arrived yet.
    pub pending: u64,
    msg: MessageState,
    /// Capacity that would hold the largest frame seen so far (capped by the rules'
    /// `limits.buffer`), so that such a frame can arrive in one read and leave in one
    /// write. (u32: the cap is at most 16 MiB, and every idle connection carries two.)
    pub want_capacity: u32,
}

impl Walker {
    /// One pass over `buf`, which starts at a frame boundary or inside the payload counted
    /// by `pending`.
    #[inline]
    pub fn walk(&mut self, buf: &[u8], rules: &Rules) -> Walk {
        let len = buf.len();
        let mut ready = 0;
        let mut frames = 0;
        while ready < len {
            if self.pending > 0 {
                let take = self.pending.min((len - ready) as u64);
                ready += take as usize;
                self.pending -= take;
                continue;
            }
            let Some(h) = parse_header(&buf[ready..]) else {
                break;
            };
            let opcode = match h.check(rules.from, &mut self.msg, rules.limits, rules.rsv1) {
                Ok(op) => op,
                Err(v) => {
                    return Walk {
                        ready,
                        stop: Some(Stop::Violation(v)),
                        frames,
                    };
                }
            };
            let whole = h.len + h.payload_len as usize;
            let is_close = opcode == OpCode::Close;
            // Closes and possible keepalive pongs are checked whole (at most 139 bytes)
            // before anything is decided about them.
            if is_close || (opcode == OpCode::Pong && h.payload_len == PING_PAYLOAD.len() as u64) {
                if ready + whole > len {
                    break;
                }
                let payload = &buf[ready + h.len..ready + whole];
                let stop = if is_close {
                    match check_close_payload(payload, h.mask) {
                        Ok(code) => Stop::Close { len: whole, code },
                        Err(v) => Stop::Violation(v),
                    }
                } else if is_own_pong(payload, h.mask) {
                    Stop::KeepalivePong(whole)
                } else {
                    ready += whole;
                    frames += 1;
                    continue;
                };
                return Walk {
                    ready,
                    stop: Some(stop),
                    frames,
                };
            }
            ready += h.len;
            frames += 1;
            self.pending = h.payload_len;
            let framed = (h.len as u64 + h.payload_len).min(rules.limits.buffer as u64) as u32;
            self.want_capacity = self.want_capacity.max(framed);
        }
        Walk {
            ready,
            stop: None,
            frames,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Side;
    use crate::frame::tests::{LIM, encode};
    use proptest::prelude::*;

    const CLIENT: Rules = Rules {
        from: Side::Client,
        limits: LIM,
        rsv1: false,
    };

    /// Feeds `stream` to a walker in pieces cut at `cuts`, the way reads deliver it, and
    /// returns the forwarded bytes and the walks. Like the relay, it forwards through a
    /// keepalive pong and stops at anything else.
    fn feed(stream: &[u8], cuts: &[usize]) -> (Vec<u8>, Vec<Walk>) {
        let mut w = Walker::default();
        let (mut buf, mut out, mut walks) = (Vec::new(), Vec::new(), Vec::new());
        let mut at = 0;
        for &c in cuts.iter().chain([&stream.len()]) {
            let c = c.clamp(at, stream.len());
            buf.extend_from_slice(&stream[at..c]);
            at = c;
            let r = w.walk(&buf, &CLIENT);
            out.extend_from_slice(&buf[..r.ready]);
            buf = buf[r.ready..].to_vec();
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
            let (out, walks) = feed(&stream, &cuts);
            prop_assert_eq!(out, stream);
            prop_assert!(walks.iter().all(|w| w.stop.is_none()));
            // Every frame counted once, in the pass that forwarded its header.
            prop_assert_eq!(walks.iter().map(|w| w.frames as usize).sum::<usize>(), sizes.len());
        }
    }

    #[test]
    fn walker_stops_at_a_close_and_at_violations() {
        let mut s = masked(true, 1, b"hi");
        let before = s.len();
        let close = masked(true, 8, &1000u16.to_be_bytes());
        s.extend(&close);
        s.extend(masked(true, 1, b"late"));
        let (out, walks) = feed(&s, &[]);
        assert_eq!(out, &s[..before]);
        let at_close = Some(Stop::Close {
            len: close.len(),
            code: Some(1000),
        });
        assert_eq!((walks[0].stop, walks[0].frames), (at_close, 1));
        // A close cut short is kept whole for the next read.
        let (out, walks) = feed(&s, &[before + 3]);
        assert_eq!(out, &s[..before]);
        assert_eq!(walks[0].stop, None);
        assert_eq!(walks[1].stop, at_close);

        let mut bad = masked(true, 2, b"ok");
        let ok_len = bad.len();
        bad.extend(encode(true, 2, None, 0)); // unmasked client frame
        let (out, walks) = feed(&bad, &[]);
        assert_eq!(out, &bad[..ok_len]);
        assert_eq!(walks[0].stop, Some(Stop::Violation(Violation::Unmasked)));

        let bad_close = masked(true, 8, &1005u16.to_be_bytes());
        let (_, walks) = feed(&bad_close, &[]);
        assert_eq!(
            walks[0].stop,
            Some(Stop::Violation(Violation::BadCloseCode(1005)))
        );
    }

    #[test]
    fn walker_reports_only_pongs_with_the_keepalive_payload() {
        let own = masked(true, 10, crate::frame::PING_PAYLOAD);
        let other = masked(true, 10, b"someone else's");
        let mut s = masked(true, 1, b"a");
        let before = s.len();
        s.extend(&own);
        s.extend(masked(true, 1, b"b"));
        let mut w = Walker::default();
        let r = w.walk(&s, &CLIENT);
        assert_eq!(
            (r.ready, r.stop),
            (before, Some(Stop::KeepalivePong(own.len())))
        );
        // The walk goes on after it.
        let r = w.walk(&s[before + own.len()..], &CLIENT);
        assert_eq!((r.ready, r.stop), (s.len() - before - own.len(), None));
        // Another payload of the same length: forwarded like any pong.
        assert_eq!(other.len(), own.len());
        let r = Walker::default().walk(&other, &CLIENT);
        assert_eq!((r.ready, r.stop), (other.len(), None));
        // Cut short: kept whole for the next read, like a close.
        let cut = own.len() - 3; // the header and part of the payload
        let r = Walker::default().walk(&own[..cut], &CLIENT);
        assert_eq!((r.ready, r.stop), (0, None));
    }
}
