//! `blocks`: an explicit block-sparse mask, as PyTorch FlexAttention's
//! `BlockMask` describes one: the query rows in blocks of `block_q`, the
//! keys in blocks of `block_k`, and for each (plane, query block) the key
//! blocks read in full and those read in part, with a bitmask for each
//! partial block (evaluated once from a `mask_mod`). Every other block is
//! never read. Memory is proportional to the listed blocks plus one bit
//! per pair of the partial ones, never `Nq × Nk`; tiles are classified
//! from the lists alone. Indexed by the query row itself (as a
//! [`BoolMask`](super::BoolMask)); the causal cut, if any, applies on top.

use std::sync::Arc;

use super::{Classes, Ctx, KeySpan, Rows, Rule, ScoreTile, TileKind};
use crate::{AttnShape, KernelError};

/// Marks a listed key block as read in full.
const FULL: u32 = u32::MAX;

/// A block-sparse attention mask (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct BlockSparse {
    len_q: usize,
    len_k: usize,
    block_q: usize,
    block_k: usize,
    /// `(B or 1, Hq or 1)`: masks per batch and per head, or shared.
    planes: (usize, usize),
    /// Per (plane, query block), where its entries start; one more at the end.
    starts: Arc<[u32]>,
    /// `(key block, partial block index or FULL)`, sorted by key block
    /// within each (plane, query block).
    entries: Arc<[(u32, u32)]>,
    /// The partial blocks' pairs, `block_q · block_k` bits each, row-major.
    bits: Arc<[u64]>,
}

/// The key blocks one (plane, query block) reads.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BlockRow {
    /// Key blocks read in full.
    pub full: Vec<usize>,
    /// Key blocks read in part, each with its `block_q × block_k` pairs,
    /// row-major, `true` = allowed (rows and keys past the sequence's end
    /// are ignored).
    pub partial: Vec<(usize, Vec<bool>)>,
}

impl BlockSparse {
    /// A mask for `len_q` queries and `len_k` keys in blocks of `block_q`
    /// rows and `block_k` keys, with `planes = (B or 1, Hq or 1)` and one
    /// [`BlockRow`] per (plane, query block), plane-major:
    /// `rows[(b · planes.1 + h) · q_blocks + qb]`.
    pub fn new(
        (len_q, len_k): (usize, usize),
        (block_q, block_k): (usize, usize),
        planes: (usize, usize),
        rows: &[BlockRow],
    ) -> Result<Self, KernelError> {
        let bad = |m: String| Err(KernelError::Mask(m));
        if block_q == 0 || block_k == 0 || planes.0 == 0 || planes.1 == 0 {
            return bad(format!(
                "block sizes and planes must be at least 1, got blocks ({block_q}, {block_k}), planes {planes:?}"
            ));
        }
        let (q_blocks, k_blocks) = (len_q.div_ceil(block_q), len_k.div_ceil(block_k));
        let want = planes.0 * planes.1 * q_blocks;
        if rows.len() != want {
            return bad(format!(
                "a block mask of {planes:?} planes and {q_blocks} query blocks needs {want} block rows, got {}",
                rows.len()
            ));
        }
        let pairs = block_q * block_k;
        let words = pairs.div_ceil(64);
        let (mut starts, mut entries, mut bits) = (vec![0u32], Vec::new(), Vec::new());
        for (r, row) in rows.iter().enumerate() {
            let mut listed: Vec<(u32, u32)> =
                Vec::with_capacity(row.full.len() + row.partial.len());
            listed.extend(row.full.iter().map(|&kb| (kb as u32, FULL)));
            for (kb, pairs_allowed) in &row.partial {
                if pairs_allowed.len() != pairs {
                    return bad(format!(
                        "block row {r}: the partial block {kb} has {} pairs, expected {block_q} × {block_k}",
                        pairs_allowed.len()
                    ));
                }
                let index = (bits.len() / words) as u32;
                let mut packed = vec![0u64; words];
                for (p, _) in pairs_allowed.iter().enumerate().filter(|(_, &ok)| ok) {
                    packed[p / 64] |= 1 << (p % 64);
                }
                bits.extend(packed);
                listed.push((*kb as u32, index));
            }
            listed.sort_unstable_by_key(|e| e.0);
            if let Some(&(kb, _)) = listed.iter().find(|e| e.0 as usize >= k_blocks) {
                return bad(format!(
                    "block row {r}: key block {kb} is past the {k_blocks} key blocks"
                ));
            }
            if listed.windows(2).any(|w| w[0].0 == w[1].0) {
                return bad(format!("block row {r} lists a key block twice"));
            }
            entries.extend(listed);
            starts.push(
                u32::try_from(entries.len()).map_err(|_| {
                    KernelError::Mask("a block mask of more than 2^32 blocks".into())
                })?,
            );
        }
        Ok(BlockSparse {
            len_q,
            len_k,
            block_q,
            block_k,
            planes,
            starts: starts.into(),
            entries: entries.into(),
            bits: bits.into(),
        })
    }

    /// `(block_q, block_k)`.
    pub fn block_size(&self) -> (usize, usize) {
        (self.block_q, self.block_k)
    }

    /// `(B or 1, Hq or 1)`: whether the mask differs per batch and per head.
    pub fn planes(&self) -> (usize, usize) {
        self.planes
    }

    /// Listed key blocks, in full and in part.
    pub fn listed_blocks(&self) -> usize {
        self.entries.len()
    }

    /// The entries of (batch, head)'s query block `qb`.
    fn row(&self, cx: Ctx, qb: usize) -> &[(u32, u32)] {
        let b = if self.planes.0 == 1 { 0 } else { cx.batch };
        let h = if self.planes.1 == 1 { 0 } else { cx.head };
        let r = (b * self.planes.1 + h) * self.len_q.div_ceil(self.block_q) + qb;
        &self.entries[self.starts[r] as usize..self.starts[r + 1] as usize]
    }

    /// How query block `qb` reads key block `kb`: `None` not at all,
    /// `Some(FULL)` in full, else the partial block's index.
    fn block(&self, cx: Ctx, qb: usize, kb: usize) -> Option<u32> {
        let row = self.row(cx, qb);
        row.binary_search_by_key(&(kb as u32), |e| e.0)
            .ok()
            .map(|at| row[at].1)
    }

    fn pair(&self, cx: Ctx, i: usize, j: usize) -> bool {
        match self.block(cx, i / self.block_q, j / self.block_k) {
            None => false,
            Some(FULL) => true,
            Some(p) => {
                let at = (i % self.block_q) * self.block_k + j % self.block_k;
                let word = p as usize * (self.block_q * self.block_k).div_ceil(64) + at / 64;
                self.bits[word] >> (at % 64) & 1 == 1
            }
        }
    }
}

/// The rule of a [`BlockSparse`].
pub(super) struct BlocksRule<'a>(pub &'a BlockSparse);

impl Rule for BlocksRule<'_> {
    fn validate(&self, shape: &AttnShape, _causal: bool) -> Result<(), KernelError> {
        let m = self.0;
        let fits = |planes: usize, n: usize| planes == 1 || planes == n;
        if (m.len_q, m.len_k) != (shape.len_q, shape.len_k)
            || !fits(m.planes.0, shape.batch)
            || !fits(m.planes.1, shape.heads_q)
        {
            return Err(KernelError::Mask(format!(
                "the block mask is for Nq {}, Nk {} and planes {:?}, but the attention has Nq {}, Nk {}, B {}, Hq {}",
                m.len_q, m.len_k, m.planes, shape.len_q, shape.len_k, shape.batch, shape.heads_q
            )));
        }
        Ok(())
    }

    fn interval(&self, _: Ctx, _: i64) -> (i64, i64) {
        (i64::MIN, i64::MAX)
    }

    fn allowed(&self, cx: Ctx, i: usize, j: usize) -> bool {
        (!cx.causal || j as i64 <= i as i64 + cx.offset) && self.0.pair(cx, i, j)
    }

    fn exact(&self, _: Ctx, _: &KeySpan) -> bool {
        false
    }

    fn mask_tile(&self, cx: Ctx, tile: ScoreTile) {
        tile.by_predicate(|i, j| self.allowed(cx, i, j));
    }

    fn key_spans(&self, cx: Ctx, rows: &Rows, end: i64, out: &mut Vec<KeySpan>) {
        let m = self.0;
        let mut blocks: Vec<u32> = (rows.first / m.block_q..=rows.last / m.block_q)
            .flat_map(|qb| m.row(cx, qb).iter().map(|e| e.0))
            .collect();
        blocks.sort_unstable();
        blocks.dedup();
        let end = end.max(0) as usize;
        let mut run: Option<(usize, usize)> = None;
        for kb in blocks {
            let (lo, hi) = (
                kb as usize * m.block_k,
                ((kb as usize + 1) * m.block_k).min(end),
            );
            if lo >= hi {
                break;
            }
            run = match run {
                Some((a, b)) if lo == b => Some((a, hi)),
                Some((a, b)) => {
                    super::contiguous(a as i64, b as i64, end as i64, out);
                    Some((lo, hi))
                }
                None => Some((lo, hi)),
            };
        }
        if let Some((a, b)) = run {
            super::contiguous(a as i64, b as i64, end as i64, out);
        }
    }

    fn classify(&self, cx: Ctx, rows: &Rows, keys: &KeySpan) -> TileKind {
        let m = self.0;
        let (mut any, mut all) = (false, true);
        for qb in rows.first / m.block_q..=rows.last / m.block_q {
            let mut kb = keys.start / m.block_k;
            while kb * m.block_k <= keys.last() {
                match m.block(cx, qb, kb) {
                    None => all = false,
                    Some(FULL) => any = true,
                    Some(_) => (any, all) = (true, false),
                }
                kb += 1;
            }
        }
        TileKind::from_bounds(all, !any)
    }

    fn classes(&self) -> Classes {
        match self.0.planes {
            (1, 1) => Classes::One,
            (1, _) => Classes::PerHead,
            _ => Classes::PerBatchHead,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Attention, Pattern, PatternKind};

    fn row(full: &[usize], partial: &[(usize, Vec<bool>)]) -> BlockRow {
        BlockRow {
            full: full.to_vec(),
            partial: partial.to_vec(),
        }
    }

    #[test]
    fn pairs_follow_the_lists_and_bits() {
        // 4 queries × 6 keys in blocks of 2 × 3: query block 0 reads key
        // block 0 in full and key block 1 in part (its diagonal-ish bits);
        // query block 1 reads nothing.
        let bits = vec![true, false, false, false, true, true];
        let m = BlockSparse::new(
            (4, 6),
            (2, 3),
            (1, 1),
            &[row(&[0], &[(1, bits)]), row(&[], &[])],
        )
        .unwrap();
        let shape = AttnShape {
            batch: 1,
            heads_q: 1,
            heads_kv: 1,
            len_q: 4,
            len_k: 6,
            head_dim: 1,
        };
        let p = Pattern::new(PatternKind::Blocks(m), false);
        let allowed: Vec<Vec<bool>> = (0..4)
            .map(|i| (0..6).map(|j| p.allowed(&shape, 0, 0, i, j)).collect())
            .collect();
        let t = true;
        let f = false;
        assert_eq!(allowed[0], [t, t, t, t, f, f]);
        assert_eq!(allowed[1], [t, t, t, f, t, t]);
        assert_eq!(allowed[2], [f; 6]);
        assert_eq!(allowed[3], [f; 6]);
    }

    #[test]
    fn bad_lists_and_shapes_are_refused() {
        let one = |rows: &[BlockRow]| BlockSparse::new((4, 6), (2, 3), (1, 1), rows);
        assert!(one(&[row(&[0], &[])]).is_err(), "too few rows");
        assert!(
            one(&[row(&[2], &[]), row(&[], &[])]).is_err(),
            "key block past the end"
        );
        assert!(
            one(&[row(&[0, 0], &[]), row(&[], &[])]).is_err(),
            "listed twice"
        );
        assert!(
            one(&[row(&[0], &[(0, vec![true; 6])]), row(&[], &[])]).is_err(),
            "full and partial"
        );
        assert!(
            one(&[row(&[], &[(1, vec![true; 5])]), row(&[], &[])]).is_err(),
            "bits of the wrong size"
        );
        assert!(
            BlockSparse::new((4, 6), (0, 3), (1, 1), &[]).is_err(),
            "zero block"
        );
        let m = one(&[row(&[0], &[]), row(&[1], &[])]).unwrap();
        let shape = AttnShape {
            batch: 1,
            heads_q: 1,
            heads_kv: 1,
            len_q: 4,
            len_k: 7,
            head_dim: 8,
        };
        let err = Attention::new(shape, Pattern::new(PatternKind::Blocks(m), false)).unwrap_err();
        assert!(err.to_string().contains("Nk 6"), "{err}");
    }
}
