//! The request target (RFC 9112 §3.2): which of its forms a request uses, the origin-form
//! (path and query) that routes it and that the backend gets, and the authority that is
//! the host of an absolute-form target. For upgrades and plain requests alike.

use super::Reject;

/// A request target as wslb routes and forwards it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Target<'b> {
    /// Origin-form: the path (never empty) and query; `*` for `OPTIONS *`.
    pub path: &'b str,
    /// The authority of an absolute-form target, which is the request's host.
    pub authority: Option<&'b [u8]>,
}

const NOT_A_PATH: Reject = Reject::Malformed("request target is not a path or an http(s) URI");

/// Reads the target of a request with `method`. Accepted: the origin-form, the
/// absolute-form of an `http` or `https` URI (RFC 9112 §3.2.2: a server MUST accept it;
/// HAProxy and NGINX do, for any method), and `OPTIONS *`. Refused with 400: the
/// authority-form (CONNECT, for forward proxies), other schemes (wslb cannot tell what an
/// `ftp` or `ws` URI in a request line would mean: RFC 6455 §4.1 sends the resource
/// name in origin-form), an asterisk-form with another method, and an authority that is
/// not valid ([`valid_authority`]).
pub(crate) fn parse<'b>(method: &str, raw: &'b str) -> Result<Target<'b>, Reject> {
    if raw.starts_with('/') || (raw == "*" && method == "OPTIONS") {
        return Ok(Target {
            path: raw,
            authority: None,
        });
    }
    let (scheme, rest) = raw.split_once("://").ok_or(NOT_A_PATH)?;
    // Schemes are case-insensitive (RFC 3986 §3.1).
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        return Err(NOT_A_PATH);
    }
    let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    if !valid_authority(authority.as_bytes()) {
        return Err(Reject::Malformed("bad authority in the request target"));
    }
    let path = match path.as_bytes().first() {
        // An empty path is `*` for OPTIONS and "/" otherwise (RFC 9112 §3.2.4 and §3.2.1).
        None if method == "OPTIONS" => "*",
        None => "/",
        Some(b'/') => path,
        // `http://host?query`: its origin-form, "/?query", is no slice of the request, and
        // the request's bytes are all the path may borrow. No client sends this form.
        _ => {
            return Err(Reject::Malformed(
                "absolute-form target with a query but no path",
            ));
        }
    };
    Ok(Target {
        path,
        authority: Some(authority.as_bytes()),
    })
}

/// The request's host: an absolute-form target's `authority`, which wins over the Host
/// header (RFC 9112 §3.2.2: the server MUST then ignore Host), else the Host header's
/// value. With an authority, a Host header that is not valid is still refused (§3.2:
/// 400 for a Host header with an invalid value); empty is valid.
pub(crate) fn host<'b>(authority: Option<&'b [u8]>, header: &'b [u8]) -> Result<&'b [u8], Reject> {
    match authority {
        None => Ok(header),
        Some(_) if !header.is_empty() && !valid_authority(header) => {
            Err(Reject::Malformed("bad Host header"))
        }
        Some(a) => Ok(a),
    }
}

/// `host [":" port]` as an http(s) URI and a Host header have it (RFC 9110 §4.2.1, RFC
/// 3986 §3.2.2): an IPv6 literal in brackets, or a non-empty reg-name or IPv4 address
/// (an empty host is invalid in an http URI), and a port of digits. Userinfo (`user@`)
/// is refused: RFC 9110 §4.2.4 has recipients treat it as an error.
pub(crate) fn valid_authority(a: &[u8]) -> bool {
    let (host_ok, port) = match a.strip_prefix(b"[") {
        Some(rest) => match rest.iter().position(|&c| c == b']') {
            Some(end) => (
                end > 0
                    && rest[..end]
                        .iter()
                        .all(|&c| c.is_ascii_hexdigit() || c == b':' || c == b'.'),
                &rest[end + 1..],
            ),
            None => return false,
        },
        None => {
            let colon = a.iter().position(|&c| c == b':').unwrap_or(a.len());
            let host = &a[..colon];
            (
                !host.is_empty() && host.iter().all(|&c| reg_name(c)),
                &a[colon..],
            )
        }
    };
    host_ok
        && match port.split_first() {
            None => true,
            Some((b':', digits)) => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
            Some(_) => false,
        }
}

/// A byte of a reg-name (RFC 3986 §3.2.2): unreserved, a sub-delim, or the `%` of a
/// percent-encoding.
fn reg_name(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(method: &str, raw: &str) -> (String, Option<String>) {
        let t = parse(method, raw).unwrap_or_else(|e| panic!("{raw:?}: {e}"));
        let authority = t.authority.map(|a| String::from_utf8(a.to_vec()).unwrap());
        (t.path.to_string(), authority)
    }

    /// Issue 19: absolute-form targets are accepted, as their path and authority.
    #[test]
    fn absolute_form_is_its_origin_form_and_authority() {
        let abs = |p: &str, a: &str| (p.to_string(), Some(a.to_string()));
        assert_eq!(
            ok("GET", "http://127.0.0.1/chat"),
            abs("/chat", "127.0.0.1")
        );
        assert_eq!(
            ok("GET", "HTTPS://h.example:8443/a?b=c"),
            abs("/a?b=c", "h.example:8443")
        );
        assert_eq!(ok("POST", "http://h.example"), abs("/", "h.example"));
        assert_eq!(
            ok("OPTIONS", "http://h.example:81"),
            abs("*", "h.example:81")
        );
        assert_eq!(ok("OPTIONS", "http://h.example/"), abs("/", "h.example"));
        assert_eq!(ok("GET", "http://[::1]:80/x"), abs("/x", "[::1]:80"));
        assert_eq!(ok("GET", "http://h.example:/"), abs("/", "h.example:"));
        assert_eq!(ok("GET", "/chat?x=1"), ("/chat?x=1".into(), None));
        assert_eq!(ok("OPTIONS", "*"), ("*".into(), None));
    }

    #[test]
    fn other_forms_and_bad_authorities_are_400() {
        for (method, raw) in [
            ("GET", "*"),
            ("CONNECT", "h.example:443"),
            ("GET", "h.example/x"),
            ("GET", "ftp://h.example/x"),
            ("GET", "ws://h.example/x"),
            ("GET", "wss://h.example/x"),
            ("GET", "http:/h.example/x"),
            ("GET", "http:///x"),
            ("GET", "http://user@h.example/x"),
            ("GET", "http://h.example:80x/x"),
            ("GET", "http://h.example:123456/x"),
            ("GET", "http://a:1:2/x"),
            ("GET", "http://[::1/x"),
            ("GET", "http://[]/x"),
            ("GET", "http://[::1]x/"),
            ("GET", "http://h.example?x=1"),
            ("GET", "http://h.exa\"mple/"),
        ] {
            let got = parse(method, raw);
            assert!(
                matches!(got, Err(Reject::Malformed(_))),
                "{method} {raw} -> {got:?}"
            );
        }
    }

    #[test]
    fn the_authority_wins_over_a_valid_host_header() {
        let a = Some(&b"a.example"[..]);
        assert_eq!(host(a, b"b.example:81"), Ok(&b"a.example"[..]));
        assert_eq!(host(a, b""), Ok(&b"a.example"[..]));
        assert_eq!(host(None, b"b.example"), Ok(&b"b.example"[..]));
        assert!(host(a, b"b.example/x").is_err());
        assert!(host(a, b"u@b.example").is_err());
        // Without an authority the Host header is taken as it was before.
        assert_eq!(host(None, b"any thing"), Ok(&b"any thing"[..]));
    }
}
