//! Which positions each rank holds.
//!
//! The sequence of `N` positions is cut into `chunks` chunks of
//! `c = ceil(N / chunks)` positions (the last ones shorter, possibly empty,
//! when `N` does not divide). A rank holds some chunks, in increasing
//! order, and its local tensors are those chunks' rows side by side:
//! `[B, H, L, D]` with `L` the sum of their lengths.
//!
//! * [`LayoutKind::Zigzag`]: `2P` chunks, rank `r` holds chunks `r` and
//!   `2P − 1 − r`. Under a causal mask, chunk `i` reads `i + 1` chunks'
//!   worth of keys, so every rank gets `2P + 1` chunk pairs of work: the
//!   ring's causal balance (ring-flash-attention's zig-zag layout).
//! * [`LayoutKind::Contiguous`]: `P` chunks, rank `r` holds chunk `r`.
//!   A window reads only nearby chunks, so this keeps the ring short;
//!   windows and non-causal attention are balanced in it already.

/// How chunks are assigned to ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutKind {
    /// Rank `r` holds chunks `r` and `2P − 1 − r` of `2P`.
    Zigzag,
    /// Rank `r` holds chunk `r` of `P`.
    Contiguous,
}

/// One chunk of the sequence: positions `start..start + len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// First position.
    pub start: usize,
    /// Positions (0 past the end of a short sequence).
    pub len: usize,
}

/// The assignment of a sequence's positions to the ranks of a ring.
///
/// ```
/// use edifice_dist::{Layout, LayoutKind};
///
/// // 10 positions over 2 ranks, zig-zag: 4 chunks of 3 (the last has 1).
/// let layout = Layout::new(LayoutKind::Zigzag, 10, 2);
/// assert_eq!(layout.positions(0), [0, 1, 2, 9]);
/// assert_eq!(layout.positions(1), [3, 4, 5, 6, 7, 8]);
/// assert_eq!(layout.owner(9), Some((0, 3)));
/// // Rank 1's rows of x [1, 10, 1], and back.
/// let x: Vec<u32> = (0..10).collect();
/// let parts = [layout.scatter(0, &x, 1, 1), layout.scatter(1, &x, 1, 1)];
/// assert_eq!(parts[1], [3, 4, 5, 6, 7, 8]);
/// assert_eq!(layout.gather(&parts, 1, 1), x);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    kind: LayoutKind,
    len: usize,
    ranks: usize,
    chunk: usize,
}

impl Layout {
    /// `len` positions over `ranks` ranks.
    pub fn new(kind: LayoutKind, len: usize, ranks: usize) -> Self {
        let chunks = match kind {
            LayoutKind::Zigzag => 2 * ranks,
            LayoutKind::Contiguous => ranks,
        };
        Layout {
            kind,
            len,
            ranks,
            chunk: len.div_ceil(chunks.max(1)),
        }
    }

    /// How the chunks are assigned.
    pub fn kind(&self) -> LayoutKind {
        self.kind
    }

    /// Positions in the whole sequence, `N`.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the sequence is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Ranks in the ring, `P`.
    pub fn ranks(&self) -> usize {
        self.ranks
    }

    /// The chunks `rank` holds, in the order of its local rows.
    pub fn chunks(&self, rank: usize) -> Vec<Chunk> {
        let ids = match self.kind {
            LayoutKind::Zigzag => vec![rank, 2 * self.ranks - 1 - rank],
            LayoutKind::Contiguous => vec![rank],
        };
        ids.into_iter()
            .map(|i| {
                let start = (i * self.chunk).min(self.len);
                Chunk {
                    start,
                    len: self.chunk.min(self.len - start),
                }
            })
            .collect()
    }

    /// Local positions of `rank`, `L`.
    pub fn local_len(&self, rank: usize) -> usize {
        self.chunks(rank).iter().map(|c| c.len).sum()
    }

    /// The largest local length of any rank.
    pub fn max_local_len(&self) -> usize {
        (0..self.ranks)
            .map(|r| self.local_len(r))
            .max()
            .unwrap_or(0)
    }

    /// The global position of each of `rank`'s local rows.
    pub fn positions(&self, rank: usize) -> Vec<usize> {
        self.chunks(rank)
            .iter()
            .flat_map(|c| c.start..c.start + c.len)
            .collect()
    }

    /// The rank holding position `pos` and its local row there.
    pub fn owner(&self, pos: usize) -> Option<(usize, usize)> {
        (0..self.ranks).find_map(|r| {
            self.positions(r)
                .iter()
                .position(|&p| p == pos)
                .map(|row| (r, row))
        })
    }

    /// `rank`'s rows of `x [outer, N, width]`: `[outer, L, width]`.
    pub fn scatter<T: Copy>(&self, rank: usize, x: &[T], outer: usize, width: usize) -> Vec<T> {
        let n = self.len;
        assert_eq!(
            x.len(),
            outer * n * width,
            "scatter: x is not [outer, N, width]"
        );
        let chunks = self.chunks(rank);
        let mut out = Vec::with_capacity(outer * self.local_len(rank) * width);
        for plane in x.chunks_exact(n * width) {
            for c in &chunks {
                out.extend_from_slice(&plane[c.start * width..(c.start + c.len) * width]);
            }
        }
        out
    }

    /// The inverse of [`scatter`](Self::scatter): every rank's rows
    /// (`parts[r]` is `[outer, L_r, width]`) back into `[outer, N, width]`.
    pub fn gather<T: Copy + Default>(
        &self,
        parts: &[Vec<T>],
        outer: usize,
        width: usize,
    ) -> Vec<T> {
        let n = self.len;
        let mut out = vec![T::default(); outer * n * width];
        for (rank, part) in parts.iter().enumerate() {
            let (chunks, local) = (self.chunks(rank), self.local_len(rank));
            assert_eq!(
                part.len(),
                outer * local * width,
                "gather: part {rank} is not [outer, L, width]"
            );
            for (plane, src) in out
                .chunks_exact_mut(n * width)
                .zip(part.chunks_exact(local.max(1) * width))
            {
                let mut at = 0;
                for c in &chunks {
                    let rows = c.len * width;
                    plane[c.start * width..][..rows].copy_from_slice(&src[at..at + rows]);
                    at += rows;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_position_has_one_owner() {
        for kind in [LayoutKind::Zigzag, LayoutKind::Contiguous] {
            for ranks in 1..=5 {
                for len in [0, 1, 7, 8, 13, 64, 101] {
                    let layout = Layout::new(kind, len, ranks);
                    let mut seen: Vec<usize> =
                        (0..ranks).flat_map(|r| layout.positions(r)).collect();
                    seen.sort_unstable();
                    assert_eq!(
                        seen,
                        (0..len).collect::<Vec<_>>(),
                        "{kind:?} N {len} P {ranks}"
                    );
                }
            }
        }
    }

    #[test]
    fn zigzag_pairs_first_and_last_chunks() {
        let layout = Layout::new(LayoutKind::Zigzag, 16, 2);
        assert_eq!(layout.positions(0), [0, 1, 2, 3, 12, 13, 14, 15]);
        assert_eq!(layout.positions(1), [4, 5, 6, 7, 8, 9, 10, 11]);
        assert_eq!(layout.owner(15), Some((0, 7)));
    }

    #[test]
    fn scatter_then_gather_is_identity() {
        let (outer, width) = (3, 2);
        for ranks in 1..=4 {
            for len in [1, 5, 9, 16] {
                let layout = Layout::new(LayoutKind::Zigzag, len, ranks);
                let x: Vec<u32> = (0..(outer * len * width) as u32).collect();
                let parts: Vec<_> = (0..ranks)
                    .map(|r| layout.scatter(r, &x, outer, width))
                    .collect();
                assert_eq!(layout.gather(&parts, outer, width), x);
            }
        }
    }
}
