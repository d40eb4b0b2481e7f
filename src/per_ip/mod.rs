//! Per-client limits (`limits.max_connections_per_ip`, `limits.handshake_rate_per_ip`):
//! the client key (an IPv4 address, an IPv6 /64), and two fixed tables shared by the
//! workers, one of open connections and one of token buckets.
//!
//! # Where it is checked, and what a client sees
//! At accept, before anything is read or any TLS handshake is started (`listener.rs`): a
//! refused client costs one accept, one hash, one cache line and a close. A plain-ws client
//! gets `429 Too Many Requests` with `Retry-After` (seconds); a TLS client is closed without
//! a handshake. A real 429 over TLS would need the full handshake first (the server's key
//! exchange and signature, the dearest thing wslb does for a client), which is exactly
//! the work a client over its rate should not be able to make wslb do.
//!
//! # Why IPv6 by /64
//! One IPv6 subscriber, or one host with privacy addresses (RFC 8981), has a whole /64 and
//! can pick a new address from it for every connection; counting by address would give
//! such a client 2^64 limits. A /64 is the smallest prefix a site is given (RFC 6177).
//! IPv4-mapped addresses (`::ffff:a.b.c.d`, a dual-stack listener) count as IPv4.
//!
//! # Why shared, with atomics
//! SO_REUSEPORT spreads one client's connections over the workers by the hash of the
//! 4-tuple, so a per-worker count would see a random share of them: a per-worker limit of
//! `max / workers` refuses a client early or late depending on where its ports hash. So the
//! tables are one per instance, and exact: checking a connection is one atomic
//! compare-and-swap on the client's slot (one cross-core write per admitted connection,
//! one more when it closes), and one on its bucket for the rate. Nothing per frame. With
//! both limits off (the default) nothing is hashed or written, and no table is allocated.
//!
//! # Bounded state, and what happens when it is full
//! Each table is a fixed array of 64-byte buckets of 8 slots (one cache line), allocated
//! once when a limit is first turned on, and sized from `limits.max_connections` (a power
//! of two of slots, at least that many, within 4,096..=1,048,576: 8 bytes a slot, at most
//! 8 MiB a table). A client's slot is found in the bucket its key hashes to (SipHash with a
//! key drawn at start, so a client cannot choose addresses that share a bucket) by a
//! 32-bit (connections) or 23-bit (rate) fingerprint of the same hash.
//!
//! Nothing is ever evicted: a connection slot is free again when its count returns to 0,
//! a rate slot when its bucket has refilled (a client in that state is the same as one
//! never seen). A bucket whose 8 slots are all held by other clients (8 others with connections open,
//! or with a rate bucket not yet refilled) **fails open**: the client is admitted and not
//! counted. Failing closed would let an attacker with many addresses (an IPv6 /48 is
//! 65,536 /64s) fill the buckets and lock everyone else out, turning a protection into a
//! denial of service; failing open only lets such an attacker escape the per-IP limit,
//! while `limits.max_connections` still bounds the instance. Two clients whose keys share
//! both bucket and fingerprint (about 2^-32 per pair in a bucket) share one count.
//!
//! # Exactness
//! The connection count is exact per client while the client holds its slot: the check
//! and the increment are one compare-and-swap. Two workers claiming a slot for the same
//! new client at the same moment can each take a different free slot; the check adds up
//! all of a client's slots, so the limit holds except for connections admitted during
//! that race (at most one per worker). The rate is a GCRA (a token bucket kept as one
//! timestamp), exact in the same way: at most `burst` upgrades at once, then one per
//! `1 / rate` seconds.
//!
//! # Reload
//! The limits are reloadable: the reloader stores them into this struct, and each accept
//! loads them (two relaxed loads of a line nobody writes per connection). Connections
//! opened while the connection limit was off are not counted once it is turned on (they
//! leave no trace to release); they are counted again as they are replaced.

use std::fmt;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

pub use crate::config::PerIpLimits;
use crate::metrics::Rejected;

/// A client as the limits count it: an IPv4 address, or an IPv6 /64 (in the form of an
/// IPv6 address with the low 64 bits zero; IPv4 as IPv4-mapped, whose low 64 bits are not
/// zero, so the two never meet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(u128);

impl ClientKey {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(a) => Self(u128::from(a.to_ipv6_mapped())),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => Self(u128::from(v4.to_ipv6_mapped())),
                None => Self(u128::from(a) & !u128::from(u64::MAX)),
            },
        }
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = Ipv6Addr::from(self.0);
        match a.to_ipv4_mapped() {
            Some(v4) => write!(f, "{v4}"),
            None => write!(f, "{a}/64"),
        }
    }
}

/// Why a client was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// At `max_connections_per_ip`: `Retry-After: 1`, since a place frees up whenever one of
    /// the client's connections closes, which nothing predicts.
    Connections,
    /// Over `handshake_rate_per_ip`: the bucket has a token again in `retry_after` seconds
    /// (rounded up, at least 1).
    Rate { retry_after: u32 },
}

impl Refusal {
    pub fn reason(self) -> Rejected {
        match self {
            Refusal::Connections => Rejected::PerIpConnections,
            Refusal::Rate { .. } => Rejected::PerIpRate,
        }
    }

    pub fn retry_after(self) -> u32 {
        match self {
            Refusal::Connections => 1,
            Refusal::Rate { retry_after } => retry_after,
        }
    }
}

/// Slots per bucket: 8 words of 8 bytes, one cache line.
const WAYS: usize = 8;

/// One bucket; aligned so that a check touches exactly one cache line.
#[repr(align(64))]
#[derive(Debug, Default)]
struct Bucket([AtomicU64; WAYS]);

#[derive(Debug)]
struct Table {
    buckets: Box<[Bucket]>,
}

impl Table {
    fn new(slots: usize) -> Self {
        let buckets = (slots / WAYS).max(1);
        Self {
            buckets: (0..buckets).map(|_| Bucket::default()).collect(),
        }
    }

    /// The bucket for hash `h` (its low bits; the fingerprints take the high ones).
    fn bucket(&self, h: u64) -> (usize, &Bucket) {
        let i = (h as usize) & (self.buckets.len() - 1);
        (i, &self.buckets[i])
    }
}

/// Slots a table has for an instance with `max_connections`: see the module doc.
fn table_slots(max_connections: usize) -> usize {
    max_connections.clamp(4096, 1 << 20).next_power_of_two()
}

/// The per-client limits of one instance and their tables, shared by its workers.
#[derive(Debug)]
pub struct PerIp {
    /// `max_connections_per_ip`.
    max_connections: AtomicU32,
    /// `rate` in the low half, `burst` in the high one: stored together by a reload so that
    /// no check sees one config's rate with another's burst.
    rate: AtomicU64,
    hasher: std::hash::RandomState,
    /// The rate table's clock: microseconds since this instant.
    epoch: Instant,
    slots: usize,
    connections: OnceLock<Table>,
    rates: OnceLock<Table>,
    /// Clients refused, by [`Refusal`] kind (`wslb_connections_rejected_total{reason=
    /// "per_ip_connections" | "per_ip_rate"}`): written only when refusing, like the
    /// connection limit's count, so an admitted connection pays nothing for them.
    refused: [AtomicU64; 2],
}

/// Where an admitted connection is counted, to give back when it closes (`None`: not
/// counted: the limit is off, or the client's bucket was full).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counted(Option<std::num::NonZeroU32>);

impl PerIp {
    /// Limits off; tables for an instance of `max_connections` (allocated when a limit is
    /// first turned on).
    pub fn new(max_connections: usize) -> Self {
        Self {
            max_connections: AtomicU32::new(0),
            rate: AtomicU64::new(0),
            hasher: std::hash::RandomState::new(),
            epoch: Instant::now(),
            slots: table_slots(max_connections),
            connections: OnceLock::new(),
            rates: OnceLock::new(),
            refused: Default::default(),
        }
    }

    /// Applies `limits` (at start and on each reload): the next accept uses them. Allocates
    /// a table the first time its limit is on.
    pub fn configure(&self, limits: PerIpLimits) {
        if limits.max_connections > 0 {
            self.connections.get_or_init(|| Table::new(self.slots));
        }
        if limits.rate > 0 {
            self.rates.get_or_init(|| Table::new(self.slots));
        }
        self.max_connections
            .store(limits.max_connections, Ordering::Relaxed);
        let burst = if limits.rate == 0 {
            0
        } else {
            limits.burst.max(1)
        };
        self.rate.store(
            u64::from(limits.rate) | u64::from(burst) << 32,
            Ordering::Relaxed,
        );
    }

    /// The limits in force.
    pub fn limits(&self) -> PerIpLimits {
        let rate = self.rate.load(Ordering::Relaxed);
        PerIpLimits {
            max_connections: self.max_connections.load(Ordering::Relaxed),
            rate: rate as u32,
            burst: (rate >> 32) as u32,
        }
    }

    /// Clients refused since start, for one kind of refusal.
    pub fn refused(&self, kind: Rejected) -> u64 {
        match kind {
            Rejected::PerIpConnections => self.refused[0].load(Ordering::Relaxed),
            Rejected::PerIpRate => self.refused[1].load(Ordering::Relaxed),
            _ => 0,
        }
    }

    /// Checks a new connection from `ip` against both limits: the connection count first
    /// (a refusal there takes no token), then the rate (a refusal there gives the counted
    /// place back). Logs a refused client once per episode: when it is first refused, not
    /// again until it has been admitted since.
    pub fn admit(&self, ip: IpAddr) -> Result<Counted, Refusal> {
        let limits = self.limits();
        if limits.max_connections == 0 && limits.rate == 0 {
            return Ok(Counted(None));
        }
        let key = ClientKey::of(ip);
        let h = self.hasher.hash_one(key);
        let mut counted = Counted(None);
        if limits.max_connections > 0
            && let Some(t) = self.connections.get()
        {
            let (b, bucket) = t.bucket(h);
            match conns::acquire(&bucket.0, (h >> 32) as u32, limits.max_connections) {
                conns::Verdict::Admit(way) => {
                    counted = Counted(way.map(|w| {
                        std::num::NonZeroU32::new((b * WAYS + w) as u32 + 1).expect("+1")
                    }));
                }
                conns::Verdict::Refuse { first } => {
                    self.refused[0].fetch_add(1, Ordering::Relaxed);
                    if first {
                        tracing::warn!(
                            client = %key,
                            "max_connections_per_ip ({}) reached: refusing this client \
                             (429, or a close on a TLS listener) until one of its \
                             connections closes",
                            limits.max_connections
                        );
                    }
                    return Err(Refusal::Connections);
                }
            }
        }
        if limits.rate > 0
            && let Some(t) = self.rates.get()
        {
            let gcra = Gcra::new(limits.rate, limits.burst);
            let now = self.epoch.elapsed().as_micros() as u64;
            let (_, bucket) = t.bucket(h);
            if let Err((wait, first)) = gcra.acquire(&bucket.0, (h >> 41) as u32, now) {
                self.release(counted);
                self.refused[1].fetch_add(1, Ordering::Relaxed);
                let retry_after = wait.div_ceil(1_000_000).clamp(1, u64::from(u32::MAX)) as u32;
                if first {
                    tracing::warn!(
                        client = %key,
                        "handshake_rate_per_ip ({}/s, burst {}) exceeded: refusing this \
                         client (429 with Retry-After: {retry_after}, or a close on a TLS \
                         listener)",
                        limits.rate,
                        limits.burst
                    );
                }
                return Err(Refusal::Rate { retry_after });
            }
        }
        Ok(counted)
    }

    /// Gives back the place `counted` holds (when its connection closes).
    pub fn release(&self, counted: Counted) {
        if let (Some(way), Some(t)) = (counted.0, self.connections.get()) {
            let i = way.get() as usize - 1;
            // `Relaxed`: the count guards no other memory. The slot's count is at least 1
            // (this connection's), so the decrement never reaches the flag bit.
            t.buckets[i / WAYS].0[i % WAYS].fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The connection table's slots: `fingerprint (32) | refusing (1) | count (31)`. A slot
/// with count 0 is free, whatever its fingerprint; `refusing` marks a client's episode of
/// refusals, so that it is logged once.
mod conns {
    use std::sync::atomic::{AtomicU64, Ordering};

    const COUNT: u64 = (1 << 31) - 1;
    pub(super) const REFUSING: u64 = 1 << 31;

    pub(super) fn count(v: u64) -> u64 {
        v & COUNT
    }

    fn fingerprint(v: u64) -> u32 {
        (v >> 32) as u32
    }

    #[derive(Debug, PartialEq, Eq)]
    pub(super) enum Verdict {
        /// Admitted, counted in that slot of the bucket (`None`: the bucket is full of
        /// other clients; admitted uncounted, failing open).
        Admit(Option<usize>),
        /// At the limit; `first`: the first refusal of this episode.
        Refuse { first: bool },
    }

    /// One more connection for the client `fp` in `ways`, unless its slots there already
    /// count `max`. Lock-free: each failed compare-and-swap means another worker changed
    /// the bucket, and the check starts again from what it wrote.
    pub(super) fn acquire(ways: &[AtomicU64; super::WAYS], fp: u32, max: u32) -> Verdict {
        loop {
            let words: [u64; super::WAYS] =
                std::array::from_fn(|i| ways[i].load(Ordering::Relaxed));
            let (mut total, mut hit, mut free) = (0, None, None);
            for (i, &v) in words.iter().enumerate() {
                if count(v) == 0 {
                    free = free.or(Some(i));
                } else if fingerprint(v) == fp {
                    total += count(v);
                    hit = hit.or(Some(i));
                }
            }
            if total >= u64::from(max) {
                let i = hit.expect("max >= 1, so a total that reaches it has a slot");
                let v = words[i];
                if v & REFUSING != 0 {
                    return Verdict::Refuse { first: false };
                }
                if cas(&ways[i], v, v | REFUSING) {
                    return Verdict::Refuse { first: true };
                }
                continue;
            }
            let (i, new) = match (hit, free) {
                (Some(i), _) => (i, (words[i] & !REFUSING) + 1),
                (None, Some(i)) => (i, u64::from(fp) << 32 | 1),
                (None, None) => return Verdict::Admit(None),
            };
            if cas(&ways[i], words[i], new) {
                return Verdict::Admit(Some(i));
            }
        }
    }

    /// `Relaxed`: the slot is the only memory the decision depends on.
    fn cas(w: &AtomicU64, old: u64, new: u64) -> bool {
        w.compare_exchange(old, new, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

/// The rate table's slots: `fingerprint (23) | refusing (1) | TAT (40)`, the theoretical
/// arrival time of the client's next upgrade in microseconds since the table's epoch,
/// modulo 2^40 (12.7 days). A slot whose TAT is not ahead of now by at most one full bucket
/// is idle, and free for anyone: a client whose bucket has refilled is in the same state
/// as one never seen. Differences are read as signed 40-bit numbers; a slot idle for a
/// multiple of 12.7 days can look busy again for at most one bucket's time (a refusal or
/// two, once a fortnight at worst). A word of 0 is a slot never used.
///
/// GCRA (ITU-T I.371's generic cell rate algorithm): a token bucket of `burst` tokens
/// refilled at `rate` per second is the same as admitting an upgrade when TAT <= now + tau,
/// with tau = (burst - 1) * T and T = 1 / rate, then TAT = max(TAT, now) + T. One word per
/// client, updated with one compare-and-swap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Gcra {
    /// Microseconds per token: 1,000,000 / rate (at least 1).
    interval: u64,
    /// (burst - 1) * interval.
    tolerance: u64,
}

const TAT_BITS: u32 = 40;
const TAT_MASK: u64 = (1 << TAT_BITS) - 1;
const RATE_REFUSING: u64 = 1 << TAT_BITS;

impl Gcra {
    fn new(rate: u32, burst: u32) -> Self {
        let interval = (1_000_000 / u64::from(rate.max(1))).max(1);
        Self {
            interval,
            tolerance: u64::from(burst.max(1) - 1) * interval,
        }
    }

    /// How far `tat` is ahead of `now`, both modulo 2^40, as a signed number.
    fn ahead(tat: u64, now: u64) -> i64 {
        ((tat.wrapping_sub(now) << (64 - TAT_BITS)) as i64) >> (64 - TAT_BITS)
    }

    /// Is a slot's bucket still draining (not refilled) at `now`? A word of 0 never is:
    /// a slot never used must not look busy when the clock passes its wrap.
    fn busy(&self, v: u64, now: u64) -> bool {
        let a = Self::ahead(v & TAT_MASK, now);
        v != 0 && a > 0 && a as u64 <= self.tolerance + self.interval
    }

    /// Takes a token for client `fp` (23 bits) at `now` (microseconds), or returns how many
    /// microseconds until it would get one, and whether this starts an episode.
    fn acquire(
        &self,
        ways: &[AtomicU64; WAYS],
        fp: u32,
        now: u64,
    ) -> Result<Option<usize>, (u64, bool)> {
        let now = now & TAT_MASK;
        let fp = u64::from(fp) << (TAT_BITS + 1);
        loop {
            let words: [u64; WAYS] = std::array::from_fn(|i| ways[i].load(Ordering::Relaxed));
            let hit = words
                .iter()
                .position(|&v| v & !(TAT_MASK | RATE_REFUSING) == fp && self.busy(v, now));
            let free = words.iter().position(|&v| !self.busy(v, now));
            let (i, new) = match (hit, free) {
                (Some(i), _) => {
                    let v = words[i];
                    let ahead = Self::ahead(v & TAT_MASK, now) as u64;
                    if ahead > self.tolerance {
                        let wait = ahead - self.tolerance;
                        if v & RATE_REFUSING != 0 {
                            return Err((wait, false));
                        }
                        if cas(&ways[i], v, v | RATE_REFUSING) {
                            return Err((wait, true));
                        }
                        continue;
                    }
                    (i, fp | ((now + ahead + self.interval) & TAT_MASK))
                }
                (None, Some(i)) => (i, fp | ((now + self.interval) & TAT_MASK)),
                (None, None) => return Ok(None),
            };
            if cas(&ways[i], words[i], new) {
                return Ok(Some(i));
            }
        }
    }
}

/// `Relaxed`: the slot is the only memory the decision depends on.
fn cas(w: &AtomicU64, old: u64, new: u64) -> bool {
    w.compare_exchange(old, new, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
}

#[cfg(test)]
mod tests;
