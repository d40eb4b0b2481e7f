//! Plain HTTP framing (`http/framing.rs`) over arbitrary bytes: request and response heads
//! never panic, a parsed request re-parses after its rewrite with the same framing, target
//! (origin-form) and host, and the chunked scanner, fed in arbitrary pieces, agrees with
//! itself fed whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wslb::handshake::MAX_HEADERS;
use wslb::http::framing::{parse_request, parse_response, Chunked};

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, bytes)) = data.split_first() else {
        return;
    };
    let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
    if let Ok(Some(r)) = parse_request(bytes, &mut h) {
        assert!(r.head_len <= bytes.len());
        let fwd = r.forward_head("192.0.2.7".parse().unwrap(), wslb::stream::Scheme::Http);
        let mut h2 = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match parse_request(&fwd, &mut h2) {
            Ok(Some(again)) => {
                assert_eq!(again.body, r.body, "the rewrite changed the framing");
                assert_eq!((again.target, again.host), (r.target, r.host));
                assert_eq!(again.head_len, fwd.len());
            }
            Err(wslb::handshake::Reject::TooLarge) => {}
            other => panic!("rewritten head does not re-parse: {other:?}"),
        }
    }
    let _ = parse_response(bytes, if ctl & 1 == 0 { "GET" } else { "HEAD" });
    let whole = Chunked::default().scan(bytes);
    let step = 1 + (ctl >> 1) as usize % 16;
    let mut c = Chunked::default();
    let mut used = 0;
    let mut pieces = Ok((0, false));
    for piece in bytes.chunks(step) {
        match c.scan(piece) {
            Ok((n, done)) => {
                used += n;
                pieces = Ok((used, done));
                if done {
                    break;
                }
            }
            Err(e) => {
                pieces = Err(e);
                break;
            }
        }
    }
    match (whole, pieces) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(_), Err(_)) => {}
        (a, b) => panic!("whole {a:?} vs pieces {b:?}"),
    }
});
