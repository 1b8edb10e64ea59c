//! `strided:S:L`: `|i' - j| < L` or `j mod S == h mod S`: a local band plus
//! a strided residue class that shifts by one position per head, so the
//! heads together cover every offset (shifted sparse attention).

use super::{distance_range, Classes, Ctx, KeySpan, Rows, Rule, TileKind};
use crate::KernelError;

/// A band of `local` keys on each side plus every `stride`-th key.
pub(super) struct Strided {
    pub stride: usize,
    pub local: usize,
}

impl Strided {
    /// The residue class the context's head reads.
    fn residue(&self, cx: Ctx) -> usize {
        cx.head % self.stride
    }
}

/// Does the span contain a position `j` with `j mod stride == residue`?
/// Answers `true` when unsure.
fn hits_residue(keys: &KeySpan, stride: usize, residue: usize) -> bool {
    if keys.step == 1 {
        let first = keys.start + (residue + stride - keys.start % stride) % stride;
        first <= keys.last()
    } else if keys.step.is_multiple_of(stride) {
        keys.start % stride == residue
    } else {
        true
    }
}

impl Rule for Strided {
    fn check(&self) -> Result<(), KernelError> {
        super::at_least_one(self.stride, "stride")
    }

    fn interval(&self, _: Ctx, ip: i64) -> (i64, i64) {
        let l = self.local as i64;
        (ip - (l - 1), ip + (l - 1))
    }

    fn key_always(&self, cx: Ctx, j: usize) -> bool {
        j % self.stride == self.residue(cx)
    }

    fn exact(&self, cx: Ctx, keys: &KeySpan) -> bool {
        !hits_residue(keys, self.stride, self.residue(cx))
    }

    fn key_spans(&self, cx: Ctx, rows: &Rows, end: i64, out: &mut Vec<KeySpan>) {
        let l = self.local as i64;
        // The band holds every key within `local` of some row; the strided
        // keys outside it come as spans of step `stride`, so no key is
        // visited twice.
        let (band_lo, band_hi) = if l > 0 {
            ((rows.a - (l - 1)).clamp(0, end), (rows.b + l).clamp(0, end))
        } else {
            let at = rows.a.clamp(0, end);
            (at, at)
        };
        let s = self.stride as i64;
        let residue = self.residue(cx) as i64;
        let mut strided = |lo: i64, hi: i64| {
            let first = lo + (residue - lo).rem_euclid(s);
            if first < hi {
                let len = ((hi - 1 - first) / s + 1) as usize;
                out.push(KeySpan {
                    start: first as usize,
                    step: self.stride,
                    len,
                });
            }
        };
        strided(0, band_lo);
        strided(band_hi, end);
        super::contiguous(band_lo, band_hi, end, out);
    }

    fn classify(&self, cx: Ctx, rows: &Rows, keys: &KeySpan) -> TileKind {
        let residue = self.residue(cx);
        if keys.step.is_multiple_of(self.stride) && keys.start % self.stride == residue {
            return TileKind::Full;
        }
        let (min, max) = distance_range(rows, keys);
        let l = self.local as i64;
        TileKind::from_bounds(
            max < l,
            min >= l && !hits_residue(keys, self.stride, residue),
        )
    }

    fn classes(&self) -> Classes {
        Classes::Residues(self.stride)
    }
}
