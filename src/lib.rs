//! wslb: a WebSocket load balancer for Linux, one pinned io_uring runtime per core.
//!
//! # Layout
//! One connection meets the files in this order:
//!
//! ```text
//!  client ──TCP──> listener.rs    SO_REUSEPORT socket per worker, accept loop; admission:
//!                    │            the instance's limit, the client's (per_ip/)
//!                    ▼
//!                tls/             with [tls]: the handshake (rustls, unbuffered), then a
//!                    │            stream of two halves
//!                    ▼
//!                connection.rs    one connection's life, generic over the client's stream
//!                    │            (stream.rs): read a head, parse it once (handshake.rs),
//!                    │            classify it: an upgrade or a plain request
//!                    ▼
//!                dispatch.rs      the steps that decide a request: its route (routes.rs),
//!                    │            the pick (balancer/: the snapshot's selector, one file per
//!                    │            algorithm in selection/, or the sticky cookie's backend),
//!                    │            or a Refusal (outcome.rs: status, metric, log outcome)
//!                    ▼
//!                dial.rs          connect with failover, typed errors (TCP; TLS for wss://)
//!                    │
//!          ┌─────────┴─────────┐
//!          ▼                   ▼
//!     upgrade.rs          http/            siblings: forward the upgrade and relay the 101,
//!          │                               or proxy a plain request (keep-alive, bodies
//!          ▼                               streamed; framing.rs parses, body.rs moves)
//!     relay/              mod.rs: run; two pumps (pump.rs: wait, receive through the
//!          │              worker's io_uring ring (recv_ring/), walk frame headers with
//!          │              frame.rs, write the same bytes on); close.rs: wslb's own frames,
//!          ▼              teardown; link.rs: what the pumps share, one close deadline
//!  backend <──TCP──┘
//! ```
//!
//! Every way a connection ends before its relay is one `outcome::Ended`, recorded once in
//! connection.rs (counters, access log, log line).
//!
//! # Layers
//! A module imports only what sits below it (`.ci/cycles.py` fails CI on a cycle):
//!
//! ```text
//!  supervise, instance, reload, drain, handover, admin, echo    wiring and control
//!  connection, upgrade, http, dispatch, dial, outcome,          one connection's life
//!    listener, worker, relay, recv_ring, buffers
//!  routes, balancer, tls, per_ip, access_log, stream, control   policy and its snapshots
//!  metrics, snapshot, utc                                       counters, publication
//!  frame, handshake, proxy_proto                                pure protocol cores, fuzzed
//!  config                                                       data: parse and validate
//! ```
//!
//! `config/` turns the TOML file and flags into validated `Settings` (data only: certificates
//! are loaded by `tls::load`); `worker.rs` is a pinned thread's monoio runtime (io_uring,
//! epoll fallback) and `WorkerEnv`, what its connections share (the relays get only a
//! narrow `relay::Context`); `buffers.rs` is each worker's pool of relay buffers (an idle
//! connection holds none); `balancer/health.rs` checks backends from one thread, probing
//! them concurrently; `relay/registry.rs` is each worker's registry of open relays
//! (keepalive pings and idle closes from one timer per worker, and the relays to wake for a
//! drain or a retired backend); `metrics/` keeps per-worker counters, sums them into a
//! snapshot when read, and renders it for Prometheus; `admin/` serves that snapshot,
//! readiness and the status page from a thread of its own; `access_log.rs` writes one line
//! per finished connection or plain request; `echo.rs` is the built-in echo backend used by
//! tests, benches and `wslb demo`; `snapshot.rs` is how a value the control plane replaces
//! whole (a pool's backends, the route table, the TLS server config) reaches each worker's
//! cached copy.
//!
//! # Lifecycle and control
//! `instance.rs` starts an [`Instance`] (the balancer) and gives out its [`Handle`]; drop
//! the instance and its threads stop. Drain (`drain.rs`), reload (`reload.rs`) and stop
//! reach the workers as messages (`control.rs`) that wake each worker's control task
//! (`worker::obey`); nothing polls a flag. `supervise.rs` is `wslb run`: signals, reload on
//! SIGHUP, drain on SIGTERM/SIGINT, and the binary upgrade (`handover.rs`).
#![deny(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod balancer;
pub mod buffers;
pub mod config;
pub mod connection;
pub mod control;
pub mod dial;
pub mod dispatch;
pub mod drain;
pub mod echo;
pub mod frame;
pub mod handover;
pub mod handshake;
pub mod http;
pub mod instance;
pub mod listener;
pub mod metrics;
pub mod outcome;
pub mod per_ip;
pub mod proxy_proto;
pub mod recv_ring;
pub mod relay;
pub mod reload;
pub mod routes;
pub mod snapshot;
pub mod stream;
pub mod supervise;
pub mod tls;
pub mod upgrade;
mod utc;
pub mod worker;

pub use instance::{EchoServer, Handle, Instance};
