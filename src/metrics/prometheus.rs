//! A [`Snapshot`] in the Prometheus text exposition format 0.0.4: `wslb_` names, `_total`
//! counters, seconds and bytes (the Prometheus naming conventions), and the standard
//! `process_*` metrics.

use std::fmt::Write;

use super::{
    ClosedBy, Event, HANDSHAKE_BUCKETS, Rejected, Snapshot, TLS_VERSIONS, TlsFailure, code_label,
};
use crate::frame::Side;

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The two directions of relayed traffic, labelled by who sent it.
const DIRECTIONS: [(Side, &str); 2] = [
    (Side::Client, "client_to_backend"),
    (Side::Backend, "backend_to_client"),
];

const FAILURE_KINDS: [&str; 3] = ["connect", "handshake", "health_check"];

struct Out(String);

impl Out {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(val));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {v}");
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, v: impl std::fmt::Display) {
        self.head(name, kind, help);
        self.sample(name, &[], v);
    }
}

/// Label values escape backslash, double quote and newline.
fn escape(v: &str) -> std::borrow::Cow<'_, str> {
    if v.contains(['\\', '"', '\n']) {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
            .into()
    } else {
        v.into()
    }
}

/// Renders every metric of `s`.
pub fn render(s: &Snapshot) -> String {
    let t = &s.totals;
    let mut o = Out(String::with_capacity(8192));
    o.head(
        "wslb_build_info",
        "gauge",
        "Version and io driver of this wslb; always 1.",
    );
    o.sample(
        "wslb_build_info",
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("io_driver", s.io_driver),
        ],
        1,
    );
    o.one(
        "wslb_connections_open",
        "gauge",
        "Client connections open (handshake or relay).",
        t.open,
    );
    o.one(
        "wslb_connections_accepted_total",
        "counter",
        "Client connections accepted.",
        t.accepted,
    );
    o.head(
        "wslb_connections_rejected_total",
        "counter",
        "Client connections that did not reach the relay, by reason.",
    );
    for r in Rejected::ALL {
        o.sample(
            "wslb_connections_rejected_total",
            &[("reason", r.label())],
            t.rejected(r),
        );
    }

    o.head(
        "wslb_tls_handshakes_total",
        "counter",
        "Completed TLS handshakes with clients, by protocol version.",
    );
    for (i, v) in TLS_VERSIONS.iter().enumerate() {
        o.sample(
            "wslb_tls_handshakes_total",
            &[("version", v)],
            t.tls_handshakes[i],
        );
    }
    o.head(
        "wslb_tls_handshake_failures_total",
        "counter",
        "Failed TLS handshakes with clients, by reason.",
    );
    for f in TlsFailure::ALL {
        o.sample(
            "wslb_tls_handshake_failures_total",
            &[("reason", f.label())],
            t.tls_failures[f as usize],
        );
    }
    let name = "wslb_http_responses_total";
    o.head(
        name,
        "counter",
        "Plain HTTP responses relayed to clients (requests beside upgrades), by status class.",
    );
    for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
        o.sample(name, &[("class", class)], t.http[i]);
    }
    o.one(
        "wslb_http_backend_reuses_total",
        "counter",
        "Plain HTTP requests sent on a pooled (kept-alive) backend connection.",
        t.http_reused,
    );
    o.one(
        "wslb_recv_ring_bytes_total",
        "counter",
        "Bytes relays received through their worker's io_uring receive ring (multishot receives into provided buffers) rather than by a read of their own.",
        t.ring_bytes,
    );
    if !s.certificates.is_empty() {
        let name = "wslb_tls_certificate_expiry_timestamp_seconds";
        o.head(
            name,
            "gauge",
            "When each TLS certificate in use expires (notAfter), in Unix seconds.",
        );
        for c in &s.certificates {
            let file = c.file.display().to_string();
            let names = c.names.join(",");
            o.sample(name, &[("file", &file), ("names", &names)], c.not_after);
        }
    }

    if !s.rebalance.is_empty() {
        for (name, kind, help) in [
            (
                "wslb_rebalance_spread_ratio",
                "gauge",
                "How far the route's most loaded backend was above its share at the last rebalancing pass (0.5 = 50%).",
            ),
            (
                "wslb_rebalance_passes_total",
                "counter",
                "Rebalancing passes that closed connections, by route.",
            ),
            (
                "wslb_rebalance_moved_total",
                "counter",
                "Connections rebalancing closed (1012) to move them, by route.",
            ),
        ] {
            o.head(name, kind, help);
            for r in &s.rebalance {
                let labels = [("route", r.route.as_str())];
                match name {
                    "wslb_rebalance_spread_ratio" => o.sample(name, &labels, r.spread.max(0.0)),
                    "wslb_rebalance_passes_total" => o.sample(name, &labels, r.passes),
                    _ => o.sample(name, &labels, r.moved),
                }
            }
        }
    }

    let name = "wslb_handshake_duration_seconds";
    o.head(
        name,
        "histogram",
        "Time from accept to the backend's 101 relayed to the client.",
    );
    let mut cumulative = 0;
    for (i, le) in HANDSHAKE_BUCKETS.iter().enumerate() {
        cumulative += t.handshake_buckets[i];
        o.sample(
            &format!("{name}_bucket"),
            &[("le", &le.to_string())],
            cumulative,
        );
    }
    let count = t.handshakes();
    o.sample(&format!("{name}_bucket"), &[("le", "+Inf")], count);
    o.sample(&format!("{name}_sum"), &[], t.handshake_sum_secs);
    o.sample(&format!("{name}_count"), &[], count);

    let backend_metrics: [(&str, &str, &str); 3] = [
        (
            "wslb_backend_up",
            "gauge",
            "1 if the backend takes new connections (health), else 0.",
        ),
        (
            "wslb_backend_connections_open",
            "gauge",
            "Connections open to the backend: relayed, or in their upgrade with it (what least-connections counts).",
        ),
        (
            "wslb_backend_selected_total",
            "counter",
            "Times the backend was picked first for a connection.",
        ),
    ];
    for (i, (name, kind, help)) in backend_metrics.into_iter().enumerate() {
        o.head(name, kind, help);
        for b in &s.backends {
            let v = [u64::from(b.up), b.open, b.selected][i];
            o.sample(
                name,
                &[("route", &b.route), ("backend", &b.addr.to_string())],
                v,
            );
        }
    }
    let name = "wslb_backend_failures_total";
    o.head(
        name,
        "counter",
        "Failed connects, upgrade exchanges and health checks, by backend.",
    );
    for b in &s.backends {
        let addr = b.addr.to_string();
        for (kind, v) in FAILURE_KINDS.iter().zip(b.failures) {
            o.sample(
                name,
                &[("route", &b.route), ("backend", &addr), ("kind", kind)],
                v,
            );
        }
    }

    for (name, help, v) in [
        (
            "wslb_relayed_bytes_total",
            "Bytes relayed, frame headers included, by direction.",
            t.bytes,
        ),
        (
            "wslb_relayed_frames_total",
            "Frames relayed, by direction.",
            t.frames,
        ),
    ] {
        o.head(name, "counter", help);
        for (side, dir) in DIRECTIONS {
            o.sample(name, &[("direction", dir)], v[side.index()]);
        }
    }

    let name = "wslb_closes_total";
    o.head(
        name,
        "counter",
        "Close frames sent, by code and by who sent them (client, backend, wslb); codes seen only.",
    );
    for by in ClosedBy::ALL {
        for (bucket, &n) in t.closes[by as usize].iter().enumerate() {
            if let (Some(code), true) = (code_label(bucket), n > 0) {
                o.sample(name, &[("code", code), ("by", by.label())], n);
            }
        }
    }
    for (name, help, e) in [
        (
            "wslb_keepalive_pings_total",
            "Keepalive pings wslb sent to quiet peers.",
            Event::KeepalivePing,
        ),
        (
            "wslb_dead_peers_total",
            "Peers that answered nothing within the idle timeout.",
            Event::DeadPeer,
        ),
        (
            "wslb_idle_closes_total",
            "Connections closed after the idle timeout without pings.",
            Event::IdleClose,
        ),
        (
            "wslb_removed_backend_closes_total",
            "Connections closed (1012) after their backend was removed by a reload.",
            Event::RemovedBackendClose,
        ),
        (
            "wslb_rebalance_closes_total",
            "Connections closed (1012) by rebalancing, to reconnect to a lighter backend.",
            Event::RebalanceClose,
        ),
        (
            "wslb_recv_ring_starved_total",
            "Multishot receives that found the worker's receive ring out of buffers (re-armed as buffers came back).",
            Event::RecvStarved,
        ),
        (
            "wslb_recv_ring_paused_total",
            "Multishot receives paused because their destination was slower than their source.",
            Event::RecvPaused,
        ),
        (
            "wslb_recv_ring_large_frames_total",
            "Relay directions that left the receive ring for a frame larger than its buffers.",
            Event::RecvLargeFrame,
        ),
    ] {
        o.one(name, "counter", help, t.event(e));
    }
    let name = "wslb_protocol_errors_total";
    o.head(
        name,
        "counter",
        "Protocol violations (bad frames), by the side that sent them.",
    );
    o.sample(
        name,
        &[("side", "client")],
        t.event(Event::ClientProtocolError),
    );
    o.sample(
        name,
        &[("side", "backend")],
        t.event(Event::BackendProtocolError),
    );

    o.one(
        "wslb_draining",
        "gauge",
        "1 while the instance drains, else 0.",
        u8::from(s.draining),
    );
    let name = "wslb_config_reloads_total";
    o.head(name, "counter", "Configuration reloads, by result.");
    o.sample(name, &[("result", "success")], s.reloads_ok);
    o.sample(name, &[("result", "failure")], s.reloads_failed);
    o.one(
        "wslb_config_last_reload_success_timestamp_seconds",
        "gauge",
        "Unix time of the last successful configuration load (start or reload).",
        s.last_reload_success,
    );

    let p = &s.process;
    o.one(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        p.cpu_seconds,
    );
    o.one(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        p.resident_bytes,
    );
    o.one(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        p.virtual_bytes,
    );
    o.one(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        p.open_fds,
    );
    o.one(
        "process_max_fds",
        "gauge",
        "Maximum number of open file descriptors.",
        p.max_fds,
    );
    o.one(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        p.start_time,
    );
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{BackendView, Process, Totals, WorkerStats};
    use std::sync::Arc;

    fn snapshot(workers: &[Arc<WorkerStats>]) -> Snapshot {
        Snapshot {
            totals: Totals::of(workers),
            backends: vec![BackendView {
                route: "default".into(),
                addr: "127.0.0.1:9001".parse().unwrap(),
                up: true,
                open: 2,
                selected: 7,
                failures: [1, 0, 3],
            }],
            draining: false,
            reloads_ok: 1,
            reloads_failed: 0,
            last_reload_success: 1.7e9,
            io_driver: "io_uring",
            process: Process::default(),
            rebalance: Vec::new(),
            certificates: vec![crate::metrics::CertInfo {
                file: "/etc/wslb/cert.pem".into(),
                names: vec!["localhost".into()],
                not_after: 1_800_000_000,
            }],
        }
    }

    /// The value of the sample whose line starts with `series ` (name and labels as
    /// rendered).
    fn value(text: &str, series: &str) -> f64 {
        let line = text
            .lines()
            .find(|l| l.strip_prefix(series).is_some_and(|r| r.starts_with(' ')))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"));
        line[series.len() + 1..].parse().unwrap()
    }

    #[test]
    fn counters_are_summed_over_workers_and_rendered() {
        let w: Vec<Arc<WorkerStats>> = (0..2).map(|_| Arc::default()).collect();
        let _open = w[0].track();
        w[1].track();
        w[0].relayed(Side::Client, 100, 2);
        w[1].relayed(Side::Client, 50, 1);
        w[1].relayed(Side::Backend, 7, 1);
        w[0].close(ClosedBy::Client, Some(1000));
        w[1].close(ClosedBy::Wslb, Some(1001));
        w[1].close(ClosedBy::Backend, None);
        w[0].rejected(Rejected::Limit);
        w[0].handshake_done(0.003);
        w[1].handshake_done(20.0);
        w[0].tls_handshake(1);
        w[1].tls_handshake(1);
        w[1].tls_handshake(0);
        w[0].tls_failed(crate::metrics::TlsFailure::ProtocolVersion);
        let text = render(&snapshot(&w));
        assert_eq!(
            value(&text, r#"wslb_tls_handshakes_total{version="1.3"}"#),
            2.0
        );
        assert_eq!(
            value(&text, r#"wslb_tls_handshakes_total{version="1.2"}"#),
            1.0
        );
        assert_eq!(
            value(
                &text,
                r#"wslb_tls_handshake_failures_total{reason="protocol_version"}"#
            ),
            1.0
        );
        assert_eq!(
            value(
                &text,
                r#"wslb_tls_certificate_expiry_timestamp_seconds{file="/etc/wslb/cert.pem",names="localhost"}"#
            ),
            1.8e9
        );
        assert_eq!(value(&text, "wslb_connections_open"), 1.0);
        assert_eq!(value(&text, "wslb_connections_accepted_total"), 2.0);
        let dir = |d| format!("{{direction=\"{d}\"}}");
        let bytes = |d| value(&text, &format!("wslb_relayed_bytes_total{}", dir(d)));
        assert_eq!(
            (bytes("client_to_backend"), bytes("backend_to_client")),
            (150.0, 7.0)
        );
        let frames = value(
            &text,
            &format!("wslb_relayed_frames_total{}", dir("client_to_backend")),
        );
        assert_eq!(frames, 3.0);
        assert_eq!(
            value(&text, r#"wslb_closes_total{code="1000",by="client"}"#),
            1.0
        );
        assert_eq!(
            value(&text, r#"wslb_closes_total{code="1001",by="wslb"}"#),
            1.0
        );
        assert_eq!(
            value(&text, r#"wslb_closes_total{code="1005",by="backend"}"#),
            1.0
        );
        assert!(!text.contains(r#"code="1002""#), "only codes seen");
        assert_eq!(
            value(&text, r#"wslb_connections_rejected_total{reason="limit"}"#),
            1.0
        );
        let h = "wslb_handshake_duration_seconds";
        assert_eq!(value(&text, &format!("{h}_bucket{{le=\"0.0025\"}}")), 0.0);
        assert_eq!(value(&text, &format!("{h}_bucket{{le=\"0.005\"}}")), 1.0);
        assert_eq!(value(&text, &format!("{h}_bucket{{le=\"10\"}}")), 1.0);
        assert_eq!(value(&text, &format!("{h}_bucket{{le=\"+Inf\"}}")), 2.0);
        assert_eq!(value(&text, &format!("{h}_count")), 2.0);
        assert!((value(&text, &format!("{h}_sum")) - 20.003).abs() < 1e-6);
        let b = r#"{route="default",backend="127.0.0.1:9001"}"#;
        assert_eq!(
            value(&text, &format!("wslb_backend_selected_total{b}")),
            7.0
        );
        assert_eq!(
            value(&text, &format!("wslb_backend_connections_open{b}")),
            2.0
        );
        assert_eq!(
            value(
                &text,
                r#"wslb_backend_failures_total{route="default",backend="127.0.0.1:9001",kind="health_check"}"#
            ),
            3.0
        );
        let info = format!(
            "wslb_build_info{{version=\"{}\",io_driver=\"io_uring\"}}",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(value(&text, &info), 1.0);
        // Every sample's metric family was declared with HELP and TYPE first.
        let mut declared = std::collections::HashSet::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                declared.insert(rest.split(' ').next().unwrap().to_string());
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|f| declared.contains(*f)))
                    .unwrap_or(name);
                assert!(declared.contains(family), "{name} undeclared");
            }
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("a\nb"), "a\\nb");
    }
}
