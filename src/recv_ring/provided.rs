//! The provided buffers of a worker's receive ring: one anonymous mapping cut into equal
//! buffers, and the ring of their ids the kernel picks from (`IORING_REGISTER_PBUF_RING`).
//!
//! # Ownership
//! A buffer is either in the ring (the kernel may fill it at any time) or out of it: from
//! the completion that names it until the [`super::Chunk`] holding it is dropped, which
//! puts it back at the ring's tail. Nothing else writes a buffer's memory, and only the
//! worker's thread touches the ring (its tail is published with a release store, the
//! kernel reads it with an acquire load).

use std::cell::Cell;
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;

/// Where the ring's tail lives: `resv` of its first entry (see `Provided::publish`).
const TAIL_OFFSET: usize = 14;
const _: () = assert!(std::mem::size_of::<BufRingEntry>() == 16);

/// An anonymous private mapping, unmapped on drop unless told to stay ([`Provided::keep`]).
struct Mapping {
    ptr: *mut u8,
    len: usize,
    keep: Cell<bool>,
}

impl Mapping {
    #[allow(unsafe_code)]
    fn new(len: usize) -> io::Result<Self> {
        // SAFETY: a fresh anonymous mapping; no existing memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
            keep: Cell::new(false),
        })
    }
}

impl Drop for Mapping {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        if self.keep.get() {
            return;
        }
        // SAFETY: `ptr`/`len` is the mapping made in `new`, and nothing refers to it any
        // more: no `Chunk` (each keeps the ring, and so this mapping, alive), and not the
        // kernel, or the owner would have called `Provided::keep` (see `Drop for Inner`:
        // the buffer ring unregistered and every receive ended, or the mapping stays).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// The buffers and their ring.
pub(super) struct Provided {
    /// `entries` ring slots of 16 bytes, page-aligned as the kernel requires.
    ring: Mapping,
    /// `entries` buffers of `size` bytes.
    mem: Mapping,
    size: u32,
    entries: u16,
    /// Our copy of the ring's tail (the kernel keeps the head).
    tail: Cell<u16>,
    /// Buffers out of the ring (named by a completion, not yet given back).
    out: Cell<u32>,
}

impl Provided {
    /// `entries`: a power of two, at most 32 768 (the kernel's limit).
    pub(super) fn new(entries: u16, size: u32) -> io::Result<Self> {
        debug_assert!(entries.is_power_of_two() && entries <= 1 << 15);
        let ring = Mapping::new(usize::from(entries) * std::mem::size_of::<BufRingEntry>())?;
        let mem = Mapping::new(usize::from(entries) * size as usize)?;
        let p = Self {
            ring,
            mem,
            size,
            entries,
            tail: Cell::new(0),
            out: Cell::new(u32::from(entries)),
        };
        for bid in 0..entries {
            p.put(bid);
        }
        p.publish();
        Ok(p)
    }

    pub(super) fn ring_addr(&self) -> u64 {
        self.ring.ptr as u64
    }

    pub(super) fn entries(&self) -> u16 {
        self.entries
    }

    pub(super) fn size(&self) -> u32 {
        self.size
    }

    /// The first `len` bytes of buffer `bid`, as a completion filled them.
    #[allow(unsafe_code)]
    pub(super) fn bytes(&self, bid: u16, len: u32) -> &[u8] {
        debug_assert!(bid < self.entries && len <= self.size);
        // SAFETY: `bid` < `entries`, so the range lies in `mem`; the buffer is out of the
        // ring (its completion named it and it has not been given back), so the kernel no
        // longer writes it, and it received `len` bytes.
        unsafe {
            std::slice::from_raw_parts(
                self.mem.ptr.add(usize::from(bid) * self.size as usize),
                len as usize,
            )
        }
    }

    /// Buffers in the ring, as far as reaped completions tell.
    pub(super) fn free(&self) -> u32 {
        u32::from(self.entries) - self.out.get()
    }

    /// A completion took buffer `bid` out of the ring.
    pub(super) fn taken(&self) {
        self.out.set(self.out.get() + 1);
    }

    /// Puts buffer `bid` back at the ring's tail, for the kernel to fill again.
    pub(super) fn give(&self, bid: u16) {
        self.put(bid);
        self.publish();
    }

    #[allow(unsafe_code)]
    fn put(&self, bid: u16) {
        let tail = self.tail.get();
        let slot = usize::from(tail & (self.entries - 1));
        // SAFETY: `slot` < `entries`, so the entry's 16 bytes lie inside the ring mapping,
        // at offsets 0 (`addr`, u64), 8 (`len`, u32) and 12 (`bid`, u16) of the kernel's
        // `struct io_uring_buf`, each naturally aligned (the mapping is page-aligned). The
        // kernel reads only the entries between its head and the published tail; this one
        // is past the tail until `publish` (the buffer being given back is out, so the ring
        // holds at most `entries - 1`), so these writes race with nothing. They go through
        // raw pointers, not a `&mut` of the entry: slot 0's last two bytes are the live
        // tail, which the kernel may read at any time.
        unsafe {
            let entry = self
                .ring
                .ptr
                .add(slot * std::mem::size_of::<BufRingEntry>());
            let addr = self.mem.ptr as u64 + u64::from(bid) * u64::from(self.size);
            entry.cast::<u64>().write(addr);
            entry.add(8).cast::<u32>().write(self.size);
            entry.add(12).cast::<u16>().write(bid);
        }
        self.tail.set(tail.wrapping_add(1));
        self.out.set(self.out.get() - 1);
    }

    #[allow(unsafe_code)]
    fn publish(&self) {
        // SAFETY: the tail is the `resv` field of the ring's first entry, at byte 14 of the
        // 16-byte `struct io_uring_buf` (the kernel's `io_uring_buf_ring` layout: `addr`
        // u64, `len` u32, `bid` u16, then `resv`/`tail` u16), inside the ring mapping and
        // 2-byte aligned (the mapping is page-aligned). The pointer comes from the
        // mapping's raw pointer, not from a reference (io-uring's `BufRingEntry::tail`
        // goes through a `&u16`, which must not be written through). Only this thread
        // writes it (`put` never touches `resv`), the kernel reads it with an acquire
        // load; this release store makes the entries written before it visible first.
        let tail = unsafe { AtomicU16::from_ptr(self.ring.ptr.add(TAIL_OFFSET).cast::<u16>()) };
        tail.store(self.tail.get(), Ordering::Release);
    }

    /// Leaves both mappings in place when `self` is dropped: the kernel may still hold the
    /// buffer ring, or write or read a buffer (see `Drop for Inner`). A worker's end only.
    pub(super) fn keep(&self) {
        self.ring.keep.set(true);
        self.mem.keep.set(true);
    }

    /// Gives the buffers' pages back to the OS when every buffer is in the ring, and says
    /// whether it did. The kernel faults a page in again (zeroed) when it next fills that
    /// buffer.
    ///
    /// # Safety
    /// No request that may select a buffer of this ring is in flight (every receive has
    /// posted its last completion), and every completion naming a buffer has been reaped
    /// and counted ([`Provided::taken`]). Otherwise the kernel may have filled a buffer
    /// whose completion is not reaped yet, and its bytes would be zeroed before a pump
    /// forwards them (the trim race, issue 19: see `RecvRing::trim`).
    #[allow(unsafe_code)]
    pub(super) unsafe fn trim(&self) -> bool {
        if self.out.get() != 0 {
            return false;
        }
        // SAFETY: the whole buffer mapping, made in `new` and alive while `self` is. No
        // `Chunk` refers to a buffer (`out` is 0: each chunk holds one out), and by the
        // caller's promise the kernel neither holds a filled buffer whose completion is
        // unreaped nor can select one now, so discarding the pages' contents loses no
        // byte anyone will read.
        unsafe { libc::madvise(self.mem.ptr.cast(), self.mem.len, libc::MADV_DONTNEED) == 0 }
    }
}
