//! PROXY v2: the binary header (spec 2.2) and its TLVs (2.2.1-2.2.7), read in place.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{Command, Error, Header, V2_FIXED_LEN, V2_SIGNATURE, Version};

const AF_UNSPEC: u8 = 0x0;
const AF_INET: u8 = 0x1;
const AF_INET6: u8 = 0x2;
const AF_UNIX: u8 = 0x3;
const STREAM: u8 = 0x1;
/// Address block bytes for each family: two addresses and (for IP) two ports.
const INET_LEN: usize = 4 + 4 + 2 + 2;
const INET6_LEN: usize = 16 + 16 + 2 + 2;
const UNIX_LEN: usize = 108 + 108;

pub const PP2_TYPE_AUTHORITY: u8 = 0x02;
pub const PP2_TYPE_SSL: u8 = 0x20;
pub const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
/// PP2_TYPE_SSL's fixed part: the client flags (1 byte) and the verify result (4).
const SSL_FIXED_LEN: usize = 5;

/// Parses a header that starts with the 12-byte signature: each field is checked as soon
/// as it has arrived, in the order of the bytes, so a prefix never gives another answer.
pub(super) fn parse(buf: &[u8], max: usize) -> Result<Option<Header<'_>>, Error> {
    let Some(&ver_cmd) = buf.get(12) else {
        return Ok(None);
    };
    if ver_cmd >> 4 != 2 {
        return Err(Error::BadVersion(ver_cmd >> 4));
    }
    let command = match ver_cmd & 0xf {
        0 => Command::Local,
        1 => Command::Proxy,
        c => return Err(Error::BadCommand(c)),
    };
    let Some(&fam) = buf.get(13) else {
        return Ok(None);
    };
    let (family, protocol) = (fam >> 4, fam & 0xf);
    // The spec: other values "must be rejected as invalid by receivers".
    if family > AF_UNIX || protocol > 2 {
        return Err(Error::BadFamily(fam));
    }
    let Some(&[hi, lo]) = buf.get(14..16) else {
        return Ok(None);
    };
    let len = V2_FIXED_LEN + u16::from_be_bytes([hi, lo]) as usize;
    if len > max {
        return Err(Error::TooLong(len));
    }
    let Some(body) = buf.get(V2_FIXED_LEN..len) else {
        return Ok(None);
    };
    let local = |tlvs| Header {
        len,
        version: Version::V2,
        command: Command::Local,
        source: None,
        destination: None,
        tlvs,
    };
    if command == Command::Local {
        // The spec: the receiver "must discard the protocol block including the family".
        return Ok(Some(local(Tlvs::EMPTY)));
    }
    let addr_len = match family {
        AF_UNSPEC => 0,
        AF_INET => INET_LEN,
        AF_INET6 => INET6_LEN,
        _ => UNIX_LEN,
    };
    if body.len() < addr_len {
        return Err(Error::ShortAddresses);
    }
    let (addrs, rest) = body.split_at(addr_len);
    // A stream is all a TCP listener can be relaying; AF_UNSPEC's protocol is not read.
    if family != AF_UNSPEC && protocol != STREAM {
        return Err(Error::BadFamily(fam));
    }
    let tlvs = Tlvs::parse(rest)?;
    let (source, destination) = match family {
        AF_INET => {
            let ip = |at: usize| IpAddr::V4(Ipv4Addr::from(octets::<4>(addrs, at)));
            endpoints(addrs, ip(0), ip(4))
        }
        AF_INET6 => {
            let ip = |at: usize| IpAddr::V6(Ipv6Addr::from(octets::<16>(addrs, at)));
            endpoints(addrs, ip(0), ip(16))
        }
        // AF_UNSPEC and AF_UNIX: nothing an IP-keyed limit or log could use; the socket's
        // own addresses stand.
        _ => (None, None),
    };
    Ok(Some(Header {
        source,
        destination,
        command,
        ..local(tlvs)
    }))
}

/// `N` bytes of `block` at `at`; the caller has checked the block's length.
fn octets<const N: usize>(block: &[u8], at: usize) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&block[at..at + N]);
    out
}

/// The two ports end the address block.
fn endpoints(block: &[u8], src: IpAddr, dst: IpAddr) -> (Option<SocketAddr>, Option<SocketAddr>) {
    let n = block.len();
    let port = |at: usize| u16::from_be_bytes(octets::<2>(block, at));
    (
        Some(SocketAddr::new(src, port(n - 4))),
        Some(SocketAddr::new(dst, port(n - 2))),
    )
}

/// One TLV: its type and its value, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    pub kind: u8,
    pub value: &'a [u8],
}

/// A header's TLVs, checked whole when the header was parsed (each one complete, the
/// authority and the SSL TLV well formed), so reading them cannot fail. The CRC32C TLV is
/// not verified: the header comes over TCP from a listed source, whose checksum and
/// allow-list already cover what it would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlvs<'a>(&'a [u8]);

impl<'a> Tlvs<'a> {
    pub const EMPTY: Tlvs<'static> = Tlvs(&[]);

    /// Checks a TLV area (the header's, or the SSL TLV's sub-TLVs).
    fn parse(area: &'a [u8]) -> Result<Tlvs<'a>, Error> {
        let mut rest = area;
        while !rest.is_empty() {
            let Some(&[kind, hi, lo]) = rest.get(..3) else {
                return Err(Error::BadTlv("a TLV cut in its type or length"));
            };
            let end = 3 + u16::from_be_bytes([hi, lo]) as usize;
            let Some(value) = rest.get(3..end) else {
                return Err(Error::BadTlv("a TLV longer than the header"));
            };
            match kind {
                PP2_TYPE_AUTHORITY if std::str::from_utf8(value).is_err() => {
                    return Err(Error::BadTlv("an authority that is not UTF-8"));
                }
                PP2_TYPE_SSL => Ssl::parse(value).map(drop)?,
                PP2_SUBTYPE_SSL_VERSION if !value.is_ascii() => {
                    return Err(Error::BadTlv("an SSL version that is not ASCII"));
                }
                _ => {}
            }
            rest = &rest[end..];
        }
        Ok(Tlvs(area))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = Tlv<'a>> + use<'a> {
        let mut rest = self.0;
        std::iter::from_fn(move || {
            let &[kind, hi, lo] = rest.get(..3)? else {
                return None;
            };
            let end = 3 + u16::from_be_bytes([hi, lo]) as usize;
            let value = rest.get(3..end)?;
            rest = &rest[end..];
            Some(Tlv { kind, value })
        })
    }

    /// The first TLV of type `kind`.
    pub fn get(&self, kind: u8) -> Option<&'a [u8]> {
        self.iter().find(|t| t.kind == kind).map(|t| t.value)
    }

    /// PP2_TYPE_AUTHORITY: the host name the client asked for (its TLS SNI), as the L4 saw it.
    pub fn authority(&self) -> Option<&'a str> {
        self.get(PP2_TYPE_AUTHORITY)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// PP2_TYPE_SSL: the client's TLS connection to the L4, when there was one.
    pub fn ssl(&self) -> Option<Ssl<'a>> {
        self.get(PP2_TYPE_SSL).and_then(|v| Ssl::parse(v).ok())
    }
}

/// The PP2_TYPE_SSL TLV: how the client's TLS to the L4 went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ssl<'a> {
    /// PP2_CLIENT_* flags: SSL (0x01), CERT_CONN (0x02), CERT_SESS (0x04).
    pub client: u8,
    /// 0 when the client presented a certificate that verified.
    pub verify: u32,
    /// The sub-TLVs (version, CN, cipher, algorithms).
    pub subs: Tlvs<'a>,
}

impl<'a> Ssl<'a> {
    fn parse(value: &'a [u8]) -> Result<Ssl<'a>, Error> {
        let Some((fixed, subs)) = value.split_at_checked(SSL_FIXED_LEN) else {
            return Err(Error::BadTlv("an SSL TLV under 5 bytes"));
        };
        Ok(Ssl {
            client: fixed[0],
            verify: u32::from_be_bytes(octets::<4>(fixed, 1)),
            subs: Tlvs::parse(subs)?,
        })
    }

    /// PP2_CLIENT_SSL: the client connected over TLS.
    pub fn over_tls(&self) -> bool {
        self.client & 0x01 != 0
    }

    /// PP2_CLIENT_CERT_CONN: the client presented a certificate on this connection.
    pub fn cert_in_connection(&self) -> bool {
        self.client & 0x02 != 0
    }

    /// PP2_CLIENT_CERT_SESS: the client presented a certificate in this TLS session.
    pub fn cert_in_session(&self) -> bool {
        self.client & 0x04 != 0
    }

    /// PP2_SUBTYPE_SSL_VERSION: the TLS version, e.g. "TLSv1.3".
    pub fn version(&self) -> Option<&'a str> {
        self.subs
            .get(PP2_SUBTYPE_SSL_VERSION)
            .and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// The v2 header (PROXY command, TCP, no TLVs) for a connection from `src` to `dst`. One
/// family for both addresses (spec 2.2's address blocks); when they differ, the IPv4 one
/// is sent IPv4-mapped under TCP over IPv6, as haproxy does.
pub fn encode(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(V2_FIXED_LEN + INET6_LEN);
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(0x21); // version 2, PROXY
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(AF_INET << 4 | STREAM);
            out.extend_from_slice(&(INET_LEN as u16).to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            out.push(AF_INET6 << 4 | STREAM);
            out.extend_from_slice(&(INET6_LEN as u16).to_be_bytes());
            out.extend_from_slice(&super::v1::as_v6(s).octets());
            out.extend_from_slice(&super::v1::as_v6(d).octets());
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out
}
