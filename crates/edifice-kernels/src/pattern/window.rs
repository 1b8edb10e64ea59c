//! `window:W`: `|i' - j| <= W - 1` (with causal: Edifice's `window_mask`).

use super::{distance_range, Ctx, KeySpan, Rows, Rule, TileKind};
use crate::KernelError;

/// Keys within `window - 1` positions of the query.
pub(super) struct Window(pub usize);

impl Rule for Window {
    fn interval(&self, _: Ctx, ip: i64) -> (i64, i64) {
        let w = self.0 as i64;
        (ip - (w - 1), ip + (w - 1))
    }

    fn key_spans(&self, _: Ctx, rows: &Rows, end: i64, out: &mut Vec<KeySpan>) {
        let w = self.0 as i64;
        super::contiguous(rows.a - (w - 1), rows.b + w, end, out);
    }

    fn classify(&self, _: Ctx, rows: &Rows, keys: &KeySpan) -> TileKind {
        let (min, max) = distance_range(rows, keys);
        let w = self.0 as i64;
        TileKind::from_bounds(max < w, min >= w)
    }

    fn check(&self) -> Result<(), KernelError> {
        super::at_least_one(self.0, "window")
    }
}
