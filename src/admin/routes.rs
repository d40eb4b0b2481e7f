//! What each admin path answers, read from the instance's [`AdminView`] at request time.

use serde::Serialize;

use super::AdminView;
use super::http::{HTML, Head, JSON, Response, TEXT};
use crate::frame::Side;
use crate::metrics::{BackendView, Rejected, Snapshot, prometheus, unix_now};

/// The status page: HTML, CSS and JS in one file, no external assets (the CSP below
/// enforces it), so it works on a host with no way out.
const STATUS_PAGE: &str = include_str!("status.html");

/// Inline script and style only, and fetches to this server: the page loads nothing else.
const PAGE_CSP: &str = "Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// The answer to `head`.
pub fn answer(head: &Head, view: &dyn AdminView) -> Response {
    // Every path is GET-only, so the method is checked first and `Allow` is the same for all.
    if !head.get {
        return Response::text(405, "method not allowed").with_header("Allow: GET");
    }
    match head.path.as_str() {
        "/" => Response::new(200, HTML, STATUS_PAGE).with_header(PAGE_CSP),
        "/metrics" => Response::new(
            200,
            prometheus::CONTENT_TYPE,
            prometheus::render(&view.snapshot()),
        ),
        "/healthz" => Response::text(200, "ok"),
        "/readyz" => match view.ready() {
            Ok(()) => Response::text(200, "ready"),
            Err(reason) => Response::text(503, &reason),
        },
        "/backends" => json(&backends(&view.snapshot().backends)),
        "/stats.json" => json(&Stats::of(&view.snapshot(), view.ready(), unix_now())),
        _ => Response::text(404, "not found"),
    }
}

fn json(value: &impl Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => Response::new(200, JSON, body),
        // Only a map with non-string keys or a failing Serialize impl can fail; neither is
        // here, but a scrape must not take the server down if one appears.
        Err(e) => Response::new(500, TEXT, format!("{e}\n")),
    }
}

/// One backend in `/backends` and `/stats.json`.
#[derive(Debug, Serialize)]
pub struct Backend {
    /// The route the backend serves (`default`: the top-level `backends`).
    pub route: String,
    pub address: String,
    pub up: bool,
    pub open: u64,
    pub selected: u64,
    pub failures: Failures,
}

/// A backend's failures by kind (as `wslb_backend_failures_total{kind}`).
#[derive(Debug, Serialize)]
pub struct Failures {
    pub connect: u64,
    pub handshake: u64,
    pub health_check: u64,
}

fn backends(views: &[BackendView]) -> Vec<Backend> {
    views
        .iter()
        .map(|b| Backend {
            route: b.route.clone(),
            address: b.addr.to_string(),
            up: b.up,
            open: b.open,
            selected: b.selected,
            failures: Failures {
                connect: b.failures[0],
                handshake: b.failures[1],
                health_check: b.failures[2],
            },
        })
        .collect()
}

/// What the status page polls: the counters it turns into rates (by differencing two
/// fetches over `time`), the state it shows as is.
#[derive(Debug, Serialize)]
struct Stats {
    version: &'static str,
    io_driver: &'static str,
    /// Unix time of this snapshot: rates are computed over the server's clock, not the
    /// browser's, so a slow fetch does not skew them.
    time: f64,
    process_start: f64,
    draining: bool,
    ready: bool,
    /// Why the instance is not ready (`None` when it is).
    not_ready: Option<String>,
    connections: Connections,
    /// Frames relayed, by the direction they went.
    frames: Directions,
    bytes: Directions,
    reloads: Reloads,
    process: ProcessStats,
    backends: Vec<Backend>,
}

#[derive(Debug, Serialize)]
struct Connections {
    open: u64,
    accepted: u64,
    rejected: u64,
    handshakes: u64,
}

#[derive(Debug, Serialize)]
struct Directions {
    client_to_backend: u64,
    backend_to_client: u64,
}

#[derive(Debug, Serialize)]
struct Reloads {
    success: u64,
    failure: u64,
}

#[derive(Debug, Serialize)]
struct ProcessStats {
    cpu_seconds: f64,
    resident_bytes: u64,
    open_fds: u64,
    max_fds: u64,
}

impl Stats {
    fn of(s: &Snapshot, ready: Result<(), String>, time: f64) -> Self {
        let t = &s.totals;
        let dirs = |v: [u64; 2]| Directions {
            client_to_backend: v[Side::Client.index()],
            backend_to_client: v[Side::Backend.index()],
        };
        Stats {
            version: env!("CARGO_PKG_VERSION"),
            io_driver: s.io_driver,
            time,
            process_start: s.process.start_time,
            draining: s.draining,
            ready: ready.is_ok(),
            not_ready: ready.err(),
            connections: Connections {
                open: t.open,
                accepted: t.accepted,
                rejected: Rejected::ALL.iter().map(|&r| t.rejected(r)).sum(),
                handshakes: t.handshakes(),
            },
            frames: dirs(t.frames),
            bytes: dirs(t.bytes),
            reloads: Reloads {
                success: s.reloads_ok,
                failure: s.reloads_failed,
            },
            process: ProcessStats {
                cpu_seconds: s.process.cpu_seconds,
                resident_bytes: s.process.resident_bytes,
                open_fds: s.process.open_fds,
                max_fds: s.process.max_fds,
            },
            backends: backends(&s.backends),
        }
    }
}
