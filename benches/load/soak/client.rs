//! The soak's clients: one monoio runtime per client thread, one task per slot. A slot
//! keeps one connection up: it connects, learns its backend from the 101, runs the
//! connection (conn.rs: a writer and a reader that checks every echo), and when it ends
//! judges the close against what happened to that backend (mod.rs `World`), counts it,
//! and connects again.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use monoio::io::{AsyncWriteRentExt, OwnedReadHalf, Splitable};
use monoio::net::TcpStream;
use tokio::sync::{Mutex, Notify, Semaphore};

use super::conn::{Conn, End, Exit, read_loop, read_more, write_loop};
use super::msg::Rng;
use super::{Cause, World};

/// Sample lines kept per kind for the report.
const SAMPLES: usize = 20;
/// Handshakes in flight per client thread: under every listen backlog.
const CONNECTING: usize = 100;

/// What the clients saw, summed over threads.
#[derive(Default)]
pub struct Tally {
    pub sent: u64,
    pub sent_text: u64,
    pub sent_bytes: u64,
    pub ok: u64,
    pub corrupted: u64,
    pub reordered: u64,
    /// Messages never echoed on a connection that ended without an expected cause.
    pub lost: u64,
    /// Messages not echoed when an expected close (killed, removed, takeover) came.
    pub cut: u64,
    /// Echoes with nothing outstanding, or frames a server must not send to this client.
    pub extra: u64,
    pub closes: BTreeMap<&'static str, u64>,
    pub unexpected_closes: u64,
    /// Connections still open `MISSED_AFTER` after their backend's close was due.
    pub missed: u64,
    /// 1012 before the removed backend's drain deadline.
    pub early: u64,
    pub failures: BTreeMap<String, u64>,
    /// Milliseconds from a close that was not the client's own to the next upgrade.
    pub back_ms: Vec<u64>,
    /// Slots that were down for 30 s or more at a time.
    pub stuck: u64,
    pub never_up: u64,
    pub stall_sent: u64,
    pub stall_bytes: u64,
    pub stall_ok: u64,
    pub stall_started: bool,
    pub stall_interrupted: bool,
    pub pings: u64,
    /// Messages sent in a quiet phase (the stall client's aside): should be none.
    pub quiet_sends: u64,
    /// Messages sent in two parts around a quiet phase (conn.rs `SPLITTERS`).
    pub split: u64,
    pub samples: Vec<String>,
}

impl Tally {
    pub fn merge(&mut self, o: Tally) {
        for (a, b) in [
            (&mut self.sent, o.sent),
            (&mut self.sent_text, o.sent_text),
            (&mut self.sent_bytes, o.sent_bytes),
            (&mut self.ok, o.ok),
            (&mut self.corrupted, o.corrupted),
            (&mut self.reordered, o.reordered),
            (&mut self.lost, o.lost),
            (&mut self.cut, o.cut),
            (&mut self.extra, o.extra),
            (&mut self.unexpected_closes, o.unexpected_closes),
            (&mut self.missed, o.missed),
            (&mut self.early, o.early),
            (&mut self.stuck, o.stuck),
            (&mut self.stall_sent, o.stall_sent),
            (&mut self.stall_bytes, o.stall_bytes),
            (&mut self.stall_ok, o.stall_ok),
            (&mut self.pings, o.pings),
            (&mut self.quiet_sends, o.quiet_sends),
            (&mut self.split, o.split),
        ] {
            *a += b;
        }
        for (k, v) in o.closes {
            *self.closes.entry(k).or_default() += v;
        }
        for (k, v) in o.failures {
            *self.failures.entry(k).or_default() += v;
        }
        self.back_ms.extend(o.back_ms);
        self.stall_started |= o.stall_started;
        self.stall_interrupted |= o.stall_interrupted;
        let room = SAMPLES.saturating_sub(self.samples.len());
        self.samples.extend(o.samples.into_iter().take(room));
    }

    pub(super) fn sample(&mut self, line: String) {
        if self.samples.len() < SAMPLES {
            self.samples.push(line);
        }
    }
}

/// One client thread's shared state.
pub(super) struct Cx {
    pub(super) world: Arc<World>,
    pub(super) tally: RefCell<Tally>,
    pub(super) connecting: Semaphore,
    /// The stall client's progress (only the thread holding slot 0 uses it).
    pub(super) stall: Cell<Stall>,
}

#[derive(Clone, Copy, PartialEq)]
pub(super) enum Stall {
    Pending,
    Active { until: Instant },
    Done,
}

/// Runs `slots` until the world stops; returns what they saw.
pub fn run_thread(world: Arc<World>, slots: Vec<usize>) -> Tally {
    let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(4096)
        .enable_timer()
        .build()
        .expect("io_uring runtime for the soak client");
    rt.block_on(async move {
        let cx = Rc::new(Cx {
            world,
            tally: RefCell::new(Tally::default()),
            connecting: Semaphore::new(CONNECTING),
            stall: Cell::new(Stall::Pending),
        });
        let tasks: Vec<_> = slots
            .into_iter()
            .map(|s| monoio::spawn(slot(s, cx.clone())))
            .collect();
        for t in tasks {
            t.await;
        }
        cx.tally.take()
    })
}

async fn slot(id: usize, cx: Rc<Cx>) {
    let w = cx.world.clone();
    let mut rng = Rng::derive(w.seed, id as u64, u64::MAX, 0);
    let mut generation = 0u64;
    let mut first = true;
    // Since when the slot is down, for a close that was not its own.
    let mut down: Option<Instant> = None;
    let mut flagged_stuck = false;
    while !w.stop.load(Ordering::Relaxed) {
        let (conn, rd, rest) = match connect(&cx, id, generation).await {
            Ok(c) => c,
            Err(e) => {
                *cx.tally.borrow_mut().failures.entry(e).or_default() += 1;
                let since = *down.get_or_insert_with(Instant::now);
                if !flagged_stuck && since.elapsed() >= Duration::from_secs(30) {
                    flagged_stuck = true;
                    cx.tally.borrow_mut().stuck += 1;
                }
                let backoff = 100 + rng.below(900);
                monoio::time::sleep(Duration::from_millis(backoff)).await;
                continue;
            }
        };
        if first {
            first = false;
            // Relaxed: a count the controller polls; nothing else is published through it.
            w.ready.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(t) = down.take() {
            cx.tally
                .borrow_mut()
                .back_ms
                .push(t.elapsed().as_millis() as u64);
        }
        flagged_stuck = false;
        let conn = Rc::new(conn);
        let reader = monoio::spawn(read_loop(conn.clone(), rd, rest, cx.clone()));
        let writer = monoio::spawn(write_loop(
            conn.clone(),
            Rng::derive(w.seed, id as u64, generation, u64::MAX),
            cx.clone(),
        ));
        let end = reader.await;
        conn.ended.set(true);
        conn.wake.notify_waiters();
        let exit = writer.await;
        let own = exit != Exit::Ended && conn.close_sent.get() && matches!(end, End::Close(1000));
        if own {
            lost_at_own_close(&conn, &cx);
        } else {
            judge(&conn, &end, &cx);
            down = Some(Instant::now());
        }
        if id == 0 {
            stall_after(&conn, &cx);
        }
        if own && exit == Exit::Stop {
            break;
        }
        generation += 1;
        if !own {
            // Clients that lose their connection come back after a random 0-1 s, as real
            // ones would, so a backend's death is not one synchronized wave.
            monoio::time::sleep(Duration::from_millis(rng.below(1000))).await;
        }
    }
}

/// After the stall client's connection ended: a stall still running, or stalled messages
/// still outstanding, mean the stall was cut short (by a close the report shows).
fn stall_after(c: &Conn, cx: &Cx) {
    let active = matches!(cx.stall.get(), Stall::Active { .. });
    if active || c.out.borrow().iter().any(|s| s.stalled) {
        cx.stall.set(Stall::Done);
        cx.tally.borrow_mut().stall_interrupted = true;
    }
    if cx.stall.get() == Stall::Done {
        cx.world.stall_done.store(true, Ordering::Relaxed);
    }
}

/// The client's own close waited for every echo; what is still outstanding was lost.
fn lost_at_own_close(c: &Conn, cx: &Cx) {
    let n = c.out.borrow().len() as u64;
    if n > 0 {
        let mut t = cx.tally.borrow_mut();
        t.lost += n;
        t.sample(format!(
            "slot {} gen {}: {n} messages not echoed before the reply to its own close",
            c.slot, c.generation
        ));
    }
}

/// Counts a close that was not the client's own.
fn judge(c: &Conn, end: &End, cx: &Cx) {
    let w = &cx.world;
    let now = Instant::now();
    let due = w.close_due(c.backend, c.opened);
    let (label, cause) = match (end, due) {
        (End::Close(1011), Some((_, Cause::Killed))) => {
            ("1011, backend killed", Some(Cause::Killed))
        }
        // A backend dying mid-frame leaves no frame boundary for the 1011 (README).
        (End::Tcp { .. }, Some((_, Cause::Killed))) => (
            "TCP close only, backend killed mid-frame",
            Some(Cause::Killed),
        ),
        (End::Close(1012), Some((t, Cause::Removed))) => {
            if now + Duration::from_millis(300) < t {
                cx.tally.borrow_mut().early += 1;
            }
            ("1012, backend removed", Some(Cause::Removed))
        }
        (End::Close(1001), _) if w.takeover_close(c.opened) => (
            "1001, old process drained after the takeover",
            Some(Cause::Takeover),
        ),
        _ => ("unexpected", None),
    };
    let mut t = cx.tally.borrow_mut();
    *t.closes.entry(label).or_default() += 1;
    let outstanding = c.out.borrow().len() as u64;
    if cause.is_some() {
        t.cut += outstanding;
        return;
    }
    t.unexpected_closes += 1;
    t.lost += outstanding;
    let how = match end {
        End::Close(code) => format!("close {code}"),
        End::Tcp { partial, error } => format!("TCP end ({error}), {partial} bytes of a frame"),
    };
    t.sample(format!(
        "slot {} gen {}: {how} on backend {}.{} after {:.1} s open, {outstanding} outstanding; \
         backend's fate: {:?}",
        c.slot,
        c.generation,
        c.backend.0,
        c.backend.1,
        c.opened.elapsed().as_secs_f64(),
        due.map(|(_, c)| c),
    ));
}

async fn connect(
    cx: &Cx,
    slot: usize,
    generation: u64,
) -> Result<(Conn, OwnedReadHalf<TcpStream>, Vec<u8>), String> {
    let _permit = cx.connecting.acquire().await.unwrap();
    let addr = cx.world.addr;
    let attempt = async {
        let mut s = TcpStream::connect_addr(addr)
            .await
            .map_err(|e| format!("connect: {}", e.kind()))?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        let req = format!(
            "GET /soak?slot={slot}&gen={generation} HTTP/1.1\r\nHost: soak\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        s.write_all(req.into_bytes())
            .await
            .0
            .map_err(|e| format!("send upgrade: {}", e.kind()))?;
        let mut buf = Vec::with_capacity(4096);
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            buf = read_more(&mut s, buf, 0)
                .await
                .map_err(|e| format!("upgrade answer: {e}"))?;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let status = head.lines().next().unwrap_or_default().to_string();
        if !status.starts_with("HTTP/1.1 101") {
            return Err(format!("refused: {status}"));
        }
        let backend = head
            .lines()
            .find_map(|l| l.strip_prefix("X-Soak-Backend: "))
            .and_then(|v| {
                let (i, l) = v.trim().split_once('.')?;
                Some((i.parse().ok()?, l.parse().ok()?))
            })
            .ok_or("101 without X-Soak-Backend")?;
        buf.drain(..end);
        Ok((s, backend, buf))
    };
    let (s, backend, rest) = monoio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .map_err(|_| "upgrade timed out".to_string())??;
    let (rd, wr) = s.into_split();
    let conn = Conn {
        slot,
        generation,
        backend,
        opened: Instant::now(),
        out: RefCell::new(VecDeque::new()),
        wr: Mutex::new(wr),
        ended: Cell::new(false),
        wake: Notify::new(),
        pause_until: Cell::new(None),
        close_sent: Cell::new(false),
        pong_due: RefCell::new(None),
    };
    Ok((conn, rd, rest))
}
