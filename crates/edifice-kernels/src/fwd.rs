//! The forward kernel: block-sparse, tiled online softmax.
//!
//! One task per (batch, query head, query tile of [`TILE_Q`] rows), run on
//! rayon. A task keeps its query tile transposed and pre-scaled, then walks
//! the key tiles the [`TileMap`] lists for it:
//!
//! ```text
//! Sᵀ[j, i] = Σ_d K[j, d] · Qᵀ[d, i]            (scores, log2 domain)
//! Sᵀ[j, i] = -inf where the pattern forbids     (partial tiles only)
//! m_new    = max(m, max_j Sᵀ[·, i]);  α = 2^(m - m_new)
//! Pᵀ       = 2^(Sᵀ - m_new);           l = α·l + Σ_j Pᵀ[j, ·]
//! acc[i,:] = α[i]·acc[i,:] + Σ_j Pᵀ[j, i] · V[j, :]
//! ```
//!
//! and finally writes `o = acc / l` and `lse = (m + log2 l) · ln 2`.
//!
//! Scores are kept key-major (`Sᵀ`, queries along the vector lanes), so the
//! softmax's per-query max and sum are vertical vector operations, the
//! Q·Kᵀ micro-kernel broadcasts K and streams the transposed query tile, and
//! the P·V micro-kernel broadcasts P and streams rows of V. Nothing is
//! transposed per key tile, and strided key tiles (step > 1) are read in
//! place by row stride.
//!
//! Extra memory: the tile map plus, per thread, one [`Scratch`]
//! (`(2·D + TILE_K + 4) · TILE_Q` f32), independent of `Nq × Nk`.

use std::sync::Mutex;

use rayon::prelude::*;

use crate::pattern::{KeySpan, Rows};
use crate::simd::{Simd, WithSimd};
use crate::tile_map::TileMap;
use crate::Attention;

/// Query rows per tile: a multiple of every ISA's `LANES × QK_NV`.
pub const TILE_Q: usize = 64;
/// Keys per tile.
pub const TILE_K: usize = 64;

/// Per-thread working memory of the forward kernel.
#[derive(Default)]
pub(crate) struct Scratch {
    /// Pre-scaled transposed query tile, `[D, TILE_Q]`.
    qt: Vec<f32>,
    /// Scores, then probabilities, key-major: `[TILE_K, TILE_Q]`.
    s: Vec<f32>,
    /// Unnormalised output rows, `[TILE_Q, D]`.
    acc: Vec<f32>,
    /// Running max (log2 domain), running sum and the rescale factor, per row.
    m: Vec<f32>,
    l: Vec<f32>,
    alpha: Vec<f32>,
}

impl Scratch {
    fn fit(&mut self, d: usize) {
        self.qt.resize(d * TILE_Q, 0.0);
        self.s.resize(TILE_K * TILE_Q, 0.0);
        self.acc.resize(TILE_Q * d, 0.0);
        self.m.resize(TILE_Q, 0.0);
        self.l.resize(TILE_Q, 0.0);
        self.alpha.resize(TILE_Q, 0.0);
    }

    /// Bytes a thread holds for head dimension `d`.
    pub(crate) fn bytes(d: usize) -> usize {
        (2 * d * TILE_Q + TILE_K * TILE_Q + 3 * TILE_Q) * std::mem::size_of::<f32>()
    }
}

/// Runs the forward pass. Inputs are validated by [`Attention::forward`].
pub(crate) fn forward(
    att: &Attention,
    map: &TileMap,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &mut [f32],
    lse: &mut [f32],
) {
    let shape = att.shape();
    let (nq, d) = (shape.len_q, shape.head_dim);
    if nq == 0 || lse.is_empty() {
        return;
    }
    // One scratch per worker thread, allocated before the parallel loop so
    // the loop itself never allocates; each worker locks only its own.
    let scratch: Vec<Mutex<Scratch>> = (0..rayon::current_num_threads())
        .map(|_| {
            let mut s = Scratch::default();
            s.fit(d);
            Mutex::new(s)
        })
        .collect();
    o.par_chunks_mut(nq * d)
        .zip(lse.par_chunks_mut(nq))
        .enumerate()
        .for_each(|(bh, (o_head, lse_head))| {
            o_head
                .par_chunks_mut(TILE_Q * d)
                .zip(lse_head.par_chunks_mut(TILE_Q))
                .enumerate()
                .for_each(|(t, (o_tile, lse_tile))| {
                    let worker = rayon::current_thread_index().unwrap_or(0) % scratch.len();
                    let mut scratch = scratch[worker].lock().unwrap_or_else(|e| e.into_inner());
                    att.isa().run(QueryTile {
                        att,
                        map,
                        q,
                        k,
                        v,
                        batch: bh / shape.heads_q,
                        head: bh % shape.heads_q,
                        tile: t,
                        o: o_tile,
                        lse: lse_tile,
                        scratch: &mut scratch,
                    })
                })
        });
}

/// One task: a query tile of one (batch, head).
struct QueryTile<'a> {
    att: &'a Attention,
    map: &'a TileMap,
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    batch: usize,
    head: usize,
    tile: usize,
    o: &'a mut [f32],
    lse: &'a mut [f32],
    scratch: &'a mut Scratch,
}

impl WithSimd for QueryTile<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let shape = self.att.shape();
        let d = shape.head_dim;
        let n_rows = self.lse.len();
        let first = self.tile * TILE_Q;
        let rows = Rows::new(shape, first, first + n_rows - 1);
        let plane = self.batch * shape.heads_q + self.head;
        let kv_head = self.head / (shape.heads_q / shape.heads_kv);
        let kv_base = (self.batch * shape.heads_kv + kv_head) * shape.len_k * d;
        let sc = &mut *self.scratch;

        load_transposed(
            &self.q[(plane * shape.len_q + first) * d..][..n_rows * d],
            d,
            self.att.scale() * std::f32::consts::LOG2_E,
            &mut sc.qt,
        );
        sc.m.fill(f32::NEG_INFINITY);
        sc.l.fill(0.0);
        sc.acc.fill(0.0);

        // Per row, the tile-local keys it may read (partial tiles only);
        // padding rows past the sequence read none.
        let mut bounds = Bounds {
            lo: [1; TILE_Q],
            hi: [0; TILE_Q],
        };
        let pattern = self.att.pattern();
        let class = pattern.class_of(shape, self.batch, self.head);
        for block in self.map.row(class, self.tile) {
            for keys in self.map.tiles(block) {
                let at = kv_base + keys.start * d;
                let (k, v) = (&self.k[at..], &self.v[at..]);
                debug_assert!((keys.len - 1) * keys.step * d + d <= k.len());
                let exact = !block.full && {
                    let Bounds { lo, hi } = &mut bounds;
                    pattern.row_bounds(shape, self.head, &rows, &keys, lo, hi)
                };
                let live = (!block.full).then_some(&bounds);
                // Register block (key rows, query vectors). (8, 2) on AVX-512
                // measured 30% slower than (4, 4): eight K row pointers spill
                // general-purpose registers.
                if S::LANES == 8 {
                    scores_blocked::<S, 4, 2>(simd, k, &keys, &sc.qt, d, live, &mut sc.s);
                } else {
                    scores_blocked::<S, 4, 4>(simd, k, &keys, &sc.qt, d, live, &mut sc.s);
                }
                if exact {
                    mask_outside(&mut sc.s, keys.len, &bounds);
                } else if !block.full {
                    pattern.mask_tile(
                        shape, self.batch, self.head, &rows, &keys, &mut sc.s, TILE_Q,
                    );
                }
                online_softmax(
                    simd,
                    &mut sc.s,
                    keys.len,
                    &mut sc.m,
                    &mut sc.l,
                    &mut sc.alpha,
                );
                accumulate(simd, &sc.s, v, &keys, d, &sc.alpha, live, &mut sc.acc);
            }
        }

        for i in 0..n_rows {
            let out = &mut self.o[i * d..(i + 1) * d];
            if sc.m[i] == f32::NEG_INFINITY {
                out.fill(0.0);
                self.lse[i] = f32::NEG_INFINITY;
            } else {
                let inv = 1.0 / sc.l[i];
                for (o, a) in out.iter_mut().zip(&sc.acc[i * d..(i + 1) * d]) {
                    *o = a * inv;
                }
                self.lse[i] = (sc.m[i] + sc.l[i].log2()) * std::f32::consts::LN_2;
            }
        }
    }
}

/// `qt[dd * TILE_Q + i] = q[i * d + dd] * factor`; rows past `q` are zero.
/// (Walking `qt` contiguously instead measured 5% slower on chunk-64 tiles.)
#[inline(always)]
fn load_transposed(q: &[f32], d: usize, factor: f32, qt: &mut [f32]) {
    let n_rows = q.len() / d;
    for (i, row) in q.chunks_exact(d).enumerate() {
        for (dd, &x) in row.iter().enumerate() {
            qt[dd * TILE_Q + i] = x * factor;
        }
    }
    if n_rows < TILE_Q {
        for dd in 0..d {
            qt[dd * TILE_Q + n_rows..(dd + 1) * TILE_Q].fill(0.0);
        }
    }
}

/// Per query row of a partial tile, the tile-local keys `lo..=hi` it may
/// read (`lo > hi`: none), from [`Pattern::row_bounds`](crate::Pattern).
struct Bounds {
    lo: [i32; TILE_Q],
    hi: [i32; TILE_Q],
}

impl Bounds {
    /// The union of the ranges of rows `rows`, as `lo..hi_exclusive`.
    #[inline(always)]
    fn union(&self, rows: std::ops::Range<usize>) -> std::ops::Range<usize> {
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
}

/// Sets to `-inf` the scores outside each row's exact bounds.
#[inline(always)]
fn mask_outside(s: &mut [f32], n_keys: usize, bounds: &Bounds) {
    for t in 0..n_keys {
        let col = &mut s[t * TILE_Q..(t + 1) * TILE_Q];
        let t = t as i32;
        for ((score, &lo), &hi) in col.iter_mut().zip(&bounds.lo).zip(&bounds.hi) {
            if t < lo || t > hi {
                *score = f32::NEG_INFINITY;
            }
        }
    }
}

/// `s[j * TILE_Q + i] = Σ_d k[key j][d] · qt[d * TILE_Q + i]` for the keys of
/// one tile (rows `keys.step` apart in `k`). With `bounds`, blocks that no
/// row reads are set to `-inf` instead of computed.
#[inline(always)]
fn scores_blocked<S: Simd, const MR: usize, const NV: usize>(
    simd: S,
    k: &[f32],
    keys: &KeySpan,
    qt: &[f32],
    d: usize,
    bounds: Option<&Bounds>,
    s: &mut [f32],
) {
    let stride = keys.step * d;
    let width = NV * S::LANES;
    debug_assert!(TILE_Q % width == 0 && TILE_K % MR == 0);
    for i0 in (0..TILE_Q).step_by(width) {
        let live = bounds.map_or(0..keys.len, |b| b.union(i0..i0 + width));
        for j0 in (0..keys.len).step_by(MR) {
            if j0 >= live.end || j0 + MR <= live.start {
                for r in 0..MR {
                    s[(j0 + r) * TILE_Q + i0..][..width].fill(f32::NEG_INFINITY);
                }
                continue;
            }
            // Rows past the tile repeat its last key: computed, never read.
            let rows: [*const f32; MR] =
                std::array::from_fn(|r| k[(j0 + r).min(keys.len - 1) * stride..].as_ptr());
            // SAFETY: every row pointer has `d` readable f32 (checked by the
            // slicing above and the caller's bounds), `qt` holds `d` rows of
            // TILE_Q, and `s` holds TILE_K ≥ j0 + MR rows of TILE_Q.
            unsafe {
                let mut acc = [[simd.splat(0.0); NV]; MR];
                let qt = qt.as_ptr().add(i0);
                for dd in 0..d {
                    let qv: [S::V; NV] =
                        std::array::from_fn(|c| simd.load(qt.add(dd * TILE_Q + c * S::LANES)));
                    for r in 0..MR {
                        let kb = simd.splat(*rows[r].add(dd));
                        for c in 0..NV {
                            acc[r][c] = simd.fma(kb, qv[c], acc[r][c]);
                        }
                    }
                }
                let out = s.as_mut_ptr().add(j0 * TILE_Q + i0);
                for r in 0..MR {
                    for c in 0..NV {
                        simd.store(out.add(r * TILE_Q + c * S::LANES), acc[r][c]);
                    }
                }
            }
        }
    }
}

/// Turns the scores of `n_keys` keys into probabilities relative to the
/// updated running max, and updates the running max `m`, sum `l` and the
/// rescale factor `alpha` of every row.
#[inline(always)]
fn online_softmax<S: Simd>(
    simd: S,
    s: &mut [f32],
    n_keys: usize,
    m: &mut [f32],
    l: &mut [f32],
    alpha: &mut [f32],
) {
    // Stand-in for a -inf max, so that (-inf) - max stays -inf instead of NaN.
    let floor = simd.splat(-1.0e30);
    for i0 in (0..TILE_Q).step_by(S::LANES) {
        // SAFETY: i0 + LANES ≤ TILE_Q = len of m, l, alpha; s holds
        // n_keys ≤ TILE_K rows of TILE_Q.
        unsafe {
            let m_old = simd.load(m.as_ptr().add(i0));
            let mut m_new = m_old;
            for j in 0..n_keys {
                m_new = simd.max(m_new, simd.load(s.as_ptr().add(j * TILE_Q + i0)));
            }
            let m_use = simd.max(m_new, floor);
            let a = simd.exp2(simd.sub(m_old, m_use));
            let mut sum = simd.splat(0.0);
            for j in 0..n_keys {
                let at = s.as_mut_ptr().add(j * TILE_Q + i0);
                let p = simd.exp2(simd.sub(simd.load(at), m_use));
                simd.store(at, p);
                sum = simd.add(sum, p);
            }
            let l_new = simd.fma(simd.load(l.as_ptr().add(i0)), a, sum);
            simd.store(l.as_mut_ptr().add(i0), l_new);
            simd.store(m.as_mut_ptr().add(i0), m_new);
            simd.store(alpha.as_mut_ptr().add(i0), a);
        }
    }
}

/// Register block of the P·V micro-kernel: (query rows, D vectors).
const fn pv_block(lanes: usize) -> (usize, usize) {
    match lanes {
        16 => (4, 4),
        8 => (4, 2),
        _ => (4, 4),
    }
}

/// `acc[i, :] = alpha[i] · acc[i, :] + Σ_j p[j * TILE_Q + i] · v[key j, :]`.
/// With `bounds`, each block of rows sums only over the keys it may read
/// (the other probabilities are exactly zero).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn accumulate<S: Simd>(
    simd: S,
    p: &[f32],
    v: &[f32],
    keys: &KeySpan,
    d: usize,
    alpha: &[f32],
    bounds: Option<&Bounds>,
    acc: &mut [f32],
) {
    let (mr, nv) = pv_block(S::LANES);
    debug_assert!(d % S::LANES == 0 && TILE_Q % mr == 0);
    let vectors = d / S::LANES;
    let mut c0 = 0;
    while c0 < vectors {
        let left = vectors - c0;
        match (mr, nv.min(left)) {
            (4, 4) => accumulate_blocked::<S, 4, 4>(simd, p, v, keys, d, c0, alpha, bounds, acc),
            (4, 3) => accumulate_blocked::<S, 4, 3>(simd, p, v, keys, d, c0, alpha, bounds, acc),
            (4, 2) => accumulate_blocked::<S, 4, 2>(simd, p, v, keys, d, c0, alpha, bounds, acc),
            (4, 1) => accumulate_blocked::<S, 4, 1>(simd, p, v, keys, d, c0, alpha, bounds, acc),
            _ => unreachable!(),
        }
        c0 += nv.min(left);
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn accumulate_blocked<S: Simd, const MR: usize, const NV: usize>(
    simd: S,
    p: &[f32],
    v: &[f32],
    keys: &KeySpan,
    d: usize,
    c0: usize,
    alpha: &[f32],
    bounds: Option<&Bounds>,
    acc: &mut [f32],
) {
    let stride = keys.step * d;
    let col = c0 * S::LANES;
    for i0 in (0..TILE_Q).step_by(MR) {
        let keys_read = bounds.map_or(0..keys.len, |b| b.union(i0..i0 + MR));
        // SAFETY: acc holds TILE_Q rows of d; col + NV·LANES ≤ d; v holds
        // keys.len rows `stride` apart (checked by the caller); p holds
        // keys.len rows of TILE_Q.
        unsafe {
            let out = acc.as_mut_ptr().add(i0 * d + col);
            let mut a: [[S::V; NV]; MR] = std::array::from_fn(|r| {
                let scale = simd.splat(alpha[i0 + r]);
                std::array::from_fn(|c| simd.mul(simd.load(out.add(r * d + c * S::LANES)), scale))
            });
            let vp = v.as_ptr().add(col);
            let pp = p.as_ptr().add(i0);
            for j in keys_read.clone() {
                let vv: [S::V; NV] =
                    std::array::from_fn(|c| simd.load(vp.add(j * stride + c * S::LANES)));
                for r in 0..MR {
                    let pb = simd.splat(*pp.add(j * TILE_Q + r));
                    for c in 0..NV {
                        a[r][c] = simd.fma(pb, vv[c], a[r][c]);
                    }
                }
            }
            for r in 0..MR {
                for c in 0..NV {
                    simd.store(out.add(r * d + c * S::LANES), a[r][c]);
                }
            }
        }
    }
}
