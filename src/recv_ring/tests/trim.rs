//! The trim race (issue 19): a trim must never give back the pages of a buffer the kernel
//! has filled and the pump has not forwarded yet.

use std::cell::Cell;
use std::io::Write;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use super::{listener, next, pair, pattern_at, runtime};
use crate::metrics::WorkerStats;
use crate::recv_ring::{Next, RecvRing};

/// Yields to the other tasks once (monoio has no `yield_now`).
async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return std::task::Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await
}

/// The trim race (issue 19): `trim()` gives the buffers' pages back while the kernel may
/// still fill a buffer between the reap that found none out and the `madvise`, so a chunk
/// arrives zeroed. 64 sources on one ring, a peer thread streaming each its own pattern in
/// writes of 1 to 3000 bytes for two seconds, and a task calling `trim()` in a tight loop
/// whenever no chunk is out; every byte of every chunk is checked against the pattern.
/// `cooperative`: the ring as workers build it (task work at any return to user mode,
/// timer interrupts included) or the fallback without it (task work by IPI at any time).
fn trim_under_streaming(cooperative: bool) {
    const SOURCES: usize = 64;
    let Some(mut rt) = runtime() else { return };
    let stats = Arc::new(WorkerStats::default());
    let ring = RecvRing::build(512, 4096, stats, cooperative).expect("a receive ring");
    rt.block_on(async move {
        monoio::spawn(ring.clone().run());
        let l = listener();
        let (mut peers, mut tasks) = (Vec::new(), Vec::new());
        for i in 0..SOURCES {
            let (peer, end) = pair(&l);
            peer.set_nonblocking(false).unwrap();
            let src = ring.open(end.as_raw_fd()).expect("open");
            let ring = ring.clone();
            tasks.push(monoio::spawn(async move {
                // (bytes checked, the offset of the first wrong byte)
                let (mut at, mut wrong) = (0usize, None);
                loop {
                    match next(&ring, &src).await {
                        Next::Chunk(c) => {
                            let want = pattern_at(i as u32, at, c.bytes().len());
                            if wrong.is_none() && c.bytes() != want {
                                let k = c.bytes().iter().zip(&want).position(|(a, b)| a != b);
                                wrong = Some(at + k.unwrap_or(0));
                            }
                            at += c.bytes().len();
                        }
                        Next::End(r) => break r.expect("end of stream"),
                        Next::Stopped => panic!("stopped unasked"),
                    }
                }
                ring.close(src);
                drop(end);
                (at, wrong)
            }));
            peers.push(peer);
        }
        ring.submit();
        let writer = std::thread::spawn(move || {
            let mut sent = vec![0usize; SOURCES];
            let mut x = 0x9e37_79b9u32;
            let until = std::time::Instant::now() + Duration::from_secs(2);
            // Paced small writes to one source at a time: the pumps keep up, so the ring
            // is mostly empty and the trimming task spins while data keeps arriving.
            while std::time::Instant::now() < until {
                for _ in 0..16 {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    let i = (x >> 8) as usize % SOURCES;
                    let n = 1 + (x % 512) as usize;
                    peers[i]
                        .write_all(&pattern_at(i as u32, sent[i], n))
                        .unwrap();
                    sent[i] += n;
                }
                std::thread::sleep(Duration::from_micros(50));
            }
            for p in &peers {
                p.shutdown(Shutdown::Write).unwrap();
            }
            sent
        });
        let trimming = Rc::new(Cell::new(true));
        let trims = Rc::new(Cell::new(0u64));
        let trimmer = {
            let (ring, trimming, trims) = (ring.clone(), trimming.clone(), trims.clone());
            monoio::spawn(async move {
                let mut turn = 0u32;
                while trimming.get() {
                    if ring.trim() {
                        trims.set(trims.get() + 1);
                    }
                    // Yielding alone never lets the runtime reach its driver (a task is
                    // always ready), and its timers (the bounded waits) need it.
                    turn = turn.wrapping_add(1);
                    if turn.is_multiple_of(4096) {
                        monoio::time::sleep(Duration::from_millis(1)).await;
                    } else {
                        yield_once().await;
                    }
                }
            })
        };
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await);
        }
        trimming.set(false);
        trimmer.await;
        let sent = writer.join().unwrap();
        let bad: Vec<_> = results
            .iter()
            .enumerate()
            .filter_map(|(i, (_, w))| w.map(|at| (i, at)))
            .collect();
        eprintln!(
            "{} trims, {} bytes, {} of {SOURCES} sources corrupted {bad:?}",
            trims.get(),
            sent.iter().sum::<usize>(),
            bad.len()
        );
        assert!(
            trims.get() > 100,
            "the test trimmed too rarely to mean anything"
        );
        assert!(
            bad.is_empty(),
            "bytes changed between the kernel and the pump"
        );
        for (i, (got, _)) in results.iter().enumerate() {
            assert_eq!(*got, sent[i], "source {i} lost bytes");
        }
    });
}

#[test]
fn trim_never_zeroes_undelivered_bytes() {
    trim_under_streaming(true);
}

#[test]
fn trim_never_zeroes_undelivered_bytes_without_coop_taskrun() {
    trim_under_streaming(false);
}
