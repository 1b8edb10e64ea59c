//! A model's fingerprint: 64-bit FNV-1a over some bytes (a config, options)
//! and every weight's name, shape and bits. Stable across processes,
//! builds and platforms: what a stream snapshot is checked against, and
//! what the ranks of a distributed run compare at start-up.

use crate::weights::{self, Walk};

/// The fingerprint of `parts`.
pub fn of_bytes(parts: &[&[u8]]) -> u64 {
    let mut h = Fnv::default();
    parts.iter().for_each(|part| h.bytes(part));
    h.0
}

/// The fingerprint of `parts` followed by `model`'s weights.
pub fn fingerprint(parts: &[&[u8]], model: &mut impl Walk) -> u64 {
    let mut h = Fnv::default();
    parts.iter().for_each(|part| h.bytes(part));
    for (name, (shape, values)) in weights::tensors(model) {
        h.bytes(name.as_bytes());
        shape
            .iter()
            .for_each(|&d| h.bytes(&(d as u64).to_le_bytes()));
        values
            .iter()
            .for_each(|v| h.bytes(&v.to_bits().to_le_bytes()));
    }
    h.0
}

/// 64-bit FNV-1a.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}
