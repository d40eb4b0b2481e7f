//! One SO_REUSEPORT listening socket per worker on the same address, and the accept loop.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

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

fn socket(addr: SocketAddr) -> io::Result<Socket> {
    Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
}

/// Accepts forever, spawning `serve` for each connection on this worker's runtime.
/// Errors never stop the loop: out of descriptors (EMFILE/ENFILE) or memory backs off for
/// 100 ms with one warning per episode instead of spinning; other errors (a client that
/// reset while queued) are skipped.
pub async fn accept_loop<F, Fut>(listener: monoio::net::TcpListener, serve: F)
where
    F: Fn(monoio::net::TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let mut starved = false;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                starved = false;
                // Frames are written whole; Nagle would hold small ones back waiting for ACKs.
                let _ = stream.set_nodelay(true);
                monoio::spawn(serve(stream, peer));
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
    fn second_instance_is_refused() {
        let first = bind("127.0.0.1:0".parse().unwrap(), 2, 16).unwrap();
        let addr = first[0].local_addr().unwrap();
        match bind(addr, 2, 16) {
            Err(BindError::InUse { addr: a }) => assert_eq!(a, addr),
            other => panic!("expected InUse, got {other:?}"),
        }
    }
}
