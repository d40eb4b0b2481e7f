//! One SO_REUSEPORT listening socket per worker on the same address, and the accept loop.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRentExt, CancelHandle};

use socket2::{Domain, Protocol, Socket, Type};

use crate::outcome::Refusal;
use crate::per_ip::{self, PerIp};

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(
        "{addr} is already in use (another wslb, or another program, is listening there); \
         refusing to share it through SO_REUSEPORT"
    )]
    InUse { addr: SocketAddr },
    #[error("cannot listen on {addr}: {source}")]
    Io { addr: SocketAddr, source: io::Error },
}

/// Binds `n` listening sockets to `addr` with SO_REUSEPORT, so the kernel spreads incoming
/// connections over the workers without any user-space hand-off.
///
/// SO_REUSEPORT would also let a second wslb started by mistake on the same port silently
/// take half the connections; so when the port is fixed, a probe bind *without* SO_REUSEPORT
/// first checks that nobody listens there. With port 0, the first socket picks a free port
/// and the others join it.
pub fn bind(
    addr: SocketAddr,
    n: usize,
    backlog: u32,
) -> Result<Vec<std::net::TcpListener>, BindError> {
    let io_err = |source| BindError::Io { addr, source };
    if addr.port() != 0 {
        let probe = socket(addr).map_err(io_err)?;
        // SO_REUSEADDR alone tolerates our own old TIME_WAIT connections but not a listener.
        probe.set_reuse_address(true).map_err(io_err)?;
        match probe.bind(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                return Err(BindError::InUse { addr });
            }
            Err(e) => return Err(io_err(e)),
        }
    }
    bind_shared(addr, n, backlog)
}

/// [`bind`] without the probe: joins a port another wslb listens on with SO_REUSEPORT.
/// Only for a binary upgrade, where the old process still holds the port (its admin
/// listener) until it exits.
pub fn bind_shared(
    addr: SocketAddr,
    n: usize,
    backlog: u32,
) -> Result<Vec<std::net::TcpListener>, BindError> {
    let io_err = |source| BindError::Io { addr, source };
    let mut bound = addr;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let s = socket(bound).map_err(io_err)?;
        s.set_reuse_address(true).map_err(io_err)?;
        s.set_reuse_port(true).map_err(io_err)?;
        s.set_tcp_nodelay(true).map_err(io_err)?;
        s.bind(&bound.into()).map_err(|e| match e.kind() {
            io::ErrorKind::AddrInUse => BindError::InUse { addr },
            _ => io_err(e),
        })?;
        s.listen(backlog.min(i32::MAX as u32) as i32)
            .map_err(io_err)?;
        s.set_nonblocking(true).map_err(io_err)?;
        if bound.port() == 0 {
            bound = s
                .local_addr()
                .map_err(io_err)?
                .as_socket()
                .expect("an inet socket has an inet address");
        }
        out.push(s.into());
    }
    Ok(out)
}

/// Sets `TCP_DEFER_ACCEPT` on the balancer's listening sockets: the kernel completes an
/// accept only once the client's first bytes (its request, or its TLS ClientHello) have
/// arrived, so the accept and the first read complete together instead of the read
/// waiting for a readiness event, and a client that connects and says nothing stays a
/// request socket in the kernel (no descriptor, no task) until `secs` pass. Clients of a
/// WebSocket balancer always speak first. `None` clears it (`defer_accept = false`).
#[allow(unsafe_code)]
pub fn defer_accept(listeners: &[std::net::TcpListener], secs: Option<u32>) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let secs = secs.unwrap_or(0).min(i32::MAX as u32) as libc::c_int;
    for l in listeners {
        // SAFETY: an int option on a listening socket we own, passed by pointer and size.
        let r = unsafe {
            libc::setsockopt(
                l.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                (&raw const secs).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn socket(addr: SocketAddr) -> io::Result<Socket> {
    Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
}

/// The instance-wide cap on concurrent connections (`limits.max_connections`), the
/// instance's count of open connections, which a drain waits on, and the per-client limits
/// (`per_ip/`).
///
/// Shared by all workers: one `fetch_add` and one `fetch_sub` per connection (never per
/// frame), the second deliberate cross-core write on the connection path after the
/// round-robin counter. A per-worker share of the limit would avoid it, but would refuse
/// clients on one worker while another still has room.
#[derive(Debug)]
pub struct ConnectionLimit {
    open: AtomicUsize,
    max: usize,
    /// Refusing right now: the warning is logged once per episode, not per client.
    refusing: AtomicBool,
    /// Clients refused at the limit since start (`wslb_connections_rejected_total{reason=
    /// "limit"}`): written only when refusing, so it adds no write to an admitted
    /// connection.
    refused: std::sync::atomic::AtomicU64,
    /// Notified each time `open` drops to 0, for [`Self::wait_idle`]. The lock is taken
    /// only then (per connection at most, never per frame), so that a waiter that saw
    /// connections open cannot miss the last one closing.
    idle: (Mutex<()>, Condvar),
    per_ip: PerIp,
}

impl ConnectionLimit {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            max,
            refusing: AtomicBool::new(false),
            refused: Default::default(),
            idle: Default::default(),
            per_ip: PerIp::new(max),
        })
    }

    pub fn unlimited() -> Arc<Self> {
        Self::new(usize::MAX)
    }

    /// Clients refused at the limit since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The per-client limits, which a reload configures.
    pub fn per_ip(&self) -> &PerIp {
        &self.per_ip
    }

    /// A permit for one more connection from `ip`: under the instance's limit first (a
    /// client refused there is not counted against its own limits), then under the
    /// client's (see `per_ip/`).
    pub fn admit(self: &Arc<Self>, ip: std::net::IpAddr) -> Result<Permit, Refusal> {
        let mut permit = self.try_acquire().ok_or(Refusal::OverLimit)?;
        permit.per_ip = self.per_ip.admit(ip).map_err(|r| match r {
            per_ip::Refusal::Connections => Refusal::PerIpConnections,
            per_ip::Refusal::Rate { retry_after } => Refusal::PerIpRate { retry_after },
        })?;
        Ok(permit)
    }

    /// A permit for one more connection, or `None` at the limit. `Relaxed`: the count
    /// protects no other memory; the limit may be overshot by nothing, since the
    /// increment itself decides.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let before = self.open.fetch_add(1, Ordering::Relaxed);
        if before >= self.max {
            self.open.fetch_sub(1, Ordering::Relaxed);
            self.refused.fetch_add(1, Ordering::Relaxed);
            if !self.refusing.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "connection limit of {} reached; new clients get 503 until some close",
                    self.max
                );
            }
            return None;
        }
        if self.refusing.load(Ordering::Relaxed) {
            self.refusing.store(false, Ordering::Relaxed);
            tracing::info!("below the connection limit again; accepting");
        }
        Some(Permit {
            limit: self.clone(),
            per_ip: per_ip::Counted::default(),
        })
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Blocks until no connection is open, or `until`; returns whether none is.
    pub fn wait_idle(&self, until: Instant) -> bool {
        let (lock, closed) = &self.idle;
        let mut guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        // Checked under the lock that the last `Permit` takes to notify: either the count
        // is seen at 0 here, or the notification comes after the wait began.
        while self.open() > 0 {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            guard = closed
                .wait_timeout(guard, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

/// One connection's place under the [`ConnectionLimit`], and where its client's count
/// holds it, given back on drop. 16 bytes (the slot's index beside the pointer), which
/// make the connection's task 16 B larger, still inside mimalloc's 1,280-byte class
/// (`tests/memory.rs` fails if it leaves it).
#[derive(Debug)]
pub struct Permit {
    limit: Arc<ConnectionLimit>,
    per_ip: per_ip::Counted,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let limit = &self.limit;
        limit.per_ip.release(self.per_ip);
        if limit.open.fetch_sub(1, Ordering::Relaxed) == 1 {
            // The last one: wake a drain waiting for the instance to be idle. Taking the
            // lock orders this after the waiter's check (see `wait_idle`).
            let (lock, closed) = &limit.idle;
            drop(lock.lock().unwrap_or_else(|e| e.into_inner()));
            closed.notify_all();
        }
    }
}

/// Answers a refusal (503, 429) and closes. The write is bounded by a second: a client
/// that does not read must not hold the descriptor the limit is there to protect.
async fn refuse<B: monoio::buf::IoBuf + 'static>(mut stream: monoio::net::TcpStream, answer: B) {
    let _ = monoio::time::timeout(Duration::from_secs(1), stream.write_all(answer)).await;
    // Closing with the client's request unread would send a reset, which can destroy the
    // answer before the client reads it; with TCP_DEFER_ACCEPT the request has always
    // arrived by now. So what came is read (once, briefly) and the close is a FIN.
    let _ = monoio::time::timeout(
        Duration::from_millis(100),
        stream.read(Vec::with_capacity(8192)),
    )
    .await;
}

/// Accepts until `stop` is cancelled (a drain, a handover, the instance stopping), handing
/// each connection to `serve` (which spawns its task on this worker's runtime), or
/// refusing one over `limit`: a 503 answer (429 over a per-client limit), or with
/// `plain_refusal` false (a TLS listener, where a plaintext answer would be garbage to the
/// client, and a TLS handshake to send a real one is the cost the per-client limits are
/// there to spare) a close. Either comes before anything is read. The cancel, from the
/// worker's control task (`worker::obey`), ends a
/// pending accept at once, though the socket itself may stay open (a new process accepts
/// on it after a handover); an accept that completes before the cancel is served as usual.
/// No other error stops the loop: out of descriptors (EMFILE/ENFILE) or memory backs off for
/// 100 ms with one warning per episode instead of spinning; other errors (a client that
/// reset while queued) are skipped.
pub async fn accept_loop<F>(
    listener: monoio::net::TcpListener,
    limit: Arc<ConnectionLimit>,
    stop: CancelHandle,
    plain_refusal: bool,
    serve: F,
) where
    F: Fn(monoio::net::TcpStream, SocketAddr, Permit),
{
    let mut starved = false;
    loop {
        // Once cancelled, the handle fails every later accept at once with ECANCELED, so a
        // cancel that arrives while this loop sleeps or serves is not missed either.
        match listener.cancelable_accept(stop.clone()).await {
            Ok((stream, peer)) => {
                starved = false;
                // Frames are written whole; Nagle would hold small ones back waiting for ACKs.
                let _ = stream.set_nodelay(true);
                match limit.admit(peer.ip()) {
                    Ok(permit) => serve(stream, peer, permit),
                    Err(_) if !plain_refusal => drop(stream),
                    Err(refusal) => {
                        monoio::spawn(refuse(stream, refusal.response().into_owned()));
                    }
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => {
                tracing::debug!("accept loop ends: stopped accepting");
                return;
            }
            // Not listening any more: a drain shut the socket down (it does so right after
            // telling the workers to stop accepting, and on epoll this error can come back
            // before the worker's control task has run). Nothing more can be accepted.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::debug!("accept loop ends: the listening socket was shut down");
                return;
            }
            Err(e) if is_resource_exhaustion(&e) => {
                if !starved {
                    tracing::warn!("accept: {e}; backing off until resources free up");
                    starved = true;
                }
                monoio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => tracing::debug!("accept: {e}"),
        }
    }
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_gives_all_workers_the_same_port() {
        let ls = bind("127.0.0.1:0".parse().unwrap(), 3, 16).unwrap();
        let ports: Vec<_> = ls.iter().map(|l| l.local_addr().unwrap().port()).collect();
        assert!(
            ports[0] != 0 && ports.iter().all(|&p| p == ports[0]),
            "{ports:?}"
        );
    }

    #[test]
    fn limit_counts_permits_and_refuses_past_the_max() {
        let l = ConnectionLimit::new(2);
        let a = l.try_acquire().unwrap();
        let _b = l.try_acquire().unwrap();
        assert!(l.try_acquire().is_none());
        assert_eq!(l.open(), 2, "a refused attempt leaves no trace");
        drop(a);
        assert!(l.try_acquire().is_some());
    }

    #[test]
    fn the_last_permit_wakes_a_waiter() {
        let l = ConnectionLimit::new(2);
        let p = l.try_acquire().unwrap();
        let waiter = {
            let l = l.clone();
            std::thread::spawn(move || l.wait_idle(Instant::now() + Duration::from_secs(30)))
        };
        drop(p);
        assert!(
            waiter.join().unwrap(),
            "woken by the drop, well before the deadline"
        );
        let _open = l.try_acquire().unwrap();
        assert!(
            !l.wait_idle(Instant::now()),
            "the deadline passed with one open"
        );
    }

    #[test]
    fn second_instance_is_refused() {
        let first = bind("127.0.0.1:0".parse().unwrap(), 2, 16).unwrap();
        let addr = first[0].local_addr().unwrap();
        match bind(addr, 2, 16) {
            Err(BindError::InUse { addr: a }) => assert_eq!(a, addr),
            other => panic!("expected InUse, got {other:?}"),
        }
    }
}
