//! The relay's frame walk over arbitrary bytes delivered in arbitrary pieces, from either
//! side: never panics, never forwards past what it has, never loses bytes it keeps, stops
//! for good at the first violation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wslb::frame::{Limits, Rules, Side, Stop, Walker};

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, stream)) = data.split_first() else {
        return;
    };
    let from = if ctl & 1 == 0 { Side::Client } else { Side::Backend };
    let limits = if ctl & 2 == 0 {
        Limits::NONE
    } else {
        Limits { frame: 1000, message: 2500, buffer: 1 << 16 }
    };
    // Bit 7: permessage-deflate negotiated (RSV1 allowed on a message's first frame).
    let rules = Rules { from, limits, rsv1: ctl & 0x80 != 0 };
    // Bit 6: the relay awaits its keepalive pong (drops it) rather than forwarding it.
    let drop_pong = ctl & 0x40 != 0;
    let step = 1 + (ctl >> 2 & 0xf) as usize; // bytes per simulated read: 1..=16
    let mut w = Walker::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut forwarded = 0usize;
    for piece in stream.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            let r = w.walk(&buf, &rules);
            assert!(r.ready <= buf.len());
            forwarded += r.ready;
            match r.stop {
                // The relay drops or forwards the keepalive pong, and walks on.
                Some(Stop::KeepalivePong(n)) => {
                    assert!(r.ready + n <= buf.len() && n <= 14 + 125);
                    if !drop_pong {
                        forwarded += n;
                    }
                    buf.drain(..r.ready + n);
                }
                Some(Stop::Close { len: n, .. }) => {
                    assert!(r.ready + n <= buf.len() && n <= 14 + 125);
                    return;
                }
                Some(Stop::Violation(_)) => return,
                None => {
                    buf.drain(..r.ready);
                    break;
                }
            }
        }
        // Kept bytes are at most a partial header or a partial control frame.
        assert!(buf.len() <= 14 + 125, "kept {} bytes", buf.len());
    }
    assert!(forwarded <= stream.len());
});
