//! Where settings come from: a config file (or the defaults) with `wslb run`'s flags over
//! it, validated with every problem, the file's schema ones included, located in the file.

use super::{Config, ConfigError, IoDriver, Parsed, Settings};

/// `wslb run`'s flags, applied over the config file at start and at every reload. (Their
/// doc comments are the `--help` text.)
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// Address to listen on, e.g. 0.0.0.0:8080.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// A backend host:port; repeat for several. Replaces the config file's list.
    #[arg(long = "backend", value_name = "ADDR")]
    pub backends: Vec<String>,
    /// Worker threads, one per core (0 or absent: all available cores).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// io driver: auto (io_uring, else epoll), io-uring, epoll.
    #[arg(long, value_name = "auto|io-uring|epoll")]
    pub io_driver: Option<IoDriver>,
    /// Admin HTTP server address (metrics, health, status page); "" turns it off.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<String>,
    /// PEM certificate chain for TLS termination (wss://); with --tls-key. Overrides
    /// `[tls] cert`.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<String>,
    /// PEM private key of --tls-cert. Overrides `[tls] key`.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<String>,
}

/// Where `wslb run`'s settings come from: a config file (or the defaults) with the flags
/// over it. Read again, flags included, on every reload.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Source {
    /// TOML config file (see wslb.example.toml).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub path: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub overrides: Overrides,
}

impl Source {
    /// The settings, or every problem with them (the file's schema problems first).
    pub fn load(&self) -> Result<Settings, ConfigError> {
        let mut parsed = match &self.path {
            Some(path) => Config::read(path)?,
            None => Config::default().into(),
        };
        if let Some(c) = &mut parsed.config {
            self.overrides.apply(c);
        }
        parsed.validate()
    }
}

impl Overrides {
    fn apply(&self, c: &mut Config) {
        let flags = self;
        if let Some(l) = &flags.listen {
            c.listen = l.clone();
        }
        if !flags.backends.is_empty() {
            c.backends = flags.backends.iter().map(|b| b.as_str().into()).collect();
        }
        if let Some(w) = flags.workers {
            c.workers = w;
        }
        if let Some(d) = flags.io_driver {
            c.io_driver = d;
        }
        if let Some(a) = &flags.admin {
            c.admin.listen = a.clone();
        }
        if let Some(f) = &flags.tls_cert {
            c.tls.cert = f.clone();
        }
        if let Some(f) = &flags.tls_key {
            c.tls.key = f.clone();
        }
    }
}

impl Parsed {
    /// Validates the config read: every problem, the schema ones (in file order) and then
    /// validation's, each with where its field is written.
    pub fn validate(self) -> Result<Settings, ConfigError> {
        let mut problems = self.problems.clone();
        match self.config.as_ref().map(Config::validate) {
            Some(Ok(s)) if problems.is_empty() => return Ok(s),
            Some(Err(ConfigError::Invalid(p))) => problems.extend(p),
            Some(Err(e)) => return Err(e),
            Some(Ok(_)) | None => {}
        }
        for p in &mut problems {
            if p.at.is_none() {
                p.at = self.locate(&p.field);
            }
        }
        Err(ConfigError::Invalid(problems))
    }
}
