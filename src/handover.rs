//! Zero-downtime binary upgrade: a new wslb process takes over the listening sockets of the
//! running one, which then drains.
//!
//! As in Envoy's hot restart and Pingora's upgrade, the listening sockets themselves move
//! (their descriptors, over a Unix socket with SCM_RIGHTS), so their accept queues stay
//! where they are and no connection attempt is refused or reset during the switch:
//! 1. A wslb with `upgrade_socket` set listens on that Unix socket ([`offer`]).
//! 2. `wslb run --takeover` (same config, new binary) connects and says hello
//!    ([`take_over`]); the old process answers with its listening sockets' descriptors and
//!    keeps accepting meanwhile.
//! 3. The new process starts its workers on those sockets and says `ready`
//!    ([`Takeover::ready`]). From then on both accept from the same queues, until the old
//!    process's accept loops are cancelled (its sockets stay open: the new process uses
//!    them). The old process answers `draining`, drains as on SIGTERM (grace, then close
//!    1001 to whoever is left) and exits 0.
//! 4. The new process binds the upgrade socket itself, for the next upgrade.
//!
//! If the new process fails before `ready` (bad config, crash), the old one logs it and
//! keeps serving as if nothing had happened.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

const HELLO: &str = "wslb-takeover 1\n";
const READY: &str = "ready\n";
const DRAINING: &str = "draining\n";
/// Time the new process gets from hello to ready (starting workers, io_uring rings).
const STARTUP: Duration = Duration::from_secs(30);
/// More listening sockets than this is not a wslb (one per worker, at most 1024).
const MAX_FDS: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error(
        "no wslb to take over at {path}: {source} (is the old one running with this upgrade_socket?)"
    )]
    Connect { path: PathBuf, source: io::Error },
    #[error("upgrade socket {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("upgrade socket {path}: {what}")]
    Protocol { path: PathBuf, what: String },
    #[error(
        "upgrade socket {path} belongs to a running wslb; start the new one with --takeover to replace it"
    )]
    InUse { path: PathBuf },
}

/// The new process's side, between receiving the sockets and saying ready.
#[derive(Debug)]
pub struct Takeover {
    stream: UnixStream,
    path: PathBuf,
}

/// Connects to the running wslb at `path` and receives its listening sockets, in worker
/// order.
pub fn take_over(path: &Path) -> Result<(Vec<TcpListener>, Takeover), HandoverError> {
    let err = |source| HandoverError::Io {
        path: path.into(),
        source,
    };
    let mut stream = UnixStream::connect(path).map_err(|source| HandoverError::Connect {
        path: path.into(),
        source,
    })?;
    stream.set_read_timeout(Some(STARTUP)).map_err(err)?;
    stream.write_all(HELLO.as_bytes()).map_err(err)?;
    let (line, fds) = recv_fds(&stream).map_err(err)?;
    let protocol = |what: String| HandoverError::Protocol {
        path: path.into(),
        what,
    };
    let n: usize = line
        .strip_prefix("listeners ")
        .and_then(|n| n.trim_end().parse().ok())
        .ok_or_else(|| protocol(format!("unexpected answer {line:?}")))?;
    if fds.len() != n || n == 0 {
        return Err(protocol(format!(
            "announced {n} listening sockets, received {}",
            fds.len()
        )));
    }
    let listeners: Vec<TcpListener> = fds.into_iter().map(TcpListener::from).collect();
    for l in &listeners {
        let sock = socket2::SockRef::from(l);
        let listening = sock.is_listener().unwrap_or(false);
        if !listening || l.local_addr().is_err() {
            return Err(protocol(
                "received a descriptor that is not a listening TCP socket".into(),
            ));
        }
    }
    Ok((
        listeners,
        Takeover {
            stream,
            path: path.into(),
        },
    ))
}

impl Takeover {
    /// Tells the old process the new one serves; it stops accepting and drains.
    pub fn ready(mut self) -> Result<(), HandoverError> {
        let err = |source| HandoverError::Io {
            path: self.path.clone(),
            source,
        };
        self.stream.write_all(READY.as_bytes()).map_err(err)?;
        let answer = read_line(&mut self.stream).map_err(err)?;
        if answer != DRAINING {
            return Err(HandoverError::Protocol {
                path: self.path.clone(),
                what: format!("the old process answered {answer:?} to ready"),
            });
        }
        Ok(())
    }
}

/// Binds the upgrade socket at `path`, replacing a stale file (nobody accepting behind it)
/// but never a live wslb's socket.
pub fn bind(path: &Path) -> Result<UnixListener, HandoverError> {
    let err = |source| HandoverError::Io {
        path: path.into(),
        source,
    };
    match UnixListener::bind(path) {
        Ok(l) => return Ok(l),
        Err(e) if e.kind() != io::ErrorKind::AddrInUse => return Err(err(e)),
        Err(_) => {}
    }
    if UnixStream::connect(path).is_ok() {
        return Err(HandoverError::InUse { path: path.into() });
    }
    std::fs::remove_file(path).map_err(err)?;
    UnixListener::bind(path).map_err(err)
}

/// After a takeover: replaces the old process's upgrade socket file (the old process may
/// still hold it open for a moment) with this process's own, for the next upgrade.
pub fn rebind(path: &Path) -> Result<UnixListener, HandoverError> {
    let _ = std::fs::remove_file(path);
    bind(path)
}

/// The old process's side: offers `listeners` (duplicates of the workers' sockets) on
/// `upgrade` until a new process has taken them and said ready; then runs `on_handover`
/// (which starts the drain) and stops offering.
pub fn offer(
    upgrade: UnixListener,
    listeners: Vec<TcpListener>,
    on_handover: impl FnOnce() + Send + 'static,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name("wslb-upgrade".into())
        .spawn(move || {
            for stream in upgrade.incoming() {
                let result = stream.and_then(|s| hand_over(s, &listeners));
                match result {
                    Ok(true) => {
                        tracing::info!(
                            "binary upgrade: a new wslb took over the listening sockets; draining"
                        );
                        on_handover();
                        return;
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!("binary upgrade attempt failed, still serving: {e}"),
                }
            }
        })
        .map(|_| ())
}

/// One takeover attempt: `Ok(true)` once the new process said ready.
fn hand_over(mut s: UnixStream, listeners: &[TcpListener]) -> io::Result<bool> {
    s.set_read_timeout(Some(STARTUP))?;
    let hello = read_line(&mut s)?;
    if hello != HELLO {
        tracing::warn!("upgrade socket: unexpected hello {hello:?}; ignored");
        return Ok(false);
    }
    let fds: Vec<RawFd> = listeners.iter().map(|l| l.as_raw_fd()).collect();
    let line = format!("listeners {}\n", fds.len());
    sendmsg::<()>(
        s.as_raw_fd(),
        &[IoSlice::new(line.as_bytes())],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(io::Error::from)?;
    tracing::info!(
        "binary upgrade: sent {}; waiting for the new process",
        crate::config::count(fds.len(), "listening socket")
    );
    match read_line(&mut s) {
        Ok(l) if l == READY => {
            s.write_all(DRAINING.as_bytes())?;
            Ok(true)
        }
        Ok(l) => {
            tracing::warn!("binary upgrade: the new process answered {l:?}; still serving");
            Ok(false)
        }
        Err(e) => {
            tracing::warn!("binary upgrade: the new process never said ready ({e}); still serving");
            Ok(false)
        }
    }
}

/// Receives one line and the descriptors sent with it.
fn recv_fds(s: &UnixStream) -> io::Result<(String, Vec<OwnedFd>)> {
    let mut buf = [0u8; 64];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (n, raw) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            s.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        let mut raw = Vec::new();
        for c in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                raw.extend(fds);
            }
        }
        (msg.bytes, raw)
    };
    let fds = raw.into_iter().map(owned).collect();
    let mut line = String::from_utf8_lossy(&buf[..n]).into_owned();
    // The rest of the line, if it came in pieces.
    let mut s = s;
    while !line.ends_with('\n') && line.len() < 64 {
        line.push_str(&read_line(&mut s)?);
    }
    Ok((line, fds))
}

#[allow(unsafe_code)]
fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: a descriptor received with SCM_RIGHTS is a new descriptor of this process
    // that nothing else refers to; wrapping it once makes it closed exactly once.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Reads up to and including a newline (at most 64 bytes).
fn read_line(s: &mut impl Read) -> io::Result<String> {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while out.len() < 64 {
        if s.read(&mut b)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        out.push(b[0]);
        if b[0] == b'\n' {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_sockets_move_to_the_taker_and_a_stale_socket_file_is_replaced() {
        let dir = std::env::temp_dir().join(format!("wslb-handover-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("upgrade.sock");
        drop(UnixListener::bind(&path).unwrap()); // a stale file left by a dead process
        let upgrade = bind(&path).unwrap();
        assert!(matches!(bind(&path), Err(HandoverError::InUse { .. })));

        let listeners = crate::listener::bind("127.0.0.1:0".parse().unwrap(), 2, 16).unwrap();
        let addr = listeners[0].local_addr().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        offer(upgrade, listeners, move || tx.send(()).unwrap()).unwrap();
        let (taken, takeover) = take_over(&path).unwrap();
        assert_eq!(taken.len(), 2);
        assert!(taken.iter().all(|l| l.local_addr().unwrap() == addr));
        assert!(rx.try_recv().is_err(), "not handed over before ready");
        takeover.ready().unwrap();
        rx.recv_timeout(Duration::from_secs(2)).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
