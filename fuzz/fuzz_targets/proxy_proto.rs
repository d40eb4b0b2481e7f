//! The PROXY protocol header parser over arbitrary bytes: never panics; a header never
//! claims more bytes than it was given; a prefix of the input needs more or gives the
//! whole input's answer (so a header split across writes parses, or fails, the same); a
//! parsed PROXY header re-encoded (v1 and v2) parses back to the same addresses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wslb::proxy_proto::{Command, Versions, encode_v1, encode_v2, parse};

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, input)) = data.split_first() else {
        return;
    };
    // Bits 0-1: the accepted versions; bits 2-7: the v2 limit, 16..=520 bytes.
    let accept = Versions {
        v1: ctl & 1 != 0,
        v2: ctl & 2 != 0,
    };
    let max = 16 + (ctl >> 2) as usize * 8;
    let whole = parse(input, accept, max);
    if let Ok(Some(h)) = &whole {
        assert!(h.len <= input.len());
        assert!(h.source.is_some() == h.destination.is_some());
        assert!(h.command == Command::Proxy || h.source.is_none());
        for t in h.tlvs.iter() {
            assert!(t.value.len() < h.len);
        }
        let _ = (h.tlvs.authority(), h.tlvs.ssl().map(|s| s.version()));
        if let (Some(src), Some(dst)) = (h.source, h.destination) {
            let line = encode_v1(src, dst);
            let bin = encode_v2(src, dst);
            for again in [line.as_bytes(), &bin[..]] {
                let back = parse(again, Versions::ANY, 512).unwrap().unwrap();
                assert_eq!((back.source, back.destination), (h.source, h.destination));
                assert_eq!(back.len, again.len());
            }
        }
    }
    // Any cut must agree with the whole; the input's last two bytes pick one.
    if input.len() >= 2 {
        let cut = u16::from_le_bytes([input[input.len() - 2], input[input.len() - 1]]) as usize
            % input.len();
        let part = parse(&input[..cut], accept, max);
        assert!(
            part == Ok(None) || part == whole,
            "{cut}: {part:?} vs {whole:?}"
        );
    }
});
