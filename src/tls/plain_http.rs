//! Plain HTTP sent to the TLS port: recognised in the bytes the handshake has already read,
//! and answered with a plaintext 400, as NGINX does ("The plain HTTP request was sent to
//! HTTPS port"), rather than with a TLS alert, which curl and browsers show as
//! `Received HTTP/0.9` or as garbage.

/// The answer. `Connection: close`: the connection ends once it is sent.
pub(super) const RESPONSE: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n\
Connection: close\r\nContent-Length: 54\r\n\r\n\
plain HTTP sent to a TLS port: use https:// or wss://\n";

/// Longer than any registered method (the longest, `UPDATEREDIRECTREF`, has 17 bytes), so
/// that random bytes rarely pass for a request line.
const MAX_METHOD: usize = 20;

/// Whether `first`, the first bytes a client sent, start an HTTP/1 request line: a method
/// (a token, RFC 9110 5.6.2) and a space. A TLS record starts with its content type
/// (0x14 to 0x18), which is no token character, so no ClientHello passes. Bytes cut before
/// the space (a client typing by hand) do not pass either: they get the TLS alert.
pub(super) fn is_request(first: &[u8]) -> bool {
    let method = first.iter().take_while(|&&b| is_tchar(b)).count();
    (1..=MAX_METHOD).contains(&method) && first.get(method) == Some(&b' ')
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_pass_tls_records_and_noise_do_not() {
        for r in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"POST /api HTTP/1.1\r\n",
            b"OPTIONS * HTTP/1.1\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET ",
        ] {
            assert!(is_request(r), "{}", String::from_utf8_lossy(r));
        }
        for r in [
            // A TLS 1.0-framed ClientHello record header, an alert, application data.
            &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01][..],
            &[0x15, 0x03, 0x03, 0x00, 0x02],
            &[0x17, 0x03, 0x03, 0x00, 0x10],
            b"",
            b"GET",
            b" / HTTP/1.1",
            b"GET\t/ HTTP/1.1",
            b"G(T / HTTP/1.1",
            b"ABCDEFGHIJKLMNOPQRSTU / HTTP/1.1",
        ] {
            assert!(!is_request(r), "{r:?}");
        }
    }

    #[test]
    fn the_answer_is_one_complete_response() {
        let text = std::str::from_utf8(RESPONSE).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(head.contains("\r\nConnection: close"));
        let length = format!("\r\nContent-Length: {}", body.len());
        assert!(head.contains(&length), "{head:?} for {} bytes", body.len());
        assert!(body.contains("https://") && body.contains("wss://"));
    }
}
