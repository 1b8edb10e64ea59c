//! Fused attention on `[B, H, N, D]` tensors.
//!
//! `attention(q, k, v, spec)` computes, per batch and query head `h`,
//!
//! ```text
//! o[i] = Σ_j softmax_j(scale · q[i]·k[j] | (i, j) allowed by spec.pattern) · v[j]
//! ```
//!
//! with `q [B, Hq, Nq, D]`, `k, v [B, Hkv, Nk, D]` and `o [B, Hq, Nq, D]`
//! (`Hq` a multiple of `Hkv`). Rows that may read no key give `o = 0` and a
//! zero gradient. No `Nq × Nk` tensor is ever built: the forward keeps only
//! `o` and the row log-sum-exp `lse`, and the backward recomputes the
//! probabilities tile by tile from them (FlashAttention-2).
//!
//! [`Schedule::Ring`] computes the same causal attention as ring attention
//! does (chunk by chunk in ring order, merged by `lse`, see
//! [`edifice_kernels::ring`]); its backward is the fused kernel's, given the
//! merged `(o, lse)`. [`Schedule::Parallel`] hands both passes to a
//! [`SequenceParallel`] implementation: the sequence spread over processes
//! (`edifice-dist`), each holding a slice of the positions.

use std::fmt::Debug;
use std::sync::Arc;

use burn::backend::flex::FlexTensor;
use burn::tensor::Tensor;
use edifice_kernels::{ring, Attention, AttnShape, Pattern, PatternKind};

use super::{apply3, like, values, FusedOp, Grads};
use crate::Error;

/// How the attention is scheduled. Every schedule gives the same result (up
/// to float summation order).
#[derive(Clone, Debug, Default)]
pub enum Schedule {
    /// One fused pass over the tile map.
    #[default]
    Fused,
    /// Ring attention: `chunks` query chunks, each visiting the kv chunks in
    /// ring order. Needs the causal full pattern and `Nq = Nk`, divisible by
    /// `chunks`.
    Ring {
        /// Number of chunks (ring steps).
        chunks: usize,
    },
    /// Sequence-parallel attention: the tensors hold this process's slice
    /// of the positions, and `SequenceParallel` computes their exact
    /// attention over the whole sequence with the other processes.
    Parallel(Arc<dyn SequenceParallel>),
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Schedule::Fused, Schedule::Fused) => true,
            (Schedule::Ring { chunks: a }, Schedule::Ring { chunks: b }) => a == b,
            (Schedule::Parallel(a), Schedule::Parallel(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// Attention over a sequence whose positions are spread over processes.
///
/// `att` describes this process's slice: `q [B, Hq, L, D]` and
/// `k, v [B, Hkv, L, D]` with `L` its local positions (as its
/// [`AttnShape`]), and the pattern and scale of the attention over the
/// whole sequence. The outputs are the slice's rows of the whole
/// sequence's attention: `o [B, Hq, L, D]`, `lse [B, Hq, L]`, and in the
/// backward `dq`, `dk`, `dv` like `q`, `k`, `v` (all of the loss's
/// gradient that reaches this slice's keys and values, from every
/// process's queries). Every process must call both passes in the same
/// order.
pub trait SequenceParallel: Debug + Send + Sync {
    /// Checks that this slice and pattern can be computed; called once per
    /// call before any tensor is read.
    fn check(&self, att: &Attention) -> Result<(), Error>;

    /// `(o, lse)` of this slice's queries.
    fn forward(
        &self,
        att: &Attention,
        q: &[f32],
        k: &[f32],
        v: &[f32],
    ) -> Result<(Vec<f32>, Vec<f32>), Error>;

    /// `(dq, dk, dv)` of this slice from the forward's inputs `[q, k, v,
    /// o]`, its `lse` and the output's gradient `d_o`.
    fn backward(
        &self,
        att: &Attention,
        inputs: [&[f32]; 4],
        lse: &[f32],
        d_o: &[f32],
    ) -> Result<AttnGrads, Error>;
}

/// Everything about an attention call except the tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct AttnSpec {
    /// Which (query, key) pairs may attend.
    pub pattern: Pattern,
    /// Multiplier of `q·k`; `None` means `1/sqrt(D)`.
    pub scale: Option<f32>,
    /// Fused or ring order.
    pub schedule: Schedule,
}

impl AttnSpec {
    /// A fused call with the default scale.
    pub fn new(pattern: Pattern) -> Self {
        Self {
            pattern,
            scale: None,
            schedule: Schedule::Fused,
        }
    }

    /// The checked plan for `shape`: the kernel (and, through it, its tile
    /// map) and the schedule, after checking everything both require.
    pub(super) fn plan(&self, shape: AttnShape) -> Result<Plan, Error> {
        let mut att = Attention::new(shape, self.pattern.clone())?;
        if let Some(scale) = self.scale {
            att = att.with_scale(scale)?;
        }
        if let Schedule::Parallel(parallel) = &self.schedule {
            parallel.check(&att)?;
        }
        if let Schedule::Ring { chunks } = self.schedule {
            if self.pattern != Pattern::new(PatternKind::Full, true) {
                return Err(Error::Config(format!(
                    "ring attention computes causal full attention, not {:?}",
                    self.pattern
                )));
            }
            if shape.len_q != shape.len_k || chunks == 0 || !shape.len_q.is_multiple_of(chunks) {
                return Err(Error::Shape(format!(
                    "ring attention needs Nq = Nk divisible by num_chunks, got Nq {}, Nk {}, {chunks} chunks",
                    shape.len_q, shape.len_k
                )));
            }
        }
        Ok(Plan {
            att,
            schedule: self.schedule.clone(),
        })
    }
}

/// A checked attention call: the kernel and its schedule. Cloning shares
/// the tile map.
#[derive(Clone, Debug)]
pub(super) struct Plan {
    att: Attention,
    schedule: Schedule,
}

impl Plan {
    /// The kernel's forward on `[B, H, N, D]` slices: `(o, lse)`.
    pub(super) fn forward(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
    ) -> Result<(Vec<f32>, Vec<f32>), Error> {
        Ok(match &self.schedule {
            Schedule::Fused => self.att.forward_vec(q, k, v)?,
            Schedule::Ring { chunks } => {
                ring::forward(*self.att.shape(), *chunks, self.att.scale(), q, k, v)?
            }
            Schedule::Parallel(parallel) => parallel.forward(&self.att, q, k, v)?,
        })
    }

    /// The kernel's backward (for either schedule) from the forward's
    /// inputs and output `[q, k, v, o]` and its `lse`: `(dq, dk, dv)`.
    pub(super) fn backward(
        &self,
        [q, k, v, o]: [&[f32]; 4],
        lse: &[f32],
        d_o: &[f32],
    ) -> Result<AttnGrads, Error> {
        match &self.schedule {
            Schedule::Parallel(parallel) => parallel.backward(&self.att, [q, k, v, o], lse, d_o),
            _ => Ok(self.att.backward_vec(q, k, v, o, lse, d_o)?),
        }
    }
}

/// `(dq, dk, dv)`.
pub type AttnGrads = (Vec<f32>, Vec<f32>, Vec<f32>);

/// `q [B, Hq, Nq, D]`, `k, v [B, Hkv, Nk, D]` → `o [B, Hq, Nq, D]` through the
/// fused kernel (see the module docs). Differentiable when the tensors live
/// on an autodiff device.
///
/// Errors: mismatched batch or head dim, `Hq` not a multiple of `Hkv`,
/// `k`/`v` of different shapes, a pattern that does not fit the sizes, or a
/// ring schedule that does not apply.
pub fn attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    spec: &AttnSpec,
) -> Result<Tensor<4>, Error> {
    let shape = attn_shape(&q.dims(), &k.dims(), &v.dims())?;
    let plan = spec.plan(shape)?;
    Ok(apply3(AttentionOp(plan), q, k, v))
}

fn attn_shape(q: &[usize; 4], k: &[usize; 4], v: &[usize; 4]) -> Result<AttnShape, Error> {
    if k != v {
        return Err(Error::Shape(format!(
            "k {k:?} and v {v:?} must have the same shape"
        )));
    }
    if q[0] != k[0] || q[3] != k[3] {
        return Err(Error::Shape(format!(
            "q {q:?} and k {k:?} must agree on batch (dim 0) and head dim (dim 3)"
        )));
    }
    let shape = AttnShape {
        batch: q[0],
        heads_q: q[1],
        heads_kv: k[1],
        len_q: q[2],
        len_k: k[2],
        head_dim: q[3],
    };
    shape.validate()?;
    Ok(shape)
}

/// Attention on `q, k, v`.
#[derive(Debug)]
struct AttentionOp(Plan);

/// What attention saves: its inputs, output and `lse`.
#[derive(Debug)]
struct Saved {
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    o: FlexTensor,
    lse: Vec<f32>,
}

impl FusedOp<3> for AttentionOp {
    type Saved = Saved;
    const NAME: &'static str = "attention";

    fn forward(&self, [q, k, v]: [FlexTensor; 3]) -> Result<(FlexTensor, Saved), Error> {
        let (o, lse) = self.0.forward(&values(&q)?, &values(&k)?, &values(&v)?)?;
        let o = like(&q, o);
        Ok((o.clone(), Saved { q, k, v, o, lse }))
    }

    fn backward(&self, saved: &Saved, d_o: FlexTensor, _wanted: [bool; 3]) -> Grads<3> {
        let Saved { q, k, v, o, lse } = saved;
        let (qs, ks, vs, os) = (values(q)?, values(k)?, values(v)?, values(o)?);
        let (dq, dk, dv) = self.0.backward([&qs, &ks, &vs, &os], lse, &values(&d_o)?)?;
        Ok([Some(like(q, dq)), Some(like(k, dk)), Some(like(v, dv))])
    }
}
