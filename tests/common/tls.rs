//! TLS test helpers: a certificate authority and leaf certificates made at test time
//! (rcgen; no key is ever committed), written as PEM files into a test directory, and a
//! rustls client for the "a good wss client is still served" checks and for reading the
//! certificate a handshake presents.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use super::TIMEOUT;

/// A TLS stream over TCP, as the rustls client sees it.
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;
/// A WebSocket client over [`TlsStream`].
pub type Wss = tungstenite::WebSocket<TlsStream>;

/// Every certificate made in this process gets its own serial number.
static SERIAL: AtomicU64 = AtomicU64::new(1);

/// A test certificate authority.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub der: CertificateDer<'static>,
    pub pem: String,
}

/// A leaf certificate and its key.
pub struct Leaf {
    pub der: CertificateDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.serial_number = Some(next_serial());
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Ca {
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(p, key),
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses), its subject's CN the
    /// first name; each call makes a new key and serial.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.distinguished_name.push(DnType::CommonName, names[0]);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.serial_number = Some(next_serial());
        // A fixed notAfter, so the expiry metric has a known value.
        p.not_after = rcgen::date_time_ymd(2099, 1, 1);
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

impl Ca {
    /// A client certificate for `name` (extended key usage clientAuth), for servers that
    /// verify clients against this CA.
    pub fn client_leaf(&self, name: &str) -> Leaf {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.serial_number = Some(next_serial());
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// [`client_config`] (TLS 1.3 and 1.2, no resumption) presenting `cert` as the client's.
pub fn client_config_with_cert(ca: &Ca, cert: &Leaf) -> Arc<ClientConfig> {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = RootCertStore::empty();
    roots.add(ca.der.clone()).unwrap();
    let mut c = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(
        vec![cert.der.clone()],
        PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    c.resumption = rustls::client::Resumption::disabled();
    Arc::new(c)
}

/// Whether a whole wss exchange works with `config`: handshake, upgrade, one echo. (A TLS
/// 1.3 server refuses a client certificate after the client's handshake is done, so a
/// refusal may show only at the upgrade.)
pub fn wss_works(addr: SocketAddr, name: &str, config: Arc<ClientConfig>) -> bool {
    let Ok(tls) = try_tls_connect(addr, name, config) else {
        return false;
    };
    let Ok((mut ws, _)) = tungstenite::client(format!("wss://{name}/"), tls) else {
        return false;
    };
    ws.send(tungstenite::Message::text("client cert")).is_ok()
        && ws.read().ok() == Some(tungstenite::Message::text("client cert"))
}

fn next_serial() -> SerialNumber {
    SerialNumber::from(SERIAL.fetch_add(1, Ordering::Relaxed))
}

impl Leaf {
    /// Writes the chain (this leaf only: clients trust the CA itself) and the PKCS#8 key.
    pub fn write(&self, cert: &Path, key: &Path) {
        std::fs::write(cert, &self.cert_pem).unwrap();
        std::fs::write(key, &self.key_pem).unwrap();
    }
}

/// One test's certificates on disk: `ca.pem`, and `<stem>.pem` / `<stem>.key` per leaf.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: Ca,
    pub ca_file: PathBuf,
}

impl Pki {
    /// A fresh directory named after the test with a new CA in it.
    pub fn new(test: &str) -> Pki {
        let dir = super::test_dir(&format!("tls-{test}"));
        let ca = Ca::new("wslb test CA");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, &ca.pem).unwrap();
        Pki { dir, ca, ca_file }
    }

    /// Makes a leaf for `names` and writes it as `<stem>.pem` and `<stem>.key`; returns the
    /// leaf and the two paths as strings (what the config takes).
    pub fn leaf(&self, stem: &str, names: &[&str]) -> (Leaf, String, String) {
        let leaf = self.ca.leaf(names);
        let (cert, key) = self.paths(stem);
        leaf.write(Path::new(&cert), Path::new(&key));
        (leaf, cert, key)
    }

    /// The paths `leaf(stem, ..)` writes to.
    pub fn paths(&self, stem: &str) -> (String, String) {
        let p = |ext: &str| {
            self.dir
                .join(format!("{stem}.{ext}"))
                .to_string_lossy()
                .into_owned()
        };
        (p("pem"), p("key"))
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sets `c.tls` from a `[tls]` section written as in the config file, so a test names the
/// options (`unknown_sni = "refuse"`, `[[tls.certificates]]`) as a user does.
pub fn tls_section(c: &mut wslb::config::Config, toml: &str) {
    let parsed = wslb::config::Config::from_toml(toml)
        .unwrap_or_else(|e| panic!("TLS section {toml:?} does not parse: {e}"));
    c.tls = parsed.tls;
}

/// A rustls client configuration trusting only `ca`, offering ALPN `http/1.1`, with
/// resumption off so that every connection makes a full handshake (and presents the
/// certificate). `versions` empty: TLS 1.3 and 1.2.
pub fn client_config(
    ca: &Ca,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut c = Arc::unwrap_or_clone(resuming_client_config(ca, versions));
    c.resumption = rustls::client::Resumption::disabled();
    Arc::new(c)
}

/// Like [`client_config`], with rustls' default resumption: an in-memory store of
/// TLS 1.3 tickets and TLS 1.2 sessions, shared by every connection made with it.
pub fn resuming_client_config(
    ca: &Ca,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.der.clone()).unwrap();
    let builder = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ));
    let builder = if versions.is_empty() {
        builder.with_safe_default_protocol_versions()
    } else {
        builder.with_protocol_versions(versions)
    };
    let mut c = builder
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

/// Connects to `addr` and completes a TLS handshake for server name `name` (a DNS name
/// sends SNI; an IP address does not); panics if it fails.
pub fn tls_connect(addr: SocketAddr, name: &str, config: Arc<ClientConfig>) -> TlsStream {
    try_tls_connect(addr, name, config).unwrap_or_else(|e| {
        panic!("TLS handshake with {addr} for {name} failed (is the worker still alive?): {e}")
    })
}

/// Like [`tls_connect`], returning the error instead.
pub fn try_tls_connect(
    addr: SocketAddr,
    name: &str,
    config: Arc<ClientConfig>,
) -> Result<TlsStream, std::io::Error> {
    let server_name = ServerName::try_from(name.to_string()).unwrap();
    let mut conn = ClientConnection::new(config, server_name).unwrap();
    let mut sock = TcpStream::connect(addr)?;
    sock.set_read_timeout(Some(TIMEOUT))?;
    sock.set_nodelay(true)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)?;
    }
    Ok(StreamOwned::new(conn, sock))
}

/// The leaf certificate the server presented.
pub fn presented(s: &TlsStream) -> CertificateDer<'static> {
    s.conn.peer_certificates().expect("a server certificate")[0].clone()
}

/// A wss client: TLS to `addr` for `name` trusting `ca`, then the upgrade.
pub fn wss_connect(addr: SocketAddr, name: &str, ca: &Ca) -> Wss {
    wss_over(tls_connect(addr, name, client_config(ca, &[])), name)
}

/// The WebSocket upgrade over an established TLS stream.
pub fn wss_over(tls: TlsStream, name: &str) -> Wss {
    let url = format!("wss://{name}/tls-test");
    let (ws, resp) =
        tungstenite::client(url, tls).unwrap_or_else(|e| panic!("upgrade over TLS failed: {e}"));
    assert_eq!(resp.status(), 101);
    ws
}

/// Proof that the balancer serves a good client: a full wss connection for `name`, a text
/// and a binary message echoed byte for byte, and a clean close.
pub fn assert_serves(addr: SocketAddr, name: &str, ca: &Ca) {
    use tungstenite::Message;
    let mut ws = wss_connect(addr, name, ca);
    ws.send(Message::text("still serving ✓")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("still serving ✓"));
    let bin: Vec<u8> = (0..70_000u32).map(|i| (i * 31 + 7) as u8).collect();
    ws.send(Message::binary(bin.clone())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::binary(bin));
    ws.close(None).unwrap();
    loop {
        match ws.read() {
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("close handshake: {e}"),
        }
    }
}

/// Reads from a raw socket until EOF or reset, returning what arrived. Panics if the
/// server keeps the connection open past the read timeout (the guard against a hang).
pub fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!(
                    "connection still open after {TIMEOUT:?}; got {} bytes",
                    got.len()
                )
            }
            // A reset is a close too.
            Err(_) => return got,
        }
    }
}

/// True if `bytes` is empty or made only of whole TLS alert records (content type 21):
/// the answer to input that is not TLS is a close, with or without an alert.
pub fn only_alerts(bytes: &[u8]) -> bool {
    let mut rest = bytes;
    while !rest.is_empty() {
        if rest.len() < 5 || rest[0] != 21 {
            return false;
        }
        let len = u16::from_be_bytes([rest[3], rest[4]]) as usize;
        if rest.len() < 5 + len {
            return false;
        }
        rest = &rest[5 + len..];
    }
    true
}

/// A real ClientHello for `name`, as rustls would send it first.
pub fn client_hello(ca: &Ca, name: &str) -> Vec<u8> {
    let server_name = ServerName::try_from(name.to_string()).unwrap();
    let mut conn = ClientConnection::new(client_config(ca, &[]), server_name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    assert_eq!(out[0], 22, "a handshake record");
    out
}

/// The output of `openssl s_client`, connecting to `addr` with `args`, stdin closed (it
/// sends close_notify and quits after the handshake).
pub struct SClient {
    pub ok: bool,
    pub out: String,
}

impl SClient {
    /// The first certificate `-showcerts` printed (the leaf), as DER.
    pub fn leaf_der(&self) -> Vec<u8> {
        let begin = "-----BEGIN CERTIFICATE-----";
        let end = "-----END CERTIFICATE-----";
        let start = self
            .out
            .find(begin)
            .unwrap_or_else(|| panic!("no certificate printed:\n{}", self.out))
            + begin.len();
        let stop = start + self.out[start..].find(end).unwrap();
        let b64: String = self.out[start..stop]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap()
    }
}

/// Runs `openssl s_client -connect addr -CAfile ca -verify_return_error -showcerts args..`.
/// The system's OpenSSL config is left out (`OPENSSL_CONF=/dev/null`): Debian's raises the
/// minimum version and security level, and the refusals tested here must come from wslb,
/// not from the client.
pub fn s_client(addr: SocketAddr, ca: &Path, args: &[&str]) -> SClient {
    let out = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .arg("-CAfile")
        .arg(ca)
        .args(["-verify_return_error", "-showcerts"])
        .args(args)
        .env("OPENSSL_CONF", "/dev/null")
        .stdin(Stdio::null())
        .output()
        .expect("openssl (the CLI) on PATH");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    SClient {
        ok: out.status.success(),
        out: text,
    }
}

/// Writes `bytes` to a fresh TCP connection to `addr` and returns what came back before the
/// server closed it.
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    // The server may close before it has read everything (then the write gets a reset).
    let _ = s.write_all(bytes);
    read_until_closed(&mut s)
}
