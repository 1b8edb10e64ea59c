//! Framework-free fused attention on the CPU.
//!
//! One block-sparse, online-softmax ("flash") kernel serves every attention
//! pattern. A [`Pattern`] is a mask predicate plus the geometry to derive a
//! [`TileMap`] from it; the kernel visits only the tiles the map lists,
//! evaluates the predicate only on partial tiles, and never materialises an
//! `Nq × Nk` matrix. Work is spread over (batch, head, query tile) with rayon;
//! the inner loops run on AVX-512 or AVX2 + FMA when the CPU has them
//! (detected at run time), else on portable scalar code.
//!
//! # Shapes
//! | tensor | shape | notes |
//! |---|---|---|
//! | `q` | `[B, Hq, Nq, D]` | f32 or bf16 ([`Element`]), row-major |
//! | `k`, `v` | `[B, Hkv, Nk, D]` | `Hq` a multiple of `Hkv`: query head `h` reads kv head `h / (Hq / Hkv)` |
//! | `o` | `[B, Hq, Nq, D]` | |
//! | `lse` | `[B, Hq, Nq]` | f32: natural-log Σ exp of the scaled, allowed scores |
//!
//! A row with no allowed key gets `o = 0` and `lse = -inf`, never NaN. Queries
//! are the last `Nq` positions of the key sequence (see [`pattern`]).
//!
//! # Example
//! ```
//! use edifice_kernels::{Attention, AttnShape, Pattern, PatternKind};
//!
//! let shape = AttnShape { batch: 1, heads_q: 2, heads_kv: 1, len_q: 5, len_k: 5, head_dim: 8 };
//! let att = Attention::new(shape, Pattern::new(PatternKind::Window { window: 2 }, true))?;
//! let q = vec![0.1; shape.q_len()];
//! let kv = vec![0.2; shape.kv_len()];
//! let (o, lse) = att.forward_vec(&q, &kv, &kv)?;
//! // Every allowed score is equal, so o is the mean of v rows, i.e. 0.2.
//! assert!((o[0] - 0.2).abs() < 1e-6);
//! // Row 0 reads one key (itself), later rows two: lse = ln(count) + score.
//! assert!((lse[0] - 0.1 * 0.2 * 8.0 / 8f32.sqrt()).abs() < 1e-5);
//!
//! // The same call with bf16 storage (f32 accumulation): o comes back bf16.
//! use edifice_kernels::bf16;
//! let (q16, kv16) = (vec![bf16::from_f32(0.1); q.len()], vec![bf16::from_f32(0.2); kv.len()]);
//! let (o16, _) = att.forward_vec(&q16, &kv16, &kv16)?;
//! assert!((o16[0].to_f32() - 0.2).abs() < 1e-3);
//! # Ok::<(), edifice_kernels::KernelError>(())
//! ```
#![warn(missing_docs)]

pub mod adamw;
mod bwd;
pub mod calibrate;
pub mod dropout;
mod element;
mod fwd;
pub mod gelu;
pub mod heads;
pub mod layer_norm;
pub mod linear;
pub mod lstm;
mod matmul;
pub mod pattern;
pub mod reference;
pub mod ring;
mod simd;
pub mod step;
mod tile;
pub mod tile_map;

use std::sync::{Arc, OnceLock};

pub use bwd::CHUNK_K;
use element::widen;
pub use element::Element;
pub use half::bf16;
pub use pattern::{BlockRow, BlockSparse, BoolMask, KeySpan, Pattern, PatternKind, TileKind};
pub use simd::Isa;

pub use tile::{TILE_K, TILE_Q};
pub use tile_map::{KeyBlock, TileMap};

/// Errors from validating a kernel call.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KernelError {
    /// Inconsistent sizes or buffer lengths.
    #[error("shape error: {0}")]
    Shape(String),
    /// A bad pattern parameter or string.
    #[error("pattern error: {0}")]
    Pattern(String),
    /// A mask of the wrong size.
    #[error("mask error: {0}")]
    Mask(String),
    /// A scale that is not finite.
    #[error("scale must be finite, got {0}")]
    Scale(f32),
    /// A dropout keep probability outside `(0, 1]`.
    #[error("dropout keep probability must be in (0, 1], got {0}")]
    KeepProbability(f32),
}

/// `Ok` when buffer `what` of operation `op` holds the `want` elements it
/// must, else a shape error saying so.
pub(crate) fn same_len(op: &str, what: &str, got: usize, want: usize) -> Result<(), KernelError> {
    if got != want {
        return Err(KernelError::Shape(format!(
            "{op}: {what} has {got} elements, expected {want}"
        )));
    }
    Ok(())
}

/// Sizes of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    /// Batch size `B`.
    pub batch: usize,
    /// Query heads `Hq`.
    pub heads_q: usize,
    /// Key/value heads `Hkv` (divides `Hq`).
    pub heads_kv: usize,
    /// Query positions `Nq`.
    pub len_q: usize,
    /// Key positions `Nk`.
    pub len_k: usize,
    /// Head dimension `D`.
    pub head_dim: usize,
}

impl AttnShape {
    /// Elements of `q` and `o`: `B·Hq·Nq·D`.
    pub fn q_len(&self) -> usize {
        self.batch * self.heads_q * self.len_q * self.head_dim
    }

    /// Elements of `k` and of `v`: `B·Hkv·Nk·D`.
    pub fn kv_len(&self) -> usize {
        self.batch * self.heads_kv * self.len_k * self.head_dim
    }

    /// Elements of `lse`: `B·Hq·Nq`.
    pub fn lse_len(&self) -> usize {
        self.batch * self.heads_q * self.len_q
    }

    /// The kv head that query head `head` reads: `head / (Hq / Hkv)`.
    pub fn kv_head(&self, head: usize) -> usize {
        head / (self.heads_q / self.heads_kv)
    }

    /// Offset of kv head `kv_head` of batch `batch` in `k` and `v`.
    pub fn kv_offset(&self, batch: usize, kv_head: usize) -> usize {
        (batch * self.heads_kv + kv_head) * self.len_k * self.head_dim
    }

    /// Aligned position of query row 0: `Nk - Nq`.
    pub fn offset(&self) -> i64 {
        self.len_k as i64 - self.len_q as i64
    }

    /// Checks the sizes are consistent.
    pub fn validate(&self) -> Result<(), KernelError> {
        if self.head_dim == 0 {
            return Err(KernelError::Shape(
                "head dimension D must be at least 1".into(),
            ));
        }
        if self.heads_kv == 0 || !self.heads_q.is_multiple_of(self.heads_kv) {
            return Err(KernelError::Shape(format!(
                "query heads ({}) must be a positive multiple of key/value heads ({})",
                self.heads_q, self.heads_kv
            )));
        }
        if self.len_k >= u32::MAX as usize || self.len_q >= u32::MAX as usize {
            return Err(KernelError::Shape(format!(
                "sequence lengths must be below 2^32, got Nq = {}, Nk = {}",
                self.len_q, self.len_k
            )));
        }
        Ok(())
    }
}

/// Bytes per worker thread a call may spend on gathered strided K and V
/// rows unless [`Attention::with_gather_budget`] says otherwise.
pub const DEFAULT_GATHER_BUDGET: usize = 4 << 20;

/// How [`Attention::backward`] splits its work over threads. Every schedule
/// gives the same gradients up to f32 rounding, deterministically.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackwardSchedule {
    /// One pass when there are at least four (batch, kv head) pairs per
    /// worker thread, else two.
    #[default]
    Auto,
    /// One task per (batch, kv head) computes dQ, dK and dV in one sweep,
    /// computing P and dS once per tile pair (five tile products).
    OnePass,
    /// dQ per query tile, then dK and dV per chunk of keys: more parallelism,
    /// but P and dP are recomputed in each pass (seven tile products).
    TwoPass,
}

/// A validated attention: shape, pattern, scale and instruction set, and
/// its tile map, built at first use and shared by clones (so a forward and
/// the backward that follows it build it once).
#[derive(Clone, Debug)]
pub struct Attention {
    shape: AttnShape,
    pattern: Pattern,
    scale: f32,
    isa: Isa,
    gather_budget: usize,
    backward_schedule: BackwardSchedule,
    /// Set by [`Attention::with_isa`]: the caller chose the instruction set
    /// (and so, for bf16, the product path) instead of the CPU's best.
    isa_forced: bool,
    map: Arc<OnceLock<TileMap>>,
}

/// How a bf16 forward computes its tile products (see
/// [`Element`]): reported by [`Attention::bf16_products`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bf16Products {
    /// Widened to f32 and multiplied by the f32 kernels.
    Widen,
    /// bf16 pair products in `vdpbf16ps`.
    Pairs,
}

impl Attention {
    /// Validates `shape` and `pattern`; the scale defaults to `1/sqrt(D)`
    /// and the instruction set to the widest the CPU has for `D`.
    pub fn new(shape: AttnShape, pattern: Pattern) -> Result<Self, KernelError> {
        shape.validate()?;
        pattern.validate(&shape)?;
        Ok(Attention {
            shape,
            pattern,
            scale: 1.0 / (shape.head_dim as f32).sqrt(),
            isa: Isa::best_for(shape.head_dim),
            gather_budget: DEFAULT_GATHER_BUDGET,
            backward_schedule: BackwardSchedule::Auto,
            isa_forced: false,
            map: Arc::default(),
        })
    }

    /// Uses `scale` instead of `1/sqrt(D)` for the scores.
    pub fn with_scale(mut self, scale: f32) -> Result<Self, KernelError> {
        if !scale.is_finite() {
            return Err(KernelError::Scale(scale));
        }
        self.scale = scale;
        Ok(self)
    }

    /// Forces an instruction set (for tests and benchmarks). One the CPU
    /// lacks, or whose vectors do not divide `D`, falls back to scalar code.
    /// For bf16, [`Isa::Avx512Bf16`] forces pair products and any other
    /// forces widening (unforced, [`Attention::bf16_products`] decides).
    pub fn with_isa(mut self, isa: Isa) -> Self {
        self.isa_forced = true;
        self.isa = if self.shape.head_dim.is_multiple_of(isa.lanes()) {
            isa
        } else {
            Isa::Scalar
        };
        self
    }

    /// Caps the bytes per worker thread spent on contiguous copies of a
    /// strided pattern's K and V rows (default [`DEFAULT_GATHER_BUDGET`]).
    /// Strided key tiles read from such a copy run faster (their rows are
    /// `step · D` apart in K and V, which caches and prefetchers handle
    /// badly); the keys of a class that does not fit are read in place.
    /// 0 reads every strided tile in place. Results do not depend on it.
    pub fn with_gather_budget(mut self, bytes: usize) -> Self {
        self.gather_budget = bytes;
        self
    }

    /// Chooses how the backward pass splits its work.
    pub fn with_backward_schedule(mut self, schedule: BackwardSchedule) -> Self {
        self.backward_schedule = schedule;
        self
    }

    /// Whether the backward pass runs as one pass, on the current rayon pool.
    pub(crate) fn one_pass_backward(&self) -> bool {
        match self.backward_schedule {
            BackwardSchedule::OnePass => true,
            BackwardSchedule::TwoPass => false,
            BackwardSchedule::Auto => {
                self.shape.batch * self.shape.heads_kv >= 4 * rayon::current_num_threads()
            }
        }
    }

    /// Rows of K (and as many of V) a worker gathers for `map`.
    pub(crate) fn gather_rows(&self, map: &TileMap) -> usize {
        tile::Gathered::rows_for(
            map,
            self.shape.len_k,
            self.shape.head_dim,
            self.gather_budget,
        )
    }

    /// The shape.
    pub fn shape(&self) -> &AttnShape {
        &self.shape
    }

    /// The pattern.
    pub fn pattern(&self) -> &Pattern {
        &self.pattern
    }

    /// The score scale.
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// The instruction set the kernel runs on.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// How a bf16 forward computes its tile products: as forced by
    /// [`Attention::with_isa`], else pairs where the CPU runs them at full
    /// rate ([`calibrate::bf16_pairs_full_rate`]) and widening elsewhere.
    /// Pairs need an even head dim.
    pub fn bf16_products(&self) -> Bf16Products {
        let pairs = if self.isa_forced {
            self.isa == Isa::Avx512Bf16
        } else {
            self.isa == Isa::Avx512 && calibrate::bf16_pairs_full_rate()
        };
        if pairs && self.shape.head_dim.is_multiple_of(2) {
            Bf16Products::Pairs
        } else {
            Bf16Products::Widen
        }
    }

    /// The tile map the kernel uses.
    pub fn tile_map(&self) -> &TileMap {
        self.map
            .get_or_init(|| TileMap::build(&self.shape, &self.pattern, TILE_Q, TILE_K))
    }

    /// Bytes of working memory a call holds beyond its inputs and outputs,
    /// with `threads` worker threads: the tile map plus per-thread scratch.
    pub fn extra_bytes(&self, threads: usize) -> usize {
        let map = self.tile_map();
        map.bytes() + threads * fwd::Scratch::bytes(self.shape.head_dim, self.gather_rows(map))
    }

    /// Bytes of working memory a backward call holds beyond its inputs and
    /// outputs, with `threads` worker threads.
    pub fn backward_extra_bytes(&self, threads: usize) -> usize {
        let map = self.tile_map();
        map.bytes() + threads * bwd::Plan::new(self, map).scratch_bytes(self.shape.head_dim)
    }

    /// Number of allowed (query, key) pairs summed over batches and heads.
    pub fn allowed_pairs(&self) -> u64 {
        let map = self.tile_map();
        let s = &self.shape;
        let mut total = 0u64;
        for batch in 0..s.batch {
            for head in 0..s.heads_q {
                let class = self.pattern.class_of(s, batch, head);
                for t in 0..map.q_tiles() {
                    let first = t * TILE_Q;
                    let last = (first + TILE_Q).min(s.len_q) - 1;
                    for block in map.row(class, t) {
                        if block.full {
                            total += ((last - first + 1) * block.len as usize) as u64;
                            continue;
                        }
                        let span = block.span();
                        for tk in 0..span.len {
                            let j = span.key(tk);
                            total += (first..=last)
                                .filter(|&i| self.pattern.allowed(s, batch, head, i, j))
                                .count() as u64;
                        }
                    }
                }
            }
        }
        total
    }

    /// Checks buffer lengths: `q_like` against `[B, Hq, Nq, D]`, `kv_like`
    /// against `[B, Hkv, Nk, D]` and `lse` against `[B, Hq, Nq]`.
    fn check_buffers(
        &self,
        q_like: &[(&str, usize)],
        kv_like: &[(&str, usize)],
        lse: usize,
    ) -> Result<(), KernelError> {
        let s = &self.shape;
        let groups = [
            (
                q_like,
                s.q_len(),
                vec![s.batch, s.heads_q, s.len_q, s.head_dim],
            ),
            (
                kv_like,
                s.kv_len(),
                vec![s.batch, s.heads_kv, s.len_k, s.head_dim],
            ),
            (
                &[("lse", lse)][..],
                s.lse_len(),
                vec![s.batch, s.heads_q, s.len_q],
            ),
        ];
        for (buffers, want, dims) in groups {
            for &(what, got) in buffers {
                if got != want {
                    return Err(KernelError::Shape(format!(
                        "{what} has {got} elements but shape {dims:?} needs {want}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Computes `o` and `lse` (see the crate docs for shapes), storing
    /// `q`, `k`, `v` and `o` as `E` (f32, or [`bf16`] with f32 accumulation:
    /// see [`Element`]).
    pub fn forward<E: Element>(
        &self,
        q: &[E],
        k: &[E],
        v: &[E],
        o: &mut [E],
        lse: &mut [f32],
    ) -> Result<(), KernelError> {
        self.check_buffers(
            &[("q", q.len()), ("o", o.len())],
            &[("k", k.len()), ("v", v.len())],
            lse.len(),
        )?;
        let map = self.tile_map();
        let call = fwd::Forward {
            att: self,
            map,
            gather_rows: self.gather_rows(map),
            q,
            k,
            v,
            o,
            lse,
        };
        E::with_products(self, call);
        Ok(())
    }

    /// [`Attention::forward`] into new buffers: returns `(o, lse)`.
    pub fn forward_vec<E: Element>(
        &self,
        q: &[E],
        k: &[E],
        v: &[E],
    ) -> Result<(Vec<E>, Vec<f32>), KernelError> {
        let mut o = vec![E::default(); self.shape.q_len()];
        let mut lse = vec![0.0; self.shape.lse_len()];
        self.forward(q, k, v, &mut o, &mut lse)?;
        Ok((o, lse))
    }

    /// Gradients of a scalar loss through the attention, given the forward
    /// pass's `o` and `lse` and `d_o = ∂loss/∂o`: writes `dq [B, Hq, Nq, D]`
    /// and `dk`, `dv [B, Hkv, Nk, D]` (summed over the query heads that
    /// share a kv head). Rows that read no key get zero gradients.
    ///
    /// With bf16 storage the backward pass runs on f32 copies of its inputs
    /// (exact) and rounds the gradients to bf16 once at the end.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<E: Element>(
        &self,
        q: &[E],
        k: &[E],
        v: &[E],
        o: &[E],
        lse: &[f32],
        d_o: &[E],
        dq: &mut [E],
        dk: &mut [E],
        dv: &mut [E],
    ) -> Result<(), KernelError> {
        self.check_buffers(
            &[
                ("q", q.len()),
                ("o", o.len()),
                ("do", d_o.len()),
                ("dq", dq.len()),
            ],
            &[
                ("k", k.len()),
                ("v", v.len()),
                ("dk", dk.len()),
                ("dv", dv.len()),
            ],
            lse.len(),
        )?;
        let map = self.tile_map();
        let plan = bwd::Plan::new(self, map);
        let (q, k, v, o, d_o) = (widen(q), widen(k), widen(v), widen(o), widen(d_o));
        let inputs = bwd::Inputs {
            q: &q,
            k: &k,
            v: &v,
            o: &o,
            lse,
            d_o: &d_o,
        };
        E::with_f32_outputs([dq, dk, dv], |[dq, dk, dv]| {
            bwd::backward(self, map, &plan, &inputs, dq, dk, dv)
        });
        Ok(())
    }

    /// [`Attention::backward`] into new buffers: returns `(dq, dk, dv)`.
    #[allow(clippy::type_complexity)]
    pub fn backward_vec<E: Element>(
        &self,
        q: &[E],
        k: &[E],
        v: &[E],
        o: &[E],
        lse: &[f32],
        d_o: &[E],
    ) -> Result<(Vec<E>, Vec<E>, Vec<E>), KernelError> {
        let mut dq = vec![E::default(); self.shape.q_len()];
        let mut dk = vec![E::default(); self.shape.kv_len()];
        let mut dv = vec![E::default(); self.shape.kv_len()];
        self.backward(q, k, v, o, lse, d_o, &mut dq, &mut dk, &mut dv)?;
        Ok((dq, dk, dv))
    }
}
