//! The ring's table of sources: a slot per relay direction (its socket, what its pump wants
//! of the receive, whether one is in flight, how it ended, the task waiting on it), the
//! chunks queued on each, and the lists of free and starved slots. Bookkeeping only: the
//! caller (`mod.rs`) does what a change asks of the kernel (arm, cancel).

use std::io;
use std::os::fd::RawFd;
use std::task::{Poll, Waker};

use super::{Next, PAUSE_AT};

/// [`Slot::end`] of a source that has not ended.
const OPEN: i32 = 1;
/// End of a slot's chunk list.
const NIL: u16 = u16::MAX;

/// What a slot's pump wants of its receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Want {
    /// Keep receiving.
    Run,
    /// Paused: re-arm once the pump has taken the chunks.
    Pause,
    /// Stop for good: the pump goes back to its own buffers.
    Stop,
    /// The relay closed its [`Source`](super::Source): the slot is freed once no receive
    /// is in flight.
    Closed,
}

struct Slot {
    waker: Option<Waker>,
    fd: RawFd,
    head: u16,
    tail: u16,
    queued: u16,
    want: Want,
    /// A receive is in flight (its last completion, without `IORING_CQE_F_MORE`, is not
    /// reaped yet).
    armed: bool,
    /// The source ended: 0 for its end of stream, or a negative errno; [`OPEN`] while it
    /// has not (a plain `i32`: with an `Option` the slot would not fit 32 bytes).
    end: i32,
}

/// Every relay direction on the ring has a slot: 9,900 idle connections hold 19,800.
const _: () = assert!(std::mem::size_of::<Slot>() <= 32);

impl Slot {
    fn new(fd: RawFd) -> Self {
        Self {
            waker: None,
            fd,
            head: NIL,
            tail: NIL,
            queued: 0,
            want: Want::Run,
            armed: false,
            end: OPEN,
        }
    }

    /// Its pump wants a receive and none is in flight or can come: it runs, is not armed
    /// and has not ended.
    fn due(&self) -> bool {
        self.want == Want::Run && !self.armed && self.end == OPEN
    }
}

/// What became of a buffer a completion brought to a slot ([`Slots::queue`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Queued {
    /// The source is closed: the buffer goes back to the ring.
    Closed,
    /// Queued for the pump.
    Yes,
    /// Queued, and the slot now holds [`PAUSE_AT`] chunks while its receive runs: it is
    /// paused, and the caller cancels the receive (see "Backpressure" in `mod.rs`).
    Pause,
}

/// How a slot's receive ended ([`Slots::ended`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    /// It found the ring empty (`ENOBUFS`) while its pump wants it running: the slot is
    /// filed as starved, to re-arm as buffers come back.
    Starved,
    /// The kernel ended it for its own reasons (a full completion queue) while its pump
    /// wants it running: the caller re-arms it, unless a trim or the worker's end says not.
    Unasked,
    /// Its source was closed: the slot is free again, and no task waits on it.
    Freed,
    /// Anything else (an end of stream, an error, a cancel that was asked): its pump is
    /// woken to see it.
    Other,
}

/// Every slot of a ring, by id (a source's id), and the chunks queued on them.
pub(super) struct Slots {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Per buffer id: the bytes its completion brought, and the next chunk of its slot.
    chunks: Vec<(u32, u16)>,
    /// Slots whose receive ended with `ENOBUFS`, to re-arm as buffers come back.
    starved: Vec<u32>,
}

impl Slots {
    /// The table of a ring of `buffers` buffers.
    pub(super) fn new(buffers: u16) -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            chunks: vec![(0, NIL); usize::from(buffers)],
            starved: Vec::new(),
        }
    }

    /// A slot for a new source reading `fd`, its receive not armed yet: a free slot if
    /// there is one.
    pub(super) fn open(&mut self, fd: RawFd) -> u32 {
        match self.free.pop() {
            Some(id) => {
                // A free slot is closed and has no receive in flight (its last completion
                // was reaped): nothing of its old source can reach it.
                let old = &self.slots[id as usize];
                debug_assert!(old.want == Want::Closed && !old.armed);
                self.slots[id as usize] = Slot::new(fd);
                id
            }
            None => {
                self.slots.push(Slot::new(fd));
                (self.slots.len() - 1) as u32
            }
        }
    }

    /// Slot `id`'s first receive could not be queued: it is free again at once, closed
    /// before it goes back to the free list, so that nothing re-arms it (a trim re-arms
    /// open slots that want to run; its socket is read elsewhere now).
    pub(super) fn abandon(&mut self, id: u32) {
        self.slots[id as usize].want = Want::Closed;
        self.free.push(id);
    }

    /// Slot `id`'s receive is being queued: marks it in flight and says which socket.
    pub(super) fn arming(&mut self, id: u32) -> RawFd {
        let s = &mut self.slots[id as usize];
        s.armed = true;
        s.fd
    }

    /// Slot `id`'s receive could not be queued after all ([`Slots::arming`]).
    pub(super) fn not_armed(&mut self, id: u32) {
        self.slots[id as usize].armed = false;
    }

    /// A completion brought `len` bytes (at least one) in buffer `bid` to slot `id`;
    /// `more`: its receive goes on. Pauses a running receive whose slot now holds
    /// [`PAUSE_AT`] chunks.
    pub(super) fn queue(&mut self, id: u32, bid: u16, len: u32, more: bool) -> Queued {
        let s = &mut self.slots[id as usize];
        if s.want == Want::Closed {
            return Queued::Closed;
        }
        self.chunks[usize::from(bid)] = (len, NIL);
        if s.tail == NIL {
            s.head = bid;
        } else {
            self.chunks[usize::from(s.tail)].1 = bid;
        }
        s.tail = bid;
        s.queued += 1;
        if s.queued >= PAUSE_AT && s.want == Want::Run && more {
            s.want = Want::Pause;
            return Queued::Pause;
        }
        Queued::Yes
    }

    /// Slot `id`'s receive posted its last completion (no `IORING_CQE_F_MORE`), with
    /// result `res`.
    pub(super) fn ended(&mut self, id: u32, res: i32) -> Ended {
        let s = &mut self.slots[id as usize];
        s.armed = false;
        if res == -libc::ENOBUFS {
            if s.want == Want::Run {
                self.starved.push(id);
                return Ended::Starved;
            }
        } else if res == 0 {
            s.end = 0;
        } else if res < 0 && res != -libc::ECANCELED {
            s.end = res;
        } else if res > 0 && s.want == Want::Run {
            return Ended::Unasked;
        }
        if s.want == Want::Closed {
            self.free.push(id);
            return Ended::Freed;
        }
        Ended::Other
    }

    /// The task waiting on slot `id`, to wake.
    pub(super) fn take_waker(&mut self, id: u32) -> Option<Waker> {
        self.slots[id as usize].waker.take()
    }

    /// Takes the first chunk queued on slot `id`: its buffer id and length.
    pub(super) fn pop(&mut self, id: u32) -> Option<(u16, u32)> {
        let s = &mut self.slots[id as usize];
        if s.head == NIL {
            return None;
        }
        let bid = s.head;
        let (len, next) = self.chunks[usize::from(bid)];
        s.head = next;
        if next == NIL {
            s.tail = NIL;
        }
        s.queued -= 1;
        Some((bid, len))
    }

    /// Slot `id` runs again if it is paused, its last receive has ended and its pump has
    /// taken every chunk (see "Backpressure" in `mod.rs`); true if it is to be re-armed
    /// (its source has not ended).
    pub(super) fn resume_if_drained(&mut self, id: u32) -> bool {
        let s = &mut self.slots[id as usize];
        let drained = s.want == Want::Pause && !s.armed && s.queued == 0;
        if drained {
            s.want = Want::Run;
        }
        drained && s.end == OPEN
    }

    /// How slot `id`'s source ended, or that its receive stopped as asked; otherwise
    /// `Pending`, and `waker` is woken by the slot's next completion.
    ///
    /// Pending: the waker it replaced comes back with it, for the caller to drop once the
    /// slots are no longer borrowed (dropping a task's last waker may drop its future, and
    /// with it a `Chunk` whose drop borrows the slots again).
    pub(super) fn poll_end(&mut self, id: u32, waker: &Waker) -> (Poll<Next>, Option<Waker>) {
        let s = &mut self.slots[id as usize];
        if s.end != OPEN {
            let end = Next::End(match s.end {
                0 => Ok(()),
                e => Err(io::Error::from_raw_os_error(-e)),
            });
            return (Poll::Ready(end), None);
        }
        // (`Closed` cannot be seen here: `close` takes the source.)
        if !s.armed && matches!(s.want, Want::Stop | Want::Closed) {
            return (Poll::Ready(Next::Stopped), None);
        }
        (Poll::Pending, s.waker.replace(waker.clone()))
    }

    /// Slot `id`'s receive stops for good: `None` if it was asked already (by an earlier
    /// chunk of the same large frame), else whether the caller must cancel it.
    pub(super) fn stop(&mut self, id: u32) -> Option<bool> {
        let s = &mut self.slots[id as usize];
        if s.want == Want::Stop {
            return None;
        }
        let was = std::mem::replace(&mut s.want, Want::Stop);
        // A pause's cancel is already on its way.
        Some(s.armed && was != Want::Pause)
    }

    /// Slot `id`'s source is closed (its chunks taken already): the slot is free at once
    /// if no receive is in flight, else once its last completion is reaped. Whether the
    /// caller must cancel that receive, and the slot's waker, for the caller to drop once
    /// the slots are no longer borrowed (see [`Slots::poll_end`]).
    pub(super) fn close(&mut self, id: u32) -> (bool, Option<Waker>) {
        let s = &mut self.slots[id as usize];
        let waker = s.waker.take();
        let was = std::mem::replace(&mut s.want, Want::Closed);
        if !s.armed {
            self.free.push(id);
            return (false, waker);
        }
        // A pause's or a stop's cancel is already on its way.
        (was == Want::Run, waker)
    }

    /// Slot `id`'s receive could not be armed: its source ends with `errno`. The task
    /// waiting on it, to wake.
    pub(super) fn fail(&mut self, id: u32, errno: i32) -> Option<Waker> {
        let s = &mut self.slots[id as usize];
        s.end = -errno;
        s.waker.take()
    }

    /// The next slot filed as starved.
    pub(super) fn pop_starved(&mut self) -> Option<u32> {
        self.starved.pop()
    }

    /// Slot `id`'s pump wants a receive and none is in flight: it runs, is not armed and
    /// has not ended.
    pub(super) fn due(&self, id: u32) -> bool {
        self.slots[id as usize].due()
    }

    /// Every slot [`Slots::due`].
    pub(super) fn all_due(&self) -> Vec<u32> {
        (self.slots.iter().enumerate())
            .filter(|(_, s)| s.due())
            .map(|(id, _)| id as u32)
            .collect()
    }

    /// Every slot with a receive in flight.
    pub(super) fn armed(&self) -> Vec<u32> {
        (self.slots.iter().enumerate())
            .filter(|(_, s)| s.armed)
            .map(|(id, _)| id as u32)
            .collect()
    }

    pub(super) fn any_armed(&self) -> bool {
        self.slots.iter().any(|s| s.armed)
    }

    /// Drops every waiting task's waker (the worker's runtime may be going away).
    pub(super) fn forget_wakers(&mut self) {
        for s in &mut self.slots {
            s.waker = None;
        }
    }
}

/// What the tests look at.
#[cfg(test)]
impl Slots {
    /// Slot `id`'s receive is in flight, what its pump wants, and the chunks it holds.
    pub(super) fn state(&self, id: u32) -> (bool, Want, u16) {
        let s = &self.slots[id as usize];
        (s.armed, s.want, s.queued)
    }

    pub(super) fn starved(&self) -> usize {
        self.starved.len()
    }

    /// Every slot is closed and has no receive in flight.
    pub(super) fn all_free(&self) -> bool {
        (self.slots.iter()).all(|s| s.want == Want::Closed && !s.armed)
    }
}
