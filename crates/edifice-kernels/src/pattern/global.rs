//! `global:G`: BigBird's global tokens. Keys `j < G` are read by every
//! query, and queries at aligned positions `i' < G` read every key (the
//! causal cut, if any, still applies).

use super::{Ctx, KeySpan, Rows, Rule, TileKind};

/// The first `tokens` positions are global.
pub(super) struct Global(pub usize);

impl Rule for Global {
    fn interval(&self, _: Ctx, ip: i64) -> (i64, i64) {
        if ip < self.0 as i64 {
            (i64::MIN, i64::MAX)
        } else {
            (1, 0)
        }
    }

    fn key_always(&self, _: Ctx, j: usize) -> bool {
        j < self.0
    }

    fn exact(&self, _: Ctx, keys: &KeySpan) -> bool {
        keys.start >= self.0
    }

    fn key_spans(&self, _: Ctx, rows: &Rows, end: i64, out: &mut Vec<KeySpan>) {
        let hi = if rows.a < self.0 as i64 {
            end
        } else {
            self.0 as i64
        };
        super::contiguous(0, hi, end, out);
    }

    fn classify(&self, _: Ctx, rows: &Rows, keys: &KeySpan) -> TileKind {
        let g = self.0 as i64;
        let (c, d) = (keys.start as i64, keys.last() as i64);
        TileKind::from_bounds(d < g || rows.b < g, c >= g && rows.a >= g)
    }
}
