use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;

use super::*;

const MAX: usize = 512;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn full(buf: &[u8]) -> Header<'_> {
    parse(buf, Versions::ANY, MAX).unwrap().unwrap()
}

/// A v2 header: `ver_cmd`, `fam`, then `body` (addresses and TLVs) with its length.
fn v2(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.extend_from_slice(&[ver_cmd, fam]);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
    out
}

/// The INET address block of 192.0.2.1:56324 -> 198.51.100.2:443.
const INET: [u8; 12] = [192, 0, 2, 1, 198, 51, 100, 2, 0xdc, 0x04, 0x01, 0xbb];

/// A header's bytes, its command and the addresses it carries.
type Case = (Vec<u8>, Command, Option<(SocketAddr, SocketAddr)>);

/// Every valid form, with what it must parse to.
fn valid() -> Vec<Case> {
    let tcp4 = Some((sa("192.0.2.1:56324"), sa("198.51.100.2:443")));
    let tcp6 = Some((sa("[2001:db8::1]:1"), sa("[2001:db8::ffff]:65535")));
    let mut inet6 = Vec::new();
    inet6.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
    inet6.extend_from_slice(&"2001:db8::ffff".parse::<Ipv6Addr>().unwrap().octets());
    inet6.extend_from_slice(&[0, 1, 0xff, 0xff]);
    let mut with_tlvs = INET.to_vec();
    with_tlvs.extend(tlv(PP2_TYPE_AUTHORITY, b"chat.example.com"));
    with_tlvs.extend(tlv(0x04, &[0; 3])); // NOOP padding
    vec![
        (
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n".to_vec(),
            Command::Proxy,
            tcp4,
        ),
        (
            b"PROXY TCP6 2001:db8::1 2001:db8::ffff 1 65535\r\n".to_vec(),
            Command::Proxy,
            tcp6,
        ),
        (b"PROXY UNKNOWN\r\n".to_vec(), Command::Proxy, None),
        (
            b"PROXY UNKNOWN ff:: 1.2.3.4 9 9\r\n".to_vec(),
            Command::Proxy,
            None,
        ),
        (v2(0x21, 0x11, &INET), Command::Proxy, tcp4),
        (v2(0x21, 0x21, &inet6), Command::Proxy, tcp6),
        (v2(0x21, 0x11, &with_tlvs), Command::Proxy, tcp4),
        (v2(0x21, 0x00, &[]), Command::Proxy, None),
        (
            v2(0x21, 0x00, &tlv(PP2_TYPE_AUTHORITY, b"a")),
            Command::Proxy,
            None,
        ),
        (v2(0x21, 0x31, &[0x2f; 216]), Command::Proxy, None),
        (v2(0x20, 0x00, &[]), Command::Local, None),
        // LOCAL: the spec discards the block whatever the family says.
        (v2(0x20, 0x12, &[0xff; 5]), Command::Local, None),
    ]
}

#[test]
fn every_valid_form_parses_whole_and_stops_at_the_client_bytes() {
    for (mut bytes, command, addrs) in valid() {
        let len = bytes.len();
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let h = full(&bytes);
        assert_eq!(h.len, len, "{bytes:?}");
        assert_eq!(h.command, command);
        assert_eq!(h.source.zip(h.destination), addrs, "{bytes:?}");
        let version = if bytes[0] == b'P' {
            Version::V1
        } else {
            Version::V2
        };
        assert_eq!(h.version, version);
    }
}

#[test]
fn a_header_fed_one_byte_at_a_time_is_none_until_complete() {
    for (bytes, ..) in valid() {
        for cut in 0..bytes.len() {
            assert_eq!(
                parse(&bytes[..cut], Versions::ANY, MAX),
                Ok(None),
                "{cut} of {bytes:?}"
            );
        }
        assert_eq!(full(&bytes), full(&[&bytes[..], b"x"].concat()));
    }
}

#[test]
fn tlvs_are_read_in_place() {
    let mut body = INET.to_vec();
    body.extend(tlv(PP2_TYPE_AUTHORITY, b"chat.example.com"));
    let mut ssl = vec![0x01 | 0x04, 0, 0, 0, 0];
    ssl.extend(tlv(PP2_SUBTYPE_SSL_VERSION, b"TLSv1.3"));
    ssl.extend(tlv(0x22, b"client-cn"));
    body.extend(tlv(PP2_TYPE_SSL, &ssl));
    let bytes = v2(0x21, 0x11, &body);
    let h = full(&bytes);
    assert_eq!(h.tlvs.authority(), Some("chat.example.com"));
    let ssl = h.tlvs.ssl().unwrap();
    assert!(ssl.over_tls() && ssl.cert_in_session() && !ssl.cert_in_connection());
    assert_eq!(ssl.verify, 0);
    assert_eq!(ssl.version(), Some("TLSv1.3"));
    assert_eq!(ssl.subs.get(0x22), Some(&b"client-cn"[..]));
    let kinds: Vec<u8> = h.tlvs.iter().map(|t| t.kind).collect();
    assert_eq!(kinds, [PP2_TYPE_AUTHORITY, PP2_TYPE_SSL]);
    // The values are the caller's bytes, not copies.
    let at = h.tlvs.authority().unwrap().as_ptr() as usize;
    assert!(at > bytes.as_ptr() as usize && at < bytes.as_ptr() as usize + bytes.len());
    // A header without them.
    assert!(full(&v2(0x21, 0x11, &INET)).tlvs.is_empty());
    assert_eq!(full(&v2(0x21, 0x11, &INET)).tlvs.ssl(), None);
}

#[test]
fn a_plain_request_is_refused_at_its_first_byte() {
    for first in [&b"G"[..], b"GET / HTTP/1.1", b"\x16\x03\x01", b"\0"] {
        assert_eq!(
            parse(first, Versions::ANY, MAX),
            Err(Error::NotProxy),
            "{first:?}"
        );
    }
    // And at the first byte that differs from a signature.
    assert_eq!(parse(b"POST", Versions::ANY, MAX), Err(Error::NotProxy));
    assert_eq!(parse(b"PROXY\t", Versions::ANY, MAX), Err(Error::NotProxy));
    assert_eq!(
        parse(b"\r\n\r\n\0\r\nQUIX", Versions::ANY, MAX),
        Err(Error::NotProxy)
    );
    assert_eq!(parse(b"PRO", Versions::ANY, MAX), Ok(None));
    assert_eq!(parse(b"\r\n\r\n\0\r\nQU", Versions::ANY, MAX), Ok(None));
    assert_eq!(parse(b"", Versions::ANY, MAX), Ok(None));
}

#[test]
fn a_version_not_accepted_is_refused_once_its_signature_is_whole() {
    let line = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n";
    assert_eq!(
        parse(line, Versions::V2, MAX),
        Err(Error::Unaccepted(Version::V1))
    );
    assert_eq!(parse(b"PROXY", Versions::V2, MAX), Ok(None));
    let bin = v2(0x21, 0x11, &INET);
    assert_eq!(
        parse(&bin, Versions::V1, MAX),
        Err(Error::Unaccepted(Version::V2))
    );
    assert!(parse(line, Versions::V1, MAX).unwrap().is_some());
    assert!(parse(&bin, Versions::V2, MAX).unwrap().is_some());
}

#[test]
fn a_v2_length_past_the_limit_is_refused_before_its_body() {
    let mut bytes = v2(0x21, 0x11, &INET);
    bytes[14..16].copy_from_slice(&600u16.to_be_bytes());
    assert_eq!(
        parse(&bytes[..16], Versions::ANY, MAX),
        Err(Error::TooLong(616))
    );
    assert_eq!(parse(&bytes[..15], Versions::ANY, MAX), Ok(None));
    // At the limit exactly, it waits for the rest.
    assert_eq!(parse(&bytes, Versions::ANY, 616), Ok(None));
    bytes[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
    assert_eq!(
        parse(&bytes, Versions::ANY, MAX),
        Err(Error::TooLong(16 + 65535))
    );
}

#[test]
fn bad_v2_headers_are_refused_with_their_reason() {
    let short_tlv = [&INET[..], &[PP2_TYPE_AUTHORITY, 0]].concat();
    let long_tlv = [&INET[..], &[PP2_TYPE_AUTHORITY, 0, 9, b'a']].concat();
    let bad_authority = [&INET[..], &tlv(PP2_TYPE_AUTHORITY, b"\xff")].concat();
    let short_ssl = [&INET[..], &tlv(PP2_TYPE_SSL, &[1, 0, 0, 0])].concat();
    let bad_sub = [&INET[..], &tlv(PP2_TYPE_SSL, &[1, 0, 0, 0, 0, 0x21, 0, 5])].concat();
    let cases: Vec<(Vec<u8>, Error)> = vec![
        (v2(0x11, 0x11, &INET), Error::BadVersion(1)),
        (v2(0x31, 0x11, &INET), Error::BadVersion(3)),
        (v2(0x22, 0x11, &INET), Error::BadCommand(2)),
        (v2(0x21, 0x41, &INET), Error::BadFamily(0x41)),
        (v2(0x21, 0x13, &INET), Error::BadFamily(0x13)),
        // UDP, or an unspecified protocol, is not what a TCP listener relays.
        (v2(0x21, 0x12, &INET), Error::BadFamily(0x12)),
        (v2(0x21, 0x10, &INET), Error::BadFamily(0x10)),
        (v2(0x21, 0x11, &INET[..11]), Error::ShortAddresses),
        (v2(0x21, 0x21, &[0; 35]), Error::ShortAddresses),
        (v2(0x21, 0x31, &[0; 215]), Error::ShortAddresses),
        (
            v2(0x21, 0x11, &short_tlv),
            Error::BadTlv("a TLV cut in its type or length"),
        ),
        (
            v2(0x21, 0x11, &long_tlv),
            Error::BadTlv("a TLV longer than the header"),
        ),
        (
            v2(0x21, 0x11, &bad_authority),
            Error::BadTlv("an authority that is not UTF-8"),
        ),
        (
            v2(0x21, 0x11, &short_ssl),
            Error::BadTlv("an SSL TLV under 5 bytes"),
        ),
        (
            v2(0x21, 0x11, &bad_sub),
            Error::BadTlv("a TLV longer than the header"),
        ),
    ];
    for (bytes, want) in cases {
        assert_eq!(parse(&bytes, Versions::ANY, MAX), Err(want), "{bytes:?}");
        prefixes_agree(&bytes);
    }
}

#[test]
fn bad_v1_lines_are_refused_with_their_reason() {
    let cases: [(&[u8], &str); 14] = [
        (
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 65536\r\n",
            "a port that is not 0..=65535",
        ),
        (
            b"PROXY TCP4 192.0.2.1 198.51.100.2 +80 443\r\n",
            "a port that is not 0..=65535",
        ),
        (
            b"PROXY TCP4 192.0.2.1 198.51.100.2 -1 443\r\n",
            "a port that is not 0..=65535",
        ),
        (
            b"PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",
            "an address that is not of the line's family",
        ),
        (
            b"PROXY TCP6 192.0.2.1 2001:db8::2 1 2\r\n",
            "an address that is not of the line's family",
        ),
        (
            b"PROXY TCP4 192.0.2.01 198.51.100.2 1 2\r\n",
            "an address that is not of the line's family",
        ),
        (
            b"PROXY TCP4  192.0.2.1 198.51.100.2 1 2\r\n",
            "not four fields after the protocol, one space apart",
        ),
        (
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2 \r\n",
            "not four fields after the protocol, one space apart",
        ),
        (
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1\r\n",
            "not four fields after the protocol, one space apart",
        ),
        (
            b"PROXY TCP5 192.0.2.1 198.51.100.2 1 2\r\n",
            "protocol is not TCP4, TCP6 or UNKNOWN",
        ),
        (
            b"PROXY UNKNOWNX\r\n",
            "protocol is not TCP4, TCP6 or UNKNOWN",
        ),
        (b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\n", "LF without CR"),
        (b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\rX", "CR without LF"),
        (
            b"PROXY TCP4 192.0.2.1\x00198.51.100.2 1 2\r\n",
            "a byte that is not printable ASCII",
        ),
    ];
    for (bytes, why) in cases {
        assert_eq!(
            parse(bytes, Versions::ANY, MAX),
            Err(Error::BadV1(why)),
            "{bytes:?}"
        );
        prefixes_agree(bytes);
    }
}

#[test]
fn a_v1_line_must_end_within_107_bytes() {
    // 105 bytes of UNKNOWN line then CRLF: 107 in all, the longest allowed.
    let mut line = b"PROXY UNKNOWN ".to_vec();
    line.resize(105, b'a');
    assert_eq!(parse(&line, Versions::ANY, MAX), Ok(None));
    let ok = [&line[..], b"\r\n"].concat();
    assert_eq!(full(&ok).len, 107);
    // One more byte before the CRLF: refused at the 107th byte, without waiting for the LF.
    line.push(b'a');
    assert_eq!(parse(&line, Versions::ANY, MAX), Ok(None));
    let cr = [&line[..], b"\r"].concat();
    let err = Err(Error::BadV1("no CRLF within 107 bytes"));
    assert_eq!(parse(&cr, Versions::ANY, MAX), err);
    assert_eq!(parse(&[&cr[..], b"\n"].concat(), Versions::ANY, MAX), err);
}

/// Every prefix of `bytes` needs more or already has the whole input's error: a header
/// split across writes is refused for the same reason, never accepted.
fn prefixes_agree(bytes: &[u8]) {
    let whole = parse(bytes, Versions::ANY, MAX);
    for cut in 0..bytes.len() {
        let part = parse(&bytes[..cut], Versions::ANY, MAX);
        assert!(
            part == Ok(None) || part == whole,
            "{cut}: {part:?} vs {whole:?}"
        );
    }
}

#[test]
fn encodings_are_the_specs_bytes() {
    let (s, d) = (sa("192.0.2.1:56324"), sa("198.51.100.2:443"));
    assert_eq!(
        encode_v1(s, d),
        "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n"
    );
    assert_eq!(encode_v2(s, d), v2(0x21, 0x11, &INET));
    let (s6, d6) = (sa("[2001:db8::1]:1"), sa("[2001:db8::ffff]:65535"));
    assert_eq!(
        encode_v1(s6, d6),
        "PROXY TCP6 2001:db8::1 2001:db8::ffff 1 65535\r\n"
    );
    // Mixed families: the IPv4 address goes IPv4-mapped, under TCP6.
    assert_eq!(
        encode_v1(s, d6),
        "PROXY TCP6 ::ffff:192.0.2.1 2001:db8::ffff 56324 65535\r\n"
    );
    let h = full(&encode_v2(s, d6)).source.unwrap();
    assert_eq!(h, sa("[::ffff:192.0.2.1]:56324"));
}

fn addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)),
    ]
}

/// What the other end reads for `a` when the header is for `a` and `other`: the address
/// itself, IPv4-mapped when the two families differ.
fn as_sent(a: SocketAddr, other: SocketAddr) -> SocketAddr {
    match (a.ip(), other.ip()) {
        (IpAddr::V4(v4), IpAddr::V6(_)) => SocketAddr::new(v4.to_ipv6_mapped().into(), a.port()),
        _ => a,
    }
}

proptest! {
    #[test]
    fn encoded_headers_parse_back_to_their_addresses(src in addr(), dst in addr(), tail in any::<Vec<u8>>()) {
        let line = encode_v1(src, dst);
        prop_assert!(line.len() <= V1_MAX_LEN);
        for (bytes, version) in [(line.into_bytes(), Version::V1), (encode_v2(src, dst), Version::V2)] {
            let with_tail = [&bytes[..], &tail[..]].concat();
            let h = parse(&with_tail, Versions::ANY, MAX).unwrap().unwrap();
            prop_assert_eq!(h.len, bytes.len());
            prop_assert_eq!(h.version, version);
            prop_assert_eq!(h.command, Command::Proxy);
            prop_assert_eq!(h.source, Some(as_sent(src, dst)));
            prop_assert_eq!(h.destination, Some(as_sent(dst, src)));
            prop_assert_eq!(parse(&bytes[..bytes.len() - 1], Versions::ANY, MAX), Ok(None));
        }
    }
}
