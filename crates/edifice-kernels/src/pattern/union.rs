//! `A|B|...`: every pair that any member allows, each member under the
//! pattern's causal cut: e.g. local + global + strided is one pattern and
//! one kernel call, with tiles still classified (and skipped) as a whole.
//! Composed generically from the members' own rules.

use super::{disjoint_spans, Classes, Ctx, KeySpan, PatternKind, Rows, Rule, ScoreTile, TileKind};
use super::{MAX_TILE_KEYS, MAX_TILE_ROWS};
use crate::{AttnShape, KernelError};

/// The union of `members`.
pub(super) struct Union<'a>(pub &'a [PatternKind]);

impl Rule for Union<'_> {
    fn check(&self) -> Result<(), KernelError> {
        if self.0.is_empty() {
            return Err(KernelError::Pattern(
                "a union needs at least one pattern".into(),
            ));
        }
        self.0
            .iter()
            .try_for_each(|k| with_rule!(k, r => r.check()))
    }

    fn validate(&self, shape: &AttnShape, causal: bool) -> Result<(), KernelError> {
        self.0
            .iter()
            .try_for_each(|k| with_rule!(k, r => r.validate(shape, causal)))
    }

    fn interval(&self, _: Ctx, _: i64) -> (i64, i64) {
        (i64::MIN, i64::MAX)
    }

    fn allowed(&self, cx: Ctx, i: usize, j: usize) -> bool {
        self.0
            .iter()
            .any(|k| with_rule!(k, r => r.allowed(cx, i, j)))
    }

    fn exact(&self, _: Ctx, _: &KeySpan) -> bool {
        false
    }

    /// A pair survives if some member keeps it: each member's own (fast)
    /// masking runs on a probe tile and the union of what they keep is
    /// applied. Tiles wider than [`MAX_TILE_KEYS`] use the predicate.
    fn mask_tile(&self, cx: Ctx, tile: ScoreTile) {
        if tile.keys.len > MAX_TILE_KEYS {
            tile.by_predicate(|i, j| self.allowed(cx, i, j));
            return;
        }
        mask_by_members(self.0, cx, tile);
    }

    fn key_spans(&self, cx: Ctx, rows: &Rows, end: i64, out: &mut Vec<KeySpan>) {
        let mut parts = Vec::new();
        for k in self.0 {
            with_rule!(k, r => r.key_spans(cx, rows, end, &mut parts));
        }
        disjoint_spans(&parts, out);
    }

    fn classify(&self, cx: Ctx, rows: &Rows, keys: &KeySpan) -> TileKind {
        let mut kind = TileKind::Empty;
        for k in self.0 {
            match with_rule!(k, r => r.classify(cx, rows, keys)) {
                TileKind::Full => return TileKind::Full,
                TileKind::Partial => kind = TileKind::Partial,
                TileKind::Empty => {}
            }
        }
        kind
    }

    fn classes(&self) -> Classes {
        let mut members = self.0.iter().map(|k| with_rule!(k, r => r.classes()));
        if members.any(|c| c == Classes::PerBatchHead) {
            Classes::PerBatchHead
        } else {
            Classes::PerHead
        }
    }
}

/// [`Union::mask_tile`] through the members. Kept out of line so its
/// 40 KiB of stack is only touched by unions.
#[inline(never)]
fn mask_by_members(members: &[PatternKind], cx: Ctx, tile: ScoreTile) {
    let (n_rows, rows, keys, ld) = (tile.n_rows(), tile.rows, tile.keys, tile.ld);
    let cells = keys.len * n_rows;
    let mut keep = [false; MAX_TILE_ROWS * MAX_TILE_KEYS];
    let mut probe = [0f32; MAX_TILE_ROWS * MAX_TILE_KEYS];
    for k in members {
        probe[..cells].fill(0.0);
        let probe_tile = ScoreTile {
            rows,
            keys,
            scores: &mut probe[..cells],
            ld: n_rows,
        };
        with_rule!(k, r => r.mask_tile(cx, probe_tile));
        for (kept, &p) in keep.iter_mut().zip(&probe[..cells]) {
            *kept |= p == 0.0;
        }
    }
    for t in 0..keys.len {
        let col = &mut tile.scores[t * ld..t * ld + n_rows];
        for (score, &kept) in col.iter_mut().zip(&keep[t * n_rows..(t + 1) * n_rows]) {
            if !kept {
                *score = f32::NEG_INFINITY;
            }
        }
    }
}
