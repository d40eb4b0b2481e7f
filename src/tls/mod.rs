//! TLS termination: the `[tls]` section loaded into a rustls server config (certificates
//! chosen by SNI, optional client certificates), the handshake with a client under a
//! deadline, and the stream that carries the connection afterwards (`stream.rs`).
//!
//! Where it sits in one connection's path: the listener accepts TCP, `connection.rs` runs
//! [`accept`] before it reads the upgrade, and from then on the connection is generic over
//! the client stream (`stream::ClientStream`), so the upgrade, the relay and the close
//! handshake are the same code for ws and wss.
//!
//! Certificates reload on SIGHUP: the reload loads the files again ([`ServerTls::load`],
//! every problem reported and the old config kept if any) and replaces the instance's
//! [`Certificates`], an immutable config swapped whole; each worker picks the new one up
//! at its next handshake (as it does a new backend list), so once a reload returns every
//! new handshake uses it. Open connections keep theirs.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::UnbufferedServerConnection;

use crate::config;

mod client;
mod handshake;
mod load;
mod plain_http;
mod server;
mod stream;
/// The labels TLS's counters are kept under, owned by the metrics that count them.
pub use crate::metrics::{CertInfo, TLS_VERSIONS as VERSIONS, TlsFailure as Failure};
pub use client::{BackendStream, BackendTls, connect};
pub use handshake::{HandshakeFailure, Unbuffered};
pub use load::{Loaded, load};
pub use server::ServerTls;
pub use stream::{RECORD_ROOM, TlsReader, TlsStream, TlsWriter};

/// A client's TLS stream.
pub type ServerStream = TlsStream<UnbufferedServerConnection>;

// Here rather than in stream.rs: the seam sits below the streams that fill it.
impl crate::stream::ClientStream for ServerStream {
    const SCHEME: crate::stream::Scheme = crate::stream::Scheme::Https;
}

/// The crypto provider: aws-lc-rs (see Cargo.toml and `benches/tls_provider.rs`).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The server config new client handshakes use, replaced whole by a certificate reload
/// ([`Published::replace`](crate::snapshot::Published::replace)).
pub type Certificates = crate::snapshot::Published<rustls::ServerConfig>;

/// A worker's view of the [`Certificates`]: its cached config, fetched again only after a
/// reload (one shared atomic read per handshake otherwise). The `Arc` its `current()`
/// returns is one increment of a count every worker shares, once per TLS connection
/// (rustls's connection holds its config), so the copy is the shared `Arc` itself.
pub type LocalCertificates = crate::snapshot::Cached<rustls::ServerConfig>;

/// Reads a PEM bundle of CA certificates (client CAs, backend CAs): the roots and the
/// file's bytes (for telling a reload that changed it), or what is wrong with it.
pub(crate) fn load_roots(path: &str) -> Result<(rustls::RootCertStore, Vec<u8>), String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&bytes) {
        let c = c.map_err(|e| format!("{path}: {e}"))?;
        roots
            .add(c)
            .map_err(|e| format!("{path}: not a usable CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("{path}: no PEM certificate in it"));
    }
    Ok((roots, bytes))
}

/// Problems found loading TLS files, each naming the config field it comes from.
pub type Problems = Vec<config::Problem>;

fn problem(out: &mut Problems, field: &str, message: String) {
    out.push(config::Problem {
        field: field.to_string(),
        message,
        at: None,
    });
}

// `Failure` is the metrics' label set (metrics sit below tls); which rustls error is which
// reason is decided here, next to the handshake that fails.
impl Failure {
    /// The reason `f` is counted under.
    pub fn of(f: &HandshakeFailure) -> Failure {
        use rustls::Error as E;
        match f {
            HandshakeFailure::Closed => Failure::Closed,
            HandshakeFailure::Io(_) => Failure::Closed,
            HandshakeFailure::PlainHttp => Failure::PlainHttp,
            HandshakeFailure::Tls(e) => match e {
                E::PeerIncompatible(_) => Failure::ProtocolVersion,
                E::General(m) if m == server::NO_CERTIFICATE => Failure::UnknownSni,
                E::NoCertificatesPresented | E::InvalidCertificate(_) => Failure::ClientCert,
                E::InvalidMessage(_)
                | E::InappropriateMessage { .. }
                | E::InappropriateHandshakeMessage { .. }
                | E::PeerMisbehaved(_)
                | E::DecryptError => Failure::BadMessage,
                _ => Failure::Other,
            },
        }
    }
}

/// The TLS handshake with a client: the stream, or why it failed. Bounded by the caller
/// (`timeouts.client_handshake_ms` covers the handshake and the upgrade request together).
pub async fn accept(
    tcp: monoio::net::TcpStream,
    config: Arc<rustls::ServerConfig>,
) -> Result<ServerStream, HandshakeFailure> {
    let conn = UnbufferedServerConnection::new(config).map_err(HandshakeFailure::Tls)?;
    handshake::handshake(tcp, conn).await
}

/// The negotiated version's index among the `wslb_tls_handshakes_total` versions
/// ([`VERSIONS`]).
pub fn version_index(v: Option<rustls::ProtocolVersion>) -> usize {
    match v {
        Some(rustls::ProtocolVersion::TLSv1_2) => 0,
        _ => 1,
    }
}
