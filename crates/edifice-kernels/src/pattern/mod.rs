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
//! # One file per kind
//! Each [`PatternKind`] is one file here implementing `Rule`: the
//! contiguous key interval of a query position, keys every query reads,
//! key spans for a band of rows, tile classification, and which heads share
//! a tile map (`Classes`, one value, so its count, membership and
//! representatives agree by construction). The causal cut, the predicate,
//! row bounds and tile masking are written once here on top of those, and
//! unions compose their members' rules (`union.rs`). A new kind is a new
//! file, a variant of [`PatternKind`], and its line in `with_rule!` (and in
//! `parse.rs` if it has a string form).
//!
//! # Positions
//! Queries are the last `Nq` positions of the key sequence: query row `i` sits
//! at the aligned position `i' = i + (Nk - Nq)` (bottom-right alignment, as in
//! FlashAttention). Every rule below is written in aligned positions, except
//! an explicit [`BoolMask`], which is indexed by the row `i` itself.

use std::sync::Arc;

use crate::{AttnShape, KernelError};

/// Runs `$body` with `$r` bound to the [`Rule`] of a [`PatternKind`]:
/// the one list from kind to rule (static dispatch).
#[rustfmt::skip]
macro_rules! with_rule {
    ($kind:expr, $r:ident => $body:expr) => {{
        use $crate::pattern::{blocks, chunk, full, global, mask, shifted, strided, union, window};
        use $crate::pattern::PatternKind as K;
        match $kind {
            K::Full => { let $r = full::Full; $body }
            K::Window { window } => { let $r = window::Window(*window); $body }
            K::Chunk { chunk } => { let $r = chunk::Chunk(*chunk); $body }
            K::Strided { stride, local } => { let $r = strided::Strided { stride: *stride, local: *local }; $body }
            K::Shifted { group } => { let $r = shifted::Shifted(*group); $body }
            K::Global { tokens } => { let $r = global::Global(*tokens); $body }
            K::Mask(mask) => { let $r = mask::MaskRule(mask); $body }
            K::Blocks(blocks) => { let $r = blocks::BlocksRule(blocks); $body }
            K::Union(kinds) => { let $r = union::Union(kinds); $body }
        }
    }};
}

mod blocks;
mod chunk;
mod full;
mod global;
mod mask;
mod parse;
mod rule;
mod shifted;
mod spans;
mod strided;
mod union;
mod window;

pub use blocks::{BlockRow, BlockSparse};
pub use mask::BoolMask;
use rule::cut;
use rule::{at_least_one, contiguous, distance_range, same_group};
pub(crate) use rule::{Classes, Ctx, Rule, ScoreTile};
use spans::disjoint_spans;
pub use spans::{KeySpan, Rows, TileKind};

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
    /// An explicit block-sparse mask (FlexAttention's `BlockMask`): key
    /// blocks read in full or, with a bitmask, in part, per query block.
    Blocks(BlockSparse),
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

/// A sparsity rule plus an optional causal cut (`j <= i'`) and an optional
/// key-padding cut (`j < key_lengths[b]`).
#[derive(Clone, Debug, PartialEq)]
pub struct Pattern {
    /// The rule.
    pub kind: PatternKind,
    /// Intersect the rule with `j <= i'`.
    pub causal: bool,
    /// The aligned position of query row 0 when not `Nk - Nq`.
    query_offset: Option<i64>,
    /// Per batch element, how many leading keys are real (the rest is
    /// padding no query reads); `None`: all `Nk`.
    key_lengths: Option<Arc<[usize]>>,
}

impl Pattern {
    /// A pattern of the given kind, optionally intersected with causal.
    pub fn new(kind: PatternKind, causal: bool) -> Self {
        Pattern {
            kind,
            causal,
            query_offset: None,
            key_lengths: None,
        }
    }

    /// Intersects the pattern with `j < lengths[b]` for batch element `b`:
    /// a key-padding mask for sequences padded at the end to one length
    /// (FlashAttention's `seqused_k`). It costs nothing per pair: tiles past
    /// a sequence's end are skipped and its last tile is cut by its row
    /// bounds; batch elements of different lengths get their own tile maps.
    /// [`Pattern::validate`] wants one length per batch element, each at
    /// most `Nk`.
    pub fn with_key_lengths(mut self, lengths: impl Into<Arc<[usize]>>) -> Self {
        self.key_lengths = Some(lengths.into());
        self
    }

    /// The per-batch key lengths, if the pattern has them.
    pub fn key_lengths(&self) -> Option<&[usize]> {
        self.key_lengths.as_deref()
    }

    /// One past the last key batch element `batch` may read.
    #[inline]
    fn key_end(&self, shape: &AttnShape, batch: usize) -> usize {
        self.key_lengths
            .as_ref()
            .map_or(shape.len_k, |l| l[batch].min(shape.len_k))
    }

    /// Places query row `i` at aligned position `i' = i + offset` instead of
    /// `i + Nk - Nq`: the queries and keys are two blocks of one longer
    /// sequence, `offset` positions apart (their first positions' distance).
    /// This is how a ring computes one block pair of a sequence it has cut
    /// up; `offset` may be negative or beyond `Nk`.
    pub fn with_query_offset(mut self, offset: i64) -> Self {
        self.query_offset = Some(offset);
        self
    }

    /// The aligned position of query row 0 in `shape`.
    #[inline]
    pub fn query_offset(&self, shape: &AttnShape) -> i64 {
        self.query_offset.unwrap_or_else(|| shape.offset())
    }

    /// Query rows `first..=last` of `shape`, with their aligned positions.
    #[inline]
    pub fn rows(&self, shape: &AttnShape, first: usize, last: usize) -> Rows {
        Rows::new(self.query_offset(shape), first, last)
    }

    /// The context of (batch, head) in `shape`.
    #[inline]
    fn cx<'a>(&self, shape: &'a AttnShape, batch: usize, head: usize) -> Ctx<'a> {
        Ctx {
            shape,
            batch,
            head,
            causal: self.causal,
            offset: self.query_offset(shape),
        }
    }

    /// Checks the pattern's parameters against an attention shape.
    pub fn validate(&self, shape: &AttnShape) -> Result<(), KernelError> {
        self.kind.check_sizes()?;
        if let Some(lengths) = &self.key_lengths {
            if lengths.len() != shape.batch || lengths.iter().any(|&n| n > shape.len_k) {
                return Err(KernelError::Pattern(format!(
                    "key lengths {lengths:?} must give each of the {} batch elements at most Nk = {} keys",
                    shape.batch, shape.len_k
                )));
            }
        }
        with_rule!(&self.kind, r => r.validate(shape, self.causal))
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
        let cx = self.cx(shape, batch, head);
        j < self.key_end(shape, batch) && with_rule!(&self.kind, r => r.allowed(cx, i, j))
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
        (batch, head): (usize, usize),
        rows: &Rows,
        keys: &KeySpan,
        (lo, hi): (&mut [i32], &mut [i32]),
    ) -> bool {
        let cx = self.cx(shape, batch, head);
        with_rule!(&self.kind, r => {
            let n_rows = rows.last - rows.first + 1;
            let start = keys.start as i64;
            // The last tile-local key before the key-padding cut.
            let real = self.key_end(shape, batch) as i64 - 1 - start;
            let last = (keys.len as i64 - 1).min(real.div_euclid(keys.step as i64));
            let exact = keys.step == 1 && r.exact(cx, keys);
            for i in 0..n_rows {
                let ip = rows.a + i as i64;
                let (l, h) = if exact {
                    let (l, h) = cut(cx, r.interval(cx, ip), ip);
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
        })
    }

    /// Sets to `-inf` every score of a partial tile of (batch, head) whose
    /// pair is not allowed. At most [`MAX_TILE_ROWS`] rows.
    pub(crate) fn mask_tile(
        &self,
        shape: &AttnShape,
        batch: usize,
        head: usize,
        mut tile: ScoreTile,
    ) {
        tile.cut_keys(self.key_end(shape, batch));
        let cx = self.cx(shape, batch, head);
        with_rule!(&self.kind, r => r.mask_tile(cx, tile))
    }

    /// Appends to `out` disjoint spans holding every key that any of `rows`
    /// may read for (`batch`, `head`).
    pub fn key_spans(
        &self,
        shape: &AttnShape,
        batch: usize,
        head: usize,
        rows: &Rows,
        out: &mut Vec<KeySpan>,
    ) {
        let nk = self.key_end(shape, batch) as i64;
        let end = if self.causal {
            (rows.b + 1).clamp(0, nk)
        } else {
            nk
        };
        let cx = self.cx(shape, batch, head);
        with_rule!(&self.kind, r => r.key_spans(cx, rows, end, out))
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
        let end = self.key_end(shape, batch) as i64;
        let cuts = causal.and(TileKind::from_bounds(d < end, c >= end));
        if cuts == TileKind::Empty {
            return TileKind::Empty;
        }
        let cx = self.cx(shape, batch, head);
        cuts.and(with_rule!(&self.kind, r => r.classify(cx, rows, keys)))
    }

    /// Which (batch, head)s share a tile map: the rule's classes, each split
    /// per batch element when key lengths differ between them.
    fn classes(&self) -> Classes {
        let rule = with_rule!(&self.kind, r => r.classes());
        match &self.key_lengths {
            Some(l) if l.iter().any(|&n| n != l[0]) => rule.per_batch(),
            _ => rule,
        }
    }

    /// Number of distinct tile-map classes: heads (and batches) in one class
    /// share their tile map.
    pub(crate) fn class_count(&self, shape: &AttnShape) -> usize {
        self.classes().count(shape)
    }

    /// The tile-map class of (batch, head): the `class` that
    /// [`TileMap::row`](crate::TileMap::row) takes for it.
    #[inline]
    pub fn class_of(&self, shape: &AttnShape, batch: usize, head: usize) -> usize {
        self.classes().of(shape, batch, head)
    }

    /// A (batch, head) that belongs to `class`.
    pub(crate) fn class_representative(&self, shape: &AttnShape, class: usize) -> (usize, usize) {
        self.classes().representative(shape, class)
    }
}

impl PatternKind {
    /// Rejects zero sizes (a zero window, chunk, stride or group) and empty
    /// unions.
    pub fn check_sizes(&self) -> Result<(), KernelError> {
        with_rule!(self, r => r.check())
    }
}
