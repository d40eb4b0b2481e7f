//! Per-worker counters, written only by their own worker and summed when someone reads them
//! (`snapshot.rs`), and rendered for Prometheus (`prometheus.rs`) with the process's own
//! figures (`process.rs`).
//!
//! Which writes cross cores: none per frame. Per connection, the backend's counters
//! (`balancer::BackendStats`: selected, open, failures) are shared by all workers, because
//! an open-connection count per backend must be one number (least-connections reads it);
//! they sit in the backend's own padded block. Everything else here is written by one
//! worker only.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::frame::Side;

mod process;
pub mod prometheus;
mod snapshot;
pub use process::{Process, unix_now};
pub use snapshot::{BackendView, CertInfo, RebalanceStats, Snapshot, Totals, log_every, summary};

/// Adds `n` to a counter only this thread writes: a plain load and store (no locked
/// instruction on the per-frame path), which readers on other threads see whole.
#[inline]
fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// Things that happen to connections, counted per worker for the stats line, the metrics
/// and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// wslb sent a keepalive ping to a quiet peer.
    KeepalivePing,
    /// A peer answered nothing within the idle timeout and was given up.
    DeadPeer,
    /// A connection silent both ways was closed (idle timeout without pings).
    IdleClose,
    /// A connection to a backend removed by a reload got close 1012 at its deadline.
    RemovedBackendClose,
    /// A connection got close 1012 from the rebalancer (its backend held more than its share).
    RebalanceClose,
    /// A client broke the protocol (bad frame).
    ClientProtocolError,
    /// A backend broke the protocol.
    BackendProtocolError,
    /// A receive-ring receive found the ring out of buffers and was re-armed later.
    RecvStarved,
    /// A receive-ring receive was paused: its pump held `PAUSE_AT` chunks (slow destination).
    RecvPaused,
    /// A relay direction left the receive ring for a frame larger than its buffers.
    RecvLargeFrame,
}

impl Event {
    pub const ALL: [Event; 10] = [
        Event::KeepalivePing,
        Event::DeadPeer,
        Event::IdleClose,
        Event::RemovedBackendClose,
        Event::RebalanceClose,
        Event::ClientProtocolError,
        Event::BackendProtocolError,
        Event::RecvStarved,
        Event::RecvPaused,
        Event::RecvLargeFrame,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Event::KeepalivePing => "pings",
            Event::DeadPeer => "dead peers",
            Event::IdleClose => "idle closes",
            Event::RemovedBackendClose => "removed-backend closes",
            Event::RebalanceClose => "rebalancing closes",
            Event::ClientProtocolError => "client protocol errors",
            Event::BackendProtocolError => "backend protocol errors",
            Event::RecvStarved => "receive-ring starved",
            Event::RecvPaused => "receive-ring pauses",
            Event::RecvLargeFrame => "receive-ring large frames",
        }
    }
}

/// One worker's connection counters. Each is written by one thread only (its worker);
/// `Relaxed` because readers only want a snapshot.
///
/// The workers' stats are allocated one after another at startup, so without the alignment
/// neighbouring workers' counters would share cache lines and every accept on one core
/// would steal the line from the other (false sharing). 128 bytes, not 64: on x86 the
/// adjacent-line prefetcher pulls 64-byte lines in 128-byte-aligned pairs, so two workers
/// on the two halves of one pair would still contend. With the alignment the struct is a
/// whole number of 128-byte blocks and no other allocation can share them. The one reader
/// (the stats line, every few seconds) only makes the writer re-own the line once per read.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct WorkerStats {
    accepted: AtomicU64,
    open: AtomicU64,
    events: [AtomicU64; Event::ALL.len()],
    rejected: [AtomicU64; Rejected::ALL.len()],
    /// Bytes and frames forwarded, by the side that sent them ([`Side::index`]).
    bytes: [AtomicU64; 2],
    frames: [AtomicU64; 2],
    /// Close frames, by who sent them ([`ClosedBy`]) and code (`code_bucket`).
    closes: [[AtomicU64; CLOSE_CODES]; 3],
    /// Accept to `101` relayed.
    handshake: Histogram,
    /// Completed TLS handshakes by version ([`TLS_VERSIONS`]), and failed ones by reason.
    tls_handshakes: [AtomicU64; TLS_VERSIONS.len()],
    tls_failures: [AtomicU64; TlsFailure::ALL.len()],
    /// Plain HTTP responses relayed, by class (1xx..5xx), and requests sent on a reused
    /// backend connection.
    http: [AtomicU64; 5],
    http_reused: AtomicU64,
    /// Bytes the worker's receive ring received (`recv_ring`): what its relays moved
    /// without a poll and a read of their own.
    ring_bytes: AtomicU64,
}

impl WorkerStats {
    pub fn count(&self, e: Event) {
        bump(&self.events[e as usize], 1);
    }

    /// A connection that did not reach the relay, and why.
    pub fn rejected(&self, r: Rejected) {
        bump(&self.rejected[r as usize], 1);
    }

    /// Bytes forwarded from `from`, in `frames` frame headers.
    #[inline]
    pub fn relayed(&self, from: Side, bytes: u64, frames: u64) {
        bump(&self.bytes[from.index()], bytes);
        if frames > 0 {
            bump(&self.frames[from.index()], frames);
        }
    }

    /// A close frame went out: `code` (`None`: a close without a code), sent by `by`.
    pub fn close(&self, by: ClosedBy, code: Option<u16>) {
        bump(&self.closes[by as usize][code_bucket(code)], 1);
    }

    /// A handshake completed (the `101` reached the client) `secs` after the accept.
    pub fn tls_handshake(&self, version: usize) {
        bump(&self.tls_handshakes[version], 1);
    }

    /// A plain HTTP response with `status` went to the client.
    pub fn http_response(&self, status: u16) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        bump(&self.http[class], 1);
    }

    /// A plain HTTP request went out on a pooled backend connection.
    pub fn ring_received(&self, bytes: u64) {
        bump(&self.ring_bytes, bytes);
    }

    pub fn ring_bytes(&self) -> u64 {
        Self::load(&self.ring_bytes)
    }

    pub fn http_reused(&self) {
        bump(&self.http_reused, 1);
    }

    pub fn tls_failed(&self, why: TlsFailure) {
        bump(&self.tls_failures[why as usize], 1);
    }

    pub fn handshake_done(&self, secs: f64) {
        self.handshake.observe(secs);
    }

    pub fn events(&self, e: Event) -> u64 {
        self.events[e as usize].load(Ordering::Relaxed)
    }

    fn load(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Counts an accepted connection as open until the returned guard drops.
    pub fn track(self: &std::sync::Arc<Self>) -> OpenGuard {
        bump(&self.accepted, 1);
        bump(&self.open, 1);
        OpenGuard(self.clone())
    }
}

/// Decrements the worker's open count when the connection's task ends.
pub struct OpenGuard(std::sync::Arc<WorkerStats>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let c = &self.0.open;
        c.store(c.load(Ordering::Relaxed).wrapping_sub(1), Ordering::Relaxed);
    }
}

/// Why a connection did not reach the relay (`wslb_connections_rejected_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Over `limits.max_connections`: 503 at once.
    Limit,
    /// Over `limits.max_connections_per_ip`: 429 at once (a TLS client: closed).
    PerIpConnections,
    /// Over `limits.handshake_rate_per_ip`: 429 at once (a TLS client: closed).
    PerIpRate,
    /// A bad request, answered with its status.
    BadRequest400,
    MethodNotAllowed405,
    UpgradeRequired426,
    TooLarge431,
    /// A request line over `limits.max_request_bytes`.
    UriTooLong414,
    /// A plain request's body over `http.max_body_bytes`.
    TooLarge413,
    /// The client sent no complete request within the handshake timeout.
    ClientTimeout,
    /// The client closed or failed before its request was complete.
    ClientGone,
    /// Every backend down: 503.
    AllBackendsDown,
    /// No backend reachable, or one failed the upgrade exchange: 502.
    BackendFailed,
    /// The backend answered the upgrade with something other than 101, relayed as it was.
    BackendRefused,
    /// The client's TLS handshake failed (`wslb_tls_handshake_failures_total` says why);
    /// one that timed out counts as `ClientTimeout`.
    TlsHandshake,
    /// No route matches the request's host and path: 404.
    NoRoute,
}

impl Rejected {
    pub const ALL: [Rejected; 16] = [
        Rejected::Limit,
        Rejected::PerIpConnections,
        Rejected::PerIpRate,
        Rejected::BadRequest400,
        Rejected::MethodNotAllowed405,
        Rejected::UpgradeRequired426,
        Rejected::TooLarge431,
        Rejected::UriTooLong414,
        Rejected::TooLarge413,
        Rejected::ClientTimeout,
        Rejected::ClientGone,
        Rejected::AllBackendsDown,
        Rejected::BackendFailed,
        Rejected::BackendRefused,
        Rejected::TlsHandshake,
        Rejected::NoRoute,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Rejected::Limit => "limit",
            Rejected::PerIpConnections => "per_ip_connections",
            Rejected::PerIpRate => "per_ip_rate",
            Rejected::BadRequest400 => "bad_request_400",
            Rejected::MethodNotAllowed405 => "bad_request_405",
            Rejected::UpgradeRequired426 => "bad_request_426",
            Rejected::TooLarge431 => "bad_request_431",
            Rejected::UriTooLong414 => "bad_request_414",
            Rejected::TooLarge413 => "bad_request_413",
            Rejected::ClientTimeout => "client_timeout",
            Rejected::ClientGone => "client_gone",
            Rejected::AllBackendsDown => "all_backends_down",
            Rejected::BackendFailed => "backend_failed",
            Rejected::BackendRefused => "backend_refused",
            Rejected::TlsHandshake => "tls_handshake",
            Rejected::NoRoute => "no_route",
        }
    }
}

/// The versions `wslb_tls_handshakes_total` counts, by index (`tls::version_index`).
pub const TLS_VERSIONS: [&str; 2] = ["1.2", "1.3"];

/// Why a client's TLS handshake failed: the `wslb_tls_handshake_failures_total` reason
/// (`tls::Failure`; which rustls error is which reason: `tls::Failure::of`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    Timeout,
    Closed,
    ProtocolVersion,
    UnknownSni,
    ClientCert,
    BadMessage,
    /// A plain HTTP request, answered with a plaintext 400 (`tls/plain_http.rs`).
    PlainHttp,
    Other,
}

impl TlsFailure {
    pub const ALL: [TlsFailure; 8] = [
        TlsFailure::Timeout,
        TlsFailure::Closed,
        TlsFailure::ProtocolVersion,
        TlsFailure::UnknownSni,
        TlsFailure::ClientCert,
        TlsFailure::BadMessage,
        TlsFailure::PlainHttp,
        TlsFailure::Other,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            TlsFailure::Timeout => "timeout",
            TlsFailure::Closed => "closed",
            TlsFailure::ProtocolVersion => "protocol_version",
            TlsFailure::UnknownSni => "unknown_sni",
            TlsFailure::ClientCert => "client_cert",
            TlsFailure::BadMessage => "bad_message",
            TlsFailure::PlainHttp => "plain_http",
            TlsFailure::Other => "other",
        }
    }
}

/// Who sent a close frame (`wslb_closes_total{by}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClosedBy {
    Client,
    Backend,
    /// wslb's own: a drain, an idle or retired connection, a lost side, a protocol error.
    Wslb,
}

impl ClosedBy {
    pub const ALL: [ClosedBy; 3] = [ClosedBy::Client, ClosedBy::Backend, ClosedBy::Wslb];

    pub fn label(self) -> &'static str {
        match self {
            ClosedBy::Client => "client",
            ClosedBy::Backend => "backend",
            ClosedBy::Wslb => "wslb",
        }
    }
}

impl From<Side> for ClosedBy {
    fn from(s: Side) -> Self {
        match s {
            Side::Client => ClosedBy::Client,
            Side::Backend => ClosedBy::Backend,
        }
    }
}

/// Close codes are counted in 20 buckets: each code of 1000..=1015 (the ones RFC 6455 and
/// IANA define), 3000-3999 and 4000-4999 (registered and private ranges) as one each, a
/// close without a code (reported as 1005, as RFC 6455 §7.1.5 has the receiver do), and
/// anything else. Bounded, so a peer cannot blow up the label set.
pub const CLOSE_CODES: usize = 20;

fn code_bucket(code: Option<u16>) -> usize {
    match code {
        None => 5,
        Some(c @ 1000..=1015) => (c - 1000) as usize,
        Some(3000..=3999) => 16,
        Some(4000..=4999) => 17,
        Some(_) => 18,
    }
}

/// The `code` label of a bucket of `code_bucket` (bucket 19 is unused: room to grow).
pub fn code_label(bucket: usize) -> Option<&'static str> {
    const LABELS: [&str; 19] = [
        "1000", "1001", "1002", "1003", "1004", "1005", "1006", "1007", "1008", "1009", "1010",
        "1011", "1012", "1013", "1014", "1015", "3xxx", "4xxx", "other",
    ];
    LABELS.get(bucket).copied()
}

/// Upper bounds of the handshake duration buckets, in seconds (Prometheus's `le`): from
/// half a millisecond on loopback to the 10 s client handshake timeout.
pub const HANDSHAKE_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A histogram written by one worker: counts per bucket (not cumulative; the snapshot
/// sums them up), the sum in microseconds, and the count in the last (+Inf) slot.
#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; HANDSHAKE_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, secs: f64) {
        let i = HANDSHAKE_BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(HANDSHAKE_BUCKETS.len());
        bump(&self.buckets[i], 1);
        bump(&self.sum_micros, (secs * 1e6) as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Regression: neighbouring workers' `WorkerStats` shared cache lines (false sharing)
    /// while a comment said the line was never contended.
    #[test]
    fn each_workers_stats_own_whole_128_byte_blocks() {
        assert_eq!(std::mem::align_of::<WorkerStats>(), 128);
        assert_eq!(std::mem::size_of::<WorkerStats>() % 128, 0);
        // Allocated the way `lib.rs` does, back to back: no two share a 128-byte block.
        let w: Vec<Arc<WorkerStats>> = (0..4).map(|_| Arc::default()).collect();
        let mut blocks: Vec<usize> = w.iter().map(|s| Arc::as_ptr(s) as usize).collect();
        assert!(blocks.iter().all(|&a| a % 128 == 0), "{blocks:x?}");
        blocks.sort_unstable();
        assert!(
            blocks
                .windows(2)
                .all(|p| p[1] - p[0] >= std::mem::size_of::<WorkerStats>()),
            "{blocks:x?}"
        );
    }

    #[test]
    fn summary_sums_workers_and_measures_spread() {
        let w: Vec<Arc<WorkerStats>> = (0..2).map(|_| Arc::default()).collect();
        assert_eq!(summary(&w), "open 0 (0 0), accepted 0 (0 0), spread 1.00");
        let guards: Vec<_> = (0..3).map(|_| w[0].track()).chain([w[1].track()]).collect();
        assert_eq!(summary(&w), "open 4 (3 1), accepted 4 (3 1), spread 1.50");
        drop(guards);
        assert_eq!(summary(&w), "open 0 (0 0), accepted 4 (3 1), spread 1.50");
        w[0].count(Event::KeepalivePing);
        w[1].count(Event::KeepalivePing);
        w[1].rejected(Rejected::BackendFailed);
        assert_eq!(
            summary(&w),
            "open 0 (0 0), accepted 4 (3 1), spread 1.50; pings 2, 502 1"
        );
    }
}
