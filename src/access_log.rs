//! The access log: one line per finished client connection (off by default).
//!
//! A line starts with its time, then has the client's address, the backend, the request
//! path, the HTTP status, how long the connection lived, bytes and frames each way, the
//! first close (code and who sent it), and the outcome: `relayed`, or why the connection
//! never reached the relay (the `reason` labels of `wslb_connections_rejected_total`). As
//! `text` (logfmt: `key=value`, strings quoted) or `json` (one object per line, `"time"`
//! its first key), to stderr or a file. The file is reopened on SIGHUP, so `logrotate` can
//! move it away and signal (no `copytruncate`).
//!
//! The time is when the connection was accepted (a plain HTTP request's line: when its
//! request began), as HAProxy's accept date and Envoy's `START_TIME` are, not when the line
//! was written (NGINX's `$time_local`): a WebSocket connection can live for hours, and its
//! start is what the backend's and the client's logs show for it. Lines are written when
//! connections end, so they are not in time order; `time` plus `duration_ms` is the end.
//! RFC 3339, UTC, milliseconds (`2026-12-07T23:41:02.123Z`).
//!
//! Workers write whole lines under one lock, once per connection (never per frame); a line
//! is formatted before the lock is taken.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

pub use crate::config::AccessLogFormat as Format;
use crate::frame::Side;
use crate::metrics::ClosedBy;
use crate::utc::Rfc3339Millis;

/// What one relay moved: the relay counts it, the access log prints it. Defined here, below
/// the relay, so the log does not import the layer that feeds it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Bytes forwarded (frame headers included), by the side that sent them
    /// ([`Side::index`]); wslb's own frames are not counted.
    pub bytes: [u64; 2],
    pub frames: [u32; 2],
    /// The connection's first close frame: who sent it, and its code.
    pub first_close: Option<(ClosedBy, Option<u16>)>,
}

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
    /// The HTTP status the client got, from wslb or the backend: 101 for a relayed
    /// upgrade, a refusal's status, a plain request's response status. `None` when no
    /// response was sent (the client left, its TLS handshake failed).
    pub status: Option<u16>,
    /// Since the connection was accepted (or the plain HTTP request began); the line's
    /// time is this long before it is written.
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
        // The accept time, derived from the entry's duration rather than carried in it: a
        // parked connection holds no second clock reading. (A wall-clock step while the
        // connection lived moves it by that step.)
        let now = SystemTime::now();
        let at = now.checked_sub(e.duration).unwrap_or(now);
        let mut line = match self.format {
            Format::Text => text(e, at),
            Format::Json => json(e, at),
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

/// `at`: the line's time (the connection's accept time).
fn text(e: &Entry<'_>, at: SystemTime) -> String {
    let t = &e.traffic;
    let (code, by) = close_fields(t);
    let (c, b) = (Side::Client.index(), Side::Backend.index());
    let status = e.status.map_or(String::new(), |s| format!(" status={s}"));
    format!(
        "time={} client={} backend={} path={:?}{status} duration_ms={} bytes_in={} \
         bytes_out={} frames_in={} frames_out={} close_code={code} closed_by={by} outcome={}",
        Rfc3339Millis(at),
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

/// A JSON line: a struct rather than `serde_json::json!`, whose map sorts its keys, so the
/// keys come in this order, `time` first and then as in a text line.
#[derive(serde::Serialize)]
struct JsonLine<'a> {
    time: String,
    client: String,
    backend: Option<String>,
    path: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    duration_ms: u64,
    bytes_in: u64,
    bytes_out: u64,
    frames_in: u32,
    frames_out: u32,
    close: Option<JsonClose>,
    outcome: &'a str,
}

#[derive(serde::Serialize)]
struct JsonClose {
    code: Option<u16>,
    by: &'static str,
}

/// `at`: the line's time (the connection's accept time).
fn json(e: &Entry<'_>, at: SystemTime) -> String {
    let t = &e.traffic;
    let (c, b) = (Side::Client.index(), Side::Backend.index());
    let line = JsonLine {
        time: Rfc3339Millis(at).to_string(),
        client: e.client.to_string(),
        backend: e.backend.map(|a| a.to_string()),
        path: e.path,
        status: e.status,
        duration_ms: e.duration.as_millis() as u64,
        bytes_in: t.bytes[c],
        bytes_out: t.bytes[b],
        frames_in: t.frames[c],
        frames_out: t.frames[b],
        close: t.first_close.map(|(by, code)| JsonClose {
            code,
            by: by.label(),
        }),
        outcome: e.outcome,
    };
    serde_json::to_string(&line).expect("a struct of strings and numbers serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn entry(path: Option<&str>) -> Entry<'_> {
        Entry {
            client: "127.0.0.1:5555".parse().unwrap(),
            backend: Some("127.0.0.1:9001".parse().unwrap()),
            path,
            status: Some(101),
            duration: Duration::from_millis(1234),
            outcome: "relayed",

            traffic: Traffic {
                bytes: [100, 2000],
                frames: [3, 4],
                first_close: Some((ClosedBy::Client, Some(1000))),
            },
        }
    }

    /// A connection that got no response: no backend, no path, no status, no close.
    fn refused() -> Entry<'static> {
        Entry {
            backend: None,
            status: None,
            outcome: "tls_handshake",
            traffic: Traffic::default(),
            ..entry(None)
        }
    }

    /// 2026-12-07T23:41:02.123Z
    fn at() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_796_686_862_123)
    }

    #[test]
    fn text_lines_are_logfmt_with_the_time_first_and_quoted_paths() {
        let l = text(&entry(Some("/chat?room=\"a b\"")), at());
        assert_eq!(
            l,
            "time=2026-12-07T23:41:02.123Z client=127.0.0.1:5555 backend=127.0.0.1:9001 \
             path=\"/chat?room=\\\"a b\\\"\" status=101 duration_ms=1234 bytes_in=100 \
             bytes_out=2000 frames_in=3 frames_out=4 close_code=1000 closed_by=client \
             outcome=relayed"
        );
        assert_eq!(
            text(&refused(), at()),
            "time=2026-12-07T23:41:02.123Z client=127.0.0.1:5555 backend=- path=\"-\" \
             duration_ms=1234 bytes_in=0 bytes_out=0 frames_in=0 frames_out=0 \
             close_code=none closed_by=none outcome=tls_handshake"
        );
    }

    #[test]
    fn json_lines_have_the_time_first_and_parse_back() {
        assert_eq!(
            json(&entry(Some("/chat?room=1")), at()),
            r#"{"time":"2026-12-07T23:41:02.123Z","client":"127.0.0.1:5555","#.to_string()
                + r#""backend":"127.0.0.1:9001","path":"/chat?room=1","status":101,"#
                + r#""duration_ms":1234,"bytes_in":100,"bytes_out":2000,"frames_in":3,"#
                + r#""frames_out":4,"close":{"code":1000,"by":"client"},"outcome":"relayed"}"#
        );
        let v: serde_json::Value =
            serde_json::from_str(&json(&entry(Some("/x\"y")), at())).unwrap();
        assert_eq!(v["path"], "/x\"y");
        let v: serde_json::Value = serde_json::from_str(&json(&refused(), at())).unwrap();
        assert!(v["path"].is_null() && v["backend"].is_null() && v["close"].is_null());
        assert!(v.get("status").is_none(), "{v}");
        assert_eq!(v["time"], "2026-12-07T23:41:02.123Z");
    }

    #[test]
    fn a_line_is_dated_when_its_connection_was_accepted() {
        let dir = std::env::temp_dir().join(format!("wslb-access-time-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let log = AccessLog::open(Format::Text, Some(path.clone())).unwrap();
        // A connection that lived an hour: its line is dated an hour before it is written.
        let hour = Duration::from_secs(3600);
        let before = Rfc3339Millis(SystemTime::now() - hour).to_string();
        log.record(&Entry {
            duration: hour,
            ..entry(None)
        });
        let after = Rfc3339Millis(SystemTime::now() - hour).to_string();
        let line = std::fs::read_to_string(&path).unwrap();
        let time = line
            .strip_prefix("time=")
            .and_then(|l| l.split(' ').next())
            .unwrap();
        // Fixed-width RFC 3339 in UTC sorts as text.
        assert!(before.as_str() <= time && time <= after.as_str(), "{line}");
        let _ = std::fs::remove_dir_all(&dir);
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
