//! The PROXY protocol header an L4 balancer sends before a client's bytes: parse it (v1
//! text, v2 binary), and encode one for a backend.
//!
//! Pure, like `handshake.rs`: bytes in, decision out. The listener feeds what it has read
//! so far and calls again with more on `Ok(None)`; a parse borrows the buffer and allocates
//! nothing. The spec is haproxy's `proxy-protocol.txt` (2.1: v1, 2.2: v2, 2.2.x: TLVs).
//!
//! Why not the `ppp` crate, which parses both versions without copying: in the version read
//! for this module its v2 parser answers "incomplete" for any input under 16 bytes without
//! looking at the signature bytes it has, so a plain `GET / HTTP/1.1` (14 bytes) waits for
//! more instead of being refused at its first byte; it waits for whatever length the header
//! declares (up to 64 KiB) with no limit from the caller; and its v2 header leaves the
//! addresses and the SSL TLV's fields to its caller. With those three done here, what is
//! left of the crate is the signature compare and a TLV walk, so the spec is implemented
//! here in full (a few hundred lines, fuzzed by `fuzz/fuzz_targets/proxy_proto.rs`) rather
//! than wrapped.
//!
//! Every [`Error`] is the sender's fault (the L4, or a client that is not behind it) and
//! ends the connection: none is worth retrying, and none depends on bytes not yet seen, so
//! more input never turns an error into a header (the fuzz target checks this).

use std::net::SocketAddr;

mod v1;
mod v2;

pub use v1::encode as encode_v1;
pub use v2::{
    PP2_SUBTYPE_SSL_VERSION, PP2_TYPE_AUTHORITY, PP2_TYPE_SSL, Ssl, Tlv, Tlvs, encode as encode_v2,
};

/// The first bytes of a v1 header, space included.
const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest v1 line the spec allows, CRLF included (a TCP6 line with both addresses at
/// their longest is 104).
pub const V1_MAX_LEN: usize = 107;
/// v2's fixed part: the signature, version and command, family and protocol, and length.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
pub const V2_FIXED_LEN: usize = 16;

/// A PROXY protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// The versions a listener accepts; a header of another is [`Error::Unaccepted`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Versions {
    pub v1: bool,
    pub v2: bool,
}

impl Versions {
    pub const V1: Versions = Versions {
        v1: true,
        v2: false,
    };
    pub const V2: Versions = Versions {
        v1: false,
        v2: true,
    };
    pub const ANY: Versions = Versions { v1: true, v2: true };
}

/// What the header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Relayed for a client: the addresses (when given) are the client's and the address
    /// it reached.
    Proxy,
    /// Made by the L4 itself (a health check): the socket's own addresses stand.
    Local,
}

/// A complete header, borrowing the caller's buffer for its TLVs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// Bytes the header took; what follows them is the client's first bytes.
    pub len: usize,
    pub version: Version,
    pub command: Command,
    /// The client's address; `None` for LOCAL, v1 `UNKNOWN`, v2 `AF_UNSPEC` and `AF_UNIX`
    /// (the socket's own peer address stands, as the spec says).
    pub source: Option<SocketAddr>,
    /// The address the client connected to, `None` exactly when `source` is.
    pub destination: Option<SocketAddr>,
    /// v2's TLVs (empty for v1 and for LOCAL, whose address block the spec discards).
    pub tlvs: Tlvs<'a>,
}

/// Why a header is refused. Each one closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The first bytes match neither "PROXY " nor the v2 signature: a plain request, or a
    /// client that is not behind the L4. Known at the first byte that differs.
    #[error("not a PROXY protocol header")]
    NotProxy,
    #[error("PROXY protocol {0:?} header where it is not accepted")]
    Unaccepted(Version),
    #[error("PROXY v2 header with version {0:#x}")]
    BadVersion(u8),
    #[error("PROXY v2 header with command {0:#x}")]
    BadCommand(u8),
    /// An invalid family or protocol, or (for PROXY) one that is not a stream.
    #[error("PROXY v2 header with family and protocol {0:#04x}")]
    BadFamily(u8),
    #[error("malformed PROXY v1 line: {0}")]
    BadV1(&'static str),
    /// The address block is shorter than its family needs.
    #[error("PROXY v2 address block shorter than its family needs")]
    ShortAddresses,
    #[error("malformed PROXY v2 TLV: {0}")]
    BadTlv(&'static str),
    /// A v2 header longer than the caller's limit, refused as soon as its length is read.
    #[error("PROXY v2 header of {0} bytes is over the limit")]
    TooLong(usize),
}

/// Parses the header at the start of `buf`: `Ok(None)` while it is incomplete. `max`
/// bounds a v2 header's total length (fixed part, addresses, TLVs): one that declares more
/// is refused once its length field has arrived, before its body is waited for; v1 has the
/// spec's bound, [`V1_MAX_LEN`].
pub fn parse(buf: &[u8], accept: Versions, max: usize) -> Result<Option<Header<'_>>, Error> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let (version, signature): (Version, &[u8]) = match first {
        b'P' => (Version::V1, V1_PREFIX),
        b'\r' => (Version::V2, &V2_SIGNATURE),
        _ => return Err(Error::NotProxy),
    };
    let seen = buf.len().min(signature.len());
    if buf[..seen] != signature[..seen] {
        return Err(Error::NotProxy);
    }
    if seen < signature.len() {
        return Ok(None);
    }
    match version {
        Version::V1 if accept.v1 => v1::parse(buf),
        Version::V2 if accept.v2 => v2::parse(buf, max),
        _ => Err(Error::Unaccepted(version)),
    }
}

#[cfg(test)]
mod tests;
