//! Tile geometry shared by every pattern kind: how a tile relates to a
//! pattern, key spans, bands of query rows, and making overlapping spans
//! disjoint.

/// How a tile of (rows × keys) relates to a pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TileKind {
    /// No pair is allowed: skip the tile.
    Empty,
    /// Some pairs are allowed: evaluate the predicate per element.
    Partial,
    /// Every pair is allowed: no predicate needed.
    Full,
}

impl TileKind {
    pub(super) fn and(self, other: TileKind) -> TileKind {
        match (self, other) {
            (TileKind::Empty, _) | (_, TileKind::Empty) => TileKind::Empty,
            (TileKind::Full, TileKind::Full) => TileKind::Full,
            _ => TileKind::Partial,
        }
    }

    pub(super) fn from_bounds(all: bool, none: bool) -> TileKind {
        if none {
            TileKind::Empty
        } else if all {
            TileKind::Full
        } else {
            TileKind::Partial
        }
    }
}

/// Key positions `start, start + step, ..., start + (len - 1) * step`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeySpan {
    /// First key position.
    pub start: usize,
    /// Distance between consecutive keys (1 = contiguous).
    pub step: usize,
    /// Number of keys.
    pub len: usize,
}

impl KeySpan {
    /// The last key position (`len` must be non-zero).
    pub fn last(&self) -> usize {
        self.start + (self.len - 1) * self.step
    }

    /// The `t`-th key position.
    #[inline]
    pub fn key(&self, t: usize) -> usize {
        self.start + t * self.step
    }

    /// The span as consecutive tiles of at most `tile_k` keys.
    #[inline]
    pub fn tiles(self, tile_k: usize) -> impl Iterator<Item = KeySpan> {
        (0..self.len).step_by(tile_k).map(move |t| KeySpan {
            start: self.key(t),
            step: self.step,
            len: tile_k.min(self.len - t),
        })
    }
}

/// A band of query rows: rows `first..=last`, at aligned positions `a..=b`.
#[derive(Clone, Copy, Debug)]
pub struct Rows {
    /// First query row (unaligned index into q).
    pub first: usize,
    /// Last query row, inclusive.
    pub last: usize,
    /// Aligned position of `first`.
    pub a: i64,
    /// Aligned position of `last`.
    pub b: i64,
}

impl Rows {
    /// Rows `first..=last` whose row 0 sits at aligned position `off`
    /// ([`Pattern::rows`](crate::Pattern::rows) knows it for a shape).
    pub fn new(off: i64, first: usize, last: usize) -> Self {
        Rows {
            first,
            last,
            a: first as i64 + off,
            b: last as i64 + off,
        }
    }
}

/// `[lo, hi)` ranges sorted and merged.
fn merge_ranges(mut ranges: Vec<(usize, usize)>) -> Vec<(usize, usize)> {
    ranges.sort_unstable();
    let mut out: Vec<(usize, usize)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match out.last_mut() {
            Some(last) if lo <= last.1 => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// Appends to `out` disjoint spans covering every key of `parts` (which may
/// overlap). Stepped spans of one residue class stay stepped, with the
/// contiguous ranges cut out of them; stepped spans of several classes are
/// widened to contiguous ranges (still a cover: the predicate decides).
pub(super) fn disjoint_spans(parts: &[KeySpan], out: &mut Vec<KeySpan>) {
    let classes: std::collections::BTreeSet<(usize, usize)> = parts
        .iter()
        .filter(|s| s.step > 1)
        .map(|s| (s.step, s.start % s.step))
        .collect();
    let stepped_class = (classes.len() == 1).then(|| *classes.iter().next().expect("one class"));
    let (stepped, contiguous): (Vec<&KeySpan>, Vec<&KeySpan>) = parts
        .iter()
        .filter(|s| s.len > 0)
        .partition(|s| s.step > 1 && stepped_class.is_some());
    let ranges = merge_ranges(contiguous.iter().map(|s| (s.start, s.last() + 1)).collect());
    if let Some((step, residue)) = stepped_class {
        let next_in_class = |p: usize| p + (residue + step - p % step) % step;
        let mut push = |lo: usize, hi: usize| {
            if lo < hi {
                out.push(KeySpan {
                    start: lo,
                    step,
                    len: (hi - 1 - lo) / step + 1,
                });
            }
        };
        for (lo, hi) in merge_ranges(stepped.iter().map(|s| (s.start, s.last() + 1)).collect()) {
            let mut at = lo;
            for &(a, b) in ranges.iter().filter(|&&(a, b)| b > lo && a < hi) {
                push(at, a.max(at));
                at = at.max(next_in_class(b));
            }
            push(at, hi);
        }
    }
    out.extend(ranges.into_iter().map(|(lo, hi)| KeySpan {
        start: lo,
        step: 1,
        len: hi - lo,
    }));
}
