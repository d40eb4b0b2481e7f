//! A worker's registry of its open relays: what the worker needs to wake a relay when the
//! instance drains, when a peer has been quiet too long (ping keepalive, idle timeout), or
//! when the relay's backend was removed by a reload and its drain deadline passed.
//!
//! Why not a timer per connection: an idle connection is a parked task, and a monoio
//! timer entry per connection would cost more than the rest of its state. Instead each
//! relay has one 32-byte `Slot` here, the relay stamps it with a coarse clock each time
//! it reads, and the worker's keepalive timer ([`Registry::keepalive_timer`]) sweeps the
//! slots a few times per ping interval and wakes only the relays that have something due. The relay
//! itself then decides what to do (see [`Registry::attention`]): the sweep and the relay
//! apply the same rule (`due`), so a wake is never lost and never repeats for long.
//!
//! The registry knows nothing of drains or reloads: the worker's control task
//! (`worker::obey`) tells it to [`Registry::go_away`] or to [`Registry::retire`] a
//! backend's relays, and it wakes the relays concerned. Relays only ever touch this
//! worker-local registry.

use std::cell::{Cell, RefCell};
use std::task::Waker;
use std::time::{Duration, Instant};

pub use crate::config::KeepaliveSettings as Keepalive;
use crate::frame::Side;

/// What a relay's pump should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attention {
    /// Close both sides, at a frame boundary, for this reason.
    GoAway(GoAway),
    /// Send a keepalive ping to this pump's destination.
    Ping,
    /// This pump's source has not been heard from within the idle timeout (after a ping):
    /// treat it as gone.
    SourceDead,
}

/// Where wslb's keepalive stands with one peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Ping {
    /// No ping of wslb's is outstanding.
    #[default]
    None,
    /// A ping went to the peer and nothing was heard from it since: one ping per silence.
    Sent,
    /// The peer was heard from since the ping, but wslb's pong has not come back yet (it is
    /// still taken out of the stream when it does).
    PongDue,
}

/// Why wslb closes both sides of a connection on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoAway {
    /// The instance drains (SIGTERM/SIGINT, or after a binary upgrade).
    Drain,
    /// No frame either way for the idle timeout (pings off).
    Idle,
    /// The backend was removed by a reload and its drain deadline passed.
    RemovedBackend,
    /// The backend holds more than its share of its route's connections: the rebalancer
    /// moves this one (the client reconnects and is placed on a lighter backend).
    Rebalance,
}

impl GoAway {
    /// The close code and reason sent to both sides.
    pub fn close(self) -> (u16, &'static str) {
        match self {
            GoAway::Drain => (1001, "going away"),
            GoAway::Idle => (1001, "idle timeout"),
            GoAway::RemovedBackend => (1012, "service restart"),
            GoAway::Rebalance => (1012, "rebalancing"),
        }
    }
}

/// Why the relay was kicked from outside.
const KICK_NONE: u8 = 0;
const KICK_RETIRED: u8 = 1;
const KICK_REBALANCE: u8 = 2;

/// One relay's registration. The per-peer arrays are indexed by [`Side::index`].
#[derive(Debug)]
struct Slot {
    waker: Option<Waker>,
    /// Coarse clock (ms since the worker started, wrapping) of the last read per peer.
    heard: [u32; 2],
    /// The backend this relay is connected to (`balancer::Pool` id), for retirements.
    backend: u32,
    /// wslb's keepalive with each peer (one byte each: the slot stays 32 bytes).
    pings: [Ping; 2],
    kick: u8,
}

/// The slots, in chunks of [`CHUNK`]: growing never copies or frees a large block (a
/// doubling `Vec` leaves its old buffers behind in the allocator's pages), so the cost
/// stays 32 bytes per connection at the most connections this worker has had.
#[derive(Debug, Default)]
struct Slots {
    chunks: Vec<Box<[Slot]>>,
    /// Slots handed out so far (in use or on the free list).
    len: usize,
}

const CHUNK: usize = 1024;

impl Slots {
    fn push(&mut self, slot: Slot) -> u32 {
        if self.len == self.chunks.len() * CHUNK {
            self.chunks
                .push((0..CHUNK).map(|_| Slot::empty()).collect());
        }
        let k = self.len;
        self.len += 1;
        self[k as u32] = slot;
        k as u32
    }

    fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.chunks.iter().flat_map(|c| c.iter()).take(self.len)
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Slot> {
        self.chunks
            .iter_mut()
            .flat_map(|c| c.iter_mut())
            .take(self.len)
    }
}

impl std::ops::Index<u32> for Slots {
    type Output = Slot;
    fn index(&self, k: u32) -> &Slot {
        &self.chunks[k as usize / CHUNK][k as usize % CHUNK]
    }
}

impl std::ops::IndexMut<u32> for Slots {
    fn index_mut(&mut self, k: u32) -> &mut Slot {
        &mut self.chunks[k as usize / CHUNK][k as usize % CHUNK]
    }
}

impl Slot {
    fn empty() -> Self {
        Slot {
            waker: None,
            heard: [0; 2],
            backend: 0,
            pings: [Ping::None; 2],
            kick: KICK_NONE,
        }
    }
}

/// Whether the keepalive rule has something due for the relay in `s` (see [`Attention`]).
fn due(s: &Slot, now: u32, k: Keepalive) -> bool {
    Side::BOTH
        .into_iter()
        .any(|p| peer_due(s, p, now, k).is_some())
        || idle(s, now, k)
}

/// What is due about peer `p` of a relay: a ping to it, or its death.
fn peer_due(s: &Slot, p: Side, now: u32, k: Keepalive) -> Option<Attention> {
    if k.ping_interval_ms == 0 {
        return None;
    }
    let quiet = now.wrapping_sub(s.heard[p.index()]);
    if k.idle_timeout_ms > 0 && quiet >= k.idle_timeout_ms {
        return Some(Attention::SourceDead);
    }
    (quiet >= k.ping_interval_ms && s.pings[p.index()] != Ping::Sent).then_some(Attention::Ping)
}

/// Without pings: no frame either way for the idle timeout.
fn idle(s: &Slot, now: u32, k: Keepalive) -> bool {
    k.ping_interval_ms == 0
        && k.idle_timeout_ms > 0
        && now
            .wrapping_sub(s.heard[0])
            .min(now.wrapping_sub(s.heard[1]))
            >= k.idle_timeout_ms
}

/// One worker's registry (see the module docs).
#[derive(Debug)]
pub struct Registry {
    keepalive: Keepalive,
    started: Instant,
    /// The coarse clock relays stamp their reads with, advanced by the keepalive timer every
    /// tick: no clock read per frame.
    now: Cell<u32>,
    /// Set once by [`Self::go_away`]: every relay sends its going-away close.
    going_away: Cell<bool>,
    slots: RefCell<Slots>,
    free: RefCell<Vec<u32>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new(Keepalive::default())
    }
}

/// How often the keepalive timer wakes: the coarse clock's resolution, and the finest
/// keepalive sweep.
const TICK: Duration = Duration::from_millis(50);

impl Registry {
    pub fn new(keepalive: Keepalive) -> Self {
        Self {
            keepalive,
            started: Instant::now(),
            now: Cell::new(0),
            going_away: Cell::new(false),
            slots: RefCell::default(),
            free: RefCell::default(),
        }
    }

    /// A deadline `after` from now as 32-bit milliseconds since this worker started (it
    /// wraps after 49 days; [`Self::instant_of`] handles that for deadlines under 24 days
    /// ahead, and close graces are seconds).
    pub fn deadline_in(&self, after: Duration) -> u32 {
        (self.started.elapsed() + after).as_millis() as u32
    }

    /// The instant of a deadline made by [`Self::deadline_in`] (now, if it has passed).
    pub fn instant_of(&self, deadline: u32) -> monoio::time::Instant {
        let now = Instant::now();
        let lo = now.duration_since(self.started).as_millis() as u32;
        let left = deadline.wrapping_sub(lo) as i32;
        monoio::time::Instant::from_std(now + Duration::from_millis(left.max(0) as u64))
    }

    /// Whether relays should send their going-away closes now (the instance drains).
    pub fn going_away(&self) -> bool {
        self.going_away.get()
    }

    /// Registers a relay's task; give the key back with [`Self::unregister`].
    pub fn register(&self, waker: Waker, backend: u32) -> u32 {
        let now = self.now.get();
        let slot = Slot {
            waker: Some(waker),
            heard: [now; 2],
            backend,
            pings: [Ping::None; 2],
            kick: KICK_NONE,
        };
        let mut slots = self.slots.borrow_mut();
        match self.free.borrow_mut().pop() {
            Some(k) => {
                slots[k] = slot;
                k
            }
            None => slots.push(slot),
        }
    }

    pub fn unregister(&self, key: u32) {
        let mut slots = self.slots.borrow_mut();
        slots[key].waker = None;
        let mut free = self.free.borrow_mut();
        free.push(key);
        // A burst of connections that has ended should not pin its slots forever.
        if free.len() == slots.len && slots.chunks.len() > 1 {
            *slots = Slots::default();
            *free = Vec::new();
        }
    }

    /// Peer `from` of relay `key` sent something.
    #[inline]
    pub fn heard(&self, key: u32, from: Side) {
        let mut slots = self.slots.borrow_mut();
        let s = &mut slots[key];
        s.heard[from.index()] = self.now.get();
        if s.pings[from.index()] == Ping::Sent {
            s.pings[from.index()] = Ping::PongDue;
        }
    }

    /// A keepalive ping went to peer `to` of relay `key`.
    pub fn pinged(&self, key: u32, to: Side) {
        self.slots.borrow_mut()[key].pings[to.index()] = Ping::Sent;
    }

    /// Whether wslb awaits the pong to a ping it sent to peer `from`.
    #[inline]
    pub fn awaits_pong(&self, key: u32, from: Side) -> bool {
        self.slots.borrow()[key].pings[from.index()] != Ping::None
    }

    /// wslb's pong from peer `from` arrived (and was dropped).
    pub fn pong_received(&self, key: u32, from: Side) {
        self.slots.borrow_mut()[key].pings[from.index()] = Ping::None;
    }

    /// What the pump of relay `key` that reads peer `from` should do now, if anything.
    #[inline]
    pub fn attention(&self, key: u32, from: Side) -> Option<Attention> {
        if self.going_away.get() {
            return Some(Attention::GoAway(GoAway::Drain));
        }
        let slots = self.slots.borrow();
        let s = &slots[key];
        match s.kick {
            KICK_RETIRED => return Some(Attention::GoAway(GoAway::RemovedBackend)),
            KICK_REBALANCE => return Some(Attention::GoAway(GoAway::Rebalance)),
            _ => {}
        }
        let (now, k) = (self.now.get(), self.keepalive);
        if idle(s, now, k) {
            return Some(Attention::GoAway(GoAway::Idle));
        }
        if peer_due(s, from, now, k) == Some(Attention::SourceDead) {
            return Some(Attention::SourceDead);
        }
        // This pump writes to the other peer: it is the one that pings it.
        (peer_due(s, from.other(), now, k) == Some(Attention::Ping)).then_some(Attention::Ping)
    }

    fn wake_all(&self, pick: impl Fn(&Slot) -> bool) {
        let wakers: Vec<Waker> = self
            .slots
            .borrow()
            .iter()
            .filter(|s| pick(s))
            .filter_map(|s| s.waker.clone())
            .collect();
        for w in wakers {
            w.wake();
        }
    }

    /// The instance drains and its grace is over: every relay sends its going-away close.
    pub fn go_away(&self) {
        if !self.going_away.replace(true) {
            self.wake_all(|_| true);
        }
    }

    /// The drain deadline of these (removed) backends passed: their relays close with 1012.
    /// Returns how many relays were told.
    pub fn retire(&self, backends: &[u32]) -> usize {
        let mut hit = 0;
        for s in self.slots.borrow_mut().iter_mut() {
            if s.waker.is_some() && s.kick == KICK_NONE && backends.contains(&s.backend) {
                s.kick = KICK_RETIRED;
                hit += 1;
            }
        }
        if hit > 0 {
            self.wake_all(|s| s.kick == KICK_RETIRED);
        }
        hit
    }

    /// A rebalancing pass: marks relays of the backends in `shed` for close 1012, as many
    /// per backend as its quota still allows (the quota is shared by every worker, so the
    /// pass closes the number it asked for whichever workers hold the connections), and
    /// wakes them; each closes at its next frame boundary. Returns how many were marked.
    pub fn shed(&self, shed: &crate::control::Shed) -> usize {
        let mut hit = 0;
        for s in self.slots.borrow_mut().iter_mut() {
            if s.waker.is_some() && s.kick == KICK_NONE && shed.take(s.backend) {
                s.kick = KICK_REBALANCE;
                hit += 1;
            }
        }
        if hit > 0 {
            self.wake_all(|s| s.kick == KICK_REBALANCE);
        }
        hit
    }

    /// These backends were added back: their relays are no longer marked retired.
    pub fn unretire(&self, backends: &[u32]) {
        for s in self.slots.borrow_mut().iter_mut() {
            if s.kick == KICK_RETIRED && backends.contains(&s.backend) {
                s.kick = KICK_NONE;
            }
        }
    }

    /// The worker's keepalive timer, for the life of the worker: advances the coarse clock
    /// every tick and sweeps for keepalive work (pings, dead peers, idle closes) a few times
    /// per interval. A real timer, not a polled flag: the clock and the keepalive rule are
    /// about time passing.
    pub async fn keepalive_timer(&self) {
        let k = self.keepalive;
        let shortest = [k.ping_interval_ms, k.idle_timeout_ms]
            .into_iter()
            .filter(|&v| v > 0)
            .min();
        // A ping goes out at most an eighth of the interval late.
        let sweep_every = shortest.map(|ms| (ms / 8).clamp(TICK.as_millis() as u32, 1000));
        let mut last_sweep = 0u32;
        loop {
            monoio::time::sleep(TICK).await;
            let now = self.started.elapsed().as_millis() as u32;
            self.now.set(now);
            if let Some(every) = sweep_every
                && now.wrapping_sub(last_sweep) >= every
            {
                last_sweep = now;
                self.wake_all(|s| due(s, now, k));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(heard: [u32; 2], pings: [Ping; 2]) -> Slot {
        Slot {
            waker: None,
            heard,
            backend: 0,
            pings,
            kick: KICK_NONE,
        }
    }

    const NONE: [Ping; 2] = [Ping::None; 2];

    const PINGS: Keepalive = Keepalive {
        ping_interval_ms: 1000,
        idle_timeout_ms: 3000,
    };

    #[test]
    fn a_ping_is_awaited_until_its_pong_even_after_the_peer_spoke() {
        let r = Registry::default();
        let k = r.register(std::task::Waker::noop().clone(), 0);
        r.pinged(k, Side::Client);
        assert!(r.awaits_pong(k, Side::Client));
        assert!(!r.awaits_pong(k, Side::Backend));
        r.heard(k, Side::Client); // a data frame before the pong
        assert_eq!(r.slots.borrow()[k].pings[0], Ping::PongDue);
        assert!(r.awaits_pong(k, Side::Client));
        r.pong_received(k, Side::Client);
        assert!(!r.awaits_pong(k, Side::Client));
    }

    #[test]
    fn a_quiet_peer_is_pinged_once_then_declared_dead() {
        let s = slot([0, 0], NONE);
        assert_eq!(peer_due(&s, Side::Client, 999, PINGS), None);
        assert_eq!(
            peer_due(&s, Side::Client, 1000, PINGS),
            Some(Attention::Ping)
        );
        let s = slot([0, 0], [Ping::Sent; 2]);
        assert_eq!(
            peer_due(&s, Side::Client, 2000, PINGS),
            None,
            "one ping per silence"
        );
        assert_eq!(
            peer_due(&s, Side::Client, 3000, PINGS),
            Some(Attention::SourceDead)
        );
        assert!(due(&s, 3000, PINGS));
    }

    #[test]
    fn only_the_quiet_side_is_pinged() {
        // The backend pushes (heard at 2500); the client is quiet since 0.
        let s = slot([0, 2500], NONE);
        assert_eq!(
            peer_due(&s, Side::Client, 2600, PINGS),
            Some(Attention::Ping)
        );
        assert_eq!(peer_due(&s, Side::Backend, 2600, PINGS), None);
    }

    #[test]
    fn without_pings_only_silence_both_ways_is_idle() {
        let k = Keepalive {
            ping_interval_ms: 0,
            idle_timeout_ms: 1000,
        };
        assert!(
            !idle(&slot([0, 900], NONE), 1500, k),
            "one side still talks"
        );
        assert!(idle(&slot([0, 400], NONE), 1500, k));
        assert_eq!(peer_due(&slot([0, 0], NONE), Side::Client, 5000, k), None);
        assert!(
            !due(&slot([0, 0], NONE), 5000, Keepalive::default()),
            "all off"
        );
    }

    #[test]
    fn slots_are_reused_grow_in_chunks_and_are_freed_after_a_burst() {
        let r = Registry::default();
        let w = || std::task::Waker::noop().clone();
        let keys: Vec<u32> = (0..2500).map(|i| r.register(w(), i)).collect();
        assert_eq!(r.slots.borrow().chunks.len(), 3);
        assert_eq!(r.slots.borrow()[2100].backend, 2100);
        r.unregister(7);
        assert_eq!(r.register(w(), 99), 7, "a freed slot is reused");
        assert_eq!(
            r.slots
                .borrow()
                .iter()
                .filter(|s| s.waker.is_some())
                .count(),
            2500
        );
        for k in keys {
            r.unregister(k);
        }
        assert_eq!(r.slots.borrow().chunks.len(), 0, "all free: the chunks go");
        assert_eq!(r.register(w(), 1), 0);
    }

    #[test]
    fn deadlines_round_trip() {
        let r = Registry::default();
        let before = Instant::now();
        let d = r.deadline_in(Duration::from_millis(500));
        let at = r.instant_of(d).into_std();
        // Ordering only, whatever the machine's speed: the clock keeps whole milliseconds.
        assert!(at + Duration::from_millis(1) >= before + Duration::from_millis(500));
        assert!(at <= Instant::now() + Duration::from_millis(500));
        let past = r.deadline_in(Duration::ZERO).wrapping_sub(10);
        assert!(r.instant_of(past).into_std() <= Instant::now());
    }

    #[test]
    fn the_clock_may_wrap() {
        let s = slot([u32::MAX - 100, u32::MAX - 100], NONE);
        // 101 ms before the wrap + 898 after = 999 ms.
        assert_eq!(peer_due(&s, Side::Client, 898, PINGS), None);
        assert_eq!(
            peer_due(&s, Side::Client, 899, PINGS),
            Some(Attention::Ping)
        );
    }
}
