//! TLS to backends: the `[tls_backend]` section and `wss://` backends loaded into a rustls
//! client config (the system's roots or a `ca` file, SNI, an optional client certificate),
//! and the handshake with a backend.
//!
//! The loaded form travels with the backend pool's snapshot (`balancer::Snapshot::tls`),
//! so a reload that adds a `wss://` backend or changes the CA reaches the workers the way
//! a new backend list does.

use std::fmt;
use std::sync::Arc;

use rustls::client::UnbufferedClientConnection;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::{HandshakeFailure, Problems, TlsStream, handshake, problem, provider};
use crate::config;

/// A backend's TLS stream.
pub type BackendStream = TlsStream<UnbufferedClientConnection>;

/// How backends are reached over TLS: the client config they share. Which backends, and
/// the name each is verified against, each backend says itself (`BackendSpec::tls`).
#[derive(Clone)]
pub struct BackendTls {
    pub config: Arc<rustls::ClientConfig>,
    /// The `ca`, `cert` and `key` files' bytes, to tell a reload that changed them.
    material: Vec<Vec<u8>>,
    insecure: bool,
}

impl PartialEq for BackendTls {
    fn eq(&self, other: &Self) -> bool {
        self.material == other.material && self.insecure == other.insecure
    }
}

impl fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendTls")
            .field("insecure_skip_verify", &self.insecure)
            .finish_non_exhaustive()
    }
}

impl BackendTls {
    /// Loads `[tls_backend]` (validated only when some backend is reached over TLS).
    pub fn load(c: &config::TlsBackend) -> Result<BackendTls, Problems> {
        let mut problems = Vec::new();
        let provider = provider();
        let mut material = Vec::new();
        let mut roots = rustls::RootCertStore::empty();
        if c.ca.is_empty() {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 && !c.insecure_skip_verify {
                problem(
                    &mut problems,
                    "tls_backend.ca",
                    "no system trust roots found; name a PEM CA file".into(),
                );
            }
        } else {
            match super::load_roots(&c.ca) {
                Ok((r, bytes)) => {
                    roots = r;
                    material.push(bytes);
                }
                Err(e) => problem(&mut problems, "tls_backend.ca", e),
            }
        }
        let client_cert = match (c.cert.as_str(), c.key.as_str()) {
            ("", "") => None,
            ("", _) | (_, "") => {
                problem(
                    &mut problems,
                    "tls_backend.cert",
                    "a client certificate needs both cert and key".into(),
                );
                None
            }
            (cert, key) => {
                let loaded = std::fs::read(cert)
                    .map_err(|e| format!("{cert}: {e}"))
                    .and_then(|cb| {
                        let kb = std::fs::read(key).map_err(|e| format!("{key}: {e}"))?;
                        let chain = CertificateDer::pem_slice_iter(&cb)
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(|e| format!("{cert}: {e}"))?;
                        let k = PrivateKeyDer::from_pem_slice(&kb)
                            .map_err(|e| format!("{key}: {e}"))?;
                        Ok((chain, k, cb, kb))
                    });
                match loaded {
                    Ok((chain, k, cb, kb)) => {
                        material.push(cb);
                        material.push(kb);
                        Some((chain, k))
                    }
                    Err(e) => {
                        problem(&mut problems, "tls_backend.cert", e);
                        None
                    }
                }
            }
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("the provider supports TLS 1.2 and 1.3");
        let builder = if c.insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
        } else {
            builder.with_root_certificates(roots)
        };
        let mut config = match client_cert {
            Some((chain, key)) => match builder.with_client_auth_cert(chain, key) {
                Ok(c) => c,
                Err(e) => {
                    return Err(vec![config::Problem {
                        field: "tls_backend.key".into(),
                        message: format!("{}: {e}", c.key),
                        at: None,
                    }]);
                }
            },
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(BackendTls {
            config: Arc::new(config),
            material,
            insecure: c.insecure_skip_verify,
        })
    }

    pub fn insecure(&self) -> bool {
        self.insecure
    }
}

/// The TLS handshake with a backend, unbounded (the caller bounds it).
pub async fn connect(
    tcp: monoio::net::TcpStream,
    tls: &BackendTls,
    name: ServerName<'static>,
) -> Result<BackendStream, HandshakeFailure> {
    let conn =
        UnbufferedClientConnection::new(tls.config.clone(), name).map_err(HandshakeFailure::Tls)?;
    handshake::handshake(tcp, conn).await
}

/// `insecure_skip_verify`: any certificate is accepted (its signature over the handshake
/// is not even checked). For tests against self-signed backends only; logged at startup.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
