//! The load client: one thread, one monoio runtime on io_uring, many connections. Every
//! echo is compared byte for byte with what was sent; a mismatch panics the bench.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

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

/// A masked binary frame, as a client must send it.
pub fn encode_masked(payload: &[u8], opcode: u8) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut v = vec![0x80 | opcode];
    let n = payload.len();
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

/// Connects and upgrades; returns the stream and any bytes read past the 101 head.
pub async fn upgrade(addr: SocketAddr, cap: usize) -> std::io::Result<(TcpStream, Vec<u8>)> {
    let mut s = TcpStream::connect_addr(addr).await?;
    s.set_nodelay(true)?;
    s.write_all(UPGRADE.as_bytes().to_vec()).await.0?;
    let mut buf: Vec<u8> = Vec::with_capacity(cap.max(1024));
    loop {
        buf = read_more(&mut s, buf).await?;
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            assert!(
                buf.starts_with(b"HTTP/1.1 101"),
                "no 101 from {addr}: {}",
                String::from_utf8_lossy(&buf[..i])
            );
            buf.drain(..i + 4);
            return Ok((s, buf));
        }
    }
}

async fn read_more(s: &mut TcpStream, mut buf: Vec<u8>) -> std::io::Result<Vec<u8>> {
    if buf.len() == buf.capacity() {
        buf.reserve(4096);
    }
    let (len, cap) = (buf.len(), buf.capacity());
    let (res, slice) = s.read(buf.slice_mut(len..cap)).await;
    if res? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(slice.into_inner())
}

/// Reads one frame into `buf` and returns (opcode, payload range); the frame stays in `buf`
/// until the caller drains it.
async fn read_frame(
    s: &mut TcpStream,
    mut buf: Vec<u8>,
) -> std::io::Result<(Vec<u8>, u8, std::ops::Range<usize>)> {
    loop {
        if let Some(h) = wslb::frame::parse_header(&buf) {
            let end = h.len + h.payload_len as usize;
            if buf.len() >= end {
                return Ok((buf, h.raw_opcode, h.len..end));
            }
        }
        buf = read_more(s, buf).await?;
    }
}

/// Sends `frame` and checks that the echo carries exactly `payload`.
async fn round_trip(
    s: &mut TcpStream,
    frame: &Bytes,
    payload: &[u8],
    buf: Vec<u8>,
) -> std::io::Result<Vec<u8>> {
    s.write_all(frame.clone()).await.0?;
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
}

impl Window {
    /// After a 500 ms warm-up, counts what `count` gains in `secs` and the proxy's CPU.
    async fn measure(count: &Cell<u64>, secs: f64, cpu: &impl Fn() -> (f64, f64)) -> Window {
        monoio::time::sleep(Duration::from_millis(500)).await;
        let (c0, t0, cpu0) = (count.get(), Instant::now(), cpu());
        monoio::time::sleep(Duration::from_secs_f64(secs)).await;
        let (c1, t1, cpu1) = (count.get(), Instant::now(), cpu());
        Window {
            count: c1 - c0,
            elapsed: t1 - t0,
            cpu: (cpu1.0 - cpu0.0, cpu1.1 - cpu0.1),
        }
    }
}

/// Closed loop: `conns` connections each send a message and wait for its echo, for `secs`.
/// `cpu` reads the proxy's CPU seconds at the window's edges.
pub fn closed_loop(
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
            let addr = spread(&addrs, i);
            tasks.push(monoio::spawn(async move {
                let (mut s_, mut buf) = upgrade(addr, p.len() + 4096).await.expect("upgrade");
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
) -> Histogram<u64> {
    on_runtime(move || async move {
        let payload = Rc::new(payload(size));
        let frame = Bytes::from(encode_masked(&payload, 2));
        let period = Duration::from_secs_f64(1.0 / rate);
        let mut tasks = Vec::new();
        let mut streams = Vec::new();
        for i in 0..conns {
            streams.push(upgrade(spread(&addrs, i), 4096).await.expect("upgrade"));
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
        let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for t in tasks {
            all.add(t.await).unwrap();
        }
        all
    })
}

/// Handshake rate: `loops` concurrent loops of connect, upgrade, close handshake, wait for
/// the server's TCP close. Returns (completed handshakes, failures) in the window.
pub fn handshakes(
    addrs: Vec<SocketAddr>,
    loops: usize,
    secs: f64,
    cpu: impl Fn() -> (f64, f64) + Send + 'static,
) -> (Window, u64) {
    on_runtime(move || async move {
        let count = Rc::new(Cell::new(0u64));
        let failed = Rc::new(Cell::new(0u64));
        let end = Instant::now() + Duration::from_millis(500) + Duration::from_secs_f64(secs);
        let close = Bytes::from(encode_masked(&1000u16.to_be_bytes(), 8));
        let mut tasks = Vec::new();
        for i in 0..loops {
            let (c, f, close) = (count.clone(), failed.clone(), close.clone());
            let addrs = addrs.clone();
            tasks.push(monoio::spawn(async move {
                let mut n = i;
                while Instant::now() < end {
                    n += loops;
                    match one_handshake(spread(&addrs, n), &close).await {
                        Ok(()) => c.set(c.get() + 1),
                        Err(_) => f.set(f.get() + 1),
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
        (w, f1 - f0)
    })
}

async fn one_handshake(addr: SocketAddr, close: &Bytes) -> std::io::Result<()> {
    let io = async {
        let (mut s, buf) = upgrade(addr, 256).await?;
        s.write_all(close.clone()).await.0?;
        let (mut buf, op, range) = read_frame(&mut s, buf).await?;
        assert!(
            op == 8 && buf[range.clone()] == 1000u16.to_be_bytes(),
            "close reply"
        );
        // The server closes first (RFC 6455 §7.1.1), so TIME_WAIT stays on its side.
        buf.clear();
        loop {
            match read_more(&mut s, buf).await {
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
/// on each, then calls `hold` while they sit idle, then closes them all.
pub fn idle(
    addrs: Vec<SocketAddr>,
    n: usize,
    size: usize,
    hold: impl FnOnce() + Send + 'static,
) -> usize {
    on_runtime(move || async move {
        let payload = Rc::new(payload(size));
        let frame = Bytes::from(encode_masked(&payload, 2));
        let mut held = Vec::with_capacity(n);
        let mut next = 0;
        while next < n {
            let batch: Vec<_> = (next..n.min(next + 200))
                .map(|i| {
                    let (f, p, a) = (frame.clone(), payload.clone(), spread(&addrs, i));
                    monoio::spawn(async move {
                        let (mut s, buf) = upgrade(a, p.len() + 256).await.expect("upgrade");
                        round_trip(&mut s, &f, &p, buf).await.expect("echo");
                        s
                    })
                })
                .collect();
            next += batch.len();
            for t in batch {
                held.push(t.await);
            }
        }
        // Let the proxy settle (allocator purges, deferred frees) before measuring.
        monoio::time::sleep(Duration::from_secs(2)).await;
        hold();
        held.len()
    })
}
