//! The access log: one line per finished client connection (off by default).
//!
//! A line has the client's address, the backend, the request path, how long the
//! connection lived, bytes and frames each way, the first close (code and who sent it),
//! and the outcome: `relayed`, or why the connection never reached the relay (the
//! `reason` labels of `wslb_connections_rejected_total`). As `text` (logfmt: `key=value`,
//! strings quoted) or `json` (one object per line), to stderr or a file. The file is
//! reopened on SIGHUP, so `logrotate` can move it away and signal (no `copytruncate`).
//!
//! Workers write whole lines under one lock, once per connection (never per frame); a line
//! is formatted before the lock is taken.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

pub use crate::config::AccessLogFormat as Format;
use crate::frame::Side;
use crate::relay::Traffic;

/// Where lines go.
#[derive(Debug)]
enum Sink {
    Stderr,
    File { path: PathBuf, file: std::fs::File },
}

/// One finished connection.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    pub client: SocketAddr,
    pub backend: Option<SocketAddr>,
    /// The request target (path and query), if the request got that far.
    pub path: Option<&'a str>,
    pub duration: Duration,
    /// `relayed`, or the reason the connection did not reach the relay.
    pub outcome: &'a str,
    pub traffic: Traffic,
}

#[derive(Debug)]
pub struct AccessLog {
    format: Format,
    sink: Mutex<Sink>,
}

fn open_file(path: &PathBuf) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

impl AccessLog {
    /// `path`: `None` for stderr. The file is opened (created, appended to) now, so a bad
    /// path fails at startup, not at the first connection.
    pub fn open(format: Format, path: Option<PathBuf>) -> std::io::Result<Self> {
        let sink = match path {
            None => Sink::Stderr,
            Some(path) => Sink::File {
                file: open_file(&path)?,
                path,
            },
        };
        Ok(Self {
            format,
            sink: Mutex::new(sink),
        })
    }

    /// Reopens the file (log rotation); stderr stays stderr. On failure the old file
    /// stays in use, and the error says why.
    pub fn reopen(&self) -> std::io::Result<()> {
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        if let Sink::File { path, file } = &mut *sink {
            *file = open_file(path)?;
        }
        Ok(())
    }

    /// Writes one line. A failed write is dropped (logging must never stop a connection).
    pub fn record(&self, e: &Entry<'_>) {
        let mut line = match self.format {
            Format::Text => text(e),
            Format::Json => json(e),
        };
        line.push('\n');
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        let _ = match &mut *sink {
            Sink::Stderr => std::io::stderr().write_all(line.as_bytes()),
            Sink::File { file, .. } => file.write_all(line.as_bytes()),
        };
    }
}

fn close_fields(t: &Traffic) -> (String, &'static str) {
    match t.first_close {
        Some((by, code)) => (code.map_or("none".into(), |c| c.to_string()), by.label()),
        None => ("none".into(), "none"),
    }
}

fn text(e: &Entry<'_>) -> String {
    let t = &e.traffic;
    let (code, by) = close_fields(t);
    let (c, b) = (Side::Client.index(), Side::Backend.index());
    format!(
        "client={} backend={} path={:?} duration_ms={} bytes_in={} bytes_out={} frames_in={} \
         frames_out={} close_code={code} closed_by={by} outcome={}",
        e.client,
        e.backend.map_or("-".into(), |a| a.to_string()),
        e.path.unwrap_or("-"),
        e.duration.as_millis(),
        t.bytes[c],
        t.bytes[b],
        t.frames[c],
        t.frames[b],
        e.outcome,
    )
}

fn json(e: &Entry<'_>) -> String {
    let t = &e.traffic;
    let (c, b) = (Side::Client.index(), Side::Backend.index());
    let close = t
        .first_close
        .map(|(by, code)| serde_json::json!({ "code": code, "by": by.label() }));
    serde_json::json!({
        "client": e.client.to_string(),
        "backend": e.backend.map(|a| a.to_string()),
        "path": e.path,
        "duration_ms": e.duration.as_millis() as u64,
        "bytes_in": t.bytes[c],
        "bytes_out": t.bytes[b],
        "frames_in": t.frames[c],
        "frames_out": t.frames[b],
        "close": close,
        "outcome": e.outcome,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ClosedBy;

    fn entry(path: Option<&str>) -> Entry<'_> {
        Entry {
            client: "127.0.0.1:5555".parse().unwrap(),
            backend: Some("127.0.0.1:9001".parse().unwrap()),
            path,
            duration: Duration::from_millis(1234),
            outcome: "relayed",
            traffic: Traffic {
                bytes: [100, 2000],
                frames: [3, 4],
                first_close: Some((ClosedBy::Client, Some(1000))),
            },
        }
    }

    #[test]
    fn text_lines_are_logfmt_with_quoted_paths() {
        let l = text(&entry(Some("/chat?room=\"a b\"")));
        assert_eq!(
            l,
            "client=127.0.0.1:5555 backend=127.0.0.1:9001 path=\"/chat?room=\\\"a b\\\"\" \
             duration_ms=1234 bytes_in=100 bytes_out=2000 frames_in=3 frames_out=4 \
             close_code=1000 closed_by=client outcome=relayed"
        );
    }

    #[test]
    fn json_lines_parse_back() {
        let v: serde_json::Value = serde_json::from_str(&json(&entry(Some("/x\"y")))).unwrap();
        assert_eq!(v["path"], "/x\"y");
        assert_eq!(v["bytes_out"], 2000);
        assert_eq!(v["close"]["code"], 1000);
        assert_eq!(v["close"]["by"], "client");
        let v: serde_json::Value = serde_json::from_str(&json(&entry(None))).unwrap();
        assert!(v["path"].is_null());
    }

    #[test]
    fn the_file_is_reopened_after_rotation() {
        let dir = std::env::temp_dir().join(format!("wslb-access-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let log = AccessLog::open(Format::Text, Some(path.clone())).unwrap();
        log.record(&entry(Some("/one")));
        std::fs::rename(&path, dir.join("access.log.1")).unwrap();
        log.record(&entry(Some("/two"))); // still into the moved file
        log.reopen().unwrap();
        log.record(&entry(Some("/three")));
        let old = std::fs::read_to_string(dir.join("access.log.1")).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        assert!(old.contains("/one") && old.contains("/two") && !old.contains("/three"));
        assert_eq!(new.lines().count(), 1);
        assert!(new.contains("/three"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
