//! Rebalancing (`[rebalance]`): long-lived connections stay where they landed, so a backend
//! added by a reload (or one back from an outage) stays nearly empty while the others keep
//! theirs for hours. When a backend holds more than its share of its route's open
//! connections (the route's mean, by weight) by more than `tolerance`, the rebalancer
//! closes (1012, service restart) some of its connections, at frame boundaries, at no more
//! than `max_per_second`; their clients reconnect and the route's algorithm places them
//! (least-connections and power-of-two put them on the lighter backends; round robin
//! spreads them, so it converges over several passes).
//!
//! One thread per instance, a pass every `interval`: it reads the routes' open counts (the
//! backends' own counters, `BackendStats::open`), plans each route ([`plan`]), and sends
//! the workers one [`Control::Shed`] with the quotas of the pass; the workers' registries
//! mark that many relays of those backends and the relays close at their next frame
//! boundary. The thread's wait between passes is on its channel, so a stop or a reload
//! (new settings) reaches it at once.
//!
//! Routes whose key decides the backend (consistent hashing, sticky cookies) are left
//! alone: a moved client would come straight back ([`rebalances`]).
//!
//! Each pass is logged (route, spread before, connections asked to close, by backend) and
//! counted (`wslb_rebalance_*`); when a route comes back within tolerance the log says so,
//! with the spread then and the connections moved to get there.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Pools;
use crate::config::RebalanceSettings;
use crate::control::{Broadcast, Control, Shed};
use crate::metrics::RebalanceStats;

/// One backend as a pass sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    pub open: u64,
    pub weight: u32,
    pub up: bool,
}

/// What one pass does to one route.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// How far the most loaded backend is above its share (0.5 = 50% above).
    pub spread: f64,
    /// Connections to close, by index into the loads; only backends above tolerance.
    pub close: Vec<(usize, u32)>,
}

/// The spread of `loads` (over the backends that are up) and, when it is above
/// `tolerance`, the connections to close to bring each backend above tolerance down to
/// its share, at most `budget` in all (shared in proportion to each one's excess, the
/// largest first). `None` with fewer than two backends up or no connection.
///
/// A backend is asked to give up only whole connections above its share (`floor`), so
/// one connection over two backends (1/0, share 0.5) is left where it is instead of
/// moving back and forth.
pub fn plan(loads: &[Load], tolerance: f64, budget: u32) -> Option<Plan> {
    let up: Vec<usize> = (0..loads.len()).filter(|&i| loads[i].up).collect();
    let total: u64 = up.iter().map(|&i| loads[i].open).sum();
    let weights: u64 = up.iter().map(|&i| u64::from(loads[i].weight.max(1))).sum();
    if up.len() < 2 || total == 0 {
        return None;
    }
    let share = |i: usize| total as f64 * f64::from(loads[i].weight.max(1)) / weights as f64;
    let spread = up
        .iter()
        .map(|&i| loads[i].open as f64 / share(i) - 1.0)
        .fold(f64::MIN, f64::max);
    let mut excess: Vec<(usize, u32)> = up
        .iter()
        .filter(|&&i| loads[i].open as f64 > share(i) * (1.0 + tolerance))
        .map(|&i| (i, (loads[i].open as f64 - share(i)).floor() as u32))
        .filter(|&(_, n)| n > 0)
        .collect();
    let wanted: u64 = excess.iter().map(|&(_, n)| u64::from(n)).sum();
    if spread <= tolerance || wanted == 0 {
        return Some(Plan {
            spread,
            close: Vec::new(),
        });
    }
    excess.sort_by_key(|&(i, n)| (std::cmp::Reverse(n), i));
    if wanted > u64::from(budget) {
        let mut left = budget;
        for (_, n) in &mut excess {
            let part = ((u64::from(*n) * u64::from(budget)).div_ceil(wanted) as u32).min(left);
            *n = part;
            left -= part;
        }
        excess.retain(|&(_, n)| n > 0);
    }
    Some(Plan {
        spread,
        close: excess,
    })
}

/// The rebalancer thread and what it shares with the instance.
#[derive(Debug)]
pub struct Rebalancer {
    wake: Sender<Wake>,
    stats: Arc<Mutex<Vec<RebalanceStats>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug)]
enum Wake {
    Settings(Option<RebalanceSettings>),
    Stop,
}

/// Hands new `[rebalance]` settings to the rebalancer (a reload).
#[derive(Debug, Clone)]
pub struct Configure(Sender<Wake>);

impl Configure {
    /// One that reaches no rebalancer (tests).
    pub fn detached() -> Self {
        Configure(std::sync::mpsc::channel().0)
    }

    pub fn set(&self, settings: Option<RebalanceSettings>) {
        let _ = self.0.send(Wake::Settings(settings));
    }
}

impl Rebalancer {
    pub fn spawn(
        settings: Option<RebalanceSettings>,
        pools: Arc<dyn Pools>,
        workers: Broadcast,
    ) -> std::io::Result<Self> {
        let (wake, woken) = std::sync::mpsc::channel();
        let stats = Arc::new(Mutex::new(Vec::new()));
        let shared = stats.clone();
        let thread = std::thread::Builder::new()
            .name("wslb-rebalance".into())
            .spawn(move || run(settings, &*pools, &workers, &woken, &shared))?;
        Ok(Self {
            wake,
            stats,
            thread: Some(thread),
        })
    }

    pub fn configure(&self) -> Configure {
        Configure(self.wake.clone())
    }

    /// Each route's figures, for a scrape.
    pub fn stats(&self) -> Vec<RebalanceStats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Rebalancer {
    fn drop(&mut self) {
        let _ = self.wake.send(Wake::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connections to close, by backend id.
type Quotas = Vec<(u32, u32)>;

/// What the thread remembers between passes about one route.
struct Memory {
    route: String,
    /// The shed of the last pass and what it asked, by backend id (to count what the
    /// workers found).
    last: Option<(Arc<Shed>, Quotas)>,
    /// Connections moved since the route last was within tolerance, and passes.
    moving: Option<(u64, u64)>,
}

fn run(
    mut settings: Option<RebalanceSettings>,
    pools: &dyn Pools,
    workers: &Broadcast,
    woken: &Receiver<Wake>,
    stats: &Mutex<Vec<RebalanceStats>>,
) {
    let mut memory: Vec<Memory> = Vec::new();
    let mut next = Instant::now();
    loop {
        let woke = match settings {
            None => woken.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(s) => {
                let now = Instant::now();
                if now >= next {
                    pass(&s, pools, workers, &mut memory, stats);
                    next = now + s.interval;
                }
                woken.recv_timeout(next.saturating_duration_since(Instant::now()))
            }
        };
        match woke {
            Ok(Wake::Settings(s)) => {
                if settings.is_none() {
                    next = Instant::now() + s.map_or(Duration::ZERO, |s| s.interval);
                }
                settings = s;
            }
            Ok(Wake::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {}
        }
    }
}

pub use crate::config::rebalances;

fn pass(
    s: &RebalanceSettings,
    pools: &dyn Pools,
    workers: &Broadcast,
    memory: &mut Vec<Memory>,
    stats: &Mutex<Vec<RebalanceStats>>,
) {
    let routes = pools.pools();
    let mut budget = (f64::from(s.max_per_second) * s.interval.as_secs_f64()).max(1.0) as u32;
    let mut quotas: Vec<(u32, u32)> = Vec::new();
    let mut figures = stats.lock().unwrap_or_else(|e| e.into_inner());
    memory.retain(|m| routes.iter().any(|r| *r.name == *m.route));
    figures.retain(|f| routes.iter().any(|r| *r.name == *f.route));
    for route in routes.iter().filter(|r| rebalances(&r.balancing)) {
        let name = &*route.name;
        let m = match memory.iter().position(|m| m.route == name) {
            Some(i) => &mut memory[i],
            None => {
                memory.push(Memory {
                    route: name.to_string(),
                    last: None,
                    moving: None,
                });
                memory.last_mut().expect("just pushed")
            }
        };
        let f = match figures.iter().position(|f| f.route == name) {
            Some(i) => &mut figures[i],
            None => {
                figures.push(RebalanceStats {
                    route: name.to_string(),
                    ..RebalanceStats::default()
                });
                figures.last_mut().expect("just pushed")
            }
        };
        // What the last pass's quotas became: asked minus left over.
        if let Some((shed, asked)) = m.last.take() {
            let left: u32 = shed
                .left()
                .iter()
                .filter(|(b, _)| asked.iter().any(|(a, _)| a == b))
                .map(|&(_, n)| n)
                .sum();
            let asked: u32 = asked.iter().map(|&(_, n)| n).sum();
            let moved = u64::from(asked - left.min(asked));
            f.moved += moved;
            if let Some((total, _)) = &mut m.moving {
                *total += moved;
            }
        }
        let snap = route.pool.snapshot();
        let weights = route
            .backends
            .iter()
            .map(|b| (b.addr, b.weight))
            .collect::<Vec<_>>();
        let loads: Vec<Load> = snap
            .backends
            .iter()
            .map(|b| Load {
                open: b.stats.open(),
                weight: weights
                    .iter()
                    .find(|(a, _)| *a == b.addr)
                    .map_or(1, |&(_, w)| w),
                up: b.health.is_up(),
            })
            .collect();
        let Some(p) = plan(&loads, s.tolerance, budget) else {
            continue;
        };
        f.spread = p.spread;
        let counts = || {
            loads
                .iter()
                .map(|l| l.open.to_string())
                .collect::<Vec<_>>()
                .join("/")
        };
        if p.close.is_empty() {
            if let Some((moved, passes)) = m.moving.take() {
                tracing::info!(
                    route = name,
                    spread = format!("{:.0}%", p.spread * 100.0),
                    open = counts(),
                    "rebalancing: route within tolerance again after {passes} passes, {moved} connections moved"
                );
            }
            continue;
        }
        let asked: Vec<(u32, u32)> = p
            .close
            .iter()
            .map(|&(i, n)| (snap.backends[i].id, n))
            .collect();
        let n: u32 = asked.iter().map(|&(_, n)| n).sum();
        budget -= n.min(budget);
        f.passes += 1;
        let moving = m.moving.get_or_insert((0, 0));
        moving.1 += 1;
        tracing::info!(
            route = name,
            spread = format!("{:.0}%", p.spread * 100.0),
            tolerance = format!("{:.0}%", s.tolerance * 100.0),
            open = counts(),
            "rebalancing: closing {n} connections (1012) of {}",
            p.close
                .iter()
                .map(|&(i, n)| format!("{} ({n})", snap.backends[i].addr))
                .collect::<Vec<_>>()
                .join(", ")
        );
        quotas.extend(&asked);
        m.last = Some((Arc::new(Shed::new(Vec::new())), asked));
        if budget == 0 {
            break;
        }
    }
    drop(figures);
    if quotas.is_empty() {
        return;
    }
    // One shed for the whole pass; each route remembers it to count what it found.
    let shed = Arc::new(Shed::new(quotas));
    for m in memory.iter_mut() {
        if let Some((s, _)) = &mut m.last {
            *s = shed.clone();
        }
    }
    workers.send(Control::Shed(shed));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loads(open: &[u64]) -> Vec<Load> {
        open.iter()
            .map(|&open| Load {
                open,
                weight: 1,
                up: true,
            })
            .collect()
    }

    #[test]
    fn a_new_empty_backend_gets_its_share_from_the_loaded_ones() {
        let p = plan(&loads(&[150, 150, 0]), 0.2, 1000).unwrap();
        assert!((p.spread - 0.5).abs() < 1e-9);
        assert_eq!(p.close, [(0, 50), (1, 50)]);
        // The budget is shared by excess.
        let p = plan(&loads(&[150, 150, 0]), 0.2, 20).unwrap();
        assert_eq!(p.close, [(0, 10), (1, 10)]);
        let p = plan(&loads(&[200, 100, 0]), 0.2, 30).unwrap();
        assert_eq!(p.close, [(0, 30)], "only the one above tolerance: {p:?}");
    }

    #[test]
    fn within_tolerance_or_nothing_to_move_closes_nothing() {
        assert_eq!(plan(&loads(&[110, 100, 90]), 0.2, 100).unwrap().close, []);
        assert_eq!(
            plan(&loads(&[1, 0]), 0.2, 100).unwrap().close,
            [],
            "no ping-pong"
        );
        assert_eq!(plan(&loads(&[2, 1, 0]), 0.2, 100).unwrap().close, [(0, 1)]);
        assert_eq!(plan(&loads(&[0, 0]), 0.2, 100), None);
        assert_eq!(plan(&loads(&[10]), 0.2, 100), None);
    }

    #[test]
    fn shares_follow_weights_and_down_backends_are_left_out() {
        let mut l = loads(&[100, 100, 50]);
        l[0].weight = 2; // share 125 of 250 (weights 2:1:1): under it
        let p = plan(&l, 0.2, 1000).unwrap();
        assert_eq!(p.close, [(1, 37)], "{p:?}");
        let mut l = loads(&[150, 150, 0]);
        l[2].up = false;
        assert_eq!(plan(&l, 0.2, 1000).unwrap().close, []);
    }
}
