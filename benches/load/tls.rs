//! wss for the load bench: the test CA and the certificates every proxy serves, the client's
//! rustls configuration, and a thin rustls-over-monoio stream for the load client.
//!
//! Every proxy gets the same leaf certificate and key files (HAProxy the two concatenated),
//! made at bench start into a temporary directory and removed with it: nothing private is
//! ever written outside it.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;

use bytes::Bytes;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::client::Resumption;
use rustls::crypto::aws_lc_rs as provider;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use crate::client::{Connect, Stream};
use crate::targets::TempDir;

/// The name every certificate carries and the client sends as SNI.
const NAME: &str = "localhost";

/// The leaf certificate's key type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeyKind {
    /// ECDSA P-256 with SHA-256: what most sites serve today.
    Ecdsa,
    /// RSA 2048: the other common one; signing costs about 20 times an ECDSA signature.
    Rsa,
}

impl KeyKind {
    pub fn name(self) -> &'static str {
        match self {
            KeyKind::Ecdsa => "ecdsa",
            KeyKind::Rsa => "rsa",
        }
    }
}

/// One leaf certificate as the proxies read it.
pub struct CertFiles {
    /// The leaf certificate alone, PEM: the root is the client's trust anchor, so no proxy
    /// sends it, and there is no intermediate.
    pub cert: PathBuf,
    /// Its private key, PEM (PKCS#8).
    pub key: PathBuf,
    /// `cert` then `key` in one file, as HAProxy's `crt` wants it.
    pub combined: PathBuf,
}

/// The test CA and one leaf per key kind, all in a temporary directory.
pub struct Certs {
    ca: CertificateDer<'static>,
    ecdsa: CertFiles,
    rsa: CertFiles,
    _dir: TempDir,
}

impl Certs {
    /// Makes a CA (ECDSA P-256) and two leaves for `localhost` signed by it. rcgen's ring
    /// backend cannot generate RSA keys, so the RSA key comes from `openssl genpkey` then.
    pub fn generate() -> Certs {
        let dir = TempDir::new("certs");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "wslb load bench test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |kind: KeyKind| {
            let key = match kind {
                KeyKind::Ecdsa => KeyPair::generate().unwrap(),
                KeyKind::Rsa => KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
                    .unwrap_or_else(|_| openssl_rsa_2048(&dir)),
            };
            let mut params = CertificateParams::new(vec![NAME.to_string()]).unwrap();
            params.distinguished_name.push(DnType::CommonName, NAME);
            let cert = params.signed_by(&key, &issuer).unwrap();
            let files = CertFiles {
                cert: dir.0.join(format!("{}.crt", kind.name())),
                key: dir.0.join(format!("{}.key", kind.name())),
                combined: dir.0.join(format!("{}.pem", kind.name())),
            };
            let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
            std::fs::write(&files.cert, &cert_pem).unwrap();
            write_private(&files.key, &key_pem);
            write_private(&files.combined, &(cert_pem + &key_pem));
            files
        };
        Certs {
            ca: ca.der().clone(),
            ecdsa: leaf(KeyKind::Ecdsa),
            rsa: leaf(KeyKind::Rsa),
            _dir: dir,
        }
    }

    pub fn files(&self, kind: KeyKind) -> &CertFiles {
        match kind {
            KeyKind::Ecdsa => &self.ecdsa,
            KeyKind::Rsa => &self.rsa,
        }
    }

    /// The load client's connector: it trusts only the test CA and verifies the whole chain
    /// and name on every handshake.
    pub fn connector(&self) -> Tls {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        // One key exchange group and one cipher suite that all three proxies support, so each
        // does the same work: left to the defaults, rustls would offer X25519MLKEM768 first
        // (which wslb would pick and OpenSSL 3.0 cannot), and HAProxy, which prefers its own
        // order, would pick AES-256-GCM where the others follow the client's.
        let provider = rustls::crypto::CryptoProvider {
            cipher_suites: vec![provider::cipher_suite::TLS13_AES_128_GCM_SHA256],
            kx_groups: vec![provider::kx_group::X25519],
            ..provider::default_provider()
        };
        let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        // Every handshake is a full one: the scenarios measure new sessions.
        config.resumption = Resumption::disabled();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Tls(Arc::new(config))
    }
}

/// What the bench header says about the client's TLS.
pub const CLIENT_SUMMARY: &str = "TLS 1.3, TLS_AES_128_GCM_SHA256, X25519, no resumption, \
     ALPN http/1.1, SNI localhost; leaf ECDSA P-256 or RSA 2048 from a test CA (ECDSA P-256)";

fn write_private(path: &std::path::Path, contents: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

fn openssl_rsa_2048(dir: &TempDir) -> KeyPair {
    let path = dir.0.join("rsa-openssl.key");
    let ok = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&path)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "openssl genpkey (RSA 2048) failed");
    let pem = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    KeyPair::from_pem(&pem).expect("openssl's RSA key")
}

/// Connects over TLS with one shared client configuration.
#[derive(Clone)]
pub struct Tls(Arc<ClientConfig>);

/// The most ciphertext one read takes: one full TLS record (16 KiB of plaintext plus
/// header, padding and tag, rustls' `MAX_WIRE_SIZE`), so a 16 KiB message needs no more than
/// two reads.
const RX_CAP: usize = 16384 + 2048 + 5;

/// A client TLS connection: rustls' buffered `ClientConnection` over a monoio socket.
/// io_uring owns a buffer while an operation is in flight, so ciphertext goes through two
/// buffers of our own, each handed to the kernel and taken back from `(result, buf)`:
/// `rx` (read from the socket, then copied into rustls) and `tx` (copied out of rustls,
/// then written). A cancelled operation cannot happen here: nothing times out mid-read
/// except whole handshakes, which drop the connection with its buffers.
pub struct TlsStream {
    tcp: TcpStream,
    tls: ClientConnection,
    /// Ciphertext read and not yet given to rustls: `rx[rx_pos..]`. Allocated on the first
    /// read, dropped by `release`.
    rx: Vec<u8>,
    rx_pos: usize,
    /// Ciphertext to write; empty between writes.
    tx: Vec<u8>,
}

impl Connect for Tls {
    type Stream = TlsStream;

    async fn connect(&self, addr: SocketAddr) -> io::Result<TlsStream> {
        let tcp = TcpStream::connect_addr(addr).await?;
        tcp.set_nodelay(true)?;
        let tls = ClientConnection::new(self.0.clone(), ServerName::try_from(NAME).unwrap())
            .map_err(io::Error::other)?;
        let mut s = TlsStream {
            tcp,
            tls,
            rx: Vec::new(),
            rx_pos: 0,
            tx: Vec::new(),
        };
        while s.tls.is_handshaking() {
            s.flush().await?;
            s.receive().await?;
        }
        // The client's Finished is still queued: it leaves with the upgrade request, in one
        // write, as browsers do.
        Ok(s)
    }
}

impl TlsStream {
    /// Writes out whatever rustls has queued.
    async fn flush(&mut self) -> io::Result<()> {
        if !self.tls.wants_write() {
            return Ok(());
        }
        let mut tx = std::mem::take(&mut self.tx);
        while self.tls.wants_write() {
            self.tls.write_tls(&mut tx)?;
        }
        let (res, mut tx) = self.tcp.write_all(tx).await;
        tx.clear();
        self.tx = tx;
        res.map(drop)
    }

    /// Gives rustls more ciphertext, the rest of the last read or a new one, and processes
    /// it. A TCP end of stream is an error: every caller was waiting for bytes.
    async fn receive(&mut self) -> io::Result<()> {
        if self.rx_pos == self.rx.len() {
            let mut rx = std::mem::take(&mut self.rx);
            rx.clear();
            rx.reserve(RX_CAP);
            let (res, rx) = self.tcp.read(rx).await;
            self.rx = rx;
            self.rx_pos = 0;
            if res? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        // rustls takes at most 4 KiB per call; the caller comes back for the rest once it
        // has read the plaintext this produced.
        self.rx_pos += self.tls.read_tls(&mut &self.rx[self.rx_pos..])?;
        self.tls.process_new_packets().map_err(io::Error::other)?;
        Ok(())
    }
}

impl Stream for TlsStream {
    async fn read_more(&mut self, mut buf: Vec<u8>) -> io::Result<Vec<u8>> {
        loop {
            match self.tls.reader().into_first_chunk() {
                // A close_notify arrived: the end of the stream.
                Ok([]) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(chunk) => {
                    let n = chunk.len();
                    buf.extend_from_slice(chunk);
                    io::BufRead::consume(&mut self.tls.reader(), n);
                    return Ok(buf);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            self.receive().await?;
            // A key update asks for an answer; nothing else a server sends after the
            // handshake does.
            self.flush().await?;
        }
    }

    async fn send(&mut self, data: &Bytes) -> io::Result<()> {
        let mut rest = &data[..];
        while !rest.is_empty() {
            // Encrypts at once (the handshake is done); rustls takes less than all only when
            // its 64 KiB of queued records is full, which `flush` empties.
            let n = self.tls.writer().write(rest)?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            rest = &rest[n..];
            self.flush().await?;
        }
        Ok(())
    }

    fn release(&mut self) {
        self.rx = Vec::new();
        self.rx_pos = 0;
        self.tx = Vec::new();
    }
}
