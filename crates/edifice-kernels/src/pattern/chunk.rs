//! `chunk:C`: `i' / C == j / C` (with causal: DualChunk's intra-chunk
//! attention).

use super::{same_group, Ctx, KeySpan, Rows, Rule, TileKind};
use crate::KernelError;

/// Pairs inside one chunk of `chunk` positions.
pub(super) struct Chunk(pub usize);

impl Rule for Chunk {
    fn check(&self) -> Result<(), KernelError> {
        super::at_least_one(self.0, "chunk")
    }

    fn interval(&self, _: Ctx, ip: i64) -> (i64, i64) {
        let c = self.0 as i64;
        let g = ip.div_euclid(c) * c;
        (g, g + c - 1)
    }

    fn key_spans(&self, _: Ctx, rows: &Rows, end: i64, out: &mut Vec<KeySpan>) {
        let c = self.0 as i64;
        let (lo, hi) = (rows.a.div_euclid(c) * c, (rows.b.div_euclid(c) + 1) * c);
        super::contiguous(lo, hi, end, out);
    }

    fn classify(&self, _: Ctx, rows: &Rows, keys: &KeySpan) -> TileKind {
        let g = self.0 as i64;
        let (c, d) = (keys.start as i64, keys.last() as i64);
        same_group(rows.a.div_euclid(g), rows.b.div_euclid(g), c / g, d / g)
    }
}
