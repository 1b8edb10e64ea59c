//! `shifted:G`: LongLoRA's S2-Attn without its wrap-around leak. Heads
//! `h < Hq/2` group positions as `p / G`, the others as `(p + G/2) / G`; a
//! pair is allowed inside one group.

use super::{same_group, Classes, Ctx, KeySpan, Rows, Rule, TileKind};
use crate::KernelError;

/// Groups of `group` positions, shifted by half a group in the second half
/// of the heads.
pub(super) struct Shifted(pub usize);

impl Shifted {
    /// Group offset of the context's head: `0` for `h < Hq/2`, `G/2` after.
    fn shift(&self, cx: Ctx) -> i64 {
        if cx.head >= cx.shape.heads_q / 2 {
            (self.0 / 2) as i64
        } else {
            0
        }
    }
}

impl Rule for Shifted {
    fn check(&self) -> Result<(), KernelError> {
        super::at_least_one(self.0, "shifted group")
    }

    fn interval(&self, cx: Ctx, ip: i64) -> (i64, i64) {
        let (g, s) = (self.0 as i64, self.shift(cx));
        let start = (ip + s).div_euclid(g) * g - s;
        (start, start + g - 1)
    }

    fn key_spans(&self, cx: Ctx, rows: &Rows, end: i64, out: &mut Vec<KeySpan>) {
        let (g, s) = (self.0 as i64, self.shift(cx));
        let (ga, gb) = ((rows.a + s).div_euclid(g), (rows.b + s).div_euclid(g));
        super::contiguous(ga * g - s, (gb + 1) * g - s, end, out);
    }

    fn classify(&self, cx: Ctx, rows: &Rows, keys: &KeySpan) -> TileKind {
        let (g, s) = (self.0 as i64, self.shift(cx));
        let group = |p: i64| (p + s).div_euclid(g);
        let (c, d) = (keys.start as i64, keys.last() as i64);
        same_group(group(rows.a), group(rows.b), group(c), group(d))
    }

    fn classes(&self) -> Classes {
        Classes::Halves
    }
}
