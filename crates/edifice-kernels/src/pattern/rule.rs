//! The [`Rule`] every pattern kind implements, the context it is evaluated
//! in, head classes, and the helpers the kinds share.

use super::{KeySpan, Rows, TileKind, MAX_TILE_ROWS};
use crate::{AttnShape, KernelError};

/// Where a rule is evaluated: the attention's shape, the (batch, query
/// head), and whether the causal cut applies.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ctx<'a> {
    pub shape: &'a AttnShape,
    pub batch: usize,
    pub head: usize,
    pub causal: bool,
    /// The aligned position of query row 0.
    pub offset: i64,
}

/// Which (batch, head)s share a tile map: one value per kind, from which
/// the class count, a head's class and a class's representative follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Classes {
    /// Every (batch, head) alike.
    One,
    /// Heads by `head mod stride`.
    Residues(usize),
    /// The first and the second half of the heads.
    Halves,
    /// Each head alike across the batch.
    PerHead,
    /// Each (batch, head) its own.
    PerBatchHead,
    /// Each batch element its own copy of the classes of a per-head rule.
    PerBatch(HeadClasses),
}

/// The classes of a rule whose tile map does not depend on the batch
/// element, so that [`Classes::PerBatch`] can repeat them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HeadClasses {
    One,
    Residues(usize),
    Halves,
    PerHead,
}

impl Classes {
    /// These classes, split per batch element.
    pub(super) fn per_batch(self) -> Classes {
        let heads = match self {
            Classes::One => HeadClasses::One,
            Classes::Residues(stride) => HeadClasses::Residues(stride),
            Classes::Halves => HeadClasses::Halves,
            Classes::PerHead => HeadClasses::PerHead,
            Classes::PerBatchHead | Classes::PerBatch(_) => return self,
        };
        Classes::PerBatch(heads)
    }

    /// The per-head classes that [`Classes::PerBatch`] repeats.
    fn of_heads(heads: HeadClasses) -> Classes {
        match heads {
            HeadClasses::One => Classes::One,
            HeadClasses::Residues(stride) => Classes::Residues(stride),
            HeadClasses::Halves => Classes::Halves,
            HeadClasses::PerHead => Classes::PerHead,
        }
    }

    /// Number of classes.
    pub(super) fn count(self, shape: &AttnShape) -> usize {
        match self {
            Classes::One => 1,
            Classes::Residues(stride) => stride.min(shape.heads_q),
            Classes::Halves => 2,
            Classes::PerHead => shape.heads_q,
            Classes::PerBatchHead => shape.batch * shape.heads_q,
            Classes::PerBatch(heads) => shape.batch * Self::of_heads(heads).count(shape),
        }
    }

    /// The class of (batch, head).
    #[inline]
    pub(super) fn of(self, shape: &AttnShape, batch: usize, head: usize) -> usize {
        match self {
            Classes::One => 0,
            Classes::Residues(stride) => head % stride,
            Classes::Halves => usize::from(head >= shape.heads_q / 2),
            Classes::PerHead => head,
            Classes::PerBatchHead => batch * shape.heads_q + head,
            Classes::PerBatch(heads) => {
                let inner = Self::of_heads(heads);
                batch * inner.count(shape) + inner.of(shape, batch, head)
            }
        }
    }

    /// A (batch, head) of `class`.
    pub(super) fn representative(self, shape: &AttnShape, class: usize) -> (usize, usize) {
        match self {
            Classes::One => (0, 0),
            Classes::Residues(_) | Classes::PerHead => (0, class),
            Classes::Halves => (0, if class == 0 { 0 } else { shape.heads_q / 2 }),
            Classes::PerBatchHead => (class / shape.heads_q, class % shape.heads_q),
            Classes::PerBatch(heads) => {
                let inner = Self::of_heads(heads);
                let n = inner.count(shape);
                (class / n, inner.representative(shape, class % n).1)
            }
        }
    }
}

/// The scores of a partial tile to mask: key-major, the score of row
/// `rows.first + i` and key `keys.key(t)` at `scores[t * ld + i]`.
pub(crate) struct ScoreTile<'a> {
    pub rows: &'a Rows,
    pub keys: &'a KeySpan,
    pub scores: &'a mut [f32],
    pub ld: usize,
}

impl ScoreTile<'_> {
    /// Query rows in the tile.
    pub(super) fn n_rows(&self) -> usize {
        self.rows.last - self.rows.first + 1
    }

    /// Sets to `-inf` the scores of every key at or past `end`.
    pub(super) fn cut_keys(&mut self, end: usize) {
        let n_rows = self.n_rows();
        for t in 0..self.keys.len {
            if self.keys.key(t) >= end {
                self.scores[t * self.ld..t * self.ld + n_rows].fill(f32::NEG_INFINITY);
            }
        }
    }

    /// Sets to `-inf` every score whose (row, key) `allowed` refuses.
    pub(super) fn by_predicate(self, allowed: impl Fn(usize, usize) -> bool) {
        let n_rows = self.rows.last - self.rows.first + 1;
        for t in 0..self.keys.len {
            let j = self.keys.key(t);
            let col = &mut self.scores[t * self.ld..t * self.ld + n_rows];
            for (i, score) in col.iter_mut().enumerate() {
                if !allowed(self.rows.first + i, j) {
                    *score = f32::NEG_INFINITY;
                }
            }
        }
    }
}

/// What a pattern kind means (see the module docs). Intervals and spans are
/// before the causal cut, which the defaults and [`Pattern`] apply.
pub(crate) trait Rule {
    /// Rejects zero sizes.
    fn check(&self) -> Result<(), KernelError> {
        Ok(())
    }

    /// Checks the rule against an attention shape (beyond [`Rule::check`]).
    fn validate(&self, _shape: &AttnShape, _causal: bool) -> Result<(), KernelError> {
        Ok(())
    }

    /// The inclusive range of keys the contiguous part of the rule allows
    /// for aligned position `ip`; empty when `lo > hi`.
    fn interval(&self, cx: Ctx, ip: i64) -> (i64, i64);

    /// Keys every query reads, whatever its position.
    fn key_always(&self, _cx: Ctx, _j: usize) -> bool {
        false
    }

    /// Whether [`Rule::interval`] alone is the rule on contiguous `keys`.
    fn exact(&self, _cx: Ctx, _keys: &KeySpan) -> bool {
        true
    }

    /// The predicate for query row `i` and key `j`, causal cut included.
    #[inline]
    fn allowed(&self, cx: Ctx, i: usize, j: usize) -> bool {
        let ip = i as i64 + cx.offset;
        let (lo, hi) = cut(cx, self.interval(cx, ip), ip);
        let j64 = j as i64;
        (lo <= j64 && j64 <= hi) || (self.key_always(cx, j) && (!cx.causal || j64 <= ip))
    }

    /// Sets to `-inf` every score of a partial tile whose pair is not
    /// allowed, from the intervals (one per row) and the always-read keys.
    fn mask_tile(&self, cx: Ctx, tile: ScoreTile) {
        let (n_rows, rows, keys, ld) = (tile.n_rows(), tile.rows, tile.keys, tile.ld);
        assert!(n_rows <= MAX_TILE_ROWS, "a tile of {n_rows} rows");
        let mut bounds = [(0i64, 0i64); MAX_TILE_ROWS];
        for (i, b) in bounds[..n_rows].iter_mut().enumerate() {
            let ip = rows.a + i as i64;
            *b = cut(cx, self.interval(cx, ip), ip);
        }
        for t in 0..keys.len {
            let j = keys.key(t) as i64;
            let always = self.key_always(cx, j as usize);
            let col = &mut tile.scores[t * ld..t * ld + n_rows];
            for (i, (score, &(lo, hi))) in col.iter_mut().zip(&bounds[..n_rows]).enumerate() {
                let ip = rows.a + i as i64;
                let ok = (lo <= j && j <= hi) || (always && (!cx.causal || j <= ip));
                if !ok {
                    *score = f32::NEG_INFINITY;
                }
            }
        }
    }

    /// Appends disjoint spans holding every key in `0..end` that any of
    /// `rows` may read.
    fn key_spans(&self, cx: Ctx, rows: &Rows, end: i64, out: &mut Vec<KeySpan>);

    /// The tile kind of `rows × keys` under the rule alone (no causal cut).
    fn classify(&self, cx: Ctx, rows: &Rows, keys: &KeySpan) -> TileKind;

    /// Which (batch, head)s share a tile map.
    fn classes(&self) -> Classes {
        Classes::One
    }
}

/// `(lo, hi)` with the causal cut applied for aligned position `ip`.
#[inline]
pub(super) fn cut(cx: Ctx, (lo, hi): (i64, i64), ip: i64) -> (i64, i64) {
    (lo, if cx.causal { hi.min(ip) } else { hi })
}

/// Pushes keys `lo..hi`, clamped to `0..end`, when any remain.
pub(super) fn contiguous(lo: i64, hi: i64, end: i64, out: &mut Vec<KeySpan>) {
    let (lo, hi) = (lo.clamp(0, end), hi.clamp(0, end));
    if hi > lo {
        out.push(KeySpan {
            start: lo as usize,
            step: 1,
            len: (hi - lo) as usize,
        });
    }
}

/// `Ok` unless a size that must be positive is zero.
pub(super) fn at_least_one(value: usize, what: &str) -> Result<(), KernelError> {
    if value == 0 {
        return Err(KernelError::Pattern(format!("{what} must be at least 1")));
    }
    Ok(())
}

/// Smallest and largest `|i' - j|` over `rows` and the keys of `keys`.
pub(super) fn distance_range(rows: &Rows, keys: &KeySpan) -> (i64, i64) {
    let (c, d) = (keys.start as i64, keys.last() as i64);
    let max = (rows.b - c).abs().max((rows.a - d).abs());
    let min = if d < rows.a {
        rows.a - d
    } else if c > rows.b {
        c - rows.b
    } else {
        0
    };
    (min, max)
}

/// Tile kind for "same group" rules: rows in groups `ra..=rb`, keys in `ka..=kb`.
pub(super) fn same_group(ra: i64, rb: i64, ka: i64, kb: i64) -> TileKind {
    TileKind::from_bounds(ra == rb && ka == kb && ra == ka, rb < ka || kb < ra)
}
