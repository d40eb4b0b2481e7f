//! One soak connection after its upgrade: the writer sends messages (msg.rs) after idle
//! spells and quiet phases, the reader checks each echo against the oldest message not yet
//! echoed, and either may end it; the slot (client.rs) then judges the close.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf};
use monoio::net::TcpStream;
use tokio::sync::{Mutex, Notify};

use super::client::{Cx, Stall};
use super::msg::{self, Rng, Sent};
use super::{MISSED_AFTER, QUIET_FOR, QUIET_LAG, STALL_FOR};

/// One slot in this many (slot % SPLITTERS == 1) is a splitter: a message it sends in the
/// last 500 ms before a quiet phase (its next spell, at least 500 ms, then ends in the
/// phase) goes out cut in two, the rest after the phase, so that some frames are half-read
/// in wslb while its workers trim (2% of the clients).
const SPLITTERS: usize = 50;
/// A read that waits this long failed: a client sends at least every 8 s (a 3 s spell and
/// a 5 s quiet phase after it) and every message is echoed, so only a stuck connection is
/// silent this long.
const READ_LIMIT: Duration = Duration::from_secs(60);

/// One connection's shared state between its reader and writer.
pub(super) struct Conn {
    pub(super) slot: usize,
    pub(super) generation: u64,
    /// (index, life) from the backend's 101.
    pub(super) backend: (usize, u32),
    pub(super) opened: Instant,
    pub(super) out: RefCell<VecDeque<Sent>>,
    pub(super) wr: Mutex<OwnedWriteHalf<TcpStream>>,
    pub(super) ended: Cell<bool>,
    pub(super) wake: Notify,
    /// The reader stops reading until then (the stall).
    pub(super) pause_until: Cell<Option<Instant>>,
    pub(super) close_sent: Cell<bool>,
    /// A ping's payload to answer when the writer next holds the socket.
    pub(super) pong_due: RefCell<Option<Vec<u8>>>,
}

/// How a connection's reader ended.
pub(super) enum End {
    Close(u16),
    /// The TCP stream ended (or failed) without a close frame; `partial` bytes of a frame
    /// had arrived.
    Tcp {
        partial: usize,
        error: String,
    },
}

/// Why the writer stopped.
#[derive(PartialEq)]
pub(super) enum Exit {
    /// The reader ended first.
    Ended,
    /// The run is over: closed with 1000.
    Stop,
    /// The client's own reconnect: closed with 1000.
    Reconnect,
}
/// Appends at least one byte to `buf` (room for `want` bytes in all); the end of the stream
/// is an error.
pub(super) async fn read_more<R: AsyncReadRent>(
    s: &mut R,
    mut buf: Vec<u8>,
    want: usize,
) -> Result<Vec<u8>, String> {
    let need = want.max(buf.len() + 4096);
    if buf.capacity() < need {
        buf.reserve(need - buf.len());
    }
    let (len, cap) = (buf.len(), buf.capacity());
    let (res, slice) = s.read(buf.slice_mut(len..cap)).await;
    match res {
        Ok(0) => Err("end of stream".into()),
        Ok(_) => Ok(slice.into_inner()),
        Err(e) => Err(e.kind().to_string()),
    }
}

pub(super) async fn read_loop(
    c: Rc<Conn>,
    mut rd: OwnedReadHalf<TcpStream>,
    mut buf: Vec<u8>,
    cx: Rc<Cx>,
) -> End {
    loop {
        let mut used = 0;
        let mut want = 0;
        while let Some(h) = wslb::frame::parse_header(&buf[used..]) {
            let end = used + h.len + h.payload_len as usize;
            if buf.len() < end {
                want = end - used;
                break;
            }
            let payload = &buf[used + h.len..end];
            used = end;
            match h.raw_opcode {
                1 | 2 if h.fin && h.mask.is_none() => check(&c, h.raw_opcode == 1, payload, &cx),
                8 => {
                    let code = payload
                        .get(..2)
                        .map_or(1005, |b| u16::from_be_bytes([b[0], b[1]]));
                    if !c.close_sent.get() {
                        // The reply, if the socket is free now; else the server's close
                        // grace ends it.
                        if let Ok(mut wr) = c.wr.try_lock() {
                            let mut r = Rng::new(code.into());
                            let f = msg::masked_frame(&code.to_be_bytes(), 8, &mut r);
                            let _ = wr.write_all(f).await;
                        }
                    }
                    return End::Close(code);
                }
                9 => {
                    cx.tally.borrow_mut().pings += 1;
                    *c.pong_due.borrow_mut() = Some(payload.to_vec());
                }
                10 => {}
                op => {
                    let mut t = cx.tally.borrow_mut();
                    t.extra += 1;
                    t.sample(format!(
                        "slot {} gen {}: frame opcode {op} fin {} masked {} of {} B",
                        c.slot,
                        c.generation,
                        h.fin,
                        h.mask.is_some(),
                        h.payload_len
                    ));
                }
            }
        }
        buf.drain(..used);
        // An idle connection keeps 4 KiB, not the largest message it saw.
        if buf.is_empty() && buf.capacity() > 16 << 10 {
            buf = Vec::new();
        }
        if let Some(t) = c.pause_until.get() {
            monoio::time::sleep_until(t.into()).await;
            c.pause_until.set(None);
        }
        let partial = buf.len();
        match monoio::time::timeout(READ_LIMIT, read_more(&mut rd, buf, want)).await {
            Ok(Ok(b)) => buf = b,
            Ok(Err(error)) => return End::Tcp { partial, error },
            Err(_) => {
                return End::Tcp {
                    partial,
                    error: format!("nothing read for {} s", READ_LIMIT.as_secs()),
                };
            }
        }
    }
}

/// Checks one echo against the oldest message not yet echoed.
fn check(c: &Conn, text: bool, payload: &[u8], cx: &Cx) {
    let h = msg::hash(payload);
    let mut out = c.out.borrow_mut();
    let mut t = cx.tally.borrow_mut();
    let matches = |s: &Sent| s.hash == h && s.len == payload.len() && s.text == text;
    match out.front() {
        Some(s) if matches(s) => {
            t.ok += 1;
            t.stall_ok += u64::from(s.stalled);
            out.pop_front();
        }
        Some(&front) => {
            if let Some(i) = out.iter().position(matches) {
                t.reordered += 1;
                out.remove(i);
                t.sample(format!(
                    "slot {} gen {}: seq {} echoed before seq {}",
                    c.slot,
                    c.generation,
                    i as u64 + front.seq,
                    front.seq
                ));
                return;
            }
            out.pop_front();
            t.corrupted += 1;
            let want = msg::payload(
                cx.world.seed,
                c.slot,
                c.generation,
                front.seq,
                front.len,
                front.text,
            );
            t.sample(format!(
                "slot {} gen {} seq {} ({}, backend {}.{}): {}{}",
                c.slot,
                c.generation,
                front.seq,
                if front.text { "text" } else { "binary" },
                c.backend.0,
                c.backend.1,
                msg::describe_mismatch(&want, payload),
                if text == front.text {
                    ""
                } else {
                    "; opcode changed"
                },
            ));
        }
        None => {
            t.extra += 1;
            t.sample(format!(
                "slot {} gen {}: an echo of {} B with nothing outstanding",
                c.slot,
                c.generation,
                payload.len()
            ));
        }
    }
}

/// Waits `d`, or less if the connection ends; false if it ended.
async fn wait(c: &Conn, d: Duration) -> bool {
    if c.ended.get() {
        return false;
    }
    monoio::select! {
        _ = monoio::time::sleep(d) => {}
        _ = c.wake.notified() => {}
    }
    !c.ended.get()
}

/// Writes `frame` (a pong due first, unless `frame` is the rest of a frame already begun).
async fn send(c: &Conn, frame: Vec<u8>, mid_frame: bool) -> bool {
    let mut wr = c.wr.lock().await;
    let pong = if mid_frame {
        None
    } else {
        c.pong_due.borrow_mut().take()
    };
    if let Some(p) = pong {
        let mut r = Rng::new(p.len() as u64);
        if wr
            .write_all(msg::masked_frame(&p, 10, &mut r))
            .await
            .0
            .is_err()
        {
            return false;
        }
    }
    let io = wr.write_all(frame);
    matches!(monoio::time::timeout(READ_LIMIT, io).await, Ok((Ok(_), _)))
}

pub(super) async fn write_loop(c: Rc<Conn>, mut rng: Rng, cx: Rc<Cx>) -> Exit {
    let w = &cx.world;
    let mut seq = 0u64;
    let mut last = Instant::now();
    let mut missed = false;
    let splitter = c.slot % SPLITTERS == 1;
    // The rest of a frame a splitter began before a quiet phase.
    let mut held: Option<Vec<u8>> = None;
    loop {
        if c.slot == 0
            && cx.stall.get() == Stall::Pending
            && let Some(&t0) = w.start.get()
        {
            let (now, at) = (Instant::now(), t0 + w.plan.stall_at);
            if c.backend.0 != 0 && now + Duration::from_secs(8) >= at {
                // Hunting for backend 0, the one nothing happens to: at once, not after a
                // spell, so that a few tries take milliseconds.
                return close(&c, Exit::Reconnect).await;
            }
            if c.backend.0 == 0 && now >= at {
                let until = now + STALL_FOR;
                cx.stall.set(Stall::Active { until });
                c.pause_until.set(Some(until));
                cx.tally.borrow_mut().stall_started = true;
                *w.stall_span.lock().unwrap() = Some((now, until));
            }
        }
        let stall = if c.slot == 0 {
            cx.stall.get()
        } else {
            Stall::Done
        };
        let stalling = matches!(stall, Stall::Active { until } if Instant::now() < until);
        if let Stall::Active { until } = stall
            && Instant::now() >= until
        {
            cx.stall.set(Stall::Done);
        }
        let spell = if stalling {
            // While stalled, send as fast as the socket takes it, to fill every buffer.
            Duration::from_millis(5)
        } else {
            Duration::from_millis(500 + rng.below(2500))
        };
        if !wait(&c, spell).await {
            return Exit::Ended;
        }
        if !stalling && let Some(until) = w.quiet_until(Instant::now()) {
            let jitter = Duration::from_millis(rng.below(300));
            if !wait(&c, until + jitter - Instant::now()).await {
                return Exit::Ended;
            }
        }
        if let Some(rest) = held.take()
            && !send(&c, rest, true).await
        {
            return Exit::Ended;
        }
        if w.stop.load(Ordering::Relaxed) {
            return close(&c, Exit::Stop).await;
        }
        let now = Instant::now();
        if !missed
            && let Some((due, cause)) = w.close_due(c.backend, c.opened)
            && now > due + MISSED_AFTER
        {
            missed = true;
            let mut t = cx.tally.borrow_mut();
            t.missed += 1;
            t.sample(format!(
                "slot {} gen {}: still open {:.1} s after its backend {}.{} was {cause:?}",
                c.slot,
                c.generation,
                (now - due).as_secs_f64(),
                c.backend.0,
                c.backend.1
            ));
        }
        if c.slot == 0 && cx.stall.get() == Stall::Done && !c.out.borrow().iter().any(|s| s.stalled)
        {
            // Relaxed: a flag the controller polls; nothing else is published through it.
            w.stall_done.store(true, Ordering::Relaxed);
        }
        let p = w.plan.reconnect_per_min * (now - last).as_secs_f64() / 60.0;
        last = now;
        if c.slot != 0 && rng.chance(p) {
            return close(&c, Exit::Reconnect).await;
        }
        let len = msg::size(&mut rng);
        let text = rng.below(2) == 0;
        let payload = msg::payload(w.seed, c.slot, c.generation, seq, len, text);
        let stalled = matches!(cx.stall.get(), Stall::Active { .. }) && c.slot == 0;
        c.out.borrow_mut().push_back(Sent {
            seq,
            len,
            text,
            hash: msg::hash(&payload),
            stalled,
        });
        {
            let mut t = cx.tally.borrow_mut();
            t.sent += 1;
            t.sent_text += u64::from(text);
            t.sent_bytes += len as u64;
            // A client thread running late (9,900 connections on two threads) may send
            // what it decided just before a quiet phase a moment into it: only a send
            // well into the phase means the clients did not pause.
            let now = Instant::now();
            if !stalled
                && w.quiet_until(now)
                    .is_some_and(|end| end - now < QUIET_FOR - QUIET_LAG)
            {
                t.quiet_sends += 1;
            }
            if stalled {
                t.stall_sent += 1;
                t.stall_bytes += len as u64;
            }
        }
        seq += 1;
        let mut frame = msg::masked_frame(&payload, if text { 1 } else { 2 }, &mut rng);
        if splitter && !stalled && w.until_quiet(Instant::now()) < Duration::from_millis(500) {
            // Cut anywhere from inside the header to the last byte: wslb holds the first
            // part across the quiet phase, while its worker trims.
            let rest = frame.split_off(1 + rng.below(frame.len() as u64 - 1) as usize);
            held = Some(rest);
            cx.tally.borrow_mut().split += 1;
        }
        if !send(&c, frame, false).await {
            return Exit::Ended;
        }
    }
}

/// The client's own close: waits (up to the stall's length) for every echo, then sends
/// close 1000; the reader ends with the reply.
async fn close(c: &Conn, why: Exit) -> Exit {
    let deadline = Instant::now() + STALL_FOR;
    while !c.out.borrow().is_empty() && Instant::now() < deadline {
        if !wait(c, Duration::from_millis(50)).await {
            return Exit::Ended;
        }
    }
    let mut r = Rng::new(1000);
    let f = msg::masked_frame(&1000u16.to_be_bytes(), 8, &mut r);
    c.close_sent.set(true);
    if !send(c, f, false).await {
        return Exit::Ended;
    }
    why
}
