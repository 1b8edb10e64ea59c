//! `full`: every pair.

use super::{Ctx, KeySpan, Rows, Rule, TileKind};

/// Every pair.
pub(super) struct Full;

impl Rule for Full {
    fn interval(&self, _: Ctx, _: i64) -> (i64, i64) {
        (i64::MIN, i64::MAX)
    }

    fn key_spans(&self, _: Ctx, _: &Rows, end: i64, out: &mut Vec<KeySpan>) {
        super::contiguous(0, end, end, out);
    }

    fn classify(&self, _: Ctx, _: &Rows, _: &KeySpan) -> TileKind {
        TileKind::Full
    }
}
