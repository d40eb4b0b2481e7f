//! PROXY v1: one line of text, `PROXY TCP4|TCP6 src dst sport dport\r\n` or
//! `PROXY UNKNOWN ...\r\n` (spec 2.1).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{Command, Error, Header, Tlvs, V1_MAX_LEN, V1_PREFIX, Version};

/// Parses a line that starts with "PROXY ". The bytes are read in order and the first bad
/// one decides, so a prefix of the same input never gives a different answer.
pub(super) fn parse(buf: &[u8]) -> Result<Option<Header<'_>>, Error> {
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let mut cr = None;
    for (i, &b) in window.iter().enumerate().skip(V1_PREFIX.len()) {
        match b {
            // A CR whose LF would be the 108th byte stays unmatched: the line is too long.
            b'\r' => match window.get(i + 1) {
                Some(b'\n') => {
                    cr = Some(i);
                    break;
                }
                Some(_) => return Err(Error::BadV1("CR without LF")),
                None => {}
            },
            b'\n' => return Err(Error::BadV1("LF without CR")),
            b' '..=b'~' => {}
            _ => return Err(Error::BadV1("a byte that is not printable ASCII")),
        }
    }
    let Some(cr) = cr else {
        return if buf.len() >= V1_MAX_LEN {
            Err(Error::BadV1("no CRLF within 107 bytes"))
        } else {
            Ok(None)
        };
    };
    // Printable ASCII, checked above.
    let line = std::str::from_utf8(&buf[V1_PREFIX.len()..cr])
        .map_err(|_| Error::BadV1("a byte that is not printable ASCII"))?;
    let mut fields = line.split(' ');
    let v6 = match fields.next() {
        Some("TCP4") => false,
        Some("TCP6") => true,
        // The spec: whatever follows UNKNOWN up to the CRLF is ignored.
        Some("UNKNOWN") => return Ok(Some(header(cr + 2, None))),
        _ => return Err(Error::BadV1("protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(Error::BadV1(
            "not four fields after the protocol, one space apart",
        ));
    };
    let addrs = (
        SocketAddr::new(ip(src, v6)?, port(sport)?),
        SocketAddr::new(ip(dst, v6)?, port(dport)?),
    );
    Ok(Some(header(cr + 2, Some(addrs))))
}

fn header(len: usize, addrs: Option<(SocketAddr, SocketAddr)>) -> Header<'static> {
    Header {
        len,
        version: Version::V1,
        command: Command::Proxy,
        source: addrs.map(|a| a.0),
        destination: addrs.map(|a| a.1),
        tlvs: Tlvs::EMPTY,
    }
}

/// An address of the line's family; std's parsers refuse leading zeros in IPv4 octets and
/// IPv6 zone suffixes, neither of which a sender may write.
fn ip(text: &str, v6: bool) -> Result<IpAddr, Error> {
    let ip = if v6 {
        text.parse::<Ipv6Addr>().map(IpAddr::V6)
    } else {
        text.parse::<Ipv4Addr>().map(IpAddr::V4)
    };
    ip.map_err(|_| Error::BadV1("an address that is not of the line's family"))
}

/// A decimal port, 0..=65535: digits only (`u16::from_str` alone would take a `+`).
fn port(text: &str) -> Result<u16, Error> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::BadV1("a port that is not 0..=65535"));
    }
    text.parse()
        .map_err(|_| Error::BadV1("a port that is not 0..=65535"))
}

/// The v1 line for a TCP connection from `src` to `dst`. A line has one family for both
/// addresses (spec 2.1: TCP4 or TCP6); when they differ, the IPv4 one is written in its
/// IPv4-mapped IPv6 form (`::ffff:a.b.c.d`) under TCP6, as haproxy does, so the backend
/// still learns both.
pub fn encode(src: SocketAddr, dst: SocketAddr) -> String {
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            format!("PROXY TCP4 {s} {d} {} {}\r\n", src.port(), dst.port())
        }
        (s, d) => format!(
            "PROXY TCP6 {} {} {} {}\r\n",
            as_v6(s),
            as_v6(d),
            src.port(),
            dst.port()
        ),
    }
}

pub(super) fn as_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}
