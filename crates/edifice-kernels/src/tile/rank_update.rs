//! The one register-blocked micro-kernel behind four products.

use std::ops::Range;

use super::{Bounds, KeyRows, TILE_Q};
use crate::simd::{Operand, Simd};

/// What the rows of a [`RankUpdate`] are, in the key-major score buffer
/// `a[j * TILE_Q + i]` that feeds it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RowsAre {
    /// Rows are queries `i`, the sum runs over keys `j` (P·V, dS·K).
    Queries,
    /// Rows are keys `j`, the sum runs over queries `i` (Pᵀ·dO, dSᵀ·Q).
    Keys,
}

/// A register-blocked rank update, the one shape behind P·V (forward),
/// dS·K (dQ), Pᵀ·dO (dV) and dSᵀ·Q (dK):
///
/// ```text
/// out[r, :] = alpha[r] · out[r, :] + Σ_{t ∈ red} a(r, t) · b[t·b_stride, :]
/// ```
///
/// for rows `r < rows`, with `a(r, t)` read from the key-major score buffer
/// as [`RowsAre`] says, and `out` rows `out_stride` apart and `D` wide.
pub(crate) struct RankUpdate<'a, T = f32> {
    a: &'a [T],
    rows_are: RowsAre,
    b: &'a [T],
    b_stride: usize,
    rows: usize,
    /// The reduction range, in operand elements ([`Operand::TERMS`] terms
    /// each)...
    red: Range<usize>,
    /// ...narrowed per block of rows to the keys they read (rows are query
    /// rows of a partial tile).
    bounds: Option<&'a Bounds>,
    /// Per-row factor on `out` before the update (`None`: 1).
    alpha: Option<&'a [f32]>,
}

impl<'a, T: Operand> RankUpdate<'a, T> {
    /// `out[i, :] = alpha[i] · out[i, :] + Σ_j a[j·TILE_Q + i] · rows[j, :]`
    /// for the first `n_rows` query rows of a tile over its `n_keys` keys:
    /// P·V (forward) and dS·K (dQ). With pairs, `j` counts pairs of keys.
    /// `bounds` narrows each block of rows to the keys they read.
    pub(crate) fn by_queries(
        a: &'a [T],
        rows: KeyRows<'a, T>,
        n_keys: usize,
        n_rows: usize,
        bounds: Option<&'a Bounds>,
        alpha: Option<&'a [f32]>,
    ) -> Self {
        RankUpdate {
            a,
            rows_are: RowsAre::Queries,
            b: rows.data,
            b_stride: rows.stride,
            rows: n_rows,
            red: 0..n_keys.div_ceil(T::TERMS),
            bounds,
            alpha,
        }
    }

    /// `out[j, :] += Σ_i a[j·TILE_Q + i] · b[i, :]` over the `n_rows` query
    /// rows of a tile (`b` holds them contiguous): Pᵀ·dO into dV and dSᵀ·Q
    /// into dK, rows `j` of one key tile.
    pub(crate) fn by_keys(a: &'a [T], b: &'a [T], n_keys: usize, n_rows: usize) -> Self {
        RankUpdate {
            a,
            rows_are: RowsAre::Keys,
            b,
            b_stride: b.len() / n_rows,
            rows: n_keys,
            red: 0..n_rows,
            bounds: None,
            alpha: None,
        }
    }

    /// Applies the update to `out` (`d` columns; rows `out_stride` apart).
    #[inline(always)]
    pub(crate) fn apply<S: Simd>(&self, simd: S, d: usize, out: &mut [f32], out_stride: usize) {
        // The strides into `a` are compile-time constants: with run-time
        // strides the forward pass measured 35% slower.
        match self.rows_are {
            RowsAre::Queries => self.columns::<S, 1, TILE_Q>(simd, d, out, out_stride),
            RowsAre::Keys => self.columns::<S, TILE_Q, 1>(simd, d, out, out_stride),
        }
    }

    #[inline(always)]
    fn columns<S: Simd, const A_ROW: usize, const A_RED: usize>(
        &self,
        simd: S,
        d: usize,
        out: &mut [f32],
        out_stride: usize,
    ) {
        const MR: usize = 4;
        let nv = if S::LANES == 8 { 2 } else { 4 };
        debug_assert!(d.is_multiple_of(S::LANES));
        let vectors = d / S::LANES;
        let mut c0 = 0;
        while c0 < vectors {
            let n = nv.min(vectors - c0);
            for r0 in (0..self.rows).step_by(MR) {
                match n {
                    4 => self.block::<S, MR, 4, A_ROW, A_RED>(simd, r0, c0, out, out_stride),
                    3 => self.block::<S, MR, 3, A_ROW, A_RED>(simd, r0, c0, out, out_stride),
                    2 => self.block::<S, MR, 2, A_ROW, A_RED>(simd, r0, c0, out, out_stride),
                    _ => self.block::<S, MR, 1, A_ROW, A_RED>(simd, r0, c0, out, out_stride),
                }
            }
            c0 += n;
        }
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn block<S: Simd, const MR: usize, const NV: usize, const A_ROW: usize, const A_RED: usize>(
        &self,
        simd: S,
        r0: usize,
        c0: usize,
        out: &mut [f32],
        out_stride: usize,
    ) {
        let col = c0 * S::LANES;
        let red = match self.bounds {
            Some(b) => {
                let keys = b.union(r0..(r0 + MR).min(self.rows));
                keys.start / T::TERMS..keys.end.div_ceil(T::TERMS)
            }
            None => self.red.clone(),
        };
        // A last partial block repeats its last row: the same values are
        // computed and stored twice.
        let row = |r: usize| (r0 + r).min(self.rows - 1);
        let last = row(MR - 1);
        // One check per register block (against its MR·NV·|red| products)
        // keeps this safe function sound in release builds.
        assert!(
            self.rows > 0
                && (red.is_empty()
                    || ((red.end - 1) * self.b_stride + col + NV * S::LANES <= self.b.len()
                        && last * A_ROW + (red.end - 1) * A_RED < self.a.len()))
                && last * out_stride + col + NV * S::LANES <= out.len(),
            "rank update block out of bounds"
        );
        // SAFETY: the assertion above bounds every a, b and out element the
        // block touches (rows up to `last`, reductions up to `red.end`).
        unsafe {
            // Plain loops, not `array::from_fn`: closures do not inherit the
            // target features, and one that LLVM declines to inline turns
            // every intrinsic in it into a call (measured 35% slower).
            let o = out.as_mut_ptr().add(col);
            let mut acc = [[simd.splat(0.0); NV]; MR];
            for r in 0..MR {
                let at = o.add(row(r) * out_stride);
                for c in 0..NV {
                    acc[r][c] = simd.load(at.add(c * S::LANES));
                }
                if let Some(alpha) = self.alpha {
                    let f = simd.splat(alpha[row(r)]);
                    for c in 0..NV {
                        acc[r][c] = simd.mul(acc[r][c], f);
                    }
                }
            }
            let a = self.a.as_ptr();
            let bp = self.b.as_ptr().add(col);
            let mut bv = [T::zero(simd); NV];
            for t in red {
                for c in 0..NV {
                    bv[c] = T::load(simd, bp.add(t * self.b_stride + c * S::LANES));
                }
                for r in 0..MR {
                    let ab = T::splat(simd, a.add(row(r) * A_ROW + t * A_RED));
                    for c in 0..NV {
                        acc[r][c] = T::madd(simd, acc[r][c], ab, bv[c]);
                    }
                }
            }
            for r in 0..MR {
                for c in 0..NV {
                    simd.store(o.add(row(r) * out_stride + c * S::LANES), acc[r][c]);
                }
            }
        }
    }
}
