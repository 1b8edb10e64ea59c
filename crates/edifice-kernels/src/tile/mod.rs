//! Micro-kernels on one (query tile × key tile), shared by the forward and
//! backward passes.
//!
//! Layouts, for a query tile of [`TILE_Q`] rows and a key tile of `n ≤`
//! [`TILE_K`] keys:
//! * transposed query-side operands (`Qᵀ`, `dOᵀ`): `[D, TILE_Q]`;
//! * scores and their derivatives (`Sᵀ`, `Pᵀ`, `dPᵀ`, `dSᵀ`): key-major
//!   `[S_ROWS, TILE_Q]`, so per-query reductions are vertical vector ops;
//! * key-side operands (`K`, `V`): [`KeyRows`], read in place (rows `step · D`
//!   apart) or from a worker's [`Gathered`] copy of a strided class.
//!
//! Register blocks are indexed loops over fixed-size arrays on purpose:
//! iterator adaptors and closures here are not reliably inlined into the
//! target-feature functions (see `RankUpdate::block`).
#![allow(clippy::needless_range_loop)]

use std::ops::Range;
use std::sync::Mutex;

use crate::pattern::{KeySpan, Rows, ScoreTile};
use crate::simd::{Operand, Simd};
use crate::tile_map::TileMap;
use crate::{Attention, Element};

mod rank_update;

pub(crate) use rank_update::RankUpdate;

/// Query rows per tile: a multiple of every ISA's register block width.
pub const TILE_Q: usize = 64;
/// Keys per tile.
pub const TILE_K: usize = 64;
/// Rows of a score buffer.
pub(crate) const S_ROWS: usize = TILE_K;

/// One value per rayon worker thread, made before a parallel loop so the loop
/// itself never allocates; each worker locks only its own (uncontended).
pub(crate) struct PerWorker<T>(Vec<Mutex<T>>);

impl<T> PerWorker<T> {
    pub(crate) fn new(make: impl Fn() -> T) -> Self {
        PerWorker(
            (0..rayon::current_num_threads())
                .map(|_| Mutex::new(make()))
                .collect(),
        )
    }

    /// Runs `f` on the calling worker's value.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let worker = rayon::current_thread_index().unwrap_or(0) % self.0.len();
        f(&mut self.0[worker].lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// `t[dd * TILE_Q + i] = x[i * d + dd] * factor` in f32; rows past `x` are
/// zero. (Walking `t` contiguously, or gathering columns, measured no
/// faster: on sparse patterns the time here is the first touch of the rows.)
#[inline(always)]
pub(crate) fn load_transposed<E: Element>(x: &[E], d: usize, factor: f32, t: &mut [f32]) {
    let n_rows = x.len() / d;
    for (i, row) in x.chunks_exact(d).enumerate() {
        for (dd, &v) in row.iter().enumerate() {
            t[dd * TILE_Q + i] = v.to_f32() * factor;
        }
    }
    if n_rows < TILE_Q {
        for dd in 0..d {
            t[dd * TILE_Q + n_rows..(dd + 1) * TILE_Q].fill(0.0);
        }
    }
}

/// Per query row of a partial tile, the tile-local keys `lo..=hi` it may
/// read (`lo > hi`: none), from [`Pattern::row_bounds`](crate::Pattern).
pub(crate) struct Bounds {
    lo: [i32; TILE_Q],
    hi: [i32; TILE_Q],
}

impl Bounds {
    /// Every row reads nothing (padding rows past the sequence stay so).
    pub(crate) fn new() -> Self {
        Bounds {
            lo: [1; TILE_Q],
            hi: [0; TILE_Q],
        }
    }

    /// The union of the ranges of rows `rows`, as `lo..hi_exclusive`.
    #[inline(always)]
    pub(crate) fn union(&self, rows: Range<usize>) -> Range<usize> {
        let (mut lo, mut hi) = (i32::MAX, -1);
        for i in rows {
            if self.lo[i] <= self.hi[i] {
                lo = lo.min(self.lo[i]);
                hi = hi.max(self.hi[i]);
            }
        }
        if lo > hi {
            0..0
        } else {
            lo as usize..hi as usize + 1
        }
    }

    /// Sets to `-inf` the scores outside each row's (exact) bounds.
    #[inline(always)]
    fn mask_outside(&self, s: &mut [f32], n_keys: usize) {
        for t in 0..n_keys {
            let col = &mut s[t * TILE_Q..(t + 1) * TILE_Q];
            let t = t as i32;
            for ((score, &lo), &hi) in col.iter_mut().zip(&self.lo).zip(&self.hi) {
                if t < lo || t > hi {
                    *score = f32::NEG_INFINITY;
                }
            }
        }
    }
}

/// What every kernel task shares: the attention, its tile map, and the
/// batch element and head it serves (a query head for the forward and dQ
/// tasks, a kv head for the dK/dV task).
#[derive(Clone, Copy)]
pub(crate) struct TaskCx<'a> {
    pub att: &'a Attention,
    pub map: &'a TileMap,
    pub batch: usize,
    pub head: usize,
}

impl<'a> TaskCx<'a> {
    /// The task of plane `plane` of `heads` heads per batch element
    /// (`plane = batch · heads + head`).
    pub(crate) fn of_plane(
        att: &'a Attention,
        map: &'a TileMap,
        plane: usize,
        heads: usize,
    ) -> Self {
        TaskCx {
            att,
            map,
            batch: plane / heads,
            head: plane % heads,
        }
    }

    /// Where query rows `rows` of query head `head` sit.
    #[inline(always)]
    pub(crate) fn at(&self, head: usize, rows: Rows) -> TilePos<'a> {
        TilePos {
            att: self.att,
            batch: self.batch,
            head,
            rows,
        }
    }

    /// The tile-map class of query head `head`.
    #[inline(always)]
    pub(crate) fn class(&self, head: usize) -> usize {
        self.att
            .pattern()
            .class_of(self.att.shape(), self.batch, head)
    }

    /// Offset of kv head `kv_head`'s `[Nk, D]` plane in K and V.
    #[inline(always)]
    pub(crate) fn kv_base(&self, kv_head: usize) -> usize {
        self.att.shape().kv_offset(self.batch, kv_head)
    }
}

/// Where a tile sits: which (batch, head) and which query rows.
pub(crate) struct TilePos<'a> {
    pub att: &'a Attention,
    pub batch: usize,
    pub head: usize,
    pub rows: Rows,
}

/// `s[j * TILE_Q + i] = factor · Σ_d a[key j][d] · bt[d * TILE_Q + i]` for
/// the keys of one tile, with `-inf` wherever the pattern forbids the pair
/// when the tile is partial (`full == false`). `a` holds the tile's K rows.
///
/// Returns the per-row bounds of a partial tile (for the rank updates to
/// skip dead keys), `None` for a full one.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn masked_scores<'b, S: Simd, T: Operand>(
    simd: S,
    pos: &TilePos,
    keys: &KeySpan,
    full: bool,
    a: KeyRows<T>,
    bt: &[T],
    factor: Option<f32>,
    bounds: &'b mut Bounds,
    s: &mut [f32],
) -> Option<&'b Bounds> {
    let shape = pos.att.shape();
    let pattern = pos.att.pattern();
    let exact = !full
        && pattern.row_bounds(
            shape,
            (pos.batch, pos.head),
            &pos.rows,
            keys,
            (&mut bounds.lo, &mut bounds.hi),
        );
    // A full tile of fewer than TILE_Q rows (the last of a plane, or every
    // tile of a short sequence) reads all its keys from its rows and none
    // from the padding rows past them: bounds that say so let every step
    // skip the padding's vectors instead of computing on zeros.
    let n_rows = pos.rows.last + 1 - pos.rows.first;
    let short = full && n_rows < TILE_Q;
    if short {
        bounds.lo[..n_rows].fill(0);
        bounds.hi[..n_rows].fill(keys.len as i32 - 1);
    }
    let live = (!full || short).then_some(&*bounds);
    scores(
        simd,
        a,
        keys,
        bt,
        shape.head_dim / T::TERMS,
        live,
        factor,
        s,
    );
    if exact {
        bounds.mask_outside(s, keys.len);
    } else if !full {
        let tile = ScoreTile {
            rows: &pos.rows,
            keys,
            scores: s,
            ld: TILE_Q,
        };
        pattern.mask_tile(shape, pos.batch, pos.head, tile);
    }
    live
}

/// `s = factor · a · btᵀ` for one key tile (`d` operand elements per row;
/// no factor: 1); with `bounds`, blocks that no row reads are set to `-inf`
/// instead of computed.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn scores<S: Simd, T: Operand>(
    simd: S,
    a: KeyRows<T>,
    keys: &KeySpan,
    bt: &[T],
    d: usize,
    bounds: Option<&Bounds>,
    factor: Option<f32>,
    s: &mut [f32],
) {
    // Register block (key rows, query vectors). (8, 2) and (6, 4) on
    // AVX-512 measured no faster than (4, 4), (8, 2) 30% slower.
    if S::LANES == 8 {
        scores_blocked::<S, T, 4, 2>(simd, a, keys, bt, d, bounds, factor, s);
    } else {
        scores_blocked::<S, T, 4, 4>(simd, a, keys, bt, d, bounds, factor, s);
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn scores_blocked<S: Simd, T: Operand, const MR: usize, const NV: usize>(
    simd: S,
    a: KeyRows<T>,
    keys: &KeySpan,
    bt: &[T],
    d: usize,
    bounds: Option<&Bounds>,
    factor: Option<f32>,
    s: &mut [f32],
) {
    let (stride, a) = (a.stride, a.data);
    let width = NV * S::LANES;
    debug_assert!(TILE_Q.is_multiple_of(width) && S_ROWS.is_multiple_of(MR));
    debug_assert!((keys.len - 1) * stride + d <= a.len());
    for i0 in (0..TILE_Q).step_by(width) {
        // Keys read by each query vector: on a diagonal tile, a block of
        // keys skips the vectors of the queries before it (half the tile).
        let (mut lo, mut hi) = ([0; NV], [keys.len; NV]);
        if let Some(b) = bounds {
            for c in 0..NV {
                let live = b.union(i0 + c * S::LANES..i0 + (c + 1) * S::LANES);
                (lo[c], hi[c]) = (live.start, live.end);
            }
        }
        for j0 in (0..keys.len).step_by(MR) {
            let (mut c0, mut c1) = (0, NV);
            while c0 < NV && (j0 >= hi[c0] || j0 + MR <= lo[c0]) {
                c0 += 1;
            }
            while c1 > c0 && (j0 >= hi[c1 - 1] || j0 + MR <= lo[c1 - 1]) {
                c1 -= 1;
            }
            for r in 0..MR {
                let row = &mut s[(j0 + r) * TILE_Q + i0..][..width];
                row[..c0 * S::LANES].fill(f32::NEG_INFINITY);
                row[c1 * S::LANES..].fill(f32::NEG_INFINITY);
            }
            let block = ScoreBlock::<T, MR> {
                a,
                stride,
                first: j0,
                last: keys.len - 1,
                bt: &bt[i0 + c0 * S::LANES..],
                d,
                factor,
                out: &mut s[j0 * TILE_Q + i0 + c0 * S::LANES..],
            };
            match c1 - c0 {
                0 => {}
                1 => block.compute::<S, 1>(simd),
                2 => block.compute::<S, 2>(simd),
                3 => block.compute::<S, 3>(simd),
                _ => block.compute::<S, NV>(simd),
            }
        }
    }
}

/// `MR` key rows against `NV` query vectors of `Qᵀ`: one register block of
/// [`scores`].
struct ScoreBlock<'a, T, const MR: usize> {
    /// The tile's key rows, `stride` apart; the block reads rows
    /// `first..first + MR`, those past `last` repeating row `last`
    /// (computed, never read).
    a: &'a [T],
    stride: usize,
    first: usize,
    last: usize,
    /// `Qᵀ` from the block's first query column (rows `TILE_Q` apart).
    bt: &'a [T],
    d: usize,
    factor: Option<f32>,
    /// Scores from the block's first (key, query) (rows `TILE_Q` apart).
    out: &'a mut [f32],
}

impl<T: Operand, const MR: usize> ScoreBlock<'_, T, MR> {
    #[inline(always)]
    fn compute<S: Simd, const NV: usize>(self, simd: S) {
        // One check per register block (against its d·MR·NV products)
        // keeps this safe function sound in release builds.
        let row = |r: usize| (self.first + r).min(self.last) * self.stride;
        assert!(
            self.d > 0
                && (self.d - 1) * TILE_Q + NV * S::LANES <= self.bt.len()
                && (MR - 1) * TILE_Q + NV * S::LANES <= self.out.len()
                && row(MR - 1) + self.d <= self.a.len(),
            "score block out of bounds"
        );
        // SAFETY: the assertion above bounds every read of `a` (the rows
        // only grow with `r`) and `bt` and every write to `out`.
        unsafe {
            let mut rows = [self.a.as_ptr(); MR];
            for (r, p) in rows.iter_mut().enumerate() {
                *p = p.add(row(r));
            }
            let mut acc = [[simd.splat(0.0); NV]; MR];
            let bt = self.bt.as_ptr();
            let mut bv = [T::zero(simd); NV];
            for dd in 0..self.d {
                for c in 0..NV {
                    bv[c] = T::load(simd, bt.add(dd * TILE_Q + c * S::LANES));
                }
                for r in 0..MR {
                    let ab = T::splat(simd, rows[r].add(dd));
                    for c in 0..NV {
                        acc[r][c] = T::madd(simd, acc[r][c], ab, bv[c]);
                    }
                }
            }
            if let Some(f) = self.factor {
                let f = simd.splat(f);
                for r in 0..MR {
                    for c in 0..NV {
                        acc[r][c] = simd.mul(acc[r][c], f);
                    }
                }
            }
            let out = self.out.as_mut_ptr();
            for r in 0..MR {
                for c in 0..NV {
                    simd.store(out.add(r * TILE_Q + c * S::LANES), acc[r][c]);
                }
            }
        }
    }
}

/// The K or V rows of one key tile: row `t` is `data[t * stride..][..D]`
/// (elements of storage type, or operand pairs).
pub(crate) struct KeyRows<'a, T = f32> {
    pub data: &'a [T],
    pub stride: usize,
}

// Not derived: the derive would require `T: Copy`.
impl<T> Clone for KeyRows<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for KeyRows<'_, T> {}

impl<'a, T> KeyRows<'a, T> {
    /// The rows of `keys` read in place (`src` starts at its first key).
    pub(crate) fn in_place(src: &'a [T], keys: &KeySpan, d: usize) -> Self {
        KeyRows {
            data: src,
            stride: keys.step * d,
        }
    }
}

/// A worker's contiguous copy of the stepped (strided) K and V rows of the
/// (batch, kv head) it is working on, grown as its query tiles reach further.
///
/// A strided pattern's keys are `step · D` floats apart in K and V: hardware
/// prefetchers do not follow them, and at a power-of-two step they fall into
/// a fraction of the cache sets (one in eight at step 8, D = 64), so they do
/// not stay in L2 between the query tiles that re-read them. Consecutive query
/// tiles of a head read the same stepped keys plus a few more, so a worker
/// copies each row once per head and every tile after that reads contiguous,
/// L2-resident rows. Bounded by [`Attention::with_gather_budget`] per worker;
/// the rows of a class past it are read in place.
pub(crate) struct Gathered<E = f32> {
    /// (kv offset, residue, step) of the class whose rows are held, and
    /// how many rows (from the class's first key on).
    class: Option<(usize, usize, usize)>,
    len: usize,
    k: Vec<E>,
    v: Vec<E>,
}

impl Gathered {
    /// Rows to reserve for `map` over `len_k` keys: enough for a whole class
    /// at the map's largest step, within `budget` bytes (none when every
    /// span is contiguous).
    pub(crate) fn rows_for(map: &crate::TileMap, len_k: usize, d: usize, budget: usize) -> usize {
        let step = map.max_step();
        if step == 1 {
            return 0;
        }
        len_k
            .div_ceil(step)
            .min(budget / (2 * d * std::mem::size_of::<f32>()))
    }

    /// Bytes held for `rows` rows of `d` floats.
    pub(crate) fn bytes(rows: usize, d: usize) -> usize {
        2 * rows * d * std::mem::size_of::<f32>()
    }
}

impl<E: Element> Gathered<E> {
    /// Room for `rows` rows of `d` elements of K and of V.
    pub(crate) fn new(rows: usize, d: usize) -> Self {
        Gathered {
            class: None,
            len: 0,
            k: vec![E::default(); rows * d],
            v: vec![E::default(); rows * d],
        }
    }

    /// Contiguous K and V rows of the stepped tile `keys` of the kv head at
    /// `kv_base` in `k` and `v`, copying the rows not held yet; `None` for a
    /// contiguous tile or one past the budget.
    #[inline(always)]
    pub(crate) fn rows<S: Simd>(
        &mut self,
        simd: S,
        k: &[E],
        v: &[E],
        kv_base: usize,
        keys: &KeySpan,
        d: usize,
    ) -> Option<(KeyRows<'_, E>, KeyRows<'_, E>)> {
        if keys.step == 1 {
            return None;
        }
        let first = keys.start / keys.step;
        let end = first + keys.len;
        if end * d > self.k.len() {
            return None;
        }
        let residue = keys.start % keys.step;
        if self.class != Some((kv_base, residue, keys.step)) {
            self.class = Some((kv_base, residue, keys.step));
            self.len = 0;
        }
        if end > self.len {
            let first = residue + self.len * keys.step;
            for (src, to) in [(k, &mut self.k), (v, &mut self.v)] {
                let to = &mut to[self.len * d..end * d];
                copy_stepped(simd, &src[kv_base..], first, keys.step, d, to);
            }
            self.len = end;
        }
        Some((
            KeyRows {
                data: &self.k[first * d..end * d],
                stride: d,
            },
            KeyRows {
                data: &self.v[first * d..end * d],
                stride: d,
            },
        ))
    }
}

/// The rows of a key tile as a contiguous `[n_keys, d]` block: `rows`
/// itself when they already are, else a copy in `buf`. Update kernels read a
/// tile's rows once per block of query rows, and rows a power-of-two stride
/// apart (a strided pattern's keys) fall into a few L1 sets and thrash.
pub(crate) fn contiguous_rows<'a, E: Copy>(
    rows: KeyRows<'a, E>,
    n_keys: usize,
    d: usize,
    buf: &'a mut [E],
) -> KeyRows<'a, E> {
    if rows.stride == d {
        return rows;
    }
    for (t, row) in buf.chunks_exact_mut(d).take(n_keys).enumerate() {
        row.copy_from_slice(&rows.data[t * rows.stride..][..d]);
    }
    KeyRows {
        data: &buf[..n_keys * d],
        stride: d,
    }
}

/// Copies rows `first`, `first + step`, … of `src` (rows of `d` elements)
/// into the consecutive rows of `to`, as many as `to` holds: a strided
/// class's keys made contiguous.
#[inline(always)]
pub(crate) fn copy_stepped<S: Simd, E: Element>(
    simd: S,
    src: &[E],
    first: usize,
    step: usize,
    d: usize,
    to: &mut [E],
) {
    for (r, row) in to.chunks_exact_mut(d).enumerate() {
        E::copy_row(simd, &src[(first + r * step) * d..][..d], row);
    }
}
