//! The `[tls]` and `[tls_backend]` sections as written (loaded and checked by `tls/`).

use serde::Deserialize;

/// TLS to backends (see `tls/client.rs`): used for backends written `wss://host:port`, or
/// for every backend with `enabled`.
#[derive(Debug, Clone, Deserialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsBackend {
    /// Every backend is reached over TLS, `wss://` or not (`ws://` ones stay plain).
    /// Default false.
    pub enabled: bool,
    /// PEM CA bundle the backends' certificates are verified against. Default empty: the
    /// system's trust roots.
    pub ca: String,
    /// The name backends are verified against and asked for (SNI). Default empty: each
    /// backend's host as written (an IP address is verified as one, without SNI).
    pub server_name: String,
    /// A client certificate (PEM chain and key) for backends that ask for one.
    pub cert: String,
    pub key: String,
    /// Accept any backend certificate. For tests only: wslb logs a warning at start.
    pub insecure_skip_verify: bool,
}

/// TLS termination (see `tls/`). With a certificate configured (`cert` and `key`, or
/// `[[tls.certificates]]`), the listener speaks only TLS (wss://).
#[derive(Debug, Clone, Deserialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// PEM certificate chain, leaf first. Default empty: TLS off.
    pub cert: String,
    /// PEM private key of `cert`: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    pub key: String,
    /// More certificates, chosen by the SNI name a client asks for (each serves the DNS
    /// names of its subjectAltName, wildcards included). The default certificate, for
    /// clients that send no name or an unknown one, is `cert`/`key` if set, else the first
    /// of these.
    pub certificates: Vec<CertFiles>,
    /// A client asking for a name no certificate has: `default` (it gets the default
    /// certificate) or `refuse` (the handshake ends with an alert).
    pub unknown_sni: UnknownSni,
    /// PEM CA bundle: when set, clients present certificates verified against it.
    /// Default empty: no client certificates.
    pub client_ca: String,
    /// With `client_ca`: `required` (default) or `optional` (a client without a
    /// certificate is let in; one with a bad certificate is not).
    pub client_auth: ClientAuth,
}

impl Tls {
    /// Whether a certificate is configured, which turns TLS termination on.
    pub fn enabled(&self) -> bool {
        !self.cert.is_empty() || !self.key.is_empty() || !self.certificates.is_empty()
    }
}

/// One `[[tls.certificates]]` entry.
#[derive(Debug, Clone, Deserialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CertFiles {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum UnknownSni {
    #[default]
    Default,
    Refuse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ClientAuth {
    #[default]
    Required,
    Optional,
}
