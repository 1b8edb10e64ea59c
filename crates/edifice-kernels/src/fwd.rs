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

use crate::element::{Element, ForProducts, Products, PvTile};
use crate::simd::{Operand, Simd, WithSimd};
use crate::tile::{
    masked_scores, Bounds, Gathered, KeyRows, PerWorker, TaskCx, S_ROWS, TILE_K, TILE_Q,
};
use crate::tile_map::TileMap;
use crate::Attention;

/// Per-thread working memory of the forward kernel, for storage type `E`
/// and its products `P`.
pub(crate) struct Scratch<E: Element, P: Products<E>> {
    /// Transposed query tile as operands, `[D / TERMS, TILE_Q]` (f32:
    /// pre-scaled).
    qt: Vec<P::Op>,
    /// Scores, then probabilities, key-major: `[TILE_K, TILE_Q]`.
    s: Vec<f32>,
    /// Unnormalised output rows, `[TILE_Q, D]`.
    acc: Vec<f32>,
    /// Running max (log2 domain), running sum and the rescale factor, per row.
    m: Vec<f32>,
    l: Vec<f32>,
    alpha: Vec<f32>,
    /// A key tile's K rows as operands when they are not used in place
    /// (widened bf16), `[TILE_K, D]`; else empty.
    k_ops: Vec<P::Op>,
    /// P·V operands: P packed (pairs; else empty), and a tile's V rows as
    /// operands, `[TILE_K / TERMS, D]` (f32: a stepped tile's rows made
    /// contiguous when they are not in `gathered`).
    p_ops: Vec<P::Op>,
    v_ops: Vec<P::Op>,
    gathered: Gathered<E>,
}

impl<E: Element, P: Products<E>> Scratch<E, P> {
    fn new(d: usize, gather_rows: usize) -> Self {
        let op = P::Op::zero_value();
        Scratch {
            qt: vec![op; d / P::Op::TERMS * TILE_Q],
            k_ops: vec![op; P::k_ops_len(d)],
            s: vec![0.0; S_ROWS * TILE_Q],
            acc: vec![0.0; TILE_Q * d],
            m: vec![0.0; TILE_Q],
            l: vec![0.0; TILE_Q],
            alpha: vec![0.0; TILE_Q],
            p_ops: vec![op; P::p_ops_len()],
            v_ops: vec![op; TILE_K * d],
            gathered: Gathered::new(gather_rows, d),
        }
    }
}

impl Scratch<f32, crate::element::Widen> {
    /// Bytes a thread holds for head dimension `d` and `gather_rows` rows
    /// of [`Gathered`], with f32 storage (bf16 holds at most `TILE_K · D`
    /// f32 more: its widened K tile).
    pub(crate) fn bytes(d: usize, gather_rows: usize) -> usize {
        (2 * d * TILE_Q + TILE_K * d + S_ROWS * TILE_Q + 3 * TILE_Q) * std::mem::size_of::<f32>()
            + Gathered::bytes(gather_rows, d)
    }
}

/// One forward call, run with the products its storage type picks
/// ([`Storage::with_products`](crate::element::sealed::Storage)). Inputs are
/// validated by [`Attention::forward`].
pub(crate) struct Forward<'a, E> {
    pub att: &'a Attention,
    pub map: &'a TileMap,
    pub gather_rows: usize,
    pub q: &'a [E],
    pub k: &'a [E],
    pub v: &'a [E],
    pub o: &'a mut [E],
    pub lse: &'a mut [f32],
}

impl<E: Element> ForProducts<E> for Forward<'_, E> {
    type Output = ();

    fn run<P: Products<E>>(self) {
        let Forward {
            att,
            map,
            gather_rows,
            q,
            k,
            v,
            o,
            lse,
        } = self;
        let shape = att.shape();
        let (nq, d) = (shape.len_q, shape.head_dim);
        if nq == 0 || lse.is_empty() {
            return;
        }
        let scratch = PerWorker::new(|| Scratch::<E, P>::new(d, gather_rows));
        let isa = P::isa(att.isa());
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
                            isa.run(QueryTile {
                                cx: TaskCx::of_plane(att, map, bh, shape.heads_q),
                                q,
                                k,
                                v,
                                tile: t,
                                o: o_tile,
                                lse: lse_tile,
                                scratch,
                            })
                        })
                    })
            });
    }
}

/// One task: a query tile of one (batch, head).
struct QueryTile<'a, E: Element, P: Products<E>> {
    cx: TaskCx<'a>,
    q: &'a [E],
    k: &'a [E],
    v: &'a [E],
    tile: usize,
    o: &'a mut [E],
    lse: &'a mut [f32],
    scratch: &'a mut Scratch<E, P>,
}

impl<E: Element, P: Products<E>> WithSimd for QueryTile<'_, E, P> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let cx = self.cx;
        let shape = cx.att.shape();
        let d = shape.head_dim;
        let n_rows = self.lse.len();
        let first = self.tile * TILE_Q;
        let rows = cx.att.pattern().rows(shape, first, first + n_rows - 1);
        let plane = cx.batch * shape.heads_q + cx.head;
        let kv_base = cx.kv_base(shape.kv_head(cx.head));
        let sc = &mut *self.scratch;

        let factor = P::load_q(
            &self.q[(plane * shape.len_q + first) * d..][..n_rows * d],
            d,
            cx.att.scale() * std::f32::consts::LOG2_E,
            &mut sc.qt,
        );
        sc.m.fill(f32::NEG_INFINITY);
        sc.l.fill(0.0);
        // Rows past the tile's own are never read out, and each row's
        // accumulator only ever mixes with itself.
        sc.acc[..n_rows * d].fill(0.0);

        let pos = cx.at(cx.head, rows);
        let mut bounds = Bounds::new();
        for (full, keys) in cx.map.row_tiles(cx.class(cx.head), self.tile) {
            let at = kv_base + keys.start * d;
            let (k, v) = match sc.gathered.rows(simd, self.k, self.v, kv_base, &keys, d) {
                Some(rows) => rows,
                None => (
                    KeyRows::in_place(&self.k[at..], &keys, d),
                    KeyRows::in_place(&self.v[at..], &keys, d),
                ),
            };
            let k = P::k_rows(simd, k, keys.len, d, &mut sc.k_ops);
            let (qt, s) = (&sc.qt, &mut sc.s);
            let live = masked_scores(simd, &pos, &keys, full, k, qt, factor, &mut bounds, s);
            online_softmax(
                simd,
                &mut sc.s,
                keys.len,
                live,
                &mut sc.m,
                &mut sc.l,
                &mut sc.alpha,
            );
            let tile = PvTile {
                p: &sc.s,
                v,
                n_keys: keys.len,
                d,
                live,
                alpha: &sc.alpha,
            };
            P::p_times_v(simd, tile, &mut sc.p_ops, &mut sc.v_ops, &mut sc.acc);
        }

        for i in 0..n_rows {
            let out = &mut self.o[i * d..(i + 1) * d];
            if sc.m[i] == f32::NEG_INFINITY {
                out.fill(E::default());
                self.lse[i] = f32::NEG_INFINITY;
            } else {
                let inv = 1.0 / sc.l[i];
                for (o, a) in out.iter_mut().zip(&sc.acc[i * d..(i + 1) * d]) {
                    *o = E::from_f32(a * inv);
                }
                self.lse[i] = (sc.m[i] + sc.l[i].log2()) * std::f32::consts::LN_2;
            }
        }
    }
}

/// Turns the scores of `n_keys` keys into probabilities relative to the
/// updated running max, and updates the running max `m`, sum `l` and the
/// rescale factor `alpha` of every row. With `live` (a partial tile's row
/// bounds), each vector of rows exponentiates only the keys its rows read
/// and stores 0 for the others.
#[inline(always)]
fn online_softmax<S: Simd>(
    simd: S,
    s: &mut [f32],
    n_keys: usize,
    live: Option<&Bounds>,
    m: &mut [f32],
    l: &mut [f32],
    alpha: &mut [f32],
) {
    // Stand-in for a -inf max, so that (-inf) - max stays -inf instead of NaN.
    let floor = simd.splat(-1.0e30);
    let zero = simd.splat(0.0);
    assert!(
        m.len() >= TILE_Q
            && l.len() >= TILE_Q
            && alpha.len() >= TILE_Q
            && s.len() >= n_keys * TILE_Q,
        "online softmax buffers out of bounds"
    );
    for i0 in (0..TILE_Q).step_by(S::LANES) {
        let keys = live.map_or(0..n_keys, |b| b.union(i0..i0 + S::LANES));
        let keys = keys.start..keys.end.min(n_keys);
        // SAFETY: i0 + LANES ≤ TILE_Q ≤ len of m, l, alpha; s holds n_keys
        // rows of TILE_Q (asserted above), and `keys` ⊆ 0..n_keys.
        unsafe {
            let m_old = simd.load(m.as_ptr().add(i0));
            let mut m_new = m_old;
            for j in keys.clone() {
                m_new = simd.max(m_new, simd.load(s.as_ptr().add(j * TILE_Q + i0)));
            }
            let m_use = simd.max(m_new, floor);
            let a = simd.exp2(simd.sub(m_old, m_use));
            let mut sum = zero;
            for j in 0..n_keys {
                let at = s.as_mut_ptr().add(j * TILE_Q + i0);
                if keys.contains(&j) {
                    let p = simd.exp2(simd.sub(simd.load(at), m_use));
                    simd.store(at, p);
                    sum = simd.add(sum, p);
                } else {
                    simd.store(at, zero);
                }
            }
            let l_new = simd.fma(simd.load(l.as_ptr().add(i0)), a, sum);
            simd.store(l.as_mut_ptr().add(i0), l_new);
            simd.store(m.as_mut_ptr().add(i0), m_new);
            simd.store(alpha.as_mut_ptr().add(i0), a);
        }
    }
}
