//! Every field of `wslb.example.toml`, changed in a reload: the reload's report names it
//! as applied or as needing a restart, never both, never neither (issue 19: a field that
//! a reload silently ignores, as `sticky_secret` was).
//!
//! The fields are found by walking the example file (its commented-out `[[routes]]` and
//! `[[tls.certificates]]` entries taken in), not listed here, so a field added to the
//! example is covered the day it is added. Each is changed by its TOML type (a bool
//! flipped, a number moved, a string swapped for one of a few stock values, a list
//! shortened) until the new config is valid and validates to other settings. Some fields
//! matter only in a mode of the example (`hash_key` with consistent hashing, `[tls]`'s
//! files with TLS on): the [`MODES`] are such modes, tried in turn. A field that no change
//! in any mode makes a difference for fails too: nothing reads it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use toml::Value;

use super::*;
use crate::config::Config;

/// Modes of the example: fields set over it before a field is changed. Each names a mode
/// (not a field under test): consistent hashing, a ramping algorithm, sticky cookies,
/// HTTP health checks, the access log, rebalancing, a per-client rate, TLS with client
/// certificates, TLS to the backends. `CERT`, `KEY` and `CA` are files the test writes.
const MODES: &[&[(&str, &str)]] = &[
    &[],
    &[
        ("algorithm", "'consistent-hash'"),
        ("routes[0].algorithm", "'consistent-hash'"),
        ("routes[0].slow_start_ms", "0"),
    ],
    &[("algorithm", "'least-connections'")],
    &[("sticky", "'cookie'")],
    &[("health.mode", "'http'")],
    &[("access_log.enabled", "true")],
    &[("rebalance.enabled", "true")],
    &[("limits.handshake_rate_per_ip", "10")],
    &[
        ("tls.cert", "CERT"),
        ("tls.key", "KEY"),
        ("tls.client_ca", "CA"),
    ],
    &[
        ("tls_backend.enabled", "true"),
        ("tls_backend.ca", "CA"),
        ("tls_backend.cert", "CERT"),
        ("tls_backend.key", "KEY"),
    ],
];

/// Stock values a string field may be changed to (besides its own value with `x` added,
/// an address's next port, and a rewritten copy of a file it names).
const STRINGS: &[&str] = &[
    "epoll",
    "least-connections",
    "cookie",
    "none",
    "strip",
    "pass",
    "http",
    "tcp",
    "json",
    "refuse",
    "optional",
    "header:x-user",
    "example.com",
    "a sticky secret of 16+ bytes",
    "",
];

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

/// `routes[0].health.mode` -> its steps.
fn parse(path: &str) -> Vec<Step> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, index) = match part.split_once('[') {
            Some((k, i)) => (k, Some(i.trim_end_matches(']').parse().unwrap())),
            None => (part, None),
        };
        out.push(Step::Key(key.into()));
        out.extend(index.map(Step::Index));
    }
    out
}

fn name(path: &[Step]) -> String {
    let mut s = String::new();
    for step in path {
        match step {
            Step::Key(k) if s.is_empty() => s.push_str(k),
            Step::Key(k) => s.push_str(&format!(".{k}")),
            Step::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

fn at<'a>(v: &'a mut Value, path: &[Step]) -> &'a mut Value {
    path.iter().fold(v, |v, step| match step {
        Step::Key(k) => &mut v.as_table_mut().unwrap()[k.as_str()],
        Step::Index(i) => &mut v.as_array_mut().unwrap()[*i],
    })
}

/// Every leaf under `v`: tables and arrays of tables are walked into; any other value
/// (an array of addresses too) is one field.
fn leaves(v: &Value, path: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    match v {
        Value::Table(t) => {
            for (k, v) in t {
                path.push(Step::Key(k.clone()));
                leaves(v, path, out);
                path.pop();
            }
        }
        Value::Array(a) if !a.is_empty() && a.iter().all(Value::is_table) => {
            for (i, v) in a.iter().enumerate() {
                path.push(Step::Index(i));
                leaves(v, path, out);
                path.pop();
            }
        }
        _ => out.push(path.clone()),
    }
}

/// The files the example's modes name, and a rewritten copy of each (the same content,
/// other bytes: a renewed file as a reload sees it).
struct Files {
    dir: PathBuf,
}

impl Files {
    /// In a directory of `test`'s own (tests run in parallel, in one process).
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("wslb-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = |names: &[&str], ca: bool| {
            let mut p = rcgen::CertificateParams::new(
                names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            )
            .unwrap();
            if ca {
                p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            }
            p.self_signed(&key).unwrap().pem()
        };
        for (file, text) in [
            ("cert.pem", cert(&["localhost"], false)),
            ("other.pem", cert(&["chat.example.com"], false)),
            ("ca.pem", cert(&["wslb test ca"], true)),
            ("key.key", key.serialize_pem()),
        ] {
            std::fs::write(dir.join(file), &text).unwrap();
            // PEM readers skip what is outside the markers.
            std::fs::write(dir.join(format!("rewritten-{file}")), format!("{text}\n")).unwrap();
        }
        Files { dir }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    /// A file the example names, as one of ours: a `.key` is the key, a `.pem` a
    /// certificate.
    fn stand_in(&self, named: &str) -> Option<String> {
        if Path::new(named).exists() {
            return None;
        }
        if named.ends_with(".key") {
            Some(self.path("key.key"))
        } else if named.ends_with(".pem") {
            Some(self.path("cert.pem"))
        } else {
            None
        }
    }

    /// The rewritten copy of one of our files.
    fn rewritten(&self, path: &str) -> Option<String> {
        let file = Path::new(path).strip_prefix(&self.dir).ok()?.to_str()?;
        (!file.starts_with("rewritten-")).then(|| self.path(&format!("rewritten-{file}")))
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `wslb.example.toml` with its commented-out entries taken in: each run of `# ` lines
/// that starts with `# [[` is TOML once uncommented. Files it names are ours.
fn example(files: &Files) -> Value {
    let text = include_str!("../../wslb.example.toml");
    let mut out = String::new();
    let mut taking = false;
    for line in text.lines() {
        let uncommented = line.strip_prefix("# ");
        taking = match uncommented {
            Some(l) if l.starts_with("[[") => true,
            Some(_) => taking,
            None => false,
        };
        out.push_str(if taking { uncommented.unwrap() } else { line });
        out.push('\n');
    }
    let mut v: Value = toml::from_str(&out).unwrap();
    let mut all = Vec::new();
    leaves(&v, &mut Vec::new(), &mut all);
    for path in all {
        let field = at(&mut v, &path);
        if let Some(ours) = field.as_str().and_then(|s| files.stand_in(s)) {
            *field = Value::String(ours);
        }
    }
    v
}

/// Other values for a field, by its type.
fn changes(v: &Value, files: &Files) -> Vec<Value> {
    let mut out = match v {
        Value::Boolean(b) => vec![Value::Boolean(!b)],
        Value::Integer(n) => [n + 1, n * 2, n / 2, n - 1, 0, 1, 3, 16, 1024, 65536]
            .into_iter()
            .filter(|&m| m >= 0)
            .map(Value::Integer)
            .collect(),
        Value::Float(f) => vec![Value::Float(f * 2.0), Value::Float(f / 2.0)],
        Value::String(s) => {
            let mut c: Vec<String> = STRINGS.iter().map(|s| s.to_string()).collect();
            c.push(format!("{s}x"));
            if let Ok(a) = s.parse::<std::net::SocketAddr>() {
                c.push(std::net::SocketAddr::new(a.ip(), a.port() + 1).to_string());
            }
            c.extend(files.rewritten(s));
            c.into_iter().map(Value::String).collect()
        }
        Value::Array(a) => {
            let mut longer = a.clone();
            longer.push(Value::String("127.0.0.1:9100".into()));
            let mut c = vec![Value::Array(longer)];
            if a.len() > 1 {
                c.push(Value::Array(a[..a.len() - 1].to_vec()));
            }
            c
        }
        other => panic!("no way to change a {}", other.type_str()),
    };
    out.retain(|c| c != v);
    out
}

/// `None` when the settings, or the certificates they name, are not valid.
fn validate(v: &Value) -> Option<Settings> {
    let text = toml::to_string(v).unwrap();
    let s = Config::from_toml(&text).ok()?.validate().ok()?;
    crate::tls::load(&s).ok().map(|_| s)
}

/// A reloader running on `old`, with a router and admission of its own.
fn reloader(old: &Settings) -> (Reloader, Arc<Router>, Arc<ConnectionLimit>) {
    let router = Arc::new(Router::new(crate::balancer::affinity::Keyring::new(
        old.sticky_secret.as_deref(),
    )));
    let tls = crate::tls::load(old).expect("validate() loaded them");
    router.configure(&old.routes, tls.backend.clone());
    let admission = ConnectionLimit::new(100);
    admission.per_ip().configure(old.per_ip);
    let (workers, _) = crate::control::channels(0);
    let certificates = tls
        .server
        .as_ref()
        .map(|t| Arc::new(crate::tls::Certificates::new(t.config.clone())));
    let r = Reloader::new(
        old,
        tls,
        router.clone(),
        Rewake::default(),
        crate::balancer::rebalance::Configure::detached(),
        workers,
        certificates,
        admission.clone(),
    );
    (r, router, admission)
}

#[test]
fn every_example_field_changed_by_a_reload_is_applied_or_needs_a_restart() {
    let files = Files::new("reload-fields");
    let example = example(&files);
    let modes: Vec<(Value, Settings)> = MODES
        .iter()
        .map(|mode| {
            let mut v = example.clone();
            for (path, value) in *mode {
                let value = match *value {
                    "CERT" => Value::String(files.path("other.pem")),
                    "KEY" => Value::String(files.path("key.key")),
                    "CA" => Value::String(files.path("ca.pem")),
                    literal => {
                        toml::from_str::<toml::Table>(&format!("v = {literal}")).unwrap()["v"]
                            .clone()
                    }
                };
                *at(&mut v, &parse(path)) = value;
            }
            let s = validate(&v).unwrap_or_else(|| panic!("mode {mode:?} is not valid"));
            (v, s)
        })
        .collect();
    let mut fields = Vec::new();
    leaves(&example, &mut Vec::new(), &mut fields);
    assert!(fields.len() > 80, "{} fields", fields.len());
    let names: Vec<String> = fields.iter().map(|f| name(f)).collect();
    for entry in ["routes[0].health.fall", "tls.certificates[0].key"] {
        assert!(
            names.iter().any(|n| n == entry),
            "the commented-out entries: {names:?}"
        );
    }
    'field: for path in &fields {
        let field = name(path);
        for (m, (base, old)) in modes.iter().enumerate() {
            for change in changes(at(&mut base.clone(), path), &files) {
                let mut v = base.clone();
                *at(&mut v, path) = change.clone();
                let Some(new) = validate(&v) else { continue };
                if new == *old {
                    continue; // no difference in this mode
                }
                let (mut r, router, admission) = reloader(old);
                let tls = crate::tls::load(&new).expect("validate() loaded them");
                let report = r.apply(&new, tls);
                let covers = |e: &str| {
                    field == e
                        || field.starts_with(&format!("{e}."))
                        || field.starts_with(&format!("{e}["))
                };
                let applied = report.applied.iter().any(|e| covers(e));
                let fixed = report.needs_restart.iter().any(|e| covers(e));
                assert!(
                    applied != fixed,
                    "{field} changed to {change} (mode {:?}): applied {:?}, needs a restart \
                     {:?}; a field must be in exactly one",
                    MODES[m],
                    report.applied,
                    report.needs_restart
                );
                // What the report calls applied is what runs.
                let mut running: Vec<_> = router
                    .table()
                    .routes
                    .iter()
                    .map(|r| r.spec.clone())
                    .collect();
                let mut want = new.routes.clone();
                running.sort_by(|a, b| a.field.cmp(&b.field));
                want.sort_by(|a, b| a.field.cmp(&b.field));
                assert_eq!(running, want, "{field}: the routes run as reloaded");
                assert_eq!(admission.per_ip().limits(), new.per_ip, "{field}");
                continue 'field;
            }
        }
        panic!(
            "{field}: no change to it, in any mode of the example, gives other settings; \
             nothing reads it (or give it a mode or a stock value here)"
        );
    }
}

/// The test above covers the example's fields; this one holds the example to every field
/// `Config` has (read off its `{:#?}` form, with one `[[routes]]` and one
/// `[[tls.certificates]]` entry), so that a field cannot skip both by skipping the file.
#[test]
fn every_config_field_is_in_the_example() {
    let files = Files::new("example-fields");
    let mut in_example = Vec::new();
    leaves(&example(&files), &mut Vec::new(), &mut in_example);
    let in_example: Vec<String> = in_example
        .iter()
        .map(|p| {
            let steps: Vec<Step> = p
                .iter()
                .filter(|s| matches!(s, Step::Key(_)))
                .cloned()
                .collect();
            name(&steps)
        })
        .collect();
    let mut config = Config::default();
    config.routes.push(Default::default());
    config.tls.certificates.push(Default::default());
    let debug = format!("{config:#?}");
    // Each `name: value` line is a field; one whose value opens a `{` or `[` has its
    // fields on the lines below, indented further.
    let mut open: Vec<(usize, &str)> = Vec::new();
    let mut fields = Vec::new();
    for line in debug.lines() {
        let indent = line.len() - line.trim_start().len();
        let Some((field, value)) = line.trim_start().split_once(": ") else {
            continue;
        };
        while open.last().is_some_and(|&(i, _)| i >= indent) {
            open.pop();
        }
        let path: Vec<&str> = open.iter().map(|&(_, f)| f).chain([field]).collect();
        if value.ends_with('{') || value.ends_with('[') {
            open.push((indent, field));
        } else {
            fields.push(path.join("."));
        }
    }
    assert!(fields.len() > 80, "{fields:?}");
    let missing: Vec<&String> = fields
        .iter()
        .filter(|f| !in_example.iter().any(|e| e == *f))
        .collect();
    assert!(missing.is_empty(), "not in wslb.example.toml: {missing:?}");
}
