//! The backward kernel: FlashAttention-2's recomputation scheme on the same
//! tile map as the forward pass.
//!
//! With `P = exp(scale·QKᵀ - lse)` recomputed tile by tile from the saved
//! `lse`, and `δ_i = Σ_d dO[i,d]·O[i,d]`:
//!
//! ```text
//! dV = Pᵀ·dO      dP = dO·Vᵀ      dS = P ∘ (dP - δ)
//! dQ = scale · dS·K                dK = scale · dSᵀ·Q
//! ```
//!
//! Every task writes only what it owns, so there are no locks, no atomics
//! and the result is deterministic. Two schedules
//! ([`BackwardSchedule`](crate::BackwardSchedule)):
//! * two passes:
//!   * dQ: one task per (batch, query head, query tile), walking that tile's
//!     row of the tile map like the forward pass;
//!   * dK, dV: one task per (batch, kv head, chunk of [`CHUNK_K`] keys, times
//!     the largest step of a strided span so its tiles stay full),
//!     walking every query tile of the heads that share the kv head and
//!     keeping the part of each key block that falls in the chunk. dK and dV
//!     of grouped heads are summed in the same task.
//!
//!   Each pass recomputes P and dP: seven tile products per (query tile,
//!   key tile) pair.
//! * one pass: one task per (batch, kv head) runs the dK/dV task over each
//!   of its chunks in turn and also adds `dS·K` into the dQ rows it owns:
//!   five tile products per pair, parallel over (batch, kv head) only.
//!
//! Empty tiles are never visited and the predicate runs only on partial
//! ones, as in the forward pass. Strided keys are read from contiguous
//! copies (a dQ worker's [`Gathered`] rows of its head; a dK/dV task's
//! [`ChunkClass`] of its chunk). Extra memory: one scratch per thread
//! (`(3·D + 2·TILE_K + 2) · TILE_Q` f32, plus those copies within
//! [`Attention::with_gather_budget`]), independent of `Nq × Nk`.

use rayon::prelude::*;

use crate::pattern::{KeySpan, Rows};
use crate::simd::{Simd, WithSimd};
use crate::tile::{
    contiguous_rows, copy_stepped, load_transposed, masked_scores, scores, Bounds, Gathered,
    KeyRows, PerWorker, RankUpdate, TaskCx, TilePos, S_ROWS, TILE_K, TILE_Q,
};
use crate::tile_map::TileMap;
use crate::Attention;

mod keys;

use keys::KeyGrad;

/// Keys per dK/dV task (a multiple of [`TILE_K`], so contiguous spans split
/// into whole tiles).
pub const CHUNK_K: usize = 4 * TILE_K;

/// Bytes of K, V, dK and dV per chunk of keys in the one-pass schedule
/// (1024 keys at D = 64: measured 5% faster than [`CHUNK_K`] there).
const ONE_PASS_CHUNK_BYTES: usize = 1 << 20;

/// The tensors of one backward call (shapes as in [`Attention::backward`]).
pub(crate) struct Inputs<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub o: &'a [f32],
    pub lse: &'a [f32],
    pub d_o: &'a [f32],
}

/// Per-thread working memory of the backward kernel.
pub(crate) struct Scratch {
    /// The current query tile's operands and one key tile's P and dS.
    grad: TileGrad,
    /// dQ accumulator, `[TILE_Q, D]`.
    acc: Vec<f32>,
    /// A stepped tile's K rows made contiguous, `[TILE_K, D]`, when they
    /// are not in `gathered`.
    k: Vec<f32>,
    /// dQ pass: a worker's copy of a head's stepped K and V rows.
    gathered: Gathered,
    /// dK/dV tasks: the chunk's stepped keys of one class, with gradients.
    class: ChunkClass,
}

/// The keys of one stepped class (`residue + m · step`) inside a dK/dV
/// task's chunk: their K and V rows copied contiguous, and their dK and dV
/// accumulated contiguous, added into the chunk's strided rows when the
/// head is done. Strided rows are `step · D` apart and alias in the caches;
/// every query tile of the head re-reads them.
struct ChunkClass {
    /// (residue, step, first m) of the keys held; `None`: nothing held.
    held: Option<(usize, usize, usize)>,
    rows: usize,
    k: Vec<f32>,
    v: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
}

impl ChunkClass {
    fn new(rows: usize, d: usize) -> Self {
        ChunkClass {
            held: None,
            rows: 0,
            k: vec![0.0; rows * d],
            v: vec![0.0; rows * d],
            dk: vec![0.0; rows * d],
            dv: vec![0.0; rows * d],
        }
    }

    /// Takes in the class of `keys` (stepped, inside `first_key..end_key`)
    /// if nothing is held yet and it fits; returns the row of `keys.start`
    /// when `keys` belongs to the class held.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn row_of<S: Simd>(
        &mut self,
        simd: S,
        x: &Inputs,
        kv_base: usize,
        keys: &KeySpan,
        first_key: usize,
        end_key: usize,
        d: usize,
    ) -> Option<usize> {
        let (residue, step) = (keys.start % keys.step, keys.step);
        if self.held.is_none() && step > 1 {
            let first_m = first_key.saturating_sub(residue).div_ceil(step);
            let end_m = end_key.saturating_sub(residue).div_ceil(step);
            let rows = end_m.saturating_sub(first_m);
            if rows * d <= self.k.len() {
                let first = residue + first_m * step;
                for (src, to) in [(x.k, &mut self.k), (x.v, &mut self.v)] {
                    copy_stepped(simd, &src[kv_base..], first, step, d, &mut to[..rows * d]);
                }
                self.dk[..rows * d].fill(0.0);
                self.dv[..rows * d].fill(0.0);
                self.held = Some((residue, step, first_m));
                self.rows = rows;
            }
        }
        match self.held {
            Some((r, s, first_m)) if r == residue && s == step => Some(keys.start / step - first_m),
            _ => None,
        }
    }

    /// Adds the held keys' dK and dV into the chunk's rows (`dk`, `dv` start
    /// at `first_key`) and lets the class go.
    #[inline(always)]
    fn flush(&mut self, dk: &mut [f32], dv: &mut [f32], first_key: usize, d: usize) {
        let Some((residue, step, first_m)) = self.held.take() else {
            return;
        };
        for (out, held) in [(dk, &self.dk), (dv, &self.dv)] {
            for (r, g) in held.chunks_exact(d).take(self.rows).enumerate() {
                let at = (residue + (first_m + r) * step - first_key) * d;
                for (o, g) in out[at..at + d].iter_mut().zip(g) {
                    *o += g;
                }
            }
        }
    }
}

/// The query-side operands of one query tile and the recomputed `Pᵀ` and
/// `dSᵀ` of one key tile.
struct TileGrad {
    /// `Qᵀ · scale · log2 e` and `dOᵀ`, `[D, TILE_Q]`.
    qt: Vec<f32>,
    dot: Vec<f32>,
    /// `Pᵀ`, then kept; `dPᵀ`, turned into `dSᵀ`; both `[S_ROWS, TILE_Q]`.
    p: Vec<f32>,
    ds: Vec<f32>,
    /// Per row: `lse · log2 e` (`+inf` for rows that read nothing) and δ.
    lse2: Vec<f32>,
    delta: Vec<f32>,
}

impl Scratch {
    /// Scratch with room for `gather_rows` rows of a head's stepped keys
    /// (dQ pass) and `class_rows` of a chunk's (dK/dV tasks).
    fn new(d: usize, gather_rows: usize, class_rows: usize) -> Self {
        Scratch {
            grad: TileGrad {
                qt: vec![0.0; d * TILE_Q],
                dot: vec![0.0; d * TILE_Q],
                p: vec![0.0; S_ROWS * TILE_Q],
                ds: vec![0.0; S_ROWS * TILE_Q],
                lse2: vec![0.0; TILE_Q],
                delta: vec![0.0; TILE_Q],
            },
            acc: vec![0.0; TILE_Q * d],
            k: vec![0.0; TILE_K * d],
            gathered: Gathered::new(gather_rows, d),
            class: ChunkClass::new(class_rows, d),
        }
    }

    /// Bytes a thread holds for head dimension `d` (see [`Scratch::new`]).
    pub(crate) fn bytes(d: usize, gather_rows: usize, class_rows: usize) -> usize {
        (3 * d * TILE_Q + TILE_K * d + 2 * S_ROWS * TILE_Q + 2 * TILE_Q + 4 * class_rows * d)
            * std::mem::size_of::<f32>()
            + Gathered::bytes(gather_rows, d)
    }
}

impl TileGrad {
    /// Loads the query-side operands of query tile `t` of (batch, head).
    /// Inlined into the tasks so it is compiled with their instruction set
    /// (out of line it ran as baseline x86-64: 18% of a chunk-64 backward).
    #[inline(always)]
    fn prepare(
        &mut self,
        att: &Attention,
        x: &Inputs,
        batch: usize,
        head: usize,
        t: usize,
    ) -> Rows {
        let s = att.shape();
        let d = s.head_dim;
        let first = t * TILE_Q;
        let n_rows = TILE_Q.min(s.len_q - first);
        let row0 = (batch * s.heads_q + head) * s.len_q + first;
        let (q, o, d_o) = (
            &x.q[row0 * d..][..n_rows * d],
            &x.o[row0 * d..][..n_rows * d],
            &x.d_o[row0 * d..][..n_rows * d],
        );
        load_transposed(q, d, att.scale() * std::f32::consts::LOG2_E, &mut self.qt);
        load_transposed(d_o, d, 1.0, &mut self.dot);
        for i in 0..TILE_Q {
            let lse = if i < n_rows {
                x.lse[row0 + i]
            } else {
                f32::NEG_INFINITY
            };
            // A row that reads nothing must get P = 0 everywhere: exp2(s - inf).
            self.lse2[i] = if lse == f32::NEG_INFINITY {
                f32::INFINITY
            } else {
                lse * std::f32::consts::LOG2_E
            };
            self.delta[i] = if i < n_rows {
                dot(&d_o[i * d..(i + 1) * d], &o[i * d..(i + 1) * d])
            } else {
                0.0
            };
        }
        att.pattern().rows(s, first, first + n_rows - 1)
    }

    /// Recomputes `Pᵀ` (into `p`) and `dSᵀ` (into `ds`) for one key tile
    /// from its K and V rows. Returns the row bounds of a partial tile.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn tile<'b, S: Simd>(
        &mut self,
        simd: S,
        pos: &TilePos,
        keys: &KeySpan,
        full: bool,
        k: KeyRows,
        v: KeyRows,
        bounds: &'b mut Bounds,
    ) -> Option<&'b Bounds> {
        let d = pos.att.shape().head_dim;
        let live = masked_scores(
            simd,
            pos,
            keys,
            full,
            k,
            &self.qt,
            None,
            bounds,
            &mut self.p,
        );
        // dPᵀ where P may be non-zero; each vector of rows below reads only
        // the keys its rows read and stores P = dS = 0 for the others.
        scores(simd, v, keys, &self.dot, d, live, None, &mut self.ds);
        let zero = simd.splat(0.0);
        let rows = keys.len * TILE_Q;
        assert!(
            self.lse2.len() >= TILE_Q
                && self.delta.len() >= TILE_Q
                && self.p.len() >= rows
                && self.ds.len() >= rows,
            "probability buffers out of bounds"
        );
        for i0 in (0..TILE_Q).step_by(S::LANES) {
            let read = live.map_or(0..keys.len, |b| b.union(i0..i0 + S::LANES));
            // SAFETY: i0 + LANES ≤ TILE_Q ≤ the length of lse2 and delta, and
            // p and ds hold keys.len rows of TILE_Q (asserted above); only
            // rows j < keys.len are touched.
            unsafe {
                let lse2 = simd.load(self.lse2.as_ptr().add(i0));
                let delta = simd.load(self.delta.as_ptr().add(i0));
                for j in 0..keys.len {
                    let at = j * TILE_Q + i0;
                    if !read.contains(&j) {
                        simd.store(self.p.as_mut_ptr().add(at), zero);
                        simd.store(self.ds.as_mut_ptr().add(at), zero);
                        continue;
                    }
                    let p = simd.exp2(simd.sub(simd.load(self.p.as_ptr().add(at)), lse2));
                    simd.store(self.p.as_mut_ptr().add(at), p);
                    let dp = simd.load(self.ds.as_ptr().add(at));
                    simd.store(
                        self.ds.as_mut_ptr().add(at),
                        simd.mul(p, simd.sub(dp, delta)),
                    );
                }
            }
        }
        live
    }
}

/// `Σ a·b` over eight independent partial sums, so it vectorises (one
/// chained f32 sum may not be reordered, and is latency-bound).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// How one backward call splits its work, and the scratch that takes.
pub(crate) struct Plan {
    one_pass: bool,
    /// Key positions per dK/dV task (a whole number of tiles of the map's
    /// largest step).
    chunk: usize,
    /// Rows of a head's stepped keys a dQ-pass worker gathers.
    gather_rows: usize,
    /// Rows of a chunk's stepped class a dK/dV task gathers.
    class_rows: usize,
}

impl Plan {
    pub(crate) fn new(att: &Attention, map: &TileMap) -> Self {
        let d = att.shape().head_dim;
        let budget = att.gather_budget;
        let one_pass = att.one_pass_backward();
        let keys = if one_pass {
            // Longer chunks share each query tile's set-up (transposes, δ)
            // among more key tiles; K, V, dK and dV of a chunk stay in L2.
            (ONE_PASS_CHUNK_BYTES / (4 * d * std::mem::size_of::<f32>()) / TILE_K * TILE_K)
                .max(CHUNK_K)
        } else {
            CHUNK_K
        };
        let step = map.max_step();
        let class_rows = if step > 1 {
            keys.min(budget / (4 * d * std::mem::size_of::<f32>()))
        } else {
            0
        };
        Plan {
            one_pass,
            // A strided span clipped to `keys` positions keeps keys / step
            // keys; widening the chunk by the step keeps its tiles full.
            chunk: keys * step,
            gather_rows: if one_pass { 0 } else { att.gather_rows(map) },
            class_rows,
        }
    }

    /// Bytes of scratch per worker thread (the two passes run one after
    /// the other, so the larger of theirs).
    pub(crate) fn scratch_bytes(&self, d: usize) -> usize {
        Scratch::bytes(d, self.gather_rows, 0).max(Scratch::bytes(d, 0, self.class_rows))
    }
}

/// Runs the backward pass. Inputs are validated by [`Attention::backward`].
pub(crate) fn backward(
    att: &Attention,
    map: &TileMap,
    plan: &Plan,
    x: &Inputs,
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let s = att.shape();
    let d = s.head_dim;
    let chunk = plan.chunk;

    if plan.one_pass && !dq.is_empty() && !dk.is_empty() {
        let scratch = PerWorker::new(|| Scratch::new(d, 0, plan.class_rows));
        let group = s.heads_q / s.heads_kv;
        dq.par_chunks_mut(group * s.len_q * d)
            .zip(dk.par_chunks_mut(s.len_k * d))
            .zip(dv.par_chunks_mut(s.len_k * d))
            .enumerate()
            .for_each(|(bh, ((dq, dk), dv))| {
                scratch.with(|sc| {
                    let task = KeyGrad {
                        cx: TaskCx::of_plane(att, map, bh, s.heads_kv),
                        x,
                        first_key: 0,
                        chunk,
                        dk,
                        dv,
                        dq: Some(dq),
                        sc,
                    };
                    att.isa().run(task)
                })
            });
        return;
    }

    if s.len_q > 0 && !dq.is_empty() {
        let scratch = PerWorker::new(|| Scratch::new(d, plan.gather_rows, 0));
        dq.par_chunks_mut(s.len_q * d)
            .enumerate()
            .for_each(|(bh, dq_head)| {
                dq_head
                    .par_chunks_mut(TILE_Q * d)
                    .enumerate()
                    .for_each(|(t, dq_tile)| {
                        scratch.with(|sc| {
                            let task = QueryGrad {
                                cx: TaskCx::of_plane(att, map, bh, s.heads_q),
                                x,
                                tile: t,
                                dq: &mut *dq_tile,
                                sc,
                            };
                            att.isa().run(task)
                        })
                    })
            });
    }

    if s.len_k > 0 && !dk.is_empty() {
        let scratch = PerWorker::new(|| Scratch::new(d, 0, plan.class_rows));
        dk.par_chunks_mut(s.len_k * d)
            .zip(dv.par_chunks_mut(s.len_k * d))
            .enumerate()
            .for_each(|(bh, (dk_head, dv_head))| {
                dk_head
                    .par_chunks_mut(chunk * d)
                    .zip(dv_head.par_chunks_mut(chunk * d))
                    .enumerate()
                    .for_each(|(c, (dk_chunk, dv_chunk))| {
                        scratch.with(|sc| {
                            let task = KeyGrad {
                                cx: TaskCx::of_plane(att, map, bh, s.heads_kv),
                                x,
                                first_key: c * chunk,
                                chunk,
                                dk: &mut *dk_chunk,
                                dv: &mut *dv_chunk,
                                dq: None,
                                sc,
                            };
                            att.isa().run(task)
                        })
                    })
            });
    }
}

/// dQ of one query tile.
struct QueryGrad<'a> {
    cx: TaskCx<'a>,
    x: &'a Inputs<'a>,
    tile: usize,
    dq: &'a mut [f32],
    sc: &'a mut Scratch,
}

impl WithSimd for QueryGrad<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let QueryGrad {
            cx,
            x,
            tile,
            dq,
            sc,
        } = self;
        let shape = cx.att.shape();
        let d = shape.head_dim;
        let rows = sc.grad.prepare(cx.att, x, cx.batch, cx.head, tile);
        let kv_base = cx.kv_base(shape.kv_head(cx.head));
        let pos = cx.at(cx.head, rows);
        let mut bounds = Bounds::new();
        let mut acc = std::mem::take(&mut sc.acc);
        acc.fill(0.0);
        for (full, keys) in cx.map.row_tiles(cx.class(cx.head), tile) {
            let at = kv_base + keys.start * d;
            let gathered = sc.gathered.rows(simd, x.k, x.v, kv_base, &keys, d);
            let (k, v) = gathered.unwrap_or((
                KeyRows::in_place(&x.k[at..], &keys, d),
                KeyRows::in_place(&x.v[at..], &keys, d),
            ));
            let live = sc.grad.tile(simd, &pos, &keys, full, k, v, &mut bounds);
            let k = contiguous_rows(k, keys.len, d, &mut sc.k);
            RankUpdate::by_queries(&sc.grad.ds, k, keys.len, TILE_Q, live, None)
                .apply(simd, d, &mut acc, d);
        }
        let scale = cx.att.scale();
        for (out, a) in dq.iter_mut().zip(&acc) {
            *out = a * scale;
        }
        sc.acc = acc;
    }
}
