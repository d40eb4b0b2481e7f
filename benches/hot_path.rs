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
//! stack). `select/round-robin{,-contended}`: the global round-robin pick over 3 backends,
//! uncontended and with a second thread hammering the same counter.
//! `select/<algorithm>/<backends>`: one pick (`Snapshot::pick`, the selector's first
//! choice) of each algorithm over 10, 100 and 1,000 backends, all up, backend `i` holding
//! `i % 3` open connections (so least-connections meets ties, as in a balanced pool);
//! weights `1 + i % 4` for the weighted ones; consistent-hash asked with 1,024 different
//! 16-byte keys in turn (client addresses), so its table lookups are not all one cache line.
//! `build/*`: what a reload spends building a selector for 1,000 backends.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use wslb::balancer::{Algorithm, BackendSpec, Balancing, Lease, Pool};
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
                            rsv1: false,
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
                    rsv1: false,
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

fn algorithms(c: &mut Criterion) {
    let mut g = c.benchmark_group("select");
    let keys: Vec<[u8; 16]> = (0..1024u32)
        .map(|i| {
            std::net::Ipv4Addr::from(0x0a00_0000 + i)
                .to_ipv6_mapped()
                .octets()
        })
        .collect();
    for n in [10usize, 100, 1000] {
        let specs: Vec<BackendSpec> = (0..n)
            .map(|i| BackendSpec {
                addr: std::net::SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8], 9000)),
                weight: 1 + (i % 4) as u32,
                tls: None,
            })
            .collect();
        for algorithm in [
            Algorithm::RoundRobin,
            Algorithm::WeightedRoundRobin,
            Algorithm::LeastConnections,
            Algorithm::PowerOfTwo,
            Algorithm::ConsistentHash,
        ] {
            let pool = Pool::new(specs.iter().map(|s| s.addr).collect(), 3);
            let specs: Vec<BackendSpec> = if algorithm == Algorithm::RoundRobin {
                specs
                    .iter()
                    .map(|s| BackendSpec {
                        weight: 1,
                        ..s.clone()
                    })
                    .collect()
            } else {
                specs.clone()
            };
            let balancing = Balancing {
                algorithm,
                ..Balancing::default()
            };
            pool.configure(&specs, None, &balancing, pool.snapshot().keys.clone());
            let snap = pool.snapshot();
            let _leases: Vec<Lease> = snap
                .backends
                .iter()
                .enumerate()
                .flat_map(|(i, b)| (0..i % 3).map(move |_| Lease::new(b.clone())))
                .collect();
            let mut k = 0;
            g.bench_function(BenchmarkId::new(algorithm.name(), n), |b| {
                b.iter(|| {
                    k = (k + 1) & 1023;
                    black_box(snap.pick(black_box(&keys[k])))
                })
            });
        }
    }
    g.finish();
}

/// What a reload spends building a selector (`Pool::configure`, off the workers' path):
/// the Maglev table and the weighted sequence for 1,000 backends of weights `1 + i % 4`,
/// and weights 1..=1000 (a cycle of 500,500: too long for a table, so built as a scatter).
fn build(c: &mut Criterion) {
    let mut g = c.benchmark_group("build");
    g.sample_size(10);
    let specs = |weight: fn(usize) -> u32| -> Vec<BackendSpec> {
        (0..1000)
            .map(|i| BackendSpec {
                addr: std::net::SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8], 9000)),
                weight: weight(i),
                tls: None,
            })
            .collect()
    };
    for (name, algorithm, specs) in [
        (
            "consistent-hash/1000",
            Algorithm::ConsistentHash,
            specs(|i| 1 + (i % 4) as u32),
        ),
        (
            "weighted-round-robin/1000",
            Algorithm::WeightedRoundRobin,
            specs(|i| 1 + (i % 4) as u32),
        ),
        (
            "weighted-round-robin/1000-weights-1-to-1000",
            Algorithm::WeightedRoundRobin,
            specs(|i| 1 + i as u32),
        ),
    ] {
        let pool = Pool::new(specs.iter().map(|s| s.addr).collect(), 3);
        let balancing = Balancing {
            algorithm,
            ..Balancing::default()
        };
        let keys = pool.snapshot().keys.clone();
        g.bench_function(name, |b| {
            b.iter(|| pool.configure(black_box(&specs), None, &balancing, keys.clone()))
        });
    }
    g.finish();
}

/// Route matching per request: `n` routes of their own host (and a default), the request
/// for the last of them (the worst case: every route is looked at).
fn routes(c: &mut Criterion) {
    use wslb::routes::{HostMatch, RouteSpec, Router};
    let mut g = c.benchmark_group("routes");
    for n in [1usize, 10, 100] {
        let mut specs: Vec<RouteSpec> = (0..n)
            .map(|i| RouteSpec {
                name: format!("app{i}").into(),
                host: HostMatch::parse(&format!("app{i}.example.com")).unwrap(),
                path_prefix: "/ws".into(),
                backends: vec![std::net::SocketAddr::from(([127, 0, 0, 1], 9000)).into()],
                balancing: Default::default(),
                health: None,
                extensions: Default::default(),
                field: format!("routes[{i}]").into(),
            })
            .collect();
        specs.push(RouteSpec {
            name: "default".into(),
            host: HostMatch::Any,
            path_prefix: "/".into(),
            ..specs[0].clone()
        });
        let router = Router::new(wslb::balancer::affinity::Keyring::new(None));
        router.configure(&specs, None);
        let table = router.table();
        let host = format!("APP{}.example.com:443", n - 1);
        g.bench_function(BenchmarkId::new("find", n), |b| {
            b.iter(|| table.find(std::hint::black_box(host.as_bytes()), "/ws/room?id=7"))
        });
    }
    g.finish();
}

criterion_group!(benches, walk, close, select, algorithms, build, routes);
criterion_main!(benches);
