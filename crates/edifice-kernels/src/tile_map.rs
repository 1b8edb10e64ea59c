//! The tile map: for every query tile, the key tiles a pattern needs, each
//! marked full or partial. Built once per kernel call.
//!
//! Storage is compressed row by row, like FlexAttention's BCSR `BlockMask`,
//! but in runs: consecutive key tiles of one span with the same kind merge
//! into one [`KeyBlock`]. A causal map at N = 65536 with 64-row tiles is two
//! blocks per query tile, a few tens of KiB, whatever N.
//!
//! Heads whose pattern is identical share a map (a *class*): one class for
//! `full`, `window`, `chunk` and a shared mask, `min(stride, Hq)` for
//! `strided`, two for `shifted`, `B × Hq` for a per-head mask.

use rayon::prelude::*;

use crate::pattern::{KeySpan, Pattern, Rows, TileKind};
use crate::AttnShape;

/// A run of key tiles of one kind: keys `start + t * step` for `t < len`,
/// visited `tile_k` keys at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyBlock {
    /// First key position.
    pub start: u32,
    /// Distance between consecutive keys.
    pub step: u32,
    /// Number of keys (a multiple of `tile_k`, except at the end of a span).
    pub len: u32,
    /// Every (row, key) pair of the block is allowed: skip the predicate.
    pub full: bool,
}

impl KeyBlock {
    /// The block as a span of key positions.
    pub fn span(&self) -> KeySpan {
        KeySpan {
            start: self.start as usize,
            step: self.step as usize,
            len: self.len as usize,
        }
    }
}

/// Per (class, query tile), the key blocks to visit.
#[derive(Clone, Debug)]
pub struct TileMap {
    tile_q: usize,
    tile_k: usize,
    q_tiles: usize,
    /// `offsets[class * q_tiles + t] .. offsets[.. + 1]` indexes `blocks`.
    offsets: Vec<u32>,
    blocks: Vec<KeyBlock>,
}

impl TileMap {
    /// Builds the map of `pattern` for `shape`, with query tiles of `tile_q`
    /// rows and key tiles of `tile_k` keys. The pattern must be valid for
    /// the shape.
    pub fn build(shape: &AttnShape, pattern: &Pattern, tile_q: usize, tile_k: usize) -> TileMap {
        let q_tiles = shape.len_q.div_ceil(tile_q);
        let classes = pattern.class_count(shape);
        let per_class: Vec<(Vec<u32>, Vec<KeyBlock>)> = (0..classes)
            .into_par_iter()
            .map(|class| {
                let (batch, head) = pattern.class_representative(shape, class);
                let mut lens = Vec::with_capacity(q_tiles);
                let mut blocks = Vec::new();
                let mut spans = Vec::new();
                for t in 0..q_tiles {
                    let first = t * tile_q;
                    let last = (first + tile_q).min(shape.len_q) - 1;
                    let rows = pattern.rows(shape, first, last);
                    let before = blocks.len();
                    spans.clear();
                    pattern.key_spans(shape, batch, head, &rows, &mut spans);
                    for span in &spans {
                        push_span(
                            shape,
                            pattern,
                            batch,
                            head,
                            &rows,
                            span,
                            tile_k,
                            &mut blocks,
                        );
                    }
                    lens.push((blocks.len() - before) as u32);
                }
                (lens, blocks)
            })
            .collect();

        let mut offsets = Vec::with_capacity(classes * q_tiles + 1);
        let mut blocks = Vec::new();
        offsets.push(0);
        for (lens, class_blocks) in per_class {
            let mut at = blocks.len() as u32;
            for len in lens {
                at += len;
                offsets.push(at);
            }
            blocks.extend(class_blocks);
        }
        TileMap {
            tile_q,
            tile_k,
            q_tiles,
            offsets,
            blocks,
        }
    }

    /// Rows per query tile.
    pub fn tile_q(&self) -> usize {
        self.tile_q
    }

    /// Keys per key tile.
    pub fn tile_k(&self) -> usize {
        self.tile_k
    }

    /// Number of query tiles per head.
    pub fn q_tiles(&self) -> usize {
        self.q_tiles
    }

    /// The key blocks of query tile `t` in `class`.
    #[inline]
    pub fn row(&self, class: usize, t: usize) -> &[KeyBlock] {
        let at = class * self.q_tiles + t;
        &self.blocks[self.offsets[at] as usize..self.offsets[at + 1] as usize]
    }

    /// The largest key step of any block (1 when every span is contiguous).
    pub fn max_step(&self) -> usize {
        self.blocks.iter().map(|b| b.span().step).max().unwrap_or(1)
    }

    /// Heap bytes held by the map.
    pub fn bytes(&self) -> usize {
        self.offsets.capacity() * std::mem::size_of::<u32>()
            + self.blocks.capacity() * std::mem::size_of::<KeyBlock>()
    }

    /// The key tiles of query tile `t` in `class`, in order, each with
    /// whether it is full.
    #[inline]
    pub fn row_tiles(&self, class: usize, t: usize) -> impl Iterator<Item = (bool, KeySpan)> + '_ {
        self.row(class, t)
            .iter()
            .flat_map(move |block| self.tiles(block).map(move |keys| (block.full, keys)))
    }

    /// Iterates over the key tiles of one block, `tile_k` keys at a time.
    pub fn tiles(&self, block: &KeyBlock) -> impl Iterator<Item = KeySpan> {
        block.span().tiles(self.tile_k)
    }
}

/// Classifies the tiles of one span and appends them as merged runs.
#[allow(clippy::too_many_arguments)]
fn push_span(
    shape: &AttnShape,
    pattern: &Pattern,
    batch: usize,
    head: usize,
    rows: &Rows,
    span: &KeySpan,
    tile_k: usize,
    blocks: &mut Vec<KeyBlock>,
) {
    let mut open: Option<KeyBlock> = None;
    for tile in span.tiles(tile_k) {
        let kind = pattern.classify(shape, batch, head, rows, &tile);
        let full = kind == TileKind::Full;
        match (&mut open, kind) {
            (Some(run), TileKind::Full | TileKind::Partial) if run.full == full => {
                run.len += tile.len as u32;
            }
            (_, TileKind::Empty) => blocks.extend(open.take()),
            (_, _) => {
                blocks.extend(open.take());
                open = Some(KeyBlock {
                    start: tile.start as u32,
                    step: tile.step as u32,
                    len: tile.len as u32,
                    full,
                });
            }
        }
    }
    blocks.extend(open);
}
