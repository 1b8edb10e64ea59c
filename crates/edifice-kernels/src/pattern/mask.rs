//! `mask`: an explicit boolean mask, `[Nq, Nk]` or `[B, Hq, Nq, Nk]`,
//! indexed by the query row itself (not its aligned position).

use std::sync::Arc;

use super::{Classes, Ctx, KeySpan, Rows, Rule, TileKind};
use crate::{AttnShape, KernelError};

/// A boolean attention mask, `true` = allowed.
///
/// Shapes: `[Nq, Nk]` (shared by every batch and head) or `[B, Hq, Nq, Nk]`.
#[derive(Clone, Debug, PartialEq)]
pub struct BoolMask {
    data: Arc<[bool]>,
    dims: Vec<usize>,
}

impl BoolMask {
    /// Wraps `data` laid out row-major with the given dims (rank 2 or 4).
    pub fn new(data: impl Into<Arc<[bool]>>, dims: &[usize]) -> Result<Self, KernelError> {
        let data = data.into();
        if dims.len() != 2 && dims.len() != 4 {
            return Err(KernelError::Mask(format!(
                "mask must have rank 2 [Nq, Nk] or 4 [B, Hq, Nq, Nk], got dims {dims:?}"
            )));
        }
        let n: usize = dims.iter().product();
        if n != data.len() {
            return Err(KernelError::Mask(format!(
                "mask dims {dims:?} hold {n} elements but {} were given",
                data.len()
            )));
        }
        Ok(Self {
            data,
            dims: dims.to_vec(),
        })
    }

    /// The mask's dims, `[Nq, Nk]` or `[B, Hq, Nq, Nk]`.
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// Whether each (batch, head) has its own mask.
    pub(super) fn per_head(&self) -> bool {
        self.dims.len() == 4
    }

    /// Row `i` of the mask for the context's (batch, head), `Nk` entries.
    #[inline]
    fn row(&self, cx: Ctx, i: usize) -> &[bool] {
        let nk = cx.shape.len_k;
        let plane = if self.per_head() {
            cx.batch * cx.shape.heads_q + cx.head
        } else {
            0
        };
        let start = (plane * cx.shape.len_q + i) * nk;
        &self.data[start..start + nk]
    }
}

/// The rule of a [`BoolMask`].
pub(super) struct MaskRule<'a>(pub &'a BoolMask);

impl Rule for MaskRule<'_> {
    fn validate(&self, shape: &AttnShape, _causal: bool) -> Result<(), KernelError> {
        let want: Vec<usize> = if self.0.per_head() {
            vec![shape.batch, shape.heads_q, shape.len_q, shape.len_k]
        } else {
            vec![shape.len_q, shape.len_k]
        };
        if self.0.dims != want {
            return Err(KernelError::Mask(format!(
                "mask has dims {:?} but the attention needs {want:?}",
                self.0.dims
            )));
        }
        Ok(())
    }

    fn interval(&self, _: Ctx, _: i64) -> (i64, i64) {
        (i64::MIN, i64::MAX)
    }

    fn allowed(&self, cx: Ctx, i: usize, j: usize) -> bool {
        let ip = i as i64 + cx.offset;
        (!cx.causal || j as i64 <= ip) && self.0.row(cx, i)[j]
    }

    fn exact(&self, _: Ctx, _: &KeySpan) -> bool {
        false
    }

    fn mask_tile(&self, cx: Ctx, tile: super::ScoreTile) {
        tile.by_predicate(|i, j| self.allowed(cx, i, j));
    }

    fn key_spans(&self, _: Ctx, _: &Rows, end: i64, out: &mut Vec<KeySpan>) {
        super::contiguous(0, end, end, out);
    }

    fn classify(&self, cx: Ctx, rows: &Rows, keys: &KeySpan) -> TileKind {
        let (mut any, mut all) = (false, true);
        for i in rows.first..=rows.last {
            let row = self.0.row(cx, i);
            for t in 0..keys.len {
                let ok = row[keys.key(t)];
                any |= ok;
                all &= ok;
            }
        }
        TileKind::from_bounds(all, !any)
    }

    fn classes(&self) -> Classes {
        if self.0.per_head() {
            Classes::PerBatchHead
        } else {
            Classes::One
        }
    }
}
