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
//! transposed per key tile; strided key tiles (step > 1) are read from the
//! worker's [`Gathered`] copy of their rows.
//!
//! Extra memory: the tile map plus, per thread, one [`Scratch`]
//! (`(2·D + TILE_K + 3) · TILE_Q` f32, and for strided patterns the
//! gathered K and V rows, at most [`Attention::with_gather_budget`] bytes),
//! independent of `Nq × Nk`.

use rayon::prelude::*;

use crate::pattern::Rows;
use crate::simd::{Simd, WithSimd};
use crate::tile::{
    contiguous_rows, load_transposed, masked_scores, Bounds, Gathered, KeyRows, PerWorker,
    RankUpdate, TilePos, S_ROWS, TILE_K, TILE_Q,
};
use crate::tile_map::TileMap;
use crate::Attention;

/// Per-thread working memory of the forward kernel.
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
    /// A stepped tile's V rows made contiguous, `[TILE_K, D]`, when they
    /// are not in `gathered`.
    v: Vec<f32>,
    gathered: Gathered,
}

impl Scratch {
    fn new(d: usize, gather_rows: usize) -> Self {
        Scratch {
            qt: vec![0.0; d * TILE_Q],
            s: vec![0.0; S_ROWS * TILE_Q],
            acc: vec![0.0; TILE_Q * d],
            m: vec![0.0; TILE_Q],
            l: vec![0.0; TILE_Q],
            alpha: vec![0.0; TILE_Q],
            v: vec![0.0; TILE_K * d],
            gathered: Gathered::new(gather_rows, d),
        }
    }

    /// Bytes a thread holds for head dimension `d` and `gather_rows` rows
    /// of [`Gathered`].
    pub(crate) fn bytes(d: usize, gather_rows: usize) -> usize {
        (2 * d * TILE_Q + TILE_K * d + S_ROWS * TILE_Q + 3 * TILE_Q) * std::mem::size_of::<f32>()
            + Gathered::bytes(gather_rows, d)
    }
}

/// Runs the forward pass. Inputs are validated by [`Attention::forward`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward(
    att: &Attention,
    map: &TileMap,
    gather_rows: usize,
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
    let scratch = PerWorker::new(|| Scratch::new(d, gather_rows));
    o.par_chunks_mut(nq * d)
        .zip(lse.par_chunks_mut(nq))
        .enumerate()
        .for_each(|(bh, (o_head, lse_head))| {
            o_head
                .par_chunks_mut(TILE_Q * d)
                .zip(lse_head.par_chunks_mut(TILE_Q))
                .enumerate()
                .for_each(|(t, (o_tile, lse_tile))| {
                    scratch.with(|scratch| {
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
                            scratch,
                        })
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
        let kv_base = shape.kv_offset(self.batch, shape.kv_head(self.head));
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

        let pattern = self.att.pattern();
        let class = pattern.class_of(shape, self.batch, self.head);
        let pos = TilePos {
            att: self.att,
            batch: self.batch,
            head: self.head,
            rows,
        };
        let mut bounds = Bounds::new();
        for (full, keys) in self.map.row_tiles(class, self.tile) {
            let at = kv_base + keys.start * d;
            let (k, v) = match sc.gathered.rows(simd, self.k, self.v, kv_base, &keys, d) {
                Some(rows) => rows,
                None => (
                    KeyRows::in_place(&self.k[at..], &keys, d),
                    contiguous_rows(
                        KeyRows::in_place(&self.v[at..], &keys, d),
                        keys.len,
                        d,
                        &mut sc.v,
                    ),
                ),
            };
            let live = masked_scores(simd, &pos, &keys, full, k, &sc.qt, &mut bounds, &mut sc.s);
            online_softmax(
                simd,
                &mut sc.s,
                keys.len,
                &mut sc.m,
                &mut sc.l,
                &mut sc.alpha,
            );
            let update = RankUpdate::by_queries(&sc.s, v, keys.len, TILE_Q, live, Some(&sc.alpha));
            update.apply(simd, d, &mut sc.acc, d);
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
