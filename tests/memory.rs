//! Heap held per idle proxied connection, counted by a global allocator wrapper: a
//! deterministic count of live bytes (not a timing), so it can be asserted in a test.
//! The echo backend runs as a separate process so that only the balancer (and this test's
//! raw clients, which allocate nothing per connection) live in this heap.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);
/// Live allocations by size, in 64-byte classes up to 8 KiB; the last class is "larger".
static BY_SIZE: [AtomicI64; 129] = [const { AtomicI64::new(0) }; 129];

fn class(size: usize) -> usize {
    (size / 64).min(128)
}

#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as i64, Ordering::Relaxed);
        BY_SIZE[class(l.size())].fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarding the caller's layout to the system allocator.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as i64, Ordering::Relaxed);
        BY_SIZE[class(l.size())].fetch_sub(1, Ordering::Relaxed);
        // SAFETY: `p` was allocated by `alloc` above with this layout.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn snapshot() -> (i64, Vec<i64>) {
    (
        LIVE.load(Ordering::Relaxed),
        BY_SIZE.iter().map(|c| c.load(Ordering::Relaxed)).collect(),
    )
}

struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Connects, upgrades, checks one echo, and leaves the connection open.
fn open(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(common::TIMEOUT)).unwrap();
    s.write_all(common::upgrade_request("/").as_bytes())
        .unwrap();
    let mut head = [0u8; 512];
    let mut n = 0;
    while !head[..n].windows(4).any(|w| w == b"\r\n\r\n") {
        let m = s.read(&mut head[n..]).unwrap();
        assert!(m > 0, "closed during the handshake");
        n += m;
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    let msg = common::frame(true, 2, b"hello, idle", Some([1, 2, 3, 4]));
    s.write_all(&msg).unwrap();
    let mut echo = [0u8; 13];
    s.read_exact(&mut echo).unwrap();
    assert_eq!(&echo[2..], b"hello, idle");
    s
}

/// Regression test for 40 KiB of heap per idle connection (two 16 KiB relay buffers held
/// while waiting for the next frame, plus the handshake's state kept in the task).
#[test]
fn idle_connections_hold_under_2_kib_of_heap_each() {
    let echo_addr = common::dead_addr();
    let _echo = Child(
        Command::new(env!("CARGO_BIN_EXE_wslb"))
            .args(["echo", "--listen", &echo_addr.to_string(), "--workers", "1"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    for _ in 0..100 {
        if TcpStream::connect(echo_addr).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let lb = common::balancer(&[echo_addr], 1, |_| {});
    // Warm up: the worker's buffer pool, timer wheel and op slab reach their steady size.
    let warm: Vec<_> = (0..50).map(|_| open(lb.local_addr)).collect();
    drop(warm);
    std::thread::sleep(Duration::from_millis(300));

    const N: usize = 1000;
    let (b0, s0) = snapshot();
    let held: Vec<_> = (0..N).map(|_| open(lb.local_addr)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let (b1, s1) = snapshot();
    let per_conn = (b1 - b0) as f64 / N as f64;
    let classes: Vec<String> = s0
        .iter()
        .zip(&s1)
        .enumerate()
        .filter(|(_, (a, b))| (**b - **a).abs() >= N as i64 / 10)
        .map(|(i, (a, b))| format!("{}..{} B: {:+}", i * 64, i * 64 + 64, b - a))
        .collect();
    eprintln!("heap per idle connection: {per_conn:.0} B; live allocations by size: {classes:?}");
    assert!(
        per_conn < 2048.0,
        "{per_conn:.0} B per idle connection; {classes:?}"
    );
    drop(held);
}
