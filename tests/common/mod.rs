//! Test helpers: in-process balancer and backends on 127.0.0.1:0, and a byte-level
//! WebSocket peer (either role) for the cases that need exact bytes on the wire.
#![allow(dead_code)]

pub mod tls;

use std::io::{BufRead, BufReader};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wslb::config::{Config, IoDriver};
use wslb::{EchoServer, Instance};

pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const TIMEOUT: Duration = Duration::from_secs(10);

pub fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("WSLB_LOG")
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
    });
}

pub fn echo() -> EchoServer {
    init_logs();
    EchoServer::start("127.0.0.1:0".parse().unwrap(), 1, IoDriver::Auto).unwrap()
}

/// A balancer on 127.0.0.1:0 with short timeouts; `tweak` adjusts the config further.
pub fn balancer(
    backends: &[SocketAddr],
    workers: usize,
    tweak: impl FnOnce(&mut Config),
) -> Instance {
    init_logs();
    let c = config(backends, workers, tweak);
    Instance::start(c.validate().unwrap()).unwrap()
}

/// The config [`balancer`] starts from (for a test that reloads it, changed).
pub fn config(backends: &[SocketAddr], workers: usize, tweak: impl FnOnce(&mut Config)) -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".into(),
        backends: backends.iter().map(|b| b.to_string().into()).collect(),
        workers,
        ..Config::default()
    };
    c.timeouts.backend_connect_ms = 1000;
    c.timeouts.close_grace_ms = 2000;
    // Active health checks connect to the backends on their own; tests that count
    // connections or script one accept turn them on only where they test them.
    c.health.enabled = false;
    // Many balancers run at once in the tests: no admin server unless a test asks.
    c.admin.listen = String::new();
    tweak(&mut c);
    c
}

/// A fresh directory for one test's files (config, sockets) under the system temp dir.
pub fn test_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("wslb-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A port on 127.0.0.1 held for one test: connections to it are refused until someone
/// listens there, and only this test can make that happen.
///
/// The socket is bound and never listens, so a connect gets a reset (refused). It has
/// SO_REUSEADDR and SO_REUSEPORT, so a wslb (balancer, echo backend, the binary: same user,
/// both options too) can bind the port while the reservation is held, and a bind to port 0
/// elsewhere never picks it (the kernel skips ports in use for those). Freeing the port
/// instead (bind, read the port, close) raced with parallel tests: another test's `:0` bind
/// could get the port in between and listen on it.
pub struct Reserved {
    pub addr: SocketAddr,
    _socket: socket2::Socket,
}

/// Reserves a port on 127.0.0.1 (see [`Reserved`]); drop the guard to free it.
pub fn reserve_addr() -> Reserved {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    s.set_reuse_port(true).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    Reserved { addr, _socket: s }
}

/// An address nothing listens on (connections are refused), reserved like
/// [`reserve_addr`] for the rest of the test process (the guard is leaked).
pub fn dead_addr() -> SocketAddr {
    let r = reserve_addr();
    let addr = r.addr;
    std::mem::forget(r);
    addr
}

/// A backend that runs `handler` on its own thread for every accepted, upgraded connection.
pub fn scripted_backend(handler: impl Fn(Peer) + Send + Sync + 'static) -> SocketAddr {
    scripted_backend_raw(move |s| {
        if let Some(p) = Peer::accept(s) {
            handler(p)
        }
    })
}

/// A backend that runs `handler` on its own thread for every accepted TCP connection,
/// with no upgrade done for it.
pub fn scripted_backend_raw(handler: impl Fn(TcpStream) + Send + Sync + 'static) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let handler = std::sync::Arc::new(handler);
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let h = handler.clone();
            std::thread::spawn(move || h(s));
        }
    });
    addr
}

/// Retries the upgrade every 20 ms for up to 2 s until it gets a 101 (a place under the
/// connection limit, a backend back up).
pub fn connect_within_2s(addr: SocketAddr) -> Option<Peer> {
    for _ in 0..100 {
        let mut c = Peer::client(addr);
        c.send_raw(upgrade_request("/").as_bytes());
        if c.read_head().starts_with("HTTP/1.1 101") {
            return Some(c);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A backend that records the code of every close frame it receives and answers it; with
/// `echo`, it also echoes data frames.
pub fn close_recording_backend(
    echo: bool,
) -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<u16>>>) {
    let closes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = closes.clone();
    let addr = scripted_backend(move |mut p| {
        while let Some((fin, op, payload)) = p.recv() {
            if op == 8 {
                seen.lock()
                    .unwrap()
                    .push(u16::from_be_bytes([payload[0], payload[1]]));
                p.send(true, 8, &payload);
                return;
            }
            if echo {
                p.send(fin, op, &payload);
            }
        }
    });
    (addr, closes)
}

pub fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Encodes one frame; `mask` set means client-to-server.
pub fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut v = vec![(fin as u8) << 7 | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        v.push(m | len as u8);
    } else if len < 65536 {
        v.push(m | 126);
        v.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        v.push(m | 127);
        v.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(k) => {
            v.extend_from_slice(&k);
            v.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => v.extend_from_slice(payload),
    }
    v
}

pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// A frame as received: (fin, opcode, unmasked payload).
pub type Frame = (bool, u8, Vec<u8>);

/// One side of a WebSocket connection, byte by byte.
pub struct Peer {
    pub stream: TcpStream,
    /// Client role: masks what it sends.
    client: bool,
    /// Bytes read past a handshake head.
    pending: Vec<u8>,
    /// The request head a server-side peer received.
    pub request: String,
}

impl Peer {
    /// Opens a client connection and completes the upgrade, asserting a 101.
    pub fn connect(addr: SocketAddr) -> Peer {
        let mut p = Peer::client(addr);
        p.stream.write_all(upgrade_request("/").as_bytes()).unwrap();
        let head = p.read_head();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        p
    }

    /// A connected, not yet upgraded, client.
    pub fn client(addr: SocketAddr) -> Peer {
        Self::client_stream(TcpStream::connect(addr).unwrap())
    }

    /// A client connecting from `source` (another loopback address, 127.0.0.2 and up, to
    /// be another client to per-client limits).
    pub fn client_from(source: std::net::IpAddr, addr: SocketAddr) -> Peer {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(&SocketAddr::new(source, 0).into()).unwrap();
        s.connect(&addr.into()).unwrap();
        Self::client_stream(s.into())
    }

    /// Opens a client connection from `source` and completes the upgrade, asserting a 101.
    pub fn connect_from(source: std::net::IpAddr, addr: SocketAddr) -> Peer {
        let mut p = Peer::client_from(source, addr);
        p.stream.write_all(upgrade_request("/").as_bytes()).unwrap();
        let head = p.read_head();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        p
    }

    fn client_stream(stream: TcpStream) -> Peer {
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Peer {
            stream,
            client: true,
            pending: Vec::new(),
            request: String::new(),
        }
    }

    /// Server side: reads the upgrade request and answers 101.
    pub fn accept(stream: TcpStream) -> Option<Peer> {
        stream.set_read_timeout(Some(TIMEOUT)).ok()?;
        let mut p = Peer {
            stream,
            client: false,
            pending: Vec::new(),
            request: String::new(),
        };
        let head = p.read_head();
        let key = head
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))?
            .trim()
            .to_string();
        p.request = head;
        let resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            wslb::handshake::accept_key(key.as_bytes())
        );
        p.stream.write_all(resp.as_bytes()).ok()?;
        Some(p)
    }

    /// Reads an HTTP head (up to CRLFCRLF); keeps any bytes after it.
    pub fn read_head(&mut self) -> String {
        let mut buf = std::mem::take(&mut self.pending);
        loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                self.pending = buf.split_off(i + 4);
                return String::from_utf8_lossy(&buf).into_owned();
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).unwrap_or(0);
            if n == 0 {
                return String::from_utf8_lossy(&buf).into_owned();
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Everything until EOF (for error responses).
    pub fn read_to_end(&mut self) -> String {
        let mut v = std::mem::take(&mut self.pending);
        let _ = self.stream.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    }

    pub fn send(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        let mask = self.client.then_some([0x37, 0xfa, 0x21, 0x3d]);
        self.stream
            .write_all(&frame(fin, opcode, payload, mask))
            .unwrap();
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    fn read_exact(&mut self, n: usize) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(n);
        let take = n.min(self.pending.len());
        out.extend(self.pending.drain(..take));
        let have = out.len();
        out.resize(n, 0);
        self.stream.read_exact(&mut out[have..]).ok()?;
        Some(out)
    }

    /// The next frame, or `None` at EOF/error.
    pub fn recv(&mut self) -> Option<Frame> {
        let h = self.read_exact(2)?;
        let masked = h[1] & 0x80 != 0;
        let len = match h[1] & 0x7f {
            126 => u16::from_be_bytes(self.read_exact(2)?.try_into().unwrap()) as usize,
            127 => u64::from_be_bytes(self.read_exact(8)?.try_into().unwrap()) as usize,
            n => n as usize,
        };
        let mask = if masked {
            Some(self.read_exact(4)?)
        } else {
            None
        };
        let mut payload = self.read_exact(len)?;
        if let Some(k) = mask {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= k[i % 4];
            }
        }
        Some((h[0] & 0x80 != 0, h[0] & 0x0f, payload))
    }

    /// Expects a close frame next and returns (code, reason).
    pub fn expect_close(&mut self) -> (u16, String) {
        let (_, op, p) = self.recv().expect("a close frame, got EOF");
        assert_eq!(op, 8, "expected close, got opcode {op} {p:?}");
        let code = u16::from_be_bytes([p[0], p[1]]);
        (code, String::from_utf8(p[2..].to_vec()).unwrap())
    }

    /// True if the peer closes the TCP connection (EOF or reset) within the read timeout.
    pub fn sees_eof(&mut self) -> bool {
        if !self.pending.is_empty() {
            return false;
        }
        let mut b = [0u8; 64];
        match self.stream.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    }
}

/// Sends a complete echo message through `p` and asserts it comes back identical.
pub fn assert_echo(p: &mut Peer, opcode: u8, payload: &[u8]) {
    p.send(true, opcode, payload);
    let (fin, op, back) = p.recv().expect("echo");
    assert!(fin);
    assert_eq!(op, opcode);
    assert!(
        back == payload,
        "echo differs ({} vs {} bytes)",
        back.len(),
        payload.len()
    );
}

/// Runs the real binary, as a user would, collecting its log.
pub struct Wslb {
    pub child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Wslb {
    /// `wslb run --config <config> <extra...>`.
    ///
    /// Many run at once in the tests, so the admin server is off (`--admin ""`) unless
    /// `extra` names an admin address.
    pub fn start(config: &std::path::Path, extra: &[&str]) -> Wslb {
        let no_admin: &[&str] = if extra.contains(&"--admin") {
            &[]
        } else {
            &["--admin", ""]
        };
        Self::spawn(
            Command::new(env!("CARGO_BIN_EXE_wslb"))
                .args(["run", "--config"])
                .arg(config)
                .args(no_admin)
                .args(extra),
        )
    }

    /// Like `start`, with RLIMIT_NOFILE (soft and hard) set to `nofile` in the child.
    pub fn start_with_nofile(config: &std::path::Path, nofile: u64) -> Wslb {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wslb"));
        cmd.args(["run", "--config"])
            .arg(config)
            .args(["--admin", ""]);
        // SAFETY: setrlimit is async-signal-safe and touches only the child's limits.
        unsafe {
            cmd.pre_exec(move || {
                let rl = libc::rlimit {
                    rlim_cur: nofile,
                    rlim_max: nofile,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Self::spawn(&mut cmd)
    }

    fn spawn(cmd: &mut Command) -> Wslb {
        let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = log.clone();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        Wslb { child, log }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits up to 5 s for a log line containing `text`.
    pub fn wait_for(&self, text: &str) -> String {
        for _ in 0..250 {
            if let Some(l) = self.log.lock().unwrap().iter().find(|l| l.contains(text)) {
                return l.clone();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("no log line with {text:?}: {:#?}", self.log.lock().unwrap());
    }
}

impl Drop for Wslb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Python server from `tests/` (a script that prints its port on its first line), killed
/// on drop.
pub struct PythonServer {
    child: Child,
    pub port: u16,
    pub addr: SocketAddr,
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `python3 tests/<script> <args>` and waits for the port it prints.
pub fn python_server(script: &str, args: &[&str]) -> PythonServer {
    let mut child = Command::new("python3")
        .arg(format!("{}/tests/{script}", env!("CARGO_MANIFEST_DIR")))
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 on PATH");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{script} printed {line:?}, not its port"));
    PythonServer {
        child,
        port,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    }
}

/// Fails with how to install it when Python's `websockets` is missing.
pub fn require_websockets() {
    let probe = Command::new("python3")
        .args(["-c", "import websockets"])
        .output()
        .expect("python3 on PATH");
    assert!(
        probe.status.success(),
        "Python's websockets is not importable; install it with: python3 -m pip install websockets\n{}",
        String::from_utf8_lossy(&probe.stderr)
    );
}

/// Runs `python3 tests/<script> <args>`, asserts it succeeded and printed every line of
/// `checks`, and returns what it printed.
pub fn python_client(script: &str, args: &[&str], checks: &[&str]) -> String {
    require_websockets();
    let out = Command::new("python3")
        .arg(format!("{}/tests/{script}", env!("CARGO_MANIFEST_DIR")))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{script} failed:\n{text}");
    for check in checks {
        assert!(text.contains(check), "{check:?} missing:\n{text}");
    }
    text
}
