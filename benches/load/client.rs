//! The load client: one thread, one monoio runtime on io_uring, many connections. Every
//! echo is compared byte for byte with what was sent; a mismatch panics the bench.

use std::cell::Cell;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

/// How the client reaches a target: `Plain` (ws://) or `tls::Tls` (wss://). Every scenario
/// is generic over it, so the plain path compiles to what it was before wss existed.
pub trait Connect: Clone + Send + 'static {
    type Stream: Stream;
    async fn connect(&self, addr: SocketAddr) -> std::io::Result<Self::Stream>;
}

/// A connected byte stream the WebSocket framing runs over.
pub trait Stream {
    /// Appends at least one byte to `buf`; the end of the stream is an error (`UnexpectedEof`).
    async fn read_more(&mut self, buf: Vec<u8>) -> std::io::Result<Vec<u8>>;
    /// Writes all of `data`.
    async fn send(&mut self, data: &Bytes) -> std::io::Result<()>;
    /// Gives back buffers an idle connection does not need until its next message.
    fn release(&mut self) {}
}

/// Plain TCP.
#[derive(Clone, Copy)]
pub struct Plain;

impl Connect for Plain {
    type Stream = TcpStream;

    async fn connect(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        let s = TcpStream::connect_addr(addr).await?;
        s.set_nodelay(true)?;
        Ok(s)
    }
}

impl Stream for TcpStream {
    async fn read_more(&mut self, mut buf: Vec<u8>) -> std::io::Result<Vec<u8>> {
        if buf.len() == buf.capacity() {
            buf.reserve(4096);
        }
        let (len, cap) = (buf.len(), buf.capacity());
        let (res, slice) = self.read(buf.slice_mut(len..cap)).await;
        if res? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(slice.into_inner())
    }

    async fn send(&mut self, data: &Bytes) -> std::io::Result<()> {
        self.write_all(data.clone()).await.0.map(drop)
    }
}

/// Runs `f` on a fresh single-threaded io_uring runtime in its own thread.
pub fn on_runtime<T: Send + 'static, F: std::future::Future<Output = T> + 'static>(
    f: impl FnOnce() -> F + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(4096)
            .enable_timer()
            .build()
            .expect("io_uring runtime for the load client");
        rt.block_on(f())
    })
    .join()
    .unwrap()
}

pub fn payload(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i * 31 + 7) as u8).collect()
}

/// A masked frame (FIN set), as a client must send it, with a fixed mask.
pub fn encode_masked(payload: &[u8], opcode: u8) -> Vec<u8> {
    encode_with_mask(payload, opcode, [0x12, 0x34, 0x56, 0x78])
}

/// A masked frame (FIN set) with the mask given.
pub fn encode_with_mask(payload: &[u8], opcode: u8, mask: [u8; 4]) -> Vec<u8> {
    let n = payload.len();
    let mut v = Vec::with_capacity(n + 14);
    v.push(0x80 | opcode);
    if n < 126 {
        v.push(0x80 | n as u8);
    } else if n < 65536 {
        v.push(0x80 | 126);
        v.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        v.push(0x80 | 127);
        v.extend_from_slice(&(n as u64).to_be_bytes());
    }
    v.extend_from_slice(&mask);
    v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    v
}

const UPGRADE: &str = "GET / HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// Connects and upgrades; returns the stream and any bytes read past the 101 head. Any
/// other answer panics the bench: outside the storm, a refusal is a broken setup.
pub async fn upgrade<C: Connect>(
    c: &C,
    addr: SocketAddr,
    cap: usize,
) -> std::io::Result<(C::Stream, Vec<u8>)> {
    let (s, answer) = request_upgrade(c, addr, cap).await?;
    let rest = answer.unwrap_or_else(|head| panic!("no 101 from {addr}: {head}"));
    Ok((s, rest))
}

/// Connects and asks to upgrade. Returns the stream and, on a 101, any bytes read past its
/// head, or else the head of the refusal: the storm counts a refusal as a failure.
async fn request_upgrade<C: Connect>(
    c: &C,
    addr: SocketAddr,
    cap: usize,
) -> std::io::Result<(C::Stream, Result<Vec<u8>, String>)> {
    let mut s = c.connect(addr).await?;
    s.send(&Bytes::from_static(UPGRADE.as_bytes())).await?;
    let mut buf: Vec<u8> = Vec::with_capacity(cap.max(1024));
    loop {
        buf = s.read_more(buf).await?;
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            if !buf.starts_with(b"HTTP/1.1 101") {
                return Ok((s, Err(String::from_utf8_lossy(&buf[..i]).into_owned())));
            }
            buf.drain(..i + 4);
            return Ok((s, Ok(buf)));
        }
    }
}

/// Reads one frame into `buf` and returns (opcode, payload range); the frame stays in `buf`
/// until the caller drains it.
async fn read_frame(
    s: &mut impl Stream,
    mut buf: Vec<u8>,
) -> std::io::Result<(Vec<u8>, u8, std::ops::Range<usize>)> {
    loop {
        if let Some(h) = wslb::frame::parse_header(&buf) {
            let end = h.len + h.payload_len as usize;
            if buf.len() >= end {
                return Ok((buf, h.raw_opcode, h.len..end));
            }
        }
        buf = s.read_more(buf).await?;
    }
}

/// Sends `frame` and checks that the echo carries exactly `payload`.
async fn round_trip(
    s: &mut impl Stream,
    frame: &Bytes,
    payload: &[u8],
    buf: Vec<u8>,
) -> std::io::Result<Vec<u8>> {
    s.send(frame).await?;
    let (mut buf, op, range) = read_frame(s, buf).await?;
    assert!(op == 2 && buf[range.clone()] == *payload, "echo mismatch");
    buf.drain(..range.end);
    Ok(buf)
}

fn spread(addrs: &[SocketAddr], i: usize) -> SocketAddr {
    addrs[i % addrs.len()]
}

/// A measurement window, started after every connection is up and a warm-up.
pub struct Window {
    pub count: u64,
    pub elapsed: Duration,
    pub cpu: (f64, f64),
    /// The client thread's own CPU seconds (user + system) in the window: near `elapsed`,
    /// the client was the bottleneck.
    pub client_cpu: f64,
}

impl Window {
    /// After a 500 ms warm-up, counts what `count` gains in `secs` and the proxy's CPU.
    async fn measure(count: &Cell<u64>, secs: f64, cpu: &impl Fn() -> (f64, f64)) -> Window {
        monoio::time::sleep(Duration::from_millis(500)).await;
        let (c0, t0, cpu0, own0) = (count.get(), Instant::now(), cpu(), thread_cpu());
        monoio::time::sleep(Duration::from_secs_f64(secs)).await;
        let (c1, t1, cpu1, own1) = (count.get(), Instant::now(), cpu(), thread_cpu());
        Window {
            count: c1 - c0,
            elapsed: t1 - t0,
            cpu: (cpu1.0 - cpu0.0, cpu1.1 - cpu0.1),
            client_cpu: own1 - own0,
        }
    }
}

/// CPU seconds of the calling thread so far: utime + stime of /proc/thread-self/stat, in
/// clock ticks of 1/100 s.
fn thread_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let after = stat.rfind(')').map_or("", |i| &stat[i + 2..]);
    let f: Vec<&str> = after.split(' ').collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

/// Closed loop: `conns` connections each send a message and wait for its echo, for `secs`.
/// `cpu` reads the proxy's CPU seconds at the window's edges.
pub fn closed_loop<C: Connect>(
    connector: C,
    addrs: Vec<SocketAddr>,
    conns: usize,
    size: usize,
    secs: f64,
    cpu: impl Fn() -> (f64, f64) + Send + 'static,
) -> Window {
    on_runtime(move || async move {
        let payload = Rc::new(payload(size));
        let frame = Bytes::from(encode_masked(&payload, 2));
        let count = Rc::new(Cell::new(0u64));
        let stop = Rc::new(Cell::new(false));
        let ready = Rc::new(Cell::new(0usize));
        let mut tasks = Vec::new();
        for i in 0..conns {
            let (f, p, c, s, r) = (
                frame.clone(),
                payload.clone(),
                count.clone(),
                stop.clone(),
                ready.clone(),
            );
            let (addr, connector) = (spread(&addrs, i), connector.clone());
            tasks.push(monoio::spawn(async move {
                let (mut s_, mut buf) = upgrade(&connector, addr, p.len() + 4096)
                    .await
                    .expect("upgrade");
                r.set(r.get() + 1);
                while !s.get() {
                    buf = round_trip(&mut s_, &f, &p, buf).await.expect("echo");
                    c.set(c.get() + 1);
                }
            }));
        }
        while ready.get() < conns {
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
        let w = Window::measure(&count, secs, &cpu).await;
        stop.set(true);
        for t in tasks {
            t.await;
        }
        w
    })
}

/// Paced: `conns` connections each send `rate` messages per second on a fixed schedule.
/// Latency runs from the send to the echo's arrival, in microseconds. It is not taken from
/// the scheduled time: monoio's timer wheel ticks in milliseconds, so wake-up lateness
/// (up to 1 ms, the same for every target) would swamp the proxies' differences. At 1% of
/// each connection's period in use, a stall delays few later sends.
pub fn paced(
    addrs: Vec<SocketAddr>,
    conns: usize,
    rate: f64,
    size: usize,
    secs: f64,
    cpu: impl Fn() -> (f64, f64) + Send + 'static,
) -> (Histogram<u64>, (f64, f64)) {
    on_runtime(move || async move {
        let payload = Rc::new(payload(size));
        let frame = Bytes::from(encode_masked(&payload, 2));
        let period = Duration::from_secs_f64(1.0 / rate);
        let mut tasks = Vec::new();
        let mut streams = Vec::new();
        for i in 0..conns {
            streams.push(
                upgrade(&Plain, spread(&addrs, i), 4096)
                    .await
                    .expect("upgrade"),
            );
        }
        let start = Instant::now() + Duration::from_millis(300);
        let warm = start + Duration::from_millis(500);
        let end = warm + Duration::from_secs_f64(secs);
        for (i, (mut s, mut buf)) in streams.into_iter().enumerate() {
            let (f, p) = (frame.clone(), payload.clone());
            // Stagger the connections evenly over one period.
            let mut next = start + period.mul_f64(i as f64 / conns as f64);
            tasks.push(monoio::spawn(async move {
                let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                while next < end {
                    monoio::time::sleep_until(next.into()).await;
                    let sent = Instant::now();
                    buf = round_trip(&mut s, &f, &p, buf).await.expect("echo");
                    if next >= warm {
                        h.record((Instant::now() - sent).as_micros().max(1) as u64)
                            .unwrap();
                    }
                    next += period;
                }
                h
            }));
        }
        // The proxy's CPU over the measured window (from the end of the warm-up).
        monoio::time::sleep_until(warm.into()).await;
        let cpu0 = cpu();
        monoio::time::sleep_until(end.into()).await;
        let cpu1 = cpu();
        let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for t in tasks {
            all.add(t.await).unwrap();
        }
        (all, (cpu1.0 - cpu0.0, cpu1.1 - cpu0.1))
    })
}

/// Handshake rate: `loops` concurrent loops of connect, upgrade, close handshake, wait for
/// the server's TCP close. Returns (completed handshakes, failures) in the window, and the
/// first failure's error.
pub fn handshakes<C: Connect>(
    connector: C,
    addrs: Vec<SocketAddr>,
    loops: usize,
    secs: f64,
    cpu: impl Fn() -> (f64, f64) + Send + 'static,
) -> (Window, u64, Option<String>) {
    on_runtime(move || async move {
        let count = Rc::new(Cell::new(0u64));
        let failed = Rc::new(Cell::new(0u64));
        let first_error = Rc::new(std::cell::RefCell::new(None));
        let end = Instant::now() + Duration::from_millis(500) + Duration::from_secs_f64(secs);
        let close = Bytes::from(encode_masked(&1000u16.to_be_bytes(), 8));
        let mut tasks = Vec::new();
        for i in 0..loops {
            let (c, f, close) = (count.clone(), failed.clone(), close.clone());
            let first_error = first_error.clone();
            let (addrs, connector) = (addrs.clone(), connector.clone());
            tasks.push(monoio::spawn(async move {
                let mut n = i;
                while Instant::now() < end {
                    n += loops;
                    match one_handshake(&connector, spread(&addrs, n), &close).await {
                        Ok(()) => c.set(c.get() + 1),
                        Err(e) => {
                            f.set(f.get() + 1);
                            first_error.borrow_mut().get_or_insert(e.to_string());
                        }
                    }
                }
            }));
        }
        let f0 = failed.get();
        let w = Window::measure(&count, secs, &cpu).await;
        let f1 = failed.get();
        for t in tasks {
            t.await;
        }
        let e = first_error.take();
        (w, f1 - f0, e)
    })
}

async fn one_handshake(
    connector: &impl Connect,
    addr: SocketAddr,
    close: &Bytes,
) -> std::io::Result<()> {
    let io = async {
        let (mut s, buf) = upgrade(connector, addr, 256).await?;
        s.send(close).await?;
        let (mut buf, op, range) = read_frame(&mut s, buf).await?;
        assert!(
            op == 8 && buf[range.clone()] == 1000u16.to_be_bytes(),
            "close reply"
        );
        // The server closes first (RFC 6455 §7.1.1), so TIME_WAIT stays on its side. Over
        // TLS its close_notify, if it sends one, ends the stream as well.
        buf.clear();
        loop {
            match s.read_more(buf).await {
                Ok(b) => buf = b,
                Err(_) => return Ok(()),
            }
        }
    };
    monoio::time::timeout(Duration::from_secs(5), io)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// Opens `n` connections (at most 200 handshakes at a time), checks one `size`-byte echo
/// on each, then calls `hold` while they sit idle, then closes them all. An idle connection
/// keeps no buffer of the client's own (`Stream::release`).
pub fn idle<C: Connect>(
    connector: C,
    addrs: Vec<SocketAddr>,
    n: usize,
    size: usize,
    hold: impl FnOnce() + Send + 'static,
) -> usize {
    on_runtime(move || async move {
        let payload = Rc::new(payload(size));
        let frame = Bytes::from(encode_masked(&payload, 2));
        let held = open_batched(&connector, &addrs, n, &frame, &payload).await;
        // Let the proxy settle (allocator purges, deferred frees) before measuring.
        monoio::time::sleep(Duration::from_secs(2)).await;
        hold();
        held.len()
    })
}

/// Opens `n` connections, at most 200 handshakes at a time, checks one echo of `frame`
/// (carrying `payload`) on each and releases their buffers. Batches of 200 stay under every
/// target's listen backlog (NGINX's 511 is the smallest), so this setup never measures a
/// listen queue overflowing; the storm does that on purpose.
async fn open_batched<C: Connect>(
    connector: &C,
    addrs: &[SocketAddr],
    n: usize,
    frame: &Bytes,
    payload: &Rc<Vec<u8>>,
) -> Vec<C::Stream> {
    let mut held = Vec::with_capacity(n);
    let mut next = 0;
    while next < n {
        let batch: Vec<_> = (next..n.min(next + 200))
            .map(|i| {
                let (f, p, a) = (frame.clone(), payload.clone(), spread(addrs, i));
                let connector = connector.clone();
                monoio::spawn(async move {
                    let (mut s, buf) = upgrade(&connector, a, p.len() + 256)
                        .await
                        .expect("upgrade");
                    round_trip(&mut s, &f, &p, buf).await.expect("echo");
                    s.release();
                    s
                })
            })
            .collect();
        next += batch.len();
        for t in batch {
            held.push(t.await);
        }
    }
    held
}

/// Retries per connection in the storm after its first attempt fails...
const STORM_RETRIES: u32 = 3;
/// ...each attempt limited to this (a client's connect-and-upgrade timeout: longer than the
/// first three SYN retransmits, at 1, 3 and 7 s, that a SYN dropped at a full listen queue
/// waits for, so an overflow shows as delay, not as failure)...
const STORM_ATTEMPT: Duration = Duration::from_secs(10);
/// ...and every connection back or given up this long after the drop, so the storm ends
/// by itself.
const STORM_DEADLINE: Duration = Duration::from_secs(30);
/// The first retry's backoff, doubling with each retry, plus a jitter of 0 to 99 ms per
/// connection: as real clients do, so that retries do not return as one synchronized wave.
const STORM_BACKOFF: Duration = Duration::from_millis(100);

/// What a reconnect storm measured (see [`storm`]).
pub struct Storm {
    /// Connections upgraded and echoing again.
    pub back: usize,
    /// Connections that never came back (all retries failed, or the deadline passed).
    pub failed: usize,
    /// The last error of the first connection that never came back.
    pub first_error: Option<String>,
    /// Attempts after the first, over all connections.
    pub retries: u64,
    /// From the first close until every connection was back or had given up.
    pub elapsed: Duration,
    /// Per connection that came back: from its own close to its echo, in microseconds.
    pub times: Histogram<u64>,
    /// The proxy's (user, system) CPU seconds over `elapsed`, from just before the drop:
    /// tearing down the dropped connections is part of the storm's cost.
    pub cpu: (f64, f64),
    /// The client thread's own CPU seconds over `elapsed`.
    pub client_cpu: f64,
    /// How long closing all `n` sockets took: the reconnects start after it, so the later
    /// a connection was closed, the less of it is in that connection's time.
    pub drop_time: Duration,
}

/// A reconnect storm: opens `n` connections as `idle` does (in batches, one 32 B echo
/// each), then drops them all at once, then has every one reconnect, upgrade and echo
/// 32 B again, all concurrently, retrying as [`STORM_RETRIES`] and [`STORM_DEADLINE`]
/// allow. `cpu` reads the proxy's CPU seconds. Plain ws only.
///
/// The drop closes every socket with SO_LINGER 0, so each sends a RST and no close
/// handshake of either WebSocket or TCP: what a proxy sees from a client fleet whose
/// restart or network blip lost the connections' state (their next packet on the old
/// connection draws a RST). Silence instead would leave the old connections open in the
/// proxy beside the new ones, 2n where it is allowed about 9,900; a FIN is a close
/// handshake, and would leave n TIME_WAITs on the client's ports. All `n` closes run
/// before the first reconnect starts, so the client never holds more than `n` sockets
/// (under its 20,000 descriptors) and the proxy has every reset queued before the first
/// new SYN. The reconnects then have the whole ephemeral port range (32768-60999 here)
/// from 127.0.0.1 to each target address; the proxies' connects to the backends meet the
/// TIME_WAITs of the backend connections they just closed, which loopback may reuse
/// (net.ipv4.tcp_tw_reuse = 2, the default).
pub fn storm(
    addrs: Vec<SocketAddr>,
    n: usize,
    cpu: impl Fn() -> (f64, f64) + Send + 'static,
) -> Storm {
    on_runtime(move || async move {
        let payload = Rc::new(payload(32));
        let frame = Bytes::from(encode_masked(&payload, 2));
        let held = open_batched(&Plain, &addrs, n, &frame, &payload).await;
        // Let the setup's last handshakes finish in the proxy before its CPU is read.
        monoio::time::sleep(Duration::from_millis(500)).await;
        let socks: Vec<socket2::Socket> = held
            .into_iter()
            .map(|s| {
                let s = into_socket(s);
                s.set_linger(Some(Duration::ZERO)).expect("SO_LINGER 0");
                s
            })
            .collect();
        let (cpu0, own0) = (cpu(), thread_cpu());
        let t0 = Instant::now();
        // close(2) on each in turn, synchronously (monoio would close them through the
        // ring, whenever it next submits), noting when each one went: its own drop.
        let dropped: Vec<Instant> = socks
            .into_iter()
            .map(|s| {
                drop(s);
                Instant::now()
            })
            .collect();
        let drop_time = t0.elapsed();
        let deadline = t0 + STORM_DEADLINE;
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let (f, p, a) = (frame.clone(), payload.clone(), spread(&addrs, i));
                let jitter = Duration::from_millis((i * 37 % 100) as u64);
                monoio::spawn(reconnect(a, f, p, deadline, jitter))
            })
            .collect();
        let mut times = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        let (mut back, mut failed, mut first_error, mut retries) = (Vec::new(), 0, None, 0);
        let mut last = t0;
        for (t, dropped) in tasks.into_iter().zip(dropped) {
            let (r, tries, end) = t.await;
            retries += u64::from(tries);
            last = last.max(end);
            match r {
                Ok(s) => {
                    times
                        .record((end - dropped).as_micros().max(1) as u64)
                        .unwrap();
                    back.push(s);
                }
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        let (cpu1, own1) = (cpu(), thread_cpu());
        let storm = Storm {
            back: back.len(),
            failed,
            first_error,
            retries,
            elapsed: last - t0,
            times,
            cpu: (cpu1.0 - cpu0.0, cpu1.1 - cpu0.1),
            client_cpu: own1 - own0,
            drop_time,
        };
        // Closed here, synchronously, as the dropped ones were: closes left in the ring
        // when the runtime ends would leak the descriptors.
        drop(back.into_iter().map(into_socket).collect::<Vec<_>>());
        storm
    })
}

/// One connection's way back after the drop: connect, upgrade, one echo; after a failure
/// (connect error, refusal, timeout) up to [`STORM_RETRIES`] more attempts after a
/// doubling backoff plus `jitter`, never past `deadline`. Returns the stream or the last
/// error, the retries used, and when it ended.
async fn reconnect(
    addr: SocketAddr,
    frame: Bytes,
    payload: Rc<Vec<u8>>,
    deadline: Instant,
    jitter: Duration,
) -> (Result<TcpStream, String>, u32, Instant) {
    let mut retries = 0;
    loop {
        let attempt = async {
            let (mut s, answer) = request_upgrade(&Plain, addr, 256).await?;
            let buf = answer.map_err(|head| {
                let status = head.lines().next().unwrap_or_default().to_string();
                std::io::Error::other(format!("refused: {status}"))
            })?;
            round_trip(&mut s, &frame, &payload, buf).await?;
            Ok::<_, std::io::Error>(s)
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let err = match monoio::time::timeout(left.min(STORM_ATTEMPT), attempt).await {
            Ok(Ok(s)) => return (Ok(s), retries, Instant::now()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_string(),
        };
        let wait = STORM_BACKOFF * 2u32.pow(retries) + jitter;
        if retries == STORM_RETRIES || Instant::now() + wait >= deadline {
            return (Err(err), retries, Instant::now());
        }
        monoio::time::sleep(wait).await;
        retries += 1;
    }
}

/// Takes a connection out of monoio as a plain socket, to close it with close(2) now.
fn into_socket(s: TcpStream) -> socket2::Socket {
    let fd = s.into_raw_fd();
    // SAFETY: `into_raw_fd` handed over the open socket and monoio no longer owns it.
    unsafe { socket2::Socket::from_raw_fd(fd) }
}
