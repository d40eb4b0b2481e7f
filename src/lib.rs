//! wslb: a WebSocket load balancer for Linux, one pinned io_uring runtime per core.
//!
//! # Layout
//! One connection meets the files in this order:
//!
//! ```text
//!  client ──TCP──> listener.rs    SO_REUSEPORT socket per worker (worker.rs: pinned thread,
//!                    │            monoio runtime on io_uring, epoll fallback), accept loop;
//!                    │            admission: the instance's limit, the client's (per_ip/)
//!                    ▼
//!                tls/             with [tls]: the handshake (rustls, unbuffered), then a
//!                    │            stream of two halves (tls/stream.rs)
//!                    ▼
//!                connection.rs    one connection's life, top to bottom, generic over the
//!                    │            client's stream (stream.rs: plain TCP or TLS):
//!                    │  handshake.rs   parse + validate the Upgrade (httparse), rewrite it
//!                    │                 (handshake/target.rs: the target's forms, RFC 9112)
//!                    │  balancer/      the snapshot's selector picks (selection/: one file
//!                    │                 per algorithm, asked with a key from the request),
//!                    │                 then failover
//!                    │  handshake.rs   forward to the backend (over TLS for wss://
//!                    │                 backends, tls/client.rs), relay its 101
//!                    ▼
//!                relay/           mod.rs: run; two pumps (pump.rs: wait, read with
//!                    │            io_uring, walk frame headers with frame/, write the same
//!                    │            bytes on); close.rs: close state, wslb's own frames,
//!                    ▼            teardown; link.rs: what the pumps share, one close deadline
//!  backend <──TCP──┘
//! ```
//!
//! `config.rs` turns the TOML file and flags into validated `Settings`; `buffers.rs` is
//! each worker's pool of relay buffers (an idle connection holds none); `balancer/health.rs`
//! checks backends from one thread, probing them concurrently; `relay/registry.rs` is each
//! worker's registry of open relays (keepalive pings and idle closes from one timer per
//! worker, and the relays to wake for a drain or a retired backend); `metrics/` keeps
//! per-worker counters, sums them into a snapshot when read, and renders it for Prometheus;
//! `admin/` serves that snapshot, readiness and the status page from a thread of its own;
//! `access_log.rs` writes one line per finished connection; `echo.rs` is the built-in echo
//! backend used by tests, benches and `wslb demo`; `snapshot.rs` is how a value the control
//! plane replaces whole (a pool's backends, the route table, the TLS server config) reaches
//! each worker's cached copy.
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
