//! The soak's messages: a seeded generator, payloads rebuilt from (seed, connection, seq)
//! so a mismatch can be diagnosed without keeping what was sent, the hash each echo is
//! checked by, and the masked frame a client sends.

/// SplitMix64: small, seedable, and good enough to pick sizes, spells and bytes. The soak
/// must be reproducible from its printed seed, so nothing here reads the clock.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// A generator for one (slot, generation, seq) triple, independent of the others.
    pub fn derive(seed: u64, a: u64, b: u64, c: u64) -> Self {
        let mut r = Rng(seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        r.0 ^= r.next_u64() ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        r.0 ^= r.next_u64() ^ c.wrapping_mul(0x1656_67B1_9E37_79F9);
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

/// Largest message: 64 KiB, which needs the 8-byte length form of the frame header.
pub const MAX_SIZE: usize = 64 << 10;

/// Sizes on the edges the relay and the receive ring care about: the frame header's length
/// forms (125/126, 65535/65536), the ring's 4 KiB buffers, the relay's 16 KiB buffer.
const EDGES: [usize; 14] = [
    1, 2, 125, 126, 127, 4095, 4096, 4097, 8192, 16383, 16384, 16385, 65535, 65536,
];

/// One message's size: 1 in 8 an edge, else log-uniform over 1 B..64 KiB (as many
/// messages under 256 B as over 4 KiB, so the load stays light enough for 9,900
/// connections on a shared machine and still crosses every buffer size).
pub fn size(rng: &mut Rng) -> usize {
    if rng.below(8) == 0 {
        return EDGES[rng.below(EDGES.len() as u64) as usize];
    }
    let x = ((MAX_SIZE as f64 + 1.0).ln() * rng.unit()).exp() as usize;
    x.clamp(1, MAX_SIZE)
}

/// What a client remembers of a message it sent until the echo arrives.
#[derive(Clone, Copy)]
pub struct Sent {
    pub seq: u64,
    pub len: usize,
    pub text: bool,
    pub hash: u64,
    /// Sent while its connection's reader was stalled (the stall client).
    pub stalled: bool,
}

/// The payload of message `seq` of generation `gen` of slot `slot`: an ASCII tag
/// `#slot.gen.seq;` (cut to the size), then random bytes, or for text random valid UTF-8
/// (ASCII with 2-, 3- and 4-byte characters mixed in). The tag names the message's owner,
/// so an echo delivered to the wrong connection shows as such.
pub fn payload(
    seed: u64,
    slot: usize,
    generation: u64,
    seq: u64,
    len: usize,
    text: bool,
) -> Vec<u8> {
    // Valid UTF-8 by construction: the tag is ASCII and each character is encoded whole.
    let mut v = format!("#{slot}.{generation}.{seq};").into_bytes();
    v.truncate(len);
    v.reserve(len - v.len());
    let mut r = Rng::derive(seed, slot as u64, generation, seq);
    if !text {
        while v.len() < len {
            let w = r.next_u64().to_le_bytes();
            let n = (len - v.len()).min(8);
            v.extend_from_slice(&w[..n]);
        }
        return v;
    }
    const CHARS: [char; 4] = ['x', 'é', '€', '🦀'];
    while v.len() < len {
        let w = r.next_u64();
        let c = if w & 3 != 0 {
            // Mostly printable ASCII.
            char::from(b' ' + (w >> 8) as u8 % 95)
        } else {
            CHARS[(w >> 8) as usize % 4]
        };
        if c.len_utf8() <= len - v.len() {
            let mut b = [0; 4];
            v.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
        }
    }
    v
}

/// A 64-bit hash of a payload, 8 bytes per step: any changed, zeroed or missing byte
/// changes it (with probability 1 - 2^-64), and it costs little next to the copies.
pub fn hash(data: &[u8]) -> u64 {
    let mut h = 0x243F_6A88_85A3_08D3u64 ^ data.len() as u64;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        h = (h ^ u64::from_le_bytes(c.try_into().unwrap()))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(29);
    }
    for &b in chunks.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3);
    }
    h ^ (h >> 32)
}

/// A masked frame (FIN set) with a mask from `rng`, as a client must send it.
pub fn masked_frame(payload: &[u8], opcode: u8, rng: &mut Rng) -> Vec<u8> {
    let mask = (rng.next_u64() as u32).to_be_bytes();
    crate::client::encode_with_mask(payload, opcode, mask)
}

/// How an echo differs from what was sent, for the report's sample lines.
pub fn describe_mismatch(expected: &[u8], got: &[u8]) -> String {
    let common = expected.len().min(got.len());
    let diff: Vec<usize> = (0..common).filter(|&i| expected[i] != got[i]).collect();
    let zeroed = diff.iter().filter(|&&i| got[i] == 0).count();
    let tag = |p: &[u8]| {
        let end = p.iter().position(|&b| b == b';').unwrap_or(0).min(40);
        String::from_utf8_lossy(&p[..end]).into_owned()
    };
    format!(
        "sent {} B, echoed {} B; {} bytes differ (first at {}, last at {}), {} of them zero; \
         echo's tag {:?}",
        expected.len(),
        got.len(),
        diff.len(),
        diff.first().map_or("-".into(), |i| i.to_string()),
        diff.last().map_or("-".into(), |i| i.to_string()),
        zeroed,
        tag(got),
    )
}
