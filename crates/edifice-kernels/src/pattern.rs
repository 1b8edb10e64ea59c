//! Attention patterns: which (query, key) pairs a head may read.
//!
//! A [`Pattern`] is a mask predicate ([`Pattern::allowed`]) plus two pieces of
//! geometry that let the kernel avoid evaluating it almost everywhere (the idea
//! behind PyTorch FlexAttention's `BlockMask`):
//!
//! * [`Pattern::key_spans`] lists, for a band of query rows, disjoint spans of
//!   key positions (`start, start + step, ...`) that together hold every key
//!   any of those rows may read. Keys outside the spans are never visited.
//! * [`Pattern::classify`] decides, for a tile of rows × keys, whether every
//!   pair is allowed ([`TileKind::Full`], the predicate is skipped), none is
//!   ([`TileKind::Empty`], the tile is skipped), or some are
//!   ([`TileKind::Partial`], the predicate runs per element).
//!
//! `classify` may answer `Partial` when unsure; it must never answer `Full` or
//! `Empty` wrongly. The tests in `tests/tile_map.rs` check both properties
//! against the predicate for random shapes.
//!
//! # Positions
//! Queries are the last `Nq` positions of the key sequence: query row `i` sits
//! at the aligned position `i' = i + (Nk - Nq)` (bottom-right alignment, as in
//! FlashAttention). Every rule below is written in aligned positions, except
//! an explicit [`BoolMask`], which is indexed by the row `i` itself.

use std::sync::Arc;

use crate::{AttnShape, KernelError};

/// The most query rows one tile may have (the bound of the kernel's per-tile masking).
pub const MAX_TILE_ROWS: usize = 128;

/// Keys per tile up to which a union masks through its members' own rules
/// (wider tiles fall back to the predicate per pair).
const MAX_TILE_KEYS: usize = 64;

/// The sparsity rule of a [`Pattern`], for query head `h`, aligned query
/// position `i'` and key position `j`.
#[derive(Clone, Debug, PartialEq)]
pub enum PatternKind {
    /// Every pair.
    Full,
    /// `|i' - j| <= window - 1`. With `causal` this is Edifice's `window_mask`.
    Window {
        /// Number of positions a query sees on each side, itself included.
        window: usize,
    },
    /// `floor(i' / chunk) == floor(j / chunk)`. With `causal` this is
    /// DualChunk's intra-chunk attention.
    Chunk {
        /// Chunk length in positions.
        chunk: usize,
    },
    /// `|i' - j| < local` or `j mod stride == h mod stride`: a local band plus
    /// a strided residue class that shifts by one position per head, so the
    /// heads together cover every offset (shifted sparse attention).
    Strided {
        /// Distance between the strided keys of one head.
        stride: usize,
        /// Width of the local band (`0` turns it off).
        local: usize,
    },
    /// LongLoRA S2-Attn without its wrap-around leak: heads `h < Hq/2` group
    /// positions as `floor(p / group)`, heads `h >= Hq/2` as
    /// `floor((p + group/2) / group)`; a pair is allowed inside one group.
    Shifted {
        /// Group length in positions.
        group: usize,
    },
    /// An explicit boolean mask, `[Nq, Nk]` or `[B, Hq, Nq, Nk]`.
    Mask(BoolMask),
    /// BigBird's global tokens: keys `j < tokens` are read by every query,
    /// and queries at aligned positions `i' < tokens` read every key (the
    /// causal cut, if any, still applies).
    Global {
        /// Number of global positions at the start of the sequence.
        tokens: usize,
    },
    /// Every pair that any member allows, each member under the pattern's
    /// causal cut: e.g. local + global + strided is one pattern and one
    /// kernel call, with tiles still classified (and skipped) as a whole.
    Union(Vec<PatternKind>),
}

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

    fn per_head(&self) -> bool {
        self.dims.len() == 4
    }

    fn check(&self, shape: &AttnShape) -> Result<(), KernelError> {
        let want: Vec<usize> = if self.per_head() {
            vec![shape.batch, shape.heads_q, shape.len_q, shape.len_k]
        } else {
            vec![shape.len_q, shape.len_k]
        };
        if self.dims != want {
            return Err(KernelError::Mask(format!(
                "mask has dims {:?} but the attention needs {want:?}",
                self.dims
            )));
        }
        Ok(())
    }

    /// Row `i` of the mask for (batch, head), `Nk` entries.
    #[inline]
    fn row(&self, shape: &AttnShape, batch: usize, head: usize, i: usize) -> &[bool] {
        let nk = shape.len_k;
        let plane = if self.per_head() {
            batch * shape.heads_q + head
        } else {
            0
        };
        let start = (plane * shape.len_q + i) * nk;
        &self.data[start..start + nk]
    }
}

/// A sparsity rule plus an optional causal cut (`j <= i'`).
#[derive(Clone, Debug, PartialEq)]
pub struct Pattern {
    /// The rule.
    pub kind: PatternKind,
    /// Intersect the rule with `j <= i'`.
    pub causal: bool,
}

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
    fn and(self, other: TileKind) -> TileKind {
        match (self, other) {
            (TileKind::Empty, _) | (_, TileKind::Empty) => TileKind::Empty,
            (TileKind::Full, TileKind::Full) => TileKind::Full,
            _ => TileKind::Partial,
        }
    }

    fn from_bounds(all: bool, none: bool) -> TileKind {
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
    /// Rows `first..=last` of an attention of the given shape.
    pub fn new(shape: &AttnShape, first: usize, last: usize) -> Self {
        let off = shape.offset();
        Rows {
            first,
            last,
            a: first as i64 + off,
            b: last as i64 + off,
        }
    }
}

/// Smallest and largest `|i' - j|` over aligned rows `a..=b` and keys `c..=d`.
fn distance_range(rows: &Rows, c: i64, d: i64) -> (i64, i64) {
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
fn same_group(ra: i64, rb: i64, ka: i64, kb: i64) -> TileKind {
    TileKind::from_bounds(ra == rb && ka == kb && ra == ka, rb < ka || kb < ra)
}

/// Does the span contain a position `j` with `j mod stride == residue`?
/// Answers `true` when unsure.
fn span_hits_residue(keys: &KeySpan, stride: usize, residue: usize) -> bool {
    if keys.step == 1 {
        let first = keys.start + (residue + stride - keys.start % stride) % stride;
        first <= keys.last()
    } else if keys.step.is_multiple_of(stride) {
        keys.start % stride == residue
    } else {
        true
    }
}

impl Pattern {
    /// A pattern of the given kind, optionally intersected with causal.
    pub fn new(kind: PatternKind, causal: bool) -> Self {
        Pattern { kind, causal }
    }

    /// Checks the pattern's parameters against an attention shape.
    pub fn validate(&self, shape: &AttnShape) -> Result<(), KernelError> {
        self.kind.check_sizes()?;
        match &self.kind {
            PatternKind::Mask(mask) => mask.check(shape),
            PatternKind::Union(kinds) => kinds
                .iter()
                .try_for_each(|k| self.member(k).validate(shape)),
            _ => Ok(()),
        }
    }

    /// Every (query, key) pair of a length-`len` self-attention that none of
    /// `heads` heads may read, restricted to `j <= i` when the pattern is
    /// causal, in row-major order. This is what "the heads together cover
    /// every token" promises to leave empty.
    pub fn uncovered(&self, heads: usize, len: usize) -> Result<Vec<(usize, usize)>, KernelError> {
        let shape = AttnShape {
            batch: 1,
            heads_q: heads,
            heads_kv: 1,
            len_q: len,
            len_k: len,
            head_dim: 1,
        };
        shape.validate()?;
        self.validate(&shape)?;
        let mut out = Vec::new();
        for i in 0..len {
            let keys = if self.causal { i + 1 } else { len };
            for j in 0..keys {
                if !(0..heads).any(|h| self.allowed(&shape, 0, h, i, j)) {
                    out.push((i, j));
                }
            }
        }
        Ok(out)
    }

    /// A member of a union, under this pattern's causal cut.
    fn member(&self, kind: &PatternKind) -> Pattern {
        Pattern::new(kind.clone(), self.causal)
    }

    /// Group offset of a shifted head: `0` for `h < Hq/2`, `group/2` after.
    fn shift(shape: &AttnShape, head: usize, group: usize) -> i64 {
        if head >= shape.heads_q / 2 {
            (group / 2) as i64
        } else {
            0
        }
    }

    /// The mask predicate for batch `batch`, query head `head`, query row `i`
    /// and key `j`.
    #[inline]
    pub fn allowed(
        &self,
        shape: &AttnShape,
        batch: usize,
        head: usize,
        i: usize,
        j: usize,
    ) -> bool {
        let ip = i as i64 + shape.offset();
        let j64 = j as i64;
        match &self.kind {
            PatternKind::Mask(mask) => {
                (!self.causal || j64 <= ip) && mask.row(shape, batch, head, i)[j]
            }
            PatternKind::Union(kinds) => kinds
                .iter()
                .any(|k| self.member(k).allowed(shape, batch, head, i, j)),
            _ => {
                let (lo, hi) = self.interval(shape, head, ip);
                (lo <= j64 && j64 <= hi)
                    || (self.key_always(head, j) && (!self.causal || j64 <= ip))
            }
        }
    }

    /// The inclusive range of keys that the contiguous part of the rule
    /// (and the causal cut) allows for aligned position `ip`. Empty when
    /// `lo > hi`. Not meaningful for [`PatternKind::Mask`].
    #[inline]
    fn interval(&self, shape: &AttnShape, head: usize, ip: i64) -> (i64, i64) {
        let (lo, hi) = match &self.kind {
            // Masks and unions never reach here: their callers use the predicate.
            PatternKind::Full | PatternKind::Mask(_) | PatternKind::Union(_) => {
                (i64::MIN, i64::MAX)
            }
            PatternKind::Global { tokens } => {
                if ip < *tokens as i64 {
                    (i64::MIN, i64::MAX)
                } else {
                    (1, 0)
                }
            }
            PatternKind::Window { window } => {
                let w = *window as i64;
                (ip - (w - 1), ip + (w - 1))
            }
            PatternKind::Strided { local, .. } => {
                let l = *local as i64;
                (ip - (l - 1), ip + (l - 1))
            }
            PatternKind::Chunk { chunk } => {
                let c = *chunk as i64;
                let g = ip.div_euclid(c) * c;
                (g, g + c - 1)
            }
            PatternKind::Shifted { group } => {
                let g = *group as i64;
                let s = Self::shift(shape, head, *group);
                let start = (ip + s).div_euclid(g) * g - s;
                (start, start + g - 1)
            }
        };
        (lo, if self.causal { hi.min(ip) } else { hi })
    }

    /// Keys every query of `head` may read, whatever its position (still
    /// subject to the causal cut): the strided residue class.
    #[inline]
    fn key_always(&self, head: usize, j: usize) -> bool {
        match &self.kind {
            PatternKind::Strided { stride, .. } => j % stride == head % stride,
            PatternKind::Global { tokens } => j < *tokens,
            _ => false,
        }
    }

    /// For every row `i` of `rows`, a range `lo[i]..=hi[i]` of tile-local key
    /// indices (`keys.key(lo)..=keys.key(hi)`) outside which no pair of that
    /// row is allowed; `lo > hi` when the row reads none of the tile.
    ///
    /// Returns `true` when the ranges are exact (every pair inside is
    /// allowed): then they *are* the mask of the tile. They are exact for the
    /// contiguous rules, and conservative (whole tile, cut by causal) for
    /// masks, strided keys and stepped spans. Lets the kernel skip the dead
    /// parts of partial tiles and mask them without the predicate.
    pub(crate) fn row_bounds(
        &self,
        shape: &AttnShape,
        head: usize,
        rows: &Rows,
        keys: &KeySpan,
        lo: &mut [i32],
        hi: &mut [i32],
    ) -> bool {
        let n_rows = rows.last - rows.first + 1;
        let start = keys.start as i64;
        let last = keys.len as i64 - 1;
        let exact = keys.step == 1
            && match &self.kind {
                PatternKind::Mask(_) | PatternKind::Union(_) => false,
                PatternKind::Strided { stride, .. } => {
                    !span_hits_residue(keys, *stride, head % stride)
                }
                PatternKind::Global { tokens } => keys.start >= *tokens,
                _ => true,
            };
        for i in 0..n_rows {
            let ip = rows.a + i as i64;
            let (l, h) = if exact {
                let (l, h) = self.interval(shape, head, ip);
                (
                    l.saturating_sub(start).max(0),
                    h.saturating_sub(start).min(last),
                )
            } else {
                let h = if self.causal {
                    (ip - start).div_euclid(keys.step as i64)
                } else {
                    last
                };
                (0, h.min(last))
            };
            (lo[i], hi[i]) = if l > h { (1, 0) } else { (l as i32, h as i32) };
        }
        exact
    }

    /// Sets to `-inf` every score of a partial tile whose pair is not allowed.
    ///
    /// `scores` is key-major: the score of row `rows.first + i` and key
    /// `keys.key(t)` is `scores[t * ld + i]`. At most [`MAX_TILE_ROWS`] rows.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn mask_tile(
        &self,
        shape: &AttnShape,
        batch: usize,
        head: usize,
        rows: &Rows,
        keys: &KeySpan,
        scores: &mut [f32],
        ld: usize,
    ) {
        let n_rows = rows.last - rows.first + 1;
        debug_assert!(n_rows <= MAX_TILE_ROWS);
        if let PatternKind::Union(kinds) = &self.kind {
            if keys.len <= MAX_TILE_KEYS {
                return self.mask_union_tile(kinds, shape, batch, head, rows, keys, scores, ld);
            }
        }
        if matches!(self.kind, PatternKind::Mask(_) | PatternKind::Union(_)) {
            for t in 0..keys.len {
                let j = keys.key(t);
                let col = &mut scores[t * ld..t * ld + n_rows];
                for (i, score) in col.iter_mut().enumerate() {
                    if !self.allowed(shape, batch, head, rows.first + i, j) {
                        *score = f32::NEG_INFINITY;
                    }
                }
            }
            return;
        }
        let mut bounds = [(0i64, 0i64); MAX_TILE_ROWS];
        for (i, b) in bounds[..n_rows].iter_mut().enumerate() {
            *b = self.interval(shape, head, rows.a + i as i64);
        }
        for t in 0..keys.len {
            let j = keys.key(t) as i64;
            let always = self.key_always(head, j as usize);
            let col = &mut scores[t * ld..t * ld + n_rows];
            for (i, (score, &(lo, hi))) in col.iter_mut().zip(&bounds[..n_rows]).enumerate() {
                let ip = rows.a + i as i64;
                let ok = (lo <= j && j <= hi) || (always && (!self.causal || j <= ip));
                if !ok {
                    *score = f32::NEG_INFINITY;
                }
            }
        }
    }

    /// [`Pattern::mask_tile`] for a union: a pair survives if some member
    /// keeps it, so each member's own (fast) masking runs on a probe tile and
    /// the union of what they keep is applied. Kept out of `mask_tile` so its
    /// 40 KiB of stack is only touched by unions.
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn mask_union_tile(
        &self,
        kinds: &[PatternKind],
        shape: &AttnShape,
        batch: usize,
        head: usize,
        rows: &Rows,
        keys: &KeySpan,
        scores: &mut [f32],
        ld: usize,
    ) {
        let n_rows = rows.last - rows.first + 1;
        let cells = keys.len * n_rows;
        let mut keep = [false; MAX_TILE_ROWS * MAX_TILE_KEYS];
        let mut probe = [0f32; MAX_TILE_ROWS * MAX_TILE_KEYS];
        for k in kinds {
            probe[..cells].fill(0.0);
            self.member(k)
                .mask_tile(shape, batch, head, rows, keys, &mut probe, n_rows);
            for (kept, &p) in keep.iter_mut().zip(&probe[..cells]) {
                *kept |= p == 0.0;
            }
        }
        for t in 0..keys.len {
            let col = &mut scores[t * ld..t * ld + n_rows];
            for (score, &kept) in col.iter_mut().zip(&keep[t * n_rows..(t + 1) * n_rows]) {
                if !kept {
                    *score = f32::NEG_INFINITY;
                }
            }
        }
    }

    /// Appends to `out` disjoint spans holding every key that any of `rows`
    /// may read for `head`.
    pub fn key_spans(&self, shape: &AttnShape, head: usize, rows: &Rows, out: &mut Vec<KeySpan>) {
        let nk = shape.len_k as i64;
        let end = if self.causal {
            (rows.b + 1).clamp(0, nk)
        } else {
            nk
        };
        let mut contiguous = |lo: i64, hi: i64| {
            let (lo, hi) = (lo.clamp(0, end), hi.clamp(0, end));
            if hi > lo {
                out.push(KeySpan {
                    start: lo as usize,
                    step: 1,
                    len: (hi - lo) as usize,
                });
            }
        };
        match &self.kind {
            PatternKind::Full | PatternKind::Mask(_) => contiguous(0, end),
            PatternKind::Global { tokens } => {
                if rows.a < *tokens as i64 {
                    contiguous(0, end);
                } else {
                    contiguous(0, *tokens as i64);
                }
            }
            PatternKind::Union(kinds) => {
                let mut parts = Vec::new();
                for k in kinds {
                    self.member(k).key_spans(shape, head, rows, &mut parts);
                }
                disjoint_spans(&parts, out);
            }
            PatternKind::Window { window } => {
                let w = *window as i64;
                contiguous(rows.a - (w - 1), rows.b + w);
            }
            PatternKind::Chunk { chunk } => {
                let c = *chunk as i64;
                contiguous(rows.a.div_euclid(c) * c, (rows.b.div_euclid(c) + 1) * c);
            }
            PatternKind::Shifted { group } => {
                let g = *group as i64;
                let s = Self::shift(shape, head, *group);
                let (ga, gb) = ((rows.a + s).div_euclid(g), (rows.b + s).div_euclid(g));
                contiguous(ga * g - s, (gb + 1) * g - s);
            }
            PatternKind::Strided { stride, local } => {
                let l = *local as i64;
                // The band holds every key within `local` of some row; the
                // strided keys outside it come as spans of step `stride`, so
                // no key is visited twice.
                let (band_lo, band_hi) = if l > 0 {
                    ((rows.a - (l - 1)).clamp(0, end), (rows.b + l).clamp(0, end))
                } else {
                    let at = rows.a.clamp(0, end);
                    (at, at)
                };
                let s = *stride as i64;
                let residue = (head % stride) as i64;
                let mut strided = |lo: i64, hi: i64| {
                    let first = lo + (residue - lo).rem_euclid(s);
                    if first < hi {
                        let len = ((hi - 1 - first) / s + 1) as usize;
                        out.push(KeySpan {
                            start: first as usize,
                            step: *stride,
                            len,
                        });
                    }
                };
                strided(0, band_lo);
                strided(band_hi, end);
                if band_hi > band_lo {
                    out.push(KeySpan {
                        start: band_lo as usize,
                        step: 1,
                        len: (band_hi - band_lo) as usize,
                    });
                }
            }
        }
    }

    /// Classifies the tile `rows × keys` of (batch, head). `keys` must be
    /// non-empty and lie inside a span from [`Pattern::key_spans`].
    pub fn classify(
        &self,
        shape: &AttnShape,
        batch: usize,
        head: usize,
        rows: &Rows,
        keys: &KeySpan,
    ) -> TileKind {
        let (c, d) = (keys.start as i64, keys.last() as i64);
        let causal = if self.causal {
            TileKind::from_bounds(d <= rows.a, c > rows.b)
        } else {
            TileKind::Full
        };
        if causal == TileKind::Empty {
            return TileKind::Empty;
        }
        let rule = match &self.kind {
            PatternKind::Full => TileKind::Full,
            PatternKind::Window { window } => {
                let (min, max) = distance_range(rows, c, d);
                let w = *window as i64;
                TileKind::from_bounds(max < w, min >= w)
            }
            PatternKind::Chunk { chunk } => {
                let g = *chunk as i64;
                same_group(rows.a.div_euclid(g), rows.b.div_euclid(g), c / g, d / g)
            }
            PatternKind::Shifted { group } => {
                let g = *group as i64;
                let s = Self::shift(shape, head, *group);
                let grp = |p: i64| (p + s).div_euclid(g);
                same_group(grp(rows.a), grp(rows.b), grp(c), grp(d))
            }
            PatternKind::Strided { stride, local } => {
                let residue = head % stride;
                if keys.step.is_multiple_of(*stride) && keys.start % stride == residue {
                    TileKind::Full
                } else {
                    let (min, max) = distance_range(rows, c, d);
                    let l = *local as i64;
                    TileKind::from_bounds(
                        max < l,
                        min >= l && !span_hits_residue(keys, *stride, residue),
                    )
                }
            }
            PatternKind::Global { tokens } => {
                let g = *tokens as i64;
                TileKind::from_bounds(d < g || rows.b < g, c >= g && rows.a >= g)
            }
            PatternKind::Union(kinds) => {
                let mut kind = TileKind::Empty;
                for k in kinds {
                    match self.member(k).classify(shape, batch, head, rows, keys) {
                        TileKind::Full => return TileKind::Full,
                        TileKind::Partial => kind = TileKind::Partial,
                        TileKind::Empty => {}
                    }
                }
                kind
            }
            PatternKind::Mask(mask) => {
                let (mut any, mut all) = (false, true);
                for i in rows.first..=rows.last {
                    let row = mask.row(shape, batch, head, i);
                    for t in 0..keys.len {
                        let ok = row[keys.key(t)];
                        any |= ok;
                        all &= ok;
                    }
                }
                TileKind::from_bounds(all, !any)
            }
        };
        causal.and(rule)
    }

    /// Number of distinct tile-map classes: heads (and batches) in one class
    /// share their tile map.
    pub(crate) fn class_count(&self, shape: &AttnShape) -> usize {
        match &self.kind {
            PatternKind::Strided { stride, .. } => (*stride).min(shape.heads_q),
            PatternKind::Shifted { .. } => 2,
            PatternKind::Mask(mask) if mask.per_head() => shape.batch * shape.heads_q,
            PatternKind::Union(_) if self.kind.per_head_mask() => shape.batch * shape.heads_q,
            PatternKind::Union(_) => shape.heads_q,
            _ => 1,
        }
    }

    /// The class of (batch, head).
    #[inline]
    pub(crate) fn class_of(&self, shape: &AttnShape, batch: usize, head: usize) -> usize {
        match &self.kind {
            PatternKind::Strided { stride, .. } => head % stride,
            PatternKind::Shifted { .. } => usize::from(head >= shape.heads_q / 2),
            PatternKind::Mask(mask) if mask.per_head() => batch * shape.heads_q + head,
            PatternKind::Union(_) if self.kind.per_head_mask() => batch * shape.heads_q + head,
            PatternKind::Union(_) => head,
            _ => 0,
        }
    }

    /// A (batch, head) that belongs to `class`.
    pub(crate) fn class_representative(&self, shape: &AttnShape, class: usize) -> (usize, usize) {
        match &self.kind {
            PatternKind::Strided { .. } => (0, class),
            PatternKind::Shifted { .. } => (0, if class == 0 { 0 } else { shape.heads_q / 2 }),
            PatternKind::Mask(mask) if mask.per_head() => {
                (class / shape.heads_q, class % shape.heads_q)
            }
            PatternKind::Union(_) if self.kind.per_head_mask() => {
                (class / shape.heads_q, class % shape.heads_q)
            }
            PatternKind::Union(_) => (0, class),
            _ => (0, 0),
        }
    }
}

impl PatternKind {
    /// Rejects zero sizes (a zero window, chunk, stride or group).
    pub fn check_sizes(&self) -> Result<(), KernelError> {
        if let PatternKind::Union(kinds) = self {
            if kinds.is_empty() {
                return Err(KernelError::Pattern(
                    "a union needs at least one pattern".into(),
                ));
            }
            return kinds.iter().try_for_each(PatternKind::check_sizes);
        }
        let zero = match self {
            PatternKind::Window { window: 0 } => "window",
            PatternKind::Chunk { chunk: 0 } => "chunk",
            PatternKind::Strided { stride: 0, .. } => "stride",
            PatternKind::Shifted { group: 0 } => "shifted group",
            _ => return Ok(()),
        };
        Err(KernelError::Pattern(format!("{zero} must be at least 1")))
    }
}

impl PatternKind {
    /// Whether this is, or a union holds, a per-(batch, head) mask.
    fn per_head_mask(&self) -> bool {
        match self {
            PatternKind::Mask(mask) => mask.per_head(),
            PatternKind::Union(kinds) => kinds.iter().any(PatternKind::per_head_mask),
            _ => false,
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
fn disjoint_spans(parts: &[KeySpan], out: &mut Vec<KeySpan>) {
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

impl std::str::FromStr for PatternKind {
    type Err = KernelError;

    /// Parses `full`, `window:W`, `chunk:C`, `strided:S:L`, `shifted:G`,
    /// `global:G`, or a union of those joined by `|` (`strided:8:16|global:4`).
    /// (`mask` needs the mask tensor: build [`PatternKind::Mask`] directly.)
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains('|') {
            let kinds = s
                .split('|')
                .map(str::parse)
                .collect::<Result<Vec<PatternKind>, _>>()?;
            return Ok(PatternKind::Union(kinds));
        }
        let parts: Vec<&str> = s.trim().split(':').collect();
        let num = |p: &str, what: &str| -> Result<usize, KernelError> {
            p.trim().parse::<usize>().map_err(|_| {
                KernelError::Pattern(format!(
                    "{what} in pattern `{s}` must be a whole number, got `{p}`"
                ))
            })
        };
        let kind = match parts.as_slice() {
            ["full"] => PatternKind::Full,
            ["window", w] => PatternKind::Window { window: num(w, "window")? },
            ["chunk", c] => PatternKind::Chunk { chunk: num(c, "chunk")? },
            ["strided", st, l] => {
                PatternKind::Strided { stride: num(st, "stride")?, local: num(l, "local")? }
            }
            ["shifted", g] => PatternKind::Shifted { group: num(g, "group")? },
            ["global", g] => PatternKind::Global { tokens: num(g, "global tokens")? },
            ["mask"] => {
                return Err(KernelError::Pattern(
                    "pattern `mask` needs a mask tensor; it cannot be parsed from a string alone".into(),
                ))
            }
            _ => {
                return Err(KernelError::Pattern(format!(
                    "unknown pattern `{s}`; expected full, window:W, chunk:C, strided:S:L, shifted:G, global:G, mask, or a union A|B"
                )))
            }
        };
        kind.check_sizes()?;
        Ok(kind)
    }
}
