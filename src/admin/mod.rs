//! The admin HTTP server (`/metrics`, `/healthz`, `/readyz`, `/backends`, `/stats.json`
//! and the status page at `/`), on a thread and runtime of its own, off the relay's cores.
//!
//! `http.rs` parses request heads and encodes responses (pure), `routes.rs` answers each
//! path from the instance's [`AdminView`], `status.html` is the page. This file owns the
//! thread, the accept loop, each connection's read-answer loop and the stop.
//!
//! The runtime is monoio's legacy (epoll) driver, whatever the workers use: a few scrapes
//! and page polls a second gain nothing from io_uring, and epoll costs no ring (no locked
//! memory, no kernel SQ/CQ pages) and works where io_uring is blocked (seccomp, gVisor,
//! `io_uring_disabled`), where health checks and scrapes must still answer. It also makes
//! `select!` between an accept and the stop message cancel-safe: on epoll a dropped accept
//! has no operation left in the kernel that could complete into a lost connection.
//!
//! The server has no authentication: [`check_listen`] keeps it on loopback unless the
//! operator says otherwise.

mod http;
mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};
use monoio::time::Instant;
use monoio::{LegacyDriver, RuntimeBuilder};

use http::{HEAD_MAX, Response};

/// What the admin server asks of the running instance.
pub trait AdminView: Send + Sync + 'static {
    fn snapshot(&self) -> crate::metrics::Snapshot;
    /// Ok when accepting and at least one backend is up; Err(reason) while draining or
    /// with every backend down.
    fn ready(&self) -> Result<(), String>;
}

/// Checks an admin listen address: non-loopback is refused (the admin server has no
/// authentication) unless `allow_remote`.
pub fn check_listen(addr: SocketAddr, allow_remote: bool) -> Result<(), String> {
    // `to_canonical`: ::ffff:127.0.0.1 is loopback too.
    if allow_remote || addr.ip().to_canonical().is_loopback() {
        Ok(())
    } else {
        Err(format!(
            "admin listen {addr} is not a loopback address: the admin server has no \
             authentication, so it listens on 127.0.0.1 or ::1 unless remote access is \
             allowed explicitly"
        ))
    }
}

/// A request head must be complete this long after the server starts waiting for it (a
/// fresh connection's first request, or a kept-alive connection's next one): slow or
/// silent clients are dropped, and an idle keep-alive connection lasts this long. The
/// status page polls every second, so its connection stays warm.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// A response must be written within this (a client that stops reading is dropped).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Admin connections open at once; past it new ones are closed at once. A scraper, a few
/// browsers and a load balancer's health checks use a handful; the bound caps the
/// server's memory (one `HEAD_MAX` buffer each) when something floods the port.
const MAX_CONNECTIONS: usize = 64;

/// The running server: [`AdminServer::local_addr`]; dropping it stops the server's thread
/// (its listener and every connection close) and joins it.
pub struct AdminServer {
    local_addr: SocketAddr,
    /// Never sent on: dropping it is the stop message. Every task of the server awaits the
    /// receiver, which wakes the admin runtime from this thread (monoio's `sync` feature:
    /// a cross-thread wake unparks the driver through its eventfd).
    stop: Option<flume::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl AdminServer {
    /// The address actually bound (the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the admin server on its own thread with its own monoio runtime (epoll: see the
/// module notes). Returns once bound; the address is not checked here (see
/// [`check_listen`]).
pub fn spawn(listen: SocketAddr, view: Arc<dyn AdminView>) -> std::io::Result<AdminServer> {
    // Bound here, on the caller's thread, so a taken port is the caller's error at once.
    spawn_on(std::net::TcpListener::bind(listen)?, view)
}

/// [`spawn`] on a listening socket the caller bound (the instance binds it as it binds its
/// own listeners: see `listener::bind` and, for a binary upgrade, `bind_shared`).
pub fn spawn_on(
    listener: std::net::TcpListener,
    view: Arc<dyn AdminView>,
) -> std::io::Result<AdminServer> {
    // epoll readiness: an accept must return EAGAIN rather than block the runtime.
    listener.set_nonblocking(true)?;
    let local_addr = listener.local_addr()?;
    let (stop, stopped) = flume::bounded::<()>(1);
    let (started_tx, started) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("wslb-admin".into())
        .spawn(move || {
            let built = RuntimeBuilder::<LegacyDriver>::new().enable_timer().build();
            let mut rt = match built {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = started_tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                };
                let _ = started_tx.send(Ok(()));
                serve(listener, view, stopped).await;
            });
        })?;
    let server = AdminServer {
        local_addr,
        stop: Some(stop),
        thread: Some(thread),
    };
    match started.recv() {
        Ok(Ok(())) => {
            tracing::info!("admin server on http://{local_addr}/");
            Ok(server)
        }
        // Dropping `server` joins the thread, which has returned.
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::other(
            "the admin thread died while starting",
        )),
    }
}

/// Accepts until the stop message, then waits for every connection's task to end (each
/// sees the same message).
async fn serve(listener: TcpListener, view: Arc<dyn AdminView>, stop: flume::Receiver<()>) {
    let mut conns: Vec<monoio::task::JoinHandle<()>> = Vec::new();
    loop {
        let accepted = monoio::select! {
            _ = stop.recv_async() => break,
            a = listener.accept() => a,
        };
        conns.retain(|c| !c.is_finished());
        match accepted {
            Ok((stream, _)) if conns.len() >= MAX_CONNECTIONS => {
                tracing::debug!("admin: {MAX_CONNECTIONS} connections open; closing a new one");
                drop(stream);
            }
            Ok((stream, _)) => {
                let (view, stop) = (view.clone(), stop.clone());
                conns.push(monoio::spawn(async move {
                    monoio::select! {
                        _ = stop.recv_async() => {}
                        _ = connection(stream, &*view) => {}
                    }
                }));
            }
            Err(e) => {
                // Out of descriptors or memory: retry in a while (the stop still ends the
                // wait at once), as the workers' accept loops do.
                tracing::warn!("admin: accept failed: {e}");
                monoio::select! {
                    _ = stop.recv_async() => break,
                    _ = monoio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
    drop(listener);
    for c in conns {
        c.await;
    }
}

/// One connection: read a head, answer it, and again while the client keeps it alive.
async fn connection(mut stream: TcpStream, view: &dyn AdminView) {
    // Holds one head and the start of a pipelined next one; `HEAD_MAX` bounds both.
    let mut buf = Vec::with_capacity(HEAD_MAX);
    loop {
        let deadline = Instant::now() + HEAD_TIMEOUT;
        let head = loop {
            match http::parse(&buf) {
                Ok(Some(head)) => break Ok(head),
                Err(status) => break Err(status),
                Ok(None) => {}
            }
            let len = buf.len();
            // epoll: the read borrows the spare capacity only during the syscall. On a
            // timeout the future and the buffer drop together, and the connection ends.
            let read = stream.read(buf.slice_mut(len..HEAD_MAX));
            let Ok((res, slice)) = monoio::time::timeout_at(deadline, read).await else {
                if len > 0 {
                    // Part of a request came: say why it ends. An idle keep-alive just
                    // closes.
                    write(
                        &mut stream,
                        Response::text(408, "request timeout").encode(true),
                    )
                    .await;
                }
                return;
            };
            buf = slice.into_inner();
            match res {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        let head = match head {
            Ok(head) => head,
            Err(status) => {
                let refusal = Response::text(status, http::reason(status)).encode(true);
                if write(&mut stream, refusal).await {
                    linger(stream, buf).await;
                }
                return;
            }
        };
        buf.drain(..head.len);
        let response = routes::answer(&head, view).encode(head.close);
        if !write(&mut stream, response).await || head.close {
            return;
        }
    }
}

/// Closing a socket with unread input resets the connection, and the reset can destroy
/// the refusal just sent before the client reads it (a head over `HEAD_MAX` leaves its
/// tail unread). So, like nginx's lingering close: shut down our side, then read and
/// discard what the client still sends until it closes, at most 64 KiB within 2 s.
async fn linger(mut stream: TcpStream, mut buf: Vec<u8>) {
    const LINGER_BYTES: usize = 64 * 1024;
    const LINGER_TIME: Duration = Duration::from_secs(2);
    if stream.shutdown().await.is_err() {
        return;
    }
    let discard = async {
        let mut left = LINGER_BYTES;
        while left > 0 {
            buf.clear();
            let (res, b) = stream.read(buf).await;
            buf = b;
            match res {
                Ok(n) if n > 0 => left = left.saturating_sub(n),
                _ => return,
            }
        }
    };
    let _ = monoio::time::timeout(LINGER_TIME, discard).await;
}

/// Writes all of `bytes` within [`WRITE_TIMEOUT`]; false if the client is gone or slow.
async fn write(stream: &mut TcpStream, bytes: Vec<u8>) -> bool {
    matches!(
        monoio::time::timeout(WRITE_TIMEOUT, stream.write_all(bytes)).await,
        Ok((Ok(_), _))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_only_unless_allowed() {
        for ok in [
            "127.0.0.1:9091",
            "127.0.0.2:80",
            "[::1]:9091",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert_eq!(check_listen(ok.parse().unwrap(), false), Ok(()), "{ok}");
        }
        for remote in [
            "0.0.0.0:9091",
            "[::]:9091",
            "10.0.0.1:9091",
            "192.168.1.2:80",
        ] {
            let addr = remote.parse().unwrap();
            let err = check_listen(addr, false).unwrap_err();
            assert!(err.contains(remote) && err.contains("loopback"), "{err}");
            assert_eq!(check_listen(addr, true), Ok(()), "{remote}");
        }
    }
}
