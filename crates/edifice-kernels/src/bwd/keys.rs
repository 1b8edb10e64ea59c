//! The dK/dV task (and, in one pass, dQ too): one chunk of keys after
//! another against every query tile of a kv head's query heads, a function
//! per level (chunk, query tile, key tile).

use super::{Inputs, Scratch};
use crate::pattern::KeySpan;
use crate::simd::{Simd, WithSimd};
use crate::tile::{contiguous_rows, Bounds, KeyRows, RankUpdate, TaskCx, TilePos, TILE_K};

/// The keys of `span` at positions `lo..hi`, if any.
fn clip(span: KeySpan, lo: usize, hi: usize) -> Option<KeySpan> {
    let first = if lo > span.start {
        (lo - span.start).div_ceil(span.step)
    } else {
        0
    };
    let end = if hi > span.start {
        ((hi - 1 - span.start) / span.step + 1).min(span.len)
    } else {
        0
    };
    (first < end).then(|| KeySpan {
        start: span.key(first),
        step: span.step,
        len: end - first,
    })
}

/// dK and dV of the keys `first_key..` of one kv head, one chunk of `chunk`
/// key positions after another (two passes: one chunk per task; one pass:
/// the whole head, and dQ too).
pub(super) struct KeyGrad<'a> {
    /// The kv head's (batch, head).
    pub(super) cx: TaskCx<'a>,
    pub(super) x: &'a Inputs<'a>,
    pub(super) first_key: usize,
    pub(super) chunk: usize,
    pub(super) dk: &'a mut [f32],
    pub(super) dv: &'a mut [f32],
    /// dQ of the kv head's query heads, `[group, Nq, D]`, to which `dS·K`
    /// (unscaled) is added.
    pub(super) dq: Option<&'a mut [f32]>,
    pub(super) sc: &'a mut Scratch,
}

/// The chunk of keys one step of a [`KeyGrad`] owns: positions
/// `first..end` and their dK and dV rows.
struct KeyChunk<'c> {
    first: usize,
    end: usize,
    dk: &'c mut [f32],
    dv: &'c mut [f32],
}

/// A query tile's rows as a [`KeyGrad`] step reads them: where they sit,
/// their `Q` and `dO` rows, and the row bounds of its partial key tiles.
struct QueryRows<'r> {
    pos: TilePos<'r>,
    /// Row of the tile's first query in the kv head's dQ, `[group · Nq]`.
    dq_row: usize,
    q: &'r [f32],
    d_o: &'r [f32],
    bounds: Bounds,
}

impl WithSimd for KeyGrad<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(mut self, simd: S) {
        let d = self.cx.att.shape().head_dim;
        if let Some(dq) = self.dq.as_deref_mut() {
            dq.fill(0.0);
        }
        let (chunk, scale) = (self.chunk, self.cx.att.scale());
        let (dk, dv) = (std::mem::take(&mut self.dk), std::mem::take(&mut self.dv));
        let chunks = dk.chunks_mut(chunk * d).zip(dv.chunks_mut(chunk * d));
        for (c, (dk, dv)) in chunks.enumerate() {
            let first = self.first_key + c * chunk;
            let mut out = KeyChunk {
                first,
                end: first + dk.len() / d,
                dk,
                dv,
            };
            out.dk.fill(0.0);
            out.dv.fill(0.0);
            self.key_chunk(simd, &mut out);
            out.dk.iter_mut().for_each(|x| *x *= scale);
        }
        if let Some(dq) = self.dq {
            dq.iter_mut().for_each(|x| *x *= scale);
        }
    }
}

impl KeyGrad<'_> {
    /// One chunk of keys against every query tile of the kv head's query
    /// heads.
    #[inline(always)]
    fn key_chunk<S: Simd>(&mut self, simd: S, out: &mut KeyChunk) {
        let shape = self.cx.att.shape();
        let group = shape.heads_q / shape.heads_kv;
        for head in self.cx.head * group..(self.cx.head + 1) * group {
            for t in 0..self.cx.map.q_tiles() {
                self.query_tile(simd, head, t, out);
            }
            let d = shape.head_dim;
            self.sc.class.flush(out.dk, out.dv, out.first, d);
        }
    }

    /// The chunk's keys that query tile `t` of `head` reads, a key tile at a
    /// time. The tile's query operands are loaded at its first key tile.
    #[inline(always)]
    fn query_tile<S: Simd>(&mut self, simd: S, head: usize, t: usize, out: &mut KeyChunk) {
        let cx = self.cx;
        let shape = cx.att.shape();
        let d = shape.head_dim;
        let mut rows: Option<QueryRows> = None;
        for block in cx.map.row(cx.class(head), t) {
            let Some(span) = clip(block.span(), out.first, out.end) else {
                continue;
            };
            // Not `get_or_insert_with`: a closure is compiled out of this
            // target-feature context (measured 12% of a chunk-64 backward in
            // baseline code).
            if rows.is_none() {
                let tile_rows = self.sc.grad.prepare(cx.att, self.x, cx.batch, head, t);
                let n = tile_rows.last - tile_rows.first + 1;
                let plane_row = (cx.batch * shape.heads_q + head) * shape.len_q + tile_rows.first;
                let group = shape.heads_q / shape.heads_kv;
                rows = Some(QueryRows {
                    dq_row: (head - cx.head * group) * shape.len_q + tile_rows.first,
                    q: &self.x.q[plane_row * d..][..n * d],
                    d_o: &self.x.d_o[plane_row * d..][..n * d],
                    pos: cx.at(head, tile_rows),
                    bounds: Bounds::new(),
                });
            }
            let Some(rows) = rows.as_mut() else {
                unreachable!("set above")
            };
            for keys in span.tiles(TILE_K) {
                self.key_tile(simd, rows, &keys, block.full, out);
            }
        }
    }

    /// One key tile against one query tile: recomputes P and dS, adds
    /// `Pᵀ·dO` to dV, `dSᵀ·Q` to dK (in the chunk's class copy for stepped
    /// keys) and, in one pass, `dS·K` to dQ.
    #[inline(always)]
    fn key_tile<S: Simd>(
        &mut self,
        simd: S,
        rows: &mut QueryRows,
        keys: &KeySpan,
        full: bool,
        out: &mut KeyChunk,
    ) {
        let (x, sc) = (self.x, &mut *self.sc);
        let d = self.cx.att.shape().head_dim;
        let kv_base = self.cx.kv_base(self.cx.head);
        let n_rows = rows.pos.rows.last - rows.pos.rows.first + 1;
        let held = sc
            .class
            .row_of(simd, x, kv_base, keys, out.first, out.end, d);
        let (k, v, dk, dv, out_stride) = match held {
            Some(r) => (
                KeyRows {
                    data: &sc.class.k[r * d..],
                    stride: d,
                },
                KeyRows {
                    data: &sc.class.v[r * d..],
                    stride: d,
                },
                &mut sc.class.dk[r * d..],
                &mut sc.class.dv[r * d..],
                d,
            ),
            None => {
                let (at, out_at) = (kv_base + keys.start * d, (keys.start - out.first) * d);
                (
                    KeyRows::in_place(&x.k[at..], keys, d),
                    KeyRows::in_place(&x.v[at..], keys, d),
                    &mut out.dk[out_at..],
                    &mut out.dv[out_at..],
                    keys.step * d,
                )
            }
        };
        let live = sc
            .grad
            .tile(simd, &rows.pos, keys, full, k, v, &mut rows.bounds);
        if let Some(dq) = self.dq.as_deref_mut() {
            let k = contiguous_rows(k, keys.len, d, &mut sc.k);
            RankUpdate::by_queries(&sc.grad.ds, k, keys.len, n_rows, live, None).apply(
                simd,
                d,
                &mut dq[rows.dq_row * d..],
                d,
            );
        }
        RankUpdate::by_keys(&sc.grad.p, rows.d_o, keys.len, n_rows).apply(simd, d, dv, out_stride);
        RankUpdate::by_keys(&sc.grad.ds, rows.q, keys.len, n_rows).apply(simd, d, dk, out_stride);
    }
}
