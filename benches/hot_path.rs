//! Criterion micro-benchmarks of the relay's per-frame work and of backend selection.
//!
//!   cargo bench --bench hot_path
//!
//! `walk/*`: one pass of the relay's frame walker (`frame::Walker`, the code the relay runs
//! on every buffer it reads) over a buffer holding one frame (a full read), masked (client
//! to backend) and unmasked (backend to client). Throughput is in payload bytes: the walker
//! reads headers only, so cost per frame is flat and per byte falls with size. For 1 MiB the
//! frame spans 16 reads of 64 KiB (`relay_buffer_max_bytes`), as in the relay.
//! `close/*`: the one frame whose payload is read (code and UTF-8 reason, unmasked on the
//! stack). `select/*`: the global round-robin pick, uncontended and with a second thread
//! hammering the same counter.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use wslb::balancer::Pool;
use wslb::frame::{Limits, Rules, Side, Walker};

fn frame(payload: usize, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut v = vec![0x82];
    let m = if mask.is_some() { 0x80 } else { 0 };
    if payload < 126 {
        v.push(m | payload as u8);
    } else if payload < 65536 {
        v.push(m | 126);
        v.extend_from_slice(&(payload as u16).to_be_bytes());
    } else {
        v.push(m | 127);
        v.extend_from_slice(&(payload as u64).to_be_bytes());
    }
    if let Some(k) = mask {
        v.extend_from_slice(&k);
    }
    v.resize(v.len() + payload, 0x5a);
    v
}

fn walk(c: &mut Criterion) {
    let mut g = c.benchmark_group("walk");
    for &size in &[64usize, 1024, 16 << 10, 1 << 20] {
        for (name, mask, sender) in [
            ("masked", Some([1, 2, 3, 4]), Side::Client),
            ("unmasked", None, Side::Backend),
        ] {
            let bytes = frame(size, mask);
            g.throughput(Throughput::Bytes(size as u64));
            g.bench_with_input(BenchmarkId::new(name, size), &bytes, |b, bytes| {
                b.iter(|| {
                    let mut w = Walker::default();
                    let mut forwarded = 0;
                    for chunk in bytes.chunks(64 << 10) {
                        let rules = Rules {
                            from: sender,
                            limits: Limits::NONE,
                        };
                        let r = w.walk(black_box(chunk), &rules);
                        forwarded += r.ready;
                    }
                    assert_eq!(forwarded, bytes.len());
                    forwarded
                })
            });
        }
    }
    // 256 frames of 64 B in one read: the pipelined small-message case.
    let many: Vec<u8> = (0..256)
        .flat_map(|_| frame(64, Some([1, 2, 3, 4])))
        .collect();
    g.throughput(Throughput::Elements(256));
    g.bench_function("masked/256x64-in-one-read", |b| {
        b.iter(|| {
            let mut w = Walker::default();
            w.walk(
                black_box(&many),
                &Rules {
                    from: Side::Client,
                    limits: Limits::NONE,
                },
            )
        })
    });
    g.finish();
}

fn close(c: &mut Criterion) {
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice("going away, see you soon".as_bytes());
    c.bench_function("close/check-masked", |b| {
        b.iter(|| wslb::frame::check_close_payload(black_box(&payload), Some([1, 2, 3, 4])))
    });
}

fn select(c: &mut Criterion) {
    let backends: Vec<std::net::SocketAddr> = (0..3)
        .map(|i| format!("127.0.0.1:{}", 9000 + i).parse().unwrap())
        .collect();
    let pool = Arc::new(Pool::new(backends, 3));
    let snap = pool.snapshot();
    c.bench_function("select/round-robin", |b| {
        b.iter(|| black_box(snap.select(&[]).next().map(|b| b.id)))
    });
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let snap2 = pool.snapshot();
    let other = std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            black_box(snap2.select(&[]).next().map(|b| b.id));
        }
    });
    c.bench_function("select/round-robin-contended", |b| {
        b.iter(|| black_box(snap.select(&[]).next().map(|b| b.id)))
    });
    stop.store(true, Ordering::Relaxed);
    other.join().unwrap();
}

criterion_group!(benches, walk, close, select);
criterion_main!(benches);
