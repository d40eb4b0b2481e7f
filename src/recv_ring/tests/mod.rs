//! Tests of the receive ring against the real kernel (see mod.rs).
//!
//! Each test runs on a real monoio io_uring runtime with the ring's reaper (`run`) spawned,
//! over loopback TCP pairs: the test writes the peer end (a nonblocking std socket, or a
//! thread), the ring reads the other end's descriptor, which lives as long as its source.
//! Every wait is bounded, so a lost wake-up fails a test instead of hanging it. Where the
//! kernel has no io_uring (or no buffer rings or multishot receives), or blocks it, every
//! test fails and says why: workers would then relay without the ring, and a suite that
//! passed there would prove nothing about it. `WSLB_TEST_NO_RECV_RING=1` says that is
//! expected on this machine (it is never set in CI): the tests then pass without running.

use std::future::Future;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use monoio::io::AsyncWriteRentExt;
use socket2::SockRef;

use super::slots::Want;
use super::{Chunk, Next, PAUSE_AT, RecvRing, Source};
use crate::metrics::{Event, WorkerStats};

/// How long any one wait may take before the test fails.
const WAIT: Duration = Duration::from_secs(5);

/// Runs `test` on an io_uring runtime, with a ring of `buffers` x `bytes` and its reaper.
fn on_ring<F, Fut>(buffers: u16, bytes: u32, test: F)
where
    F: FnOnce(RecvRing, Arc<WorkerStats>) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(mut rt) = runtime() else { return };
    let stats = Arc::new(WorkerStats::default());
    let ring = RecvRing::new(buffers, bytes, stats.clone()).expect("RecvRing::new");
    rt.block_on(async move {
        monoio::spawn(ring.clone().run());
        monoio::time::timeout(Duration::from_secs(60), test(ring, stats))
            .await
            .expect("test timed out");
    });
}

/// An io_uring runtime on a kernel that has receive rings; `None` (the test passes
/// without running) only where `WSLB_TEST_NO_RECV_RING=1` says none is expected.
fn runtime() -> Option<monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>> {
    let excused = std::env::var_os("WSLB_TEST_NO_RECV_RING").is_some_and(|v| v == "1");
    let rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .enable_timer()
        .build();
    // A ring of the size `worker` builds by default tells whether the kernel has buffer
    // rings and multishot receives; past that, failing to build the one asked is a bug.
    let ring = || RecvRing::new(512, 1024, Arc::new(WorkerStats::default())).map(drop);
    match rt.and_then(|rt| ring().map(|()| rt)) {
        Ok(rt) => Some(rt),
        Err(e) if excused => {
            eprintln!("not run: no io_uring receive ring here ({e}); WSLB_TEST_NO_RECV_RING=1");
            None
        }
        Err(e) => panic!(
            "no io_uring receive ring here ({e}): workers would relay without it. \
             Set WSLB_TEST_NO_RECV_RING=1 where that is expected (never in CI)"
        ),
    }
}

/// A connected loopback pair, both ends nonblocking: (peer, the ring's end).
fn pair(l: &TcpListener) -> (TcpStream, TcpStream) {
    let peer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (end, _) = l.accept().unwrap();
    peer.set_nonblocking(true).unwrap();
    end.set_nonblocking(true).unwrap();
    (peer, end)
}

/// Opens a source on `end` and submits its receive.
fn open(ring: &RecvRing, end: &TcpStream) -> Source {
    let src = ring.open(end.as_raw_fd()).expect("open");
    ring.submit();
    src
}

fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").unwrap()
}

/// `len` bytes that differ by `seed` and by position (period 251, prime to the buffer
/// sizes), so a lost, repeated, reordered or misrouted chunk changes the concatenation.
fn pattern(seed: u32, len: usize) -> Vec<u8> {
    pattern_at(seed, 0, len)
}

/// `len` bytes of [`pattern`] from offset `from` on.
fn pattern_at(seed: u32, from: usize, len: usize) -> Vec<u8> {
    (from as u32..(from + len) as u32)
        .map(|i| (i.wrapping_mul(7).wrapping_add(seed.wrapping_mul(13)) % 251) as u8)
        .collect()
}

/// The source's next step, failing the test if none comes within [`WAIT`].
async fn next(ring: &RecvRing, src: &Source) -> Next {
    let Ok(n) = monoio::time::timeout(WAIT, ring.next(src)).await else {
        let (armed, want, _) = ring.slots().state(src.id());
        let starved = ring.slots().starved();
        let full = ring.trim();
        panic!("nothing came: armed {armed}, {want:?}, {starved} starved, all buffers in {full}")
    };
    n
}

/// The source's next chunk (anything else fails the test).
async fn chunk(ring: &RecvRing, src: &Source) -> Chunk {
    let Next::Chunk(c) = next(ring, src).await else {
        panic!("expected a chunk, got an end or Stopped")
    };
    c
}

/// Takes chunks (dropping each) until `len` bytes came; returns them.
async fn take(ring: &RecvRing, src: &Source, len: usize) -> Vec<u8> {
    let mut got = Vec::with_capacity(len);
    while got.len() < len {
        got.extend_from_slice(chunk(ring, src).await.bytes());
    }
    assert_eq!(got.len(), len, "more bytes came than were sent");
    got
}

async fn expect_end(ring: &RecvRing, src: &Source) {
    let Next::End(Ok(())) = next(ring, src).await else {
        panic!("expected the end of stream")
    };
}

/// Writes all of `data` from the peer, sleeping while its socket is full (so the reaper
/// and any pumps run meanwhile).
async fn send(peer: &mut TcpStream, data: &[u8]) {
    let mut at = 0;
    while at < data.len() {
        match write(peer, &data[at..]) {
            0 => monoio::time::sleep(Duration::from_millis(1)).await,
            n => at += n,
        }
    }
}

/// One nonblocking write: what it took, 0 for WouldBlock.
fn write(peer: &mut TcpStream, data: &[u8]) -> usize {
    match peer.write(data) {
        Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
        r => r.expect("peer write"),
    }
}

/// Empties a ring of `n` buffers into chunks the test holds, one small write at a time so
/// that the slot never holds [`PAUSE_AT`] chunks (no pause) and the receive stays armed on
/// an empty socket. Returns the chunks and their bytes (a prefix of `data`).
async fn hold_all(
    ring: &RecvRing,
    src: &Source,
    peer: &mut TcpStream,
    data: &[u8],
    n: usize,
) -> (Vec<Chunk>, Vec<u8>) {
    let (mut held, mut got, mut sent) = (Vec::new(), Vec::new(), 0);
    while held.len() < n {
        if got.len() == sent {
            send(peer, &data[sent..sent + 700]).await;
            sent += 700;
        }
        let c = chunk(ring, src).await;
        got.extend_from_slice(c.bytes());
        held.push(c);
    }
    assert_eq!(got, data[..got.len()]);
    (held, got)
}

/// Writes of various sizes (one byte, either side of a buffer, several buffers' worth)
/// arrive as chunks of at most one buffer whose concatenation is what was sent, in order;
/// each chunk is forwarded with monoio's `write_all` (its `IoBuf`) and the far end reads
/// the same bytes; the peer's shutdown then ends the source with `End(Ok)`.
#[test]
fn chunks_concatenate_to_the_stream_then_end() {
    on_ring(128, 1024, |ring, _| async move {
        let l = listener();
        let (mut peer, end) = pair(&l);
        // Blocking, as the sockets monoio accepts on io_uring: its writes would fail with
        // EAGAIN on a nonblocking one, and the ring's receive works on either.
        end.set_nonblocking(false).unwrap();
        let (out, far) = pair(&l);
        out.set_nonblocking(false).unwrap();
        let sizes = [1, 100, 1023, 1024, 1025, 5000, 20_000, 3, 65_536];
        let data = pattern(1, sizes.iter().sum());
        let len = data.len();
        let reader = std::thread::spawn(move || {
            far.set_nonblocking(false).unwrap();
            far.set_read_timeout(Some(WAIT)).unwrap();
            let mut v = vec![0; len];
            (&far).read_exact(&mut v).map(|()| v)
        });
        let src = open(&ring, &end);
        let r = ring.clone();
        let pump = monoio::spawn(async move {
            let mut out = monoio::net::TcpStream::from_std(out).unwrap();
            let mut got = Vec::new();
            loop {
                match next(&r, &src).await {
                    Next::Chunk(c) => {
                        assert!(!c.bytes().is_empty() && c.bytes().len() <= 1024);
                        got.extend_from_slice(c.bytes());
                        out.write_all(c).await.0.unwrap();
                    }
                    Next::End(e) => break e.map(|()| (got, src)),
                    Next::Stopped => panic!("stopped unasked"),
                }
            }
        });
        let mut at = 0;
        for n in sizes {
            send(&mut peer, &data[at..at + n]).await;
            at += n;
            monoio::time::sleep(Duration::from_millis(2)).await;
        }
        peer.shutdown(Shutdown::Write).unwrap();
        let (got, src) = pump.await.expect("End(Ok) after the peer's shutdown");
        assert!(got == data, "the chunks are not the stream");
        ring.close(src);
        assert!(
            reader.join().unwrap().unwrap() == data,
            "forwarded bytes differ"
        );
        assert!(ring.trim(), "a buffer was not given back");
        assert!(ring.received() > 0);
    });
}

/// A small ring (128 buffers of 1 KiB: the smallest `RecvRing::new` builds, see
/// `tiny_rings_can_be_built`), all held by the test (no pause: the slot never queues any)
/// while more data arrives: the receive ends with ENOBUFS (RecvStarved) and no chunk
/// comes; once the chunks are dropped the receive is re-armed and all the rest arrives in
/// order, nothing lost, then the end.
#[test]
fn starved_receive_rearms_as_buffers_come_back() {
    on_ring(128, 1024, |ring, stats| async move {
        let l = listener();
        let (mut peer, end) = pair(&l);
        let src = open(&ring, &end);
        let data = pattern(2, 128 * 700 + 40_000);
        let (held, mut got) = hold_all(&ring, &src, &mut peer, &data, 128).await;
        send(&mut peer, &data[got.len()..]).await;
        let idle = monoio::time::timeout(Duration::from_millis(300), ring.next(&src)).await;
        assert!(idle.is_err(), "a chunk came with every buffer held");
        assert!(stats.events(Event::RecvStarved) >= 1, "no ENOBUFS counted");
        assert!(!ring.trim(), "trim with every buffer out");
        assert_eq!(stats.events(Event::RecvPaused), 0, "paused, not starved");
        drop(held);
        got.extend(take(&ring, &src, data.len() - got.len()).await);
        assert!(got == data, "bytes lost or reordered across the starvation");
        peer.shutdown(Shutdown::Write).unwrap();
        expect_end(&ring, &src).await;
        ring.close(src);
        assert!(ring.trim());
    });
}

/// Backpressure: while the test takes no chunks, the slot's receive is paused after
/// [`PAUSE_AT`] chunks (RecvPaused, without ever starving a ring of 256 buffers), so the
/// rest waits in the kernel: the peer's nonblocking writes end with WouldBlock. Taking
/// the chunks resumes it, and everything (more than the ring holds) arrives in order.
#[test]
fn unread_source_pauses_and_fills_its_socket() {
    on_ring(256, 1024, |ring, stats| async move {
        let l = listener();
        let (mut peer, end) = pair(&l);
        let (rcv, snd) = (SockRef::from(&end), SockRef::from(&peer));
        rcv.set_recv_buffer_size(16 << 10).unwrap();
        snd.set_send_buffer_size(16 << 10).unwrap();
        let src = open(&ring, &end);
        let data = pattern(3, 1 << 20);
        let mut sent = 0;
        // Each write followed by a sleep, for the reaper to see the chunks (and pause).
        while let n @ 1.. = write(&mut peer, &data[sent..sent + 4096]) {
            sent += n;
            assert!(sent < 256 << 10, "256 KiB written, no backpressure");
            monoio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(stats.events(Event::RecvPaused) >= 1, "no pause counted");
        assert_eq!(stats.events(Event::RecvStarved), 0, "starved, not paused");
        let (_, want, queued) = ring.slots().state(src.id());
        assert_eq!(want, Want::Pause);
        assert!((PAUSE_AT..64).contains(&queued), "{queued} queued");
        let mut got = Vec::new();
        while got.len() < data.len() {
            sent += write(&mut peer, &data[sent..(sent + 4096).min(data.len())]);
            if got.len() < sent {
                got.extend_from_slice(chunk(&ring, &src).await.bytes());
            }
        }
        assert!(got == data, "bytes lost or reordered across pauses");
        peer.shutdown(Shutdown::Write).unwrap();
        expect_end(&ring, &src).await;
        assert_eq!(stats.events(Event::RecvStarved), 0);
        ring.close(src);
        assert!(ring.trim());
    });
}

/// `stop()` while a peer thread keeps writing: the chunks already received still come,
/// then `Stopped`; a plain read of the socket then gets the rest, and chunks + rest is
/// everything sent, in order (the cancelled receive lost nothing). Counts RecvLargeFrame.
#[test]
fn stop_hands_the_rest_to_plain_reads() {
    on_ring(128, 1024, |ring, stats| async move {
        let l = listener();
        let (peer, end) = pair(&l);
        let data = pattern(4, 512 << 10);
        let copy = data.clone();
        let writer = std::thread::spawn(move || {
            peer.set_nonblocking(false).unwrap();
            for piece in copy.chunks(4096) {
                (&peer).write_all(piece).unwrap();
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        let src = open(&ring, &end);
        let mut got = take(&ring, &src, 32 << 10).await;
        ring.stop(&src);
        // Asked again (as the pump does for each chunk of a large frame): counted once.
        ring.stop(&src);
        assert_eq!(stats.events(Event::RecvLargeFrame), 1);
        loop {
            match next(&ring, &src).await {
                Next::Chunk(c) => got.extend_from_slice(c.bytes()),
                Next::Stopped => break,
                Next::End(r) => panic!("expected chunks then Stopped, got the end: {r:?}"),
            }
        }
        assert!(matches!(next(&ring, &src).await, Next::Stopped));
        // The runtime blocks here, which nothing needs now: the ring is out of the way.
        end.set_nonblocking(false).unwrap();
        end.set_read_timeout(Some(WAIT)).unwrap();
        let mut rest = Vec::new();
        (&end).read_to_end(&mut rest).expect("read after Stopped");
        writer.join().unwrap();
        eprintln!("{} bytes by chunks, {} by read", got.len(), rest.len());
        assert!(!rest.is_empty(), "the writer was done before the stop");
        got.extend(rest);
        assert!(got == data, "stop lost or reordered bytes");
        ring.close(src);
        assert!(ring.trim(), "a buffer was not given back");
    });
}

/// `close()` of sources whose receive is still armed (one with data the kernel may be
/// receiving at that moment): the slot is reused only once its receive's last completion
/// is reaped, so a new source never gets an old one's bytes; a source closed after its end
/// (nothing in flight) frees its slot at once. Afterwards every buffer is back: `trim()`.
#[test]
fn closed_slots_are_reused_and_leak_no_buffer() {
    on_ring(128, 1024, |ring, _| async move {
        let l = listener();
        let (mut p1, e1) = pair(&l);
        let a = open(&ring, &e1);
        send(&mut p1, b"first").await;
        assert_eq!(take(&ring, &a, 5).await, b"first");
        // Into the kernel's receive (and buffers) as the write returns, not yet reaped.
        send(&mut p1, &pattern(9, 8192)).await;
        let a_id = a.id();
        ring.close(a);
        let (mut p2, e2) = pair(&l);
        let b = open(&ring, &e2);
        assert_ne!(b.id(), a_id, "slot reused before its last completion");
        send(&mut p2, &pattern(2, 3000)).await;
        send(&mut p1, &pattern(9, 3000)).await;
        assert!(take(&ring, &b, 3000).await == pattern(2, 3000));
        // B's receive brought A's slot's last completion in with it: it is free now.
        let (mut p3, e3) = pair(&l);
        let c = open(&ring, &e3);
        assert_eq!(c.id(), a_id, "the closed slot was not reused");
        send(&mut p1, &pattern(9, 3000)).await;
        send(&mut p3, &pattern(3, 5000)).await;
        assert!(take(&ring, &c, 5000).await == pattern(3, 5000));
        // A source closed after its end has nothing in flight: its slot is free at once.
        p3.shutdown(Shutdown::Write).unwrap();
        expect_end(&ring, &c).await;
        let c_id = c.id();
        ring.close(c);
        let (mut p4, e4) = pair(&l);
        let d = open(&ring, &e4);
        assert_eq!(d.id(), c_id);
        send(&mut p4, b"fourth").await;
        assert_eq!(take(&ring, &d, 6).await, b"fourth");
        // B and D are closed with their receives armed, B with unread data.
        send(&mut p2, &pattern(2, 4000)).await;
        monoio::time::sleep(Duration::from_millis(20)).await;
        ring.close(b);
        ring.close(d);
        monoio::time::sleep(Duration::from_millis(20)).await;
        assert!(ring.trim(), "buffers leaked by closed sources");
        assert!(ring.slots().all_free());
    });
}

/// 200 sources at once, each read by its own task (as relays do) and written 6000 bytes
/// of its own in three writes: each gets exactly its own bytes, in order, then its end.
async fn many_sources(ring: RecvRing) {
    let l = listener();
    let (mut peers, mut tasks) = (Vec::new(), Vec::new());
    for i in 0..200 {
        let (peer, end) = pair(&l);
        let src = ring.open(end.as_raw_fd()).expect("open");
        let ring = ring.clone();
        tasks.push(monoio::spawn(async move {
            let got = take(&ring, &src, 6000).await;
            expect_end(&ring, &src).await;
            ring.close(src);
            drop(end);
            (i, got)
        }));
        peers.push(peer);
    }
    ring.submit();
    for round in 0..3 {
        for (i, p) in peers.iter_mut().enumerate() {
            send(p, &pattern(i as u32, 6000)[round * 2000..][..2000]).await;
        }
        monoio::time::sleep(Duration::from_millis(1)).await;
    }
    for p in &peers {
        p.shutdown(Shutdown::Write).unwrap();
    }
    for t in tasks {
        let (i, got) = t.await;
        assert!(got == pattern(i, 6000), "source {i} got other bytes");
    }
    assert!(ring.trim());
}

/// [`many_sources`] on a ring that holds all their bytes: no starving, only routing.
#[test]
fn many_sources_each_get_their_own_bytes() {
    on_ring(2048, 1024, |ring, _| many_sources(ring));
}

/// [`many_sources`] sharing 128 buffers: receives starve and must be re-armed as the
/// pumps give buffers back, and every source still gets all its bytes. Pins fd9e4cc's fix:
/// before it, starved slots were re-armed only as buffers came back, one per buffer, so a
/// starvation reaped after the buffers' return left ~190 live slots unarmed on a full ring
/// (6 runs in 43 failed); now starved slots are also re-armed after every reaped batch.
#[test]
fn many_sources_share_a_starving_ring() {
    on_ring(128, 1024, |ring, _| many_sources(ring));
}

/// A source opened while every buffer is out gets ENOBUFS at once (its receive is issued
/// as `submit` runs), and the buffers all come back before the reaper sees that
/// completion: the source must still receive. Pins fd9e4cc's fix: `give` then found no
/// starved slot to re-arm, the reaper filed the slot as starved afterwards, and no buffer
/// was given back after that, so the source never received on a full ring; now the reaper
/// re-arms starved slots after each batch, while buffers are free.
#[test]
fn source_starved_before_buffers_return_still_receives() {
    on_ring(128, 1024, |ring, stats| async move {
        let l = listener();
        let (mut p1, e1) = pair(&l);
        let a = open(&ring, &e1);
        let (held, _) = hold_all(&ring, &a, &mut p1, &pattern(1, 100_000), 128).await;
        let (mut p2, e2) = pair(&l);
        send(&mut p2, &pattern(2, 2000)).await;
        let b = open(&ring, &e2);
        // No await between the submit and the drops: the reaper cannot run in between.
        drop(held);
        let got = monoio::time::timeout(WAIT, ring.next(&b)).await;
        let starved = stats.events(Event::RecvStarved);
        assert!(got.is_ok(), "B never received (starved counted {starved}x)");
    });
}

/// `limits.recv_ring_buffers` accepts 16..=32768, and every size builds. Pins fd9e4cc's
/// fix: `new` asked for a completion queue of `2 * buffers` entries beside a submission
/// queue of 256, the kernel refused one smaller than the submission queue with EINVAL, and
/// a worker configured with fewer than 128 buffers ran without its ring (a warning, "no
/// receive ring"); the completion queue is now at least 256.
#[test]
fn tiny_rings_can_be_built() {
    on_ring(128, 1024, |_, stats| async move {
        for n in [16, 32, 64] {
            let r = RecvRing::new(n, 1024, stats.clone());
            assert!(r.is_ok(), "{n} buffers: {:?}", r.err());
        }
    });
}

mod trim;
