//! The client's upgrade request: whatever the bytes, parsing never panics; a rejected
//! request has a complete HTTP answer; an accepted one is rewritten into a request that is
//! itself a valid upgrade with the same path (origin-form), host and key and no extension
//! offer. The
//! selection keys taken from it (a cookie, a query parameter) are slices of its bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wslb::handshake::{parse_request, MAX_HEADERS};

fuzz_target!(|data: &[u8]| {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match parse_request(data, &mut headers) {
        Ok(None) => {}
        Err(reject) => {
            let r = wslb::outcome::Refusal::from(reject).response();
            assert!(r.starts_with(b"HTTP/1.1 ") && r.windows(4).any(|w| w == b"\r\n\r\n"));
        }
        Ok(Some(up)) => {
            assert!(up.head_len <= data.len());
            let within = |s: &[u8]| {
                let (start, end) = (data.as_ptr() as usize, data.as_ptr() as usize + data.len());
                s.is_empty() || (s.as_ptr() as usize >= start && s.as_ptr() as usize + s.len() <= end)
            };
            for name in ["sid", "a", ""] {
                assert!(up.cookie(name).is_none_or(within));
                assert!(up.query_param(name).is_none_or(|v| within(v.as_bytes())));
            }
            let fwd = up.forward_head(
                "192.0.2.7".parse().unwrap(),
                wslb::stream::Scheme::Http,
                wslb::handshake::Extensions::Strip,
            );
            // Passing extensions keeps only permessage-deflate offers, and re-parses.
            let pass = up.forward_head(
                "192.0.2.7".parse().unwrap(),
                wslb::stream::Scheme::Http,
                wslb::handshake::Extensions::Pass,
            );
            let mut h3 = [httparse::EMPTY_HEADER; MAX_HEADERS];
            if let Ok(Some(again)) = parse_request(&pass, &mut h3) {
                for offer in again
                    .header("sec-websocket-extensions")
                    .unwrap_or_default()
                    .split(|&c| c == b',')
                {
                    let name = offer.split(|&c| c == b';').next().unwrap_or_default();
                    assert!(name.trim_ascii().eq_ignore_ascii_case(b"permessage-deflate"));
                }
            }
            let mut h2 = [httparse::EMPTY_HEADER; MAX_HEADERS];
            // The rewrite adds two headers; at the header limit it may be refused as too
            // large, which the backend would answer itself. Anything else must re-parse.
            match parse_request(&fwd, &mut h2) {
                Ok(Some(again)) => {
                    // Origin-form, with the host the request had (an absolute-form
                    // target's authority) as its Host header.
                    assert_eq!(again.path, up.path);
                    assert_eq!(again.host, up.host);
                    assert_eq!(again.key, up.key);
                    assert_eq!(again.head_len, fwd.len());
                    let text = String::from_utf8_lossy(&fwd).to_ascii_lowercase();
                    assert!(!text.contains("\nsec-websocket-extensions:"));
                }
                Err(wslb::handshake::Reject::TooLarge) => {}
                other => panic!("rewritten request does not re-parse: {other:?}"),
            }
        }
    }
});
