//! The backend's answer to the forwarded upgrade: parsing never panics, and a complete head
//! never claims more bytes than it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(r)) = wslb::handshake::parse_response(data) {
        assert!(r.head_len <= data.len());
    }
});
