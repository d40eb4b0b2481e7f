//! Closed-loop throughput: N connections each send a masked binary message and wait for its
//! echo, for a fixed time, against `wslb echo` directly and through `wslb run`, interleaved
//! over several rounds. Every echoed payload is compared byte for byte; a mismatch aborts.
//!
//!   cargo bench --bench load -- [--conns 100] [--size 64] [--secs 5] [--rounds 3]
//!
//! Prints msg/s per target and the proxy's CPU seconds per million messages (from
//! /proc/PID/stat, user + system), with medians over the rounds.

use std::cell::Cell;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

struct Args {
    conns: usize,
    size: usize,
    secs: f64,
    rounds: usize,
    /// `--io-driver` for the balancer.
    io: String,
    /// Also measure examples/fastwebsockets_relay (the poll-io design).
    pollio: bool,
}

fn args() -> Args {
    let mut a = Args {
        conns: 100,
        size: 64,
        secs: 5.0,
        rounds: 3,
        io: "auto".into(),
        pollio: false,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let next = || {
            v.get(i + 1)
                .and_then(|s| s.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("{} needs a number", v[i]))
        };
        match v[i].as_str() {
            "--conns" => a.conns = next() as usize,
            "--size" => a.size = next() as usize,
            "--secs" => a.secs = next(),
            "--rounds" => a.rounds = next() as usize,
            "--io-driver" => a.io = v[i + 1].clone(),
            "--compare-pollio" => {
                a.pollio = true;
                i += 1;
                continue;
            }
            "--bench" => {
                i += 1;
                continue;
            }
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    a
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process that is killed and reaped when dropped, also when the bench panics.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str]) -> Proc {
    Proc(
        Command::new(env!("CARGO_BIN_EXE_wslb"))
            .args(args)
            .stderr(Stdio::null())
            .spawn()
            .expect("starting wslb"),
    )
}

fn wait_listening(addr: SocketAddr) {
    for _ in 0..100 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{addr} never listened");
}

/// (user, system) CPU seconds of a process so far.
fn cpu_seconds(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    // utime and stime are fields 14 and 15 of proc_pid_stat(5); `after` starts at field 3.
    // Clock ticks are 1/100 s on Linux (sysconf(_SC_CLK_TCK)).
    (
        f[11].parse::<f64>().unwrap() / 100.0,
        f[12].parse::<f64>().unwrap() / 100.0,
    )
}

struct Sample {
    msgs_per_sec: f64,
    /// Proxy CPU seconds per million messages: (user, system).
    cpu_per_million: Option<(f64, f64)>,
}

/// One measurement: connect `conns`, run closed-loop for `secs`, close.
fn measure(addr: SocketAddr, a: &Args, proxy_pid: Option<u32>) -> Sample {
    let conns = a.conns;
    let size = a.size;
    let secs = a.secs;
    std::thread::spawn(move || {
        let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async move {
            let payload: Vec<u8> = (0..size).map(|i| (i * 31 + 7) as u8).collect();
            let mask = [0x12, 0x34, 0x56, 0x78];
            let frame = Bytes::from(encode_masked(&payload, mask));
            let payload = Rc::new(payload);
            let count = Rc::new(Cell::new(0u64));
            let stop = Rc::new(Cell::new(false));
            let ready = Rc::new(Cell::new(0usize));
            let mut tasks = Vec::new();
            for _ in 0..conns {
                let (f, p, c, s, r) = (
                    frame.clone(),
                    payload.clone(),
                    count.clone(),
                    stop.clone(),
                    ready.clone(),
                );
                tasks.push(monoio::spawn(
                    async move { client(addr, f, p, c, s, r).await },
                ));
            }
            while ready.get() < conns {
                monoio::time::sleep(Duration::from_millis(5)).await;
            }
            // Warm up, then measure a window.
            monoio::time::sleep(Duration::from_millis(500)).await;
            let (c0, t0) = (count.get(), Instant::now());
            let cpu0 = proxy_pid.map(cpu_seconds);
            monoio::time::sleep(Duration::from_secs_f64(secs)).await;
            let (c1, t1) = (count.get(), Instant::now());
            let cpu1 = proxy_pid.map(cpu_seconds);
            stop.set(true);
            for t in tasks {
                t.await;
            }
            let msgs = (c1 - c0) as f64;
            Sample {
                msgs_per_sec: msgs / (t1 - t0).as_secs_f64(),
                cpu_per_million: cpu0
                    .zip(cpu1)
                    .map(|(a, b)| ((b.0 - a.0) / msgs * 1e6, (b.1 - a.1) / msgs * 1e6)),
            }
        })
    })
    .join()
    .unwrap()
}

fn encode_masked(payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut v = vec![0x82];
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

async fn client(
    addr: SocketAddr,
    frame: Bytes,
    payload: Rc<Vec<u8>>,
    count: Rc<Cell<u64>>,
    stop: Rc<Cell<bool>>,
    ready: Rc<Cell<usize>>,
) {
    let mut s = TcpStream::connect_addr(addr).await.expect("connect");
    s.set_nodelay(true).unwrap();
    let req = String::from(
        "GET / HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    s.write_all(req.into_bytes()).await.0.expect("send upgrade");
    let mut buf: Vec<u8> = Vec::with_capacity(payload.len() + 4096);
    loop {
        buf = read_more(&mut s, buf).await;
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            assert!(
                buf.starts_with(b"HTTP/1.1 101"),
                "no 101: {}",
                String::from_utf8_lossy(&buf)
            );
            buf.drain(..i + 4);
            break;
        }
    }
    ready.set(ready.get() + 1);
    while !stop.get() {
        s.write_all(frame.clone()).await.0.expect("send");
        loop {
            if let Some(h) = wslb::frame::parse_header(&buf) {
                let end = h.len + h.payload_len as usize;
                if buf.len() >= end {
                    assert!(buf[h.len..end] == payload[..], "echo mismatch");
                    buf.drain(..end);
                    break;
                }
            }
            buf = read_more(&mut s, buf).await;
        }
        count.set(count.get() + 1);
    }
}

async fn read_more(s: &mut TcpStream, mut buf: Vec<u8>) -> Vec<u8> {
    if buf.len() == buf.capacity() {
        buf.reserve(4096);
    }
    let (len, cap) = (buf.len(), buf.capacity());
    let (res, slice) = s.read(buf.slice_mut(len..cap)).await;
    assert!(res.expect("read") > 0, "server closed the connection");
    slice.into_inner()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let a = args();
    let echo_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let lb_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _echo = spawn(&["echo", "--listen", &echo_addr.to_string(), "--workers", "1"]);
    let lb = spawn(&[
        "run",
        "--listen",
        &lb_addr.to_string(),
        "--backend",
        &echo_addr.to_string(),
        "--workers",
        "2",
        "--io-driver",
        &a.io,
    ]);
    wait_listening(echo_addr);
    wait_listening(lb_addr);
    let alt_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let alt = a.pollio.then(|| {
        let exe = std::path::Path::new(env!("CARGO_BIN_EXE_wslb"))
            .with_file_name("examples/fastwebsockets_relay");
        let c = Command::new(&exe)
            .args([alt_addr.to_string(), echo_addr.to_string(), "2".into()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (cargo build --release --example fastwebsockets_relay)",
                    exe.display()
                )
            });
        wait_listening(alt_addr);
        Proc(c)
    });
    let mut alt_rate = Vec::new();
    let mut alt_cpu = Vec::new();

    println!(
        "closed loop: {} conns x {} B, {} s x {} rounds (echo: 1 worker, wslb: 2 workers, client: 1 thread)",
        a.conns, a.size, a.secs, a.rounds
    );
    let (mut direct, mut wslb, mut cpu) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..a.rounds {
        let d = measure(echo_addr, &a, None);
        let w = measure(lb_addr, &a, Some(lb.0.id()));
        let (user, sys) = w.cpu_per_million.unwrap();
        println!(
            "  round {round}: direct {:.0} msg/s, wslb {:.0} msg/s ({:.2}x), wslb CPU-s per 1M msg: {:.2} ({user:.2} user + {sys:.2} sys)",
            d.msgs_per_sec,
            w.msgs_per_sec,
            w.msgs_per_sec / d.msgs_per_sec,
            user + sys
        );
        direct.push(d.msgs_per_sec);
        wslb.push(w.msgs_per_sec);
        cpu.push(user + sys);
        if let Some(c) = &alt {
            let p = measure(alt_addr, &a, Some(c.0.id()));
            let (user, sys) = p.cpu_per_million.unwrap();
            println!(
                "           poll-io fastwebsockets relay {:.0} msg/s ({:.2}x), CPU-s per 1M msg: {:.2} ({user:.2} user + {sys:.2} sys)",
                p.msgs_per_sec,
                p.msgs_per_sec / d.msgs_per_sec,
                user + sys
            );
            alt_rate.push(p.msgs_per_sec);
            alt_cpu.push(user + sys);
        }
    }
    let (d, w, c) = (median(direct), median(wslb), median(cpu));
    println!(
        "| target | msg/s (median) | vs direct | proxy CPU-s / 1M msg | msg per proxy CPU-s |"
    );
    println!("|---|---|---|---|---|");
    println!("| direct | {d:.0} | 1.00x | - | - |");
    println!(
        "| wslb | {w:.0} | {:.2}x | {c:.3} | {:.0} |",
        w / d,
        1e6 / c
    );
    if alt.is_some() {
        let (r, cpu) = (median(alt_rate), median(alt_cpu));
        println!(
            "| poll-io fastwebsockets relay | {r:.0} | {:.2}x | {cpu:.3} | {:.0} |",
            r / d,
            1e6 / cpu
        );
    }
}
