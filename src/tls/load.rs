//! The certificates validated [`Settings`] name, read and checked: the step `config/`
//! leaves to this layer (config is data; it reads no certificate).
//!
//! Called where settings become a running instance (`Instance::start`), a reload
//! (`Handle::reload`, the supervisor's SIGHUP) and by `wslb check`.

use std::sync::Arc;

use super::{BackendTls, ServerTls};
use crate::config::{ConfigError, Settings};

/// The TLS objects of one [`Settings`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Loaded {
    /// TLS termination's certificates (`None`: TLS off).
    pub server: Option<ServerTls>,
    /// The backends reached over TLS and the client config they are reached with
    /// (`None`: none is). Travels with the pools' snapshots.
    pub backend: Option<Arc<BackendTls>>,
}

/// Reads `[tls]`'s and `[tls_backend]`'s files. Every problem is reported at once, each
/// naming its field, as a [`ConfigError::Invalid`] like validation's own.
pub fn load(settings: &Settings) -> Result<Loaded, ConfigError> {
    let mut problems = Vec::new();
    let server = match &settings.tls {
        Some(t) => ServerTls::load(t).unwrap_or_else(|p| {
            problems.extend(p);
            None
        }),
        None => None,
    };
    let backend = match &settings.tls_backend {
        Some(t) => BackendTls::load(t).map(Some).unwrap_or_else(|p| {
            problems.extend(p);
            None
        }),
        None => None,
    };
    if problems.is_empty() {
        Ok(Loaded {
            server,
            backend: backend.map(Arc::new),
        })
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn unreadable_tls_files_are_named() {
        let c = Config::from_toml(
            r#"
            backends = ["wss://127.0.0.1:9443"]
            [tls]
            cert = "/nonexistent/cert.pem"
            [tls_backend]
            ca = "/nonexistent/ca.pem"
            "#,
        )
        .unwrap();
        let s = c.validate().unwrap();
        let Err(ConfigError::Invalid(p)) = load(&s) else {
            panic!("expected invalid")
        };
        let fields: Vec<_> = p.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["tls.key", "tls_backend.ca"]);
    }
}
