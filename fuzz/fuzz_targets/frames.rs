//! The relay's frame walk over arbitrary bytes delivered in arbitrary pieces, from either
//! side: never panics, never forwards past what it has, never loses bytes it keeps, stops
//! for good at the first violation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wslb::frame::{Sender, Walker};

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, stream)) = data.split_first() else {
        return;
    };
    let sender = if ctl & 1 == 0 { Sender::Client } else { Sender::Backend };
    let max_payload = if ctl & 2 == 0 { u64::MAX } else { 1000 };
    let step = 1 + (ctl >> 2) as usize; // bytes per simulated read: 1..=64
    let mut w = Walker::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut forwarded = 0usize;
    let mut close_sent = false;
    for piece in stream.chunks(step) {
        buf.extend_from_slice(piece);
        let before = buf.len();
        let r = w.walk(&buf, sender, max_payload, 1 << 16, close_sent, || false);
        assert!(r.ready <= r.keep_to && r.keep_to <= before);
        forwarded += r.ready;
        close_sent |= r.close_forwarded;
        if r.stop.is_some() {
            return;
        }
        buf = buf[r.ready..r.keep_to].to_vec();
        // Kept bytes are at most a partial header or a partial close frame.
        assert!(buf.len() <= 14 + 125, "kept {} bytes", buf.len());
    }
    assert!(forwarded <= stream.len());
});
