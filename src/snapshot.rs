//! A value the control plane replaces whole and every worker reads: [`Published`] (the
//! shared side, with a generation) and [`Cached`] (one worker's copy, fetched again only
//! when the generation moved). A pool's backends, the route table and the TLS server
//! config are each one of these.
//!
//! # When a worker sees a new value
//! At its next [`Cached::current`] after [`Published::replace`] returned: the safe point is
//! wherever the worker asks (the start of a backend pick, of routing a request, of a TLS
//! handshake), never in the middle of a use. What a worker already took (an `Rc` or `Arc`
//! of the old value) stays as it was until that use ends: a connection keeps the backend
//! list, route and certificate it started with.
//!
//! # Why the hot path is one load
//! `current` reads the generation (one shared atomic load, on a line written only by a
//! replacement) and compares it with the one its copy was made at; only when it moved does
//! it take the lock and copy again. Nothing on the hot path writes to shared memory, so
//! workers on other cores never take a cache line from each other here.
//!
//! # Why the ordering is right
//! `replace` stores the new value under the lock, then moves the generation with
//! `Release`; `current` loads the generation with `Acquire` before it locks. A worker that
//! sees generation `n` therefore reads (under the lock) a value at least as new as the
//! `n`-th replacement: never an older one labelled `n`, which it would keep until the
//! next replacement. It may read a newer one (a replacement landed between its load and
//! its lock); it then labels it `n`, sees `n + 1` at its next use and copies again: one
//! spare copy, never a stale value kept. The same order (generation, then value) holds
//! when a [`Cached`] is made.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The shared side: the current value, replaced whole, and its generation.
#[derive(Debug)]
pub struct Published<T> {
    current: Mutex<Arc<T>>,
    /// Moves at each replacement; each [`Cached`] compares it with its copy's.
    generation: AtomicU64,
}

impl<T> Published<T> {
    pub fn new(value: Arc<T>) -> Self {
        Self {
            current: Mutex::new(value),
            generation: AtomicU64::new(0),
        }
    }

    /// The current value. Takes the lock: for the control plane, background threads and
    /// tests; workers go through their [`Cached`].
    pub fn load(&self) -> Arc<T> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every worker uses `value` from its next [`Cached::current`] on. Replacements are
    /// the control plane's (reloads), which makes them one at a time; one that reads the
    /// current value to build the next holds a lock of its own across both.
    pub fn replace(&self, value: Arc<T>) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = value;
        // Release pairs with the Acquire in `Cached::current` (see the module doc).
        self.generation.fetch_add(1, Ordering::Release);
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

/// One worker's view of a [`Published`] value: its own copy `L` (made from the shared
/// `Arc<T>` by a function given once), and the generation it was made at. Not `Sync`:
/// each worker has its own.
#[derive(Debug)]
pub struct Cached<T, L = Arc<T>> {
    shared: Arc<Published<T>>,
    /// Makes the worker's copy of a new value: e.g. an `Rc` of a clone, so that taking a
    /// reference per connection counts on a worker-local line, not on one every worker
    /// writes.
    local: fn(Arc<T>) -> L,
    cached: RefCell<(u64, L)>,
}

impl<T> Cached<T, Arc<T>> {
    /// A view whose copy is the shared `Arc` itself (each use clones it: one increment
    /// of a count every worker shares).
    pub fn new(shared: Arc<Published<T>>) -> Self {
        Self::with(shared, |v| v)
    }
}

impl<T, L: Clone> Cached<T, L> {
    /// A view whose copy of each value is `local(value)`.
    pub fn with(shared: Arc<Published<T>>, local: fn(Arc<T>) -> L) -> Self {
        let g = shared.generation();
        let copy = local(shared.load());
        Self {
            shared,
            local,
            cached: RefCell::new((g, copy)),
        }
    }

    /// The value to use now: the worker's copy, made again only when a replacement
    /// happened since the last one (then under the shared lock, once per worker and
    /// replacement).
    #[inline]
    pub fn current(&self) -> L {
        let g = self.shared.generation();
        let mut c = self.cached.borrow_mut();
        if c.0 != g {
            *c = (g, (self.local)(self.shared.load()));
        }
        c.1.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn a_worker_sees_a_replacement_at_its_next_use() {
        let shared = Arc::new(Published::new(Arc::new(1)));
        let view = Cached::new(shared.clone());
        let held = view.current();
        assert_eq!(*held, 1);
        shared.replace(Arc::new(2));
        assert_eq!(*view.current(), 2);
        assert_eq!(*held, 1, "what a use took stays as it was");
        shared.replace(Arc::new(3));
        shared.replace(Arc::new(4));
        assert_eq!(*view.current(), 4, "several replacements: the last");
    }

    #[test]
    fn the_copy_is_made_once_per_replacement() {
        // `local` makes a worker-local copy; counting the copies through the value's own
        // strong count: each copy holds the shared Arc once.
        let shared = Arc::new(Published::new(Arc::new(String::from("a"))));
        let view: Cached<String, Rc<Arc<String>>> = Cached::with(shared.clone(), Rc::new);
        let first = view.current();
        for _ in 0..10 {
            assert!(
                Rc::ptr_eq(&first, &view.current()),
                "unchanged: the same copy"
            );
        }
        shared.replace(Arc::new(String::from("b")));
        let second = view.current();
        assert!(!Rc::ptr_eq(&first, &second));
        assert_eq!(second.as_str(), "b");
        assert!(Rc::ptr_eq(&second, &view.current()));
    }

    #[test]
    fn views_made_after_a_replacement_start_from_it() {
        let shared = Arc::new(Published::new(Arc::new(1)));
        shared.replace(Arc::new(2));
        let view = Cached::new(shared.clone());
        assert_eq!(*view.current(), 2);
        assert_eq!(*shared.load(), 2);
    }

    #[test]
    fn a_replacement_on_another_thread_reaches_the_worker() {
        let shared = Arc::new(Published::new(Arc::new(0u32)));
        let view = Cached::new(shared.clone());
        let writer = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                for i in 1..=100 {
                    shared.replace(Arc::new(i));
                }
            })
        };
        let mut last = 0;
        while !writer.is_finished() {
            let v = *view.current();
            assert!(v >= last, "a worker never goes back to an older value");
            last = v;
            std::thread::yield_now();
        }
        writer.join().unwrap();
        assert_eq!(
            *view.current(),
            100,
            "the last replacement, once it returned"
        );
    }
}
