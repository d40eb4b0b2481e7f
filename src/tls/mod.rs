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

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rustls::crypto::CryptoProvider;
use rustls::server::UnbufferedServerConnection;

use crate::config;

mod client;
mod handshake;
mod load;
mod server;
mod stream;
pub use client::{BackendStream, BackendTls, connect};
pub use handshake::{HandshakeFailure, Unbuffered};
pub use load::{Loaded, load};
pub use server::ServerTls;
pub use stream::{RECORD_ROOM, TlsReader, TlsStream, TlsWriter};

/// A client's TLS stream.
pub type ServerStream = TlsStream<UnbufferedServerConnection>;

/// The crypto provider: aws-lc-rs (see Cargo.toml and `benches/tls_provider.rs`).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The server config new client handshakes use, replaced whole by a certificate reload.
#[derive(Debug)]
pub struct Certificates {
    current: Mutex<Arc<rustls::ServerConfig>>,
    /// Moves at each replacement; workers compare it with the one they cached.
    generation: AtomicU64,
}

impl Certificates {
    pub fn new(config: Arc<rustls::ServerConfig>) -> Self {
        Self {
            current: Mutex::new(config),
            generation: AtomicU64::new(0),
        }
    }

    /// New handshakes on every worker use `config` from now on.
    pub fn replace(&self, config: Arc<rustls::ServerConfig>) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = config;
        // Release pairs with `LocalCertificates::current`'s Acquire load.
        self.generation.fetch_add(1, Ordering::Release);
    }

    fn get(&self) -> Arc<rustls::ServerConfig> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A worker's view of the [`Certificates`]: its cached config, fetched again only after a
/// reload (one shared atomic read per handshake otherwise).
#[derive(Debug)]
pub struct LocalCertificates {
    shared: Arc<Certificates>,
    cached: RefCell<(u64, Arc<rustls::ServerConfig>)>,
}

impl LocalCertificates {
    pub fn new(shared: Arc<Certificates>) -> Self {
        let g = shared.generation.load(Ordering::Acquire);
        let c = shared.get();
        Self {
            shared,
            cached: RefCell::new((g, c)),
        }
    }

    /// The config for a new handshake. The `Arc` it returns is one increment of a count
    /// every worker shares, once per TLS connection (rustls's connection holds its config).
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        let g = self.shared.generation.load(Ordering::Acquire);
        let mut c = self.cached.borrow_mut();
        if c.0 != g {
            *c = (g, self.shared.get());
        }
        c.1.clone()
    }
}

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

/// One configured certificate, as the metrics and the log describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub file: PathBuf,
    /// Its subjectAltName DNS names (the SNI names it serves).
    pub names: Vec<String>,
    /// notAfter, in Unix seconds.
    pub not_after: i64,
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

/// Why a client's TLS handshake failed: the `wslb_tls_handshake_failures_total` reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Timeout,
    Closed,
    ProtocolVersion,
    UnknownSni,
    ClientCert,
    BadMessage,
    Other,
}

impl Failure {
    pub const ALL: [Failure; 7] = [
        Failure::Timeout,
        Failure::Closed,
        Failure::ProtocolVersion,
        Failure::UnknownSni,
        Failure::ClientCert,
        Failure::BadMessage,
        Failure::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Closed => "closed",
            Failure::ProtocolVersion => "protocol_version",
            Failure::UnknownSni => "unknown_sni",
            Failure::ClientCert => "client_cert",
            Failure::BadMessage => "bad_message",
            Failure::Other => "other",
        }
    }

    pub fn of(f: &HandshakeFailure) -> Failure {
        use rustls::Error as E;
        match f {
            HandshakeFailure::Closed => Failure::Closed,
            HandshakeFailure::Io(_) => Failure::Closed,
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

/// The negotiated version's index among the `wslb_tls_handshakes_total` versions.
pub fn version_index(v: Option<rustls::ProtocolVersion>) -> usize {
    match v {
        Some(rustls::ProtocolVersion::TLSv1_2) => 0,
        _ => 1,
    }
}

/// The versions `wslb_tls_handshakes_total` counts, by [`version_index`].
pub const VERSIONS: [&str; 2] = ["1.2", "1.3"];
