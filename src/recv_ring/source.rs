//! What a relay pump holds of the ring: its [`Source`] (a slot id), the [`Chunk`]s it
//! takes (a provided buffer out of the ring each), and [`Next`], what waiting gives it.

use std::io;

use super::RecvRing;

/// One socket's receive through the ring, held by the relay pump reading it: its slot,
/// 4 bytes, since every idle connection carries two. It has no `Drop`: the relay hands it
/// back with [`RecvRing::close`] when it ends (relays are not dropped midway; at a
/// worker's end the ring goes with everything else, and closing the ring cancels what is
/// left).
#[must_use]
#[derive(Debug)]
pub struct Source(std::num::NonZeroU32);

impl Source {
    pub(super) fn new(id: u32) -> Self {
        Self(std::num::NonZeroU32::new(id + 1).expect("slot ids stay below u32::MAX"))
    }

    pub(super) fn id(&self) -> u32 {
        self.0.get() - 1
    }
}

/// What a source's next step is.
pub enum Next {
    Chunk(Chunk),
    /// End of stream (`Ok`) or a receive error.
    End(io::Result<()>),
    /// The receive stopped as asked ([`RecvRing::stop`]): read the socket directly now.
    Stopped,
}

/// Bytes one completion put in a provided buffer; puts the buffer back in the ring when
/// dropped. A write op takes it as its buffer (monoio's `IoBuf`).
pub struct Chunk {
    ring: RecvRing,
    bid: u16,
    len: u32,
}

impl Chunk {
    /// Buffer `bid` of `ring`, out of the ring since a completion put `len` bytes in it.
    pub(super) fn new(ring: RecvRing, bid: u16, len: u32) -> Self {
        Self { ring, bid, len }
    }

    pub fn bytes(&self) -> &[u8] {
        self.ring.chunk_bytes(self.bid, self.len)
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        self.ring.give_back(self.bid);
    }
}

// SAFETY: the pointer is the chunk's buffer, which stays out of the ring, unchanged and
// mapped while the chunk lives (it goes back only in `drop`, and the mapping lives as
// long as the ring, which the chunk keeps alive).
#[allow(unsafe_code)]
unsafe impl monoio::buf::IoBuf for Chunk {
    fn read_ptr(&self) -> *const u8 {
        self.bytes().as_ptr()
    }

    fn bytes_init(&self) -> usize {
        self.len as usize
    }
}
