//! The `[tls]` section loaded: certificate files read and checked (every problem at once),
//! the SNI table, client certificate verification, and the rustls server config.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::{CertInfo, Problems, problem, provider};
use crate::config::{self, ClientAuth, UnknownSni};
use crate::utc::civil;

/// A certificate expiring sooner than this is a warning in `wslb check` and the log.
const EXPIRY_WARNING_SECS: i64 = 14 * 86_400;

/// The loaded `[tls]` section: the rustls config the workers share, and what `wslb check`,
/// the log and the metrics say about its certificates.
#[derive(Clone)]
pub struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    pub certificates: Vec<CertInfo>,
    /// Certificates about to expire (or not valid yet): logged, not refused.
    pub warnings: Vec<String>,
    /// Every file's bytes as read: two loads are equal exactly when no file changed.
    material: Arc<Vec<Vec<u8>>>,
}

impl PartialEq for ServerTls {
    fn eq(&self, other: &Self) -> bool {
        self.material == other.material && self.certificates == other.certificates
    }
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("certificates", &self.certificates)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads `[tls]`: `None` when no certificate is configured (TLS off). Reads every file
    /// and reports every problem at once.
    pub fn load(c: &config::Tls) -> Result<Option<ServerTls>, Problems> {
        let mut entries: Vec<(String, &str, &str)> = Vec::new();
        if !c.cert.is_empty() || !c.key.is_empty() {
            entries.push(("tls".into(), &c.cert, &c.key));
        }
        for (i, f) in c.certificates.iter().enumerate() {
            entries.push((format!("tls.certificates[{i}]"), &f.cert, &f.key));
        }
        let mut problems = Vec::new();
        if entries.is_empty() {
            if !c.client_ca.is_empty() {
                problem(
                    &mut problems,
                    "tls.client_ca",
                    "set, but no certificate is configured (tls.cert and tls.key)".into(),
                );
                return Err(problems);
            }
            return Ok(None);
        }
        let provider = provider();
        let now = crate::metrics::unix_now() as i64;
        let mut material = Vec::new();
        let mut certificates = Vec::new();
        let mut warnings = Vec::new();
        let mut resolver = Resolver {
            default: None,
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            refuse_unknown: c.unknown_sni == UnknownSni::Refuse,
        };
        for (field, cert, key) in &entries {
            let loaded = load_pair(
                &provider,
                field,
                cert,
                key,
                now,
                &mut problems,
                &mut warnings,
            );
            let Some((ck, info, bytes)) = loaded else {
                continue;
            };
            material.extend(bytes);
            let ck = Arc::new(ck);
            if resolver.default.is_none() {
                resolver.default = Some(ck.clone());
            } else if info.names.is_empty() {
                problem(
                    &mut problems,
                    &format!("{field}.cert"),
                    format!(
                        "{}: no DNS names in its subjectAltName, so no SNI name selects it",
                        info.file.display()
                    ),
                );
            }
            for name in &info.names {
                let table = match name.strip_prefix("*.") {
                    Some(suffix) => resolver.wildcard.entry(suffix.to_string()),
                    None => resolver.exact.entry(name.clone()),
                };
                match table {
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(ck.clone());
                    }
                    // Two certificates for one name: only one could ever be served (a
                    // renewal added beside the old one, say), so say which is meant.
                    std::collections::hash_map::Entry::Occupied(_) => problem(
                        &mut problems,
                        &format!("{field}.cert"),
                        format!(
                            "{}: {name} is already served by an earlier certificate",
                            info.file.display()
                        ),
                    ),
                }
            }
            certificates.push(info);
        }
        let verifier = match c.client_ca.as_str() {
            "" => None,
            path => match load_client_verifier(&provider, path, c.client_auth) {
                Ok((v, bytes)) => {
                    material.push(bytes);
                    Some(v)
                }
                Err(e) => {
                    problem(&mut problems, "tls.client_ca", e);
                    None
                }
            },
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("the provider supports TLS 1.2 and 1.3");
        let builder = match verifier {
            Some(v) => builder.with_client_cert_verifier(v),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(Arc::new(resolver));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // Stateless TLS 1.3 tickets (and the default in-memory session cache for TLS 1.2):
        // a returning client resumes instead of paying for a full handshake. Keys rotate
        // every 6 hours; a reload starts a new ticketer, so old tickets then fall back to
        // a full handshake.
        match rustls::crypto::aws_lc_rs::Ticketer::new() {
            Ok(t) => config.ticketer = t,
            Err(e) => tracing::warn!("TLS: no session tickets ({e}); clients cannot resume"),
        }
        // A relay forwards requests as they come; 0-RTT data would be replayable.
        config.max_early_data_size = 0;
        material.push(format!("{:?}{:?}", c.unknown_sni, c.client_auth).into_bytes());
        Ok(Some(ServerTls {
            config: Arc::new(config),
            certificates,
            warnings,
            material: Arc::new(material),
        }))
    }
}

/// Reads one certificate chain and its key; `None` after recording its problems.
fn load_pair(
    provider: &CryptoProvider,
    field: &str,
    cert: &str,
    key: &str,
    now: i64,
    problems: &mut Problems,
    warnings: &mut Vec<String>,
) -> Option<(CertifiedKey, CertInfo, Vec<Vec<u8>>)> {
    let before = problems.len();
    if cert.is_empty() {
        problem(
            problems,
            &format!("{field}.cert"),
            "missing (a PEM file)".into(),
        );
    }
    if key.is_empty() {
        problem(
            problems,
            &format!("{field}.key"),
            "missing (a PEM file)".into(),
        );
    }
    if problems.len() > before {
        return None;
    }
    let cert_bytes = std::fs::read(cert)
        .map_err(|e| problem(problems, &format!("{field}.cert"), format!("{cert}: {e}")))
        .ok();
    let key_bytes = std::fs::read(key)
        .map_err(|e| problem(problems, &format!("{field}.key"), format!("{key}: {e}")))
        .ok();
    let (cert_bytes, key_bytes) = (cert_bytes?, key_bytes?);
    let chain: Result<Vec<CertificateDer<'static>>, _> =
        CertificateDer::pem_slice_iter(&cert_bytes).collect();
    let chain = match chain {
        Ok(c) if c.is_empty() => {
            problem(
                problems,
                &format!("{field}.cert"),
                format!("{cert}: no PEM certificate in it"),
            );
            None
        }
        Ok(c) => Some(c),
        Err(e) => {
            problem(problems, &format!("{field}.cert"), format!("{cert}: {e}"));
            None
        }
    };
    let signer = match PrivateKeyDer::from_pem_slice(&key_bytes) {
        Ok(k) => match provider.key_provider.load_private_key(k) {
            Ok(s) => Some(s),
            Err(e) => {
                problem(problems, &format!("{field}.key"), format!("{key}: {e}"));
                None
            }
        },
        Err(e) => {
            problem(
                problems,
                &format!("{field}.key"),
                format!("{key}: no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
            );
            None
        }
    };
    let (chain, signer) = (chain?, signer?);
    let info = match describe(&chain[0], Path::new(cert)) {
        Ok(info) => info,
        Err(e) => {
            problem(problems, &format!("{field}.cert"), format!("{cert}: {e}"));
            return None;
        }
    };
    let ck = CertifiedKey::new(chain, signer);
    if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
        ck.keys_match()
    {
        problem(
            problems,
            &format!("{field}.key"),
            format!("{key} is not the private key of the certificate in {cert}"),
        );
        return None;
    }
    if info.not_after < now {
        problem(
            problems,
            &format!("{field}.cert"),
            format!("{cert} expired at {}", utc(info.not_after)),
        );
        return None;
    }
    if info.not_after < now + EXPIRY_WARNING_SECS {
        warnings.push(format!(
            "{field}.cert: {cert} expires at {}, in {} days",
            utc(info.not_after),
            (info.not_after - now) / 86_400
        ));
    }
    Some((ck, info, vec![cert_bytes, key_bytes]))
}

/// The leaf certificate's names and expiry.
fn describe(leaf: &CertificateDer<'_>, file: &Path) -> Result<CertInfo, String> {
    let (_, x) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("not a valid X.509 certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = x.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    Ok(CertInfo {
        file: file.to_path_buf(),
        names,
        not_after: x.validity().not_after.timestamp(),
    })
}

/// `YYYY-MM-DD HH:MM:SS UTC` for a Unix time (no date crate for one log line).
fn utc(t: i64) -> String {
    let (y, m, d, secs) = civil(t);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn load_client_verifier(
    provider: &Arc<CryptoProvider>,
    path: &str,
    auth: ClientAuth,
) -> Result<(Arc<dyn rustls::server::danger::ClientCertVerifier>, Vec<u8>), String> {
    let (roots, bytes) = super::load_roots(path)?;
    let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    );
    let builder = match auth {
        ClientAuth::Required => builder,
        ClientAuth::Optional => builder.allow_unauthenticated(),
    };
    let v = builder.build().map_err(|e| format!("{path}: {e}"))?;
    Ok((v, bytes))
}

/// Picks the certificate for a hello by its SNI name: an exact name, then a wildcard one
/// label deep, then the default (or none, with `unknown_sni = "refuse"`: rustls then ends
/// the handshake with an alert). A hello without SNI (an IP address, an old client) gets
/// the default.
#[derive(Debug)]
struct Resolver {
    default: Option<Arc<CertifiedKey>>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the suffix after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    refuse_unknown: bool,
}

/// The rustls error a refused SNI name ends in (rustls has no variant of its own for it).
pub(super) const NO_CERTIFICATE: &str = "no server certificate chain resolved";

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return self.default.clone();
        };
        let name = name.to_ascii_lowercase();
        if let Some(ck) = self.exact.get(&name) {
            return Some(ck.clone());
        }
        let parent = name.split_once('.').map(|(_, rest)| rest);
        if let Some(ck) = parent.and_then(|p| self.wildcard.get(p)) {
            return Some(ck.clone());
        }
        if self.refuse_unknown {
            tracing::debug!(sni = %name, "TLS: no certificate for this name; refused");
            return None;
        }
        self.default.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a certificate for `names` valid until `not_after` (Unix seconds), and its
    /// key, into `dir`; returns their paths.
    fn cert(dir: &Path, tag: &str, names: &[&str], not_after: i64) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        let (y, m, d, _) = civil(not_after);
        p.not_after = rcgen::date_time_ymd(y as i32, m as u8, d as u8);
        let c = p.self_signed(&key).unwrap();
        let (cf, kf) = (
            dir.join(format!("{tag}.pem")),
            dir.join(format!("{tag}.key")),
        );
        std::fs::write(&cf, c.pem()).unwrap();
        std::fs::write(&kf, key.serialize_pem()).unwrap();
        (cf.display().to_string(), kf.display().to_string())
    }

    fn tmp(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("wslb-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn fields(p: &Problems) -> Vec<&str> {
        p.iter().map(|p| p.field.as_str()).collect()
    }

    #[test]
    fn bad_files_are_each_reported_and_expiry_is_checked() {
        let d = tmp("bad");
        let now = crate::metrics::unix_now() as i64;
        let (good, good_key) = cert(&d, "good", &["a.example.com"], now + 90 * 86_400);
        let (_, other_key) = cert(&d, "other", &["b.example.com"], now + 90 * 86_400);
        let (expired, expired_key) = cert(&d, "expired", &["c.example.com"], now - 86_400);
        let (soon, soon_key) = cert(&d, "soon", &["d.example.com"], now + 7 * 86_400);
        let c = config::Tls {
            cert: good.clone(),
            key: other_key,
            certificates: vec![
                config::CertFiles {
                    cert: expired,
                    key: expired_key,
                },
                config::CertFiles {
                    cert: "/nonexistent.pem".into(),
                    key: good_key.clone(),
                },
            ],
            ..Default::default()
        };
        let p = ServerTls::load(&c).unwrap_err();
        assert_eq!(
            fields(&p),
            [
                "tls.key",
                "tls.certificates[0].cert",
                "tls.certificates[1].cert"
            ],
            "{p:?}"
        );
        assert!(p[0].message.contains("is not the private key"), "{p:?}");
        assert!(p[1].message.contains("expired"), "{p:?}");
        let ok = config::Tls {
            cert: good,
            key: good_key,
            certificates: vec![config::CertFiles {
                cert: soon,
                key: soon_key,
            }],
            ..Default::default()
        };
        let t = ServerTls::load(&ok).unwrap().unwrap();
        assert_eq!(t.certificates.len(), 2);
        assert_eq!(t.warnings.len(), 1, "{:?}", t.warnings);
        assert!(t.warnings[0].contains("d.example.com") || t.warnings[0].contains("soon"));
        // The same files load equal; a changed file does not.
        assert_eq!(ServerTls::load(&ok).unwrap().unwrap(), t);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn each_certificate_serves_its_subject_alt_names() {
        let d = tmp("sni");
        let now = crate::metrics::unix_now() as i64;
        let year = now + 365 * 86_400;
        let (def, def_key) = cert(&d, "default", &["localhost"], year);
        let (wild, wild_key) = cert(&d, "wild", &["*.example.com"], year);
        let (exact, exact_key) = cert(&d, "exact", &["chat.example.com"], year);
        let mut c = config::Tls {
            cert: def,
            key: def_key,
            certificates: vec![
                config::CertFiles {
                    cert: wild,
                    key: wild_key,
                },
                config::CertFiles {
                    cert: exact,
                    key: exact_key,
                },
            ],
            ..Default::default()
        };
        let t = ServerTls::load(&c).unwrap().unwrap();
        let names: Vec<_> = t.certificates.iter().map(|c| c.names.clone()).collect();
        assert_eq!(
            names,
            [
                vec!["localhost".to_string()],
                vec!["*.example.com".to_string()],
                vec!["chat.example.com".to_string()]
            ]
        );
        c.unknown_sni = UnknownSni::Refuse;
        assert!(ServerTls::load(&c).unwrap().is_some());
        // A second certificate for a name already served could never be picked.
        let (again, again_key) = cert(&d, "again", &["chat.example.com"], year);
        c.certificates.push(config::CertFiles {
            cert: again,
            key: again_key,
        });
        let p = ServerTls::load(&c).unwrap_err();
        assert_eq!(fields(&p), ["tls.certificates[2].cert"], "{p:?}");
        assert!(p[0].message.contains("already served"), "{p:?}");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_798_761_599), "2026-12-31 23:59:59 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
    }
}
