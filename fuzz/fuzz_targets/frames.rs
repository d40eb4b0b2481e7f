//! The relay's frame walk over arbitrary bytes delivered in arbitrary pieces, from either
//! side: never panics, never forwards past what it has, never loses bytes it keeps, stops
//! for good at the first violation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wslb::frame::{Limits, Sender, Walker};

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, stream)) = data.split_first() else {
        return;
    };
    let sender = if ctl & 1 == 0 { Sender::Client } else { Sender::Backend };
    let limits = if ctl & 2 == 0 {
        Limits::NONE
    } else {
        Limits { frame: 1000, message: 2500, buffer: 1 << 16 }
    };
    // Bit 6: wslb awaits its keepalive pong from this side.
    let own_pong = ctl & 0x40 != 0;
    let step = 1 + (ctl >> 2 & 0xf) as usize; // bytes per simulated read: 1..=16
    let mut w = Walker::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut forwarded = 0usize;
    let mut close_sent = false;
    for piece in stream.chunks(step) {
        buf.extend_from_slice(piece);
        let before = buf.len();
        let r = w.walk(&buf, sender, limits, close_sent, own_pong, || false);
        assert!(r.ready <= r.keep_to && r.keep_to <= before);
        forwarded += r.ready;
        close_sent |= r.close_forwarded;
        match r.stop {
            // The relay drops wslb's own pong and walks on.
            Some(wslb::frame::Stop::OwnPong(n)) => {
                assert!(r.ready + n <= r.keep_to && n <= 14 + 125);
                buf = buf[r.ready + n..r.keep_to].to_vec();
                continue;
            }
            Some(_) => return,
            None => {}
        }
        buf = buf[r.ready..r.keep_to].to_vec();
        // Kept bytes are at most a partial header or a partial close frame.
        assert!(buf.len() <= 14 + 125, "kept {} bytes", buf.len());
    }
    assert!(forwarded <= stream.len());
});
