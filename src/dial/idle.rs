//! Each worker's idle backend connections for plain HTTP, reused by the next request to
//! the same backend. Worker-local (no lock, no cross-core traffic); at most `pool_size`,
//! the oldest dropped first; one idle longer than `pool_idle` is closed instead of reused
//! (a backend's keep-alive timeout is usually 5 to 75 s, so a stale one would fail).

use std::cell::RefCell;

use monoio::time::Instant;

use super::BackendConn;

#[derive(Default)]
pub struct IdleConns {
    idle: RefCell<Vec<(u32, Instant, BackendConn)>>,
}

impl std::fmt::Debug for IdleConns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdleConns({} idle)", self.idle.borrow().len())
    }
}

impl IdleConns {
    /// The most recently returned idle connection to `backend`, if one is fresh enough.
    pub fn take(&self, backend: u32, max_idle: std::time::Duration) -> Option<BackendConn> {
        let mut idle = self.idle.borrow_mut();
        let now = Instant::now();
        idle.retain(|(_, since, _)| now.duration_since(*since) < max_idle);
        let i = idle.iter().rposition(|(b, _, _)| *b == backend)?;
        Some(idle.remove(i).2)
    }

    /// Keeps `conn` for reuse (dropping the oldest when `max` are kept).
    pub fn put(&self, backend: u32, conn: BackendConn, max: usize) {
        if max == 0 {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        if idle.len() >= max {
            idle.remove(0);
        }
        idle.push((backend, Instant::now(), conn));
    }
}
