//! The fused kernels of `edifice_kernels` as burn operations, each with its
//! own backward pass under `Autodiff`: attention ([`attention`], and
//! [`attention_packed`] straight from a fused `qkv` projection), the LSTM
//! recurrence ([`lstm_recurrence`]), [`linear()`], [`layer_norm()`], [`gelu()`]
//! and [`dropout()`].
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
//! merged `(o, lse)`.
//!
//! The glue follows burn 0.22.1's backend-extension API: an extension trait
//! implemented for `Flex` (runs the kernel on the tensors' memory) and for
//! `Autodiff<B>` (records a node whose backward calls [`Kernels`]).

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Dispatch, Flex, TensorMetadata};
use burn::tensor::{Tensor, TensorData};
use edifice_kernels::heads::{self, Packing};
use edifice_kernels::linear::{self, LinearShape};
use edifice_kernels::lstm::{self, LstmShape, LstmTrace};
use edifice_kernels::{dropout, gelu, layer_norm};
use edifice_kernels::{ring, Attention, AttnShape, Pattern};

use crate::Error;

/// How the attention is scheduled. Both give the same result (up to float
/// summation order) and share one backward.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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

    /// Builds the kernel for `shape`, checking everything the kernel and the
    /// schedule require.
    fn kernel(&self, shape: AttnShape) -> Result<Attention, Error> {
        let mut att = Attention::new(shape, self.pattern.clone())?;
        if let Some(scale) = self.scale {
            att = att.with_scale(scale)?;
        }
        if let Schedule::Ring { chunks } = self.schedule {
            let causal_full =
                self.pattern == Pattern::new(edifice_kernels::PatternKind::Full, true);
            if !causal_full {
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
        Ok(att)
    }
}

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
    spec.kernel(shape)?;
    Ok(Tensor::from_dispatch(Dispatch::fused_attention(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        spec.clone(),
    )))
}

/// Self-attention straight from a fused projection: `qkv [B, T, 3·H·D]`
/// (q, k and v side by side, each head-major: feature `p·H·D + h·D + d`,
/// see [`edifice_kernels::heads`]) → `o [B, T, H·D]` with the heads merged.
///
/// The same as splitting `qkv` into `[B, H, T, D]` heads, calling
/// [`attention`] and merging the heads back, without the transposing copies
/// around the kernel or their gradients: the heads move in one pass each way,
/// and the backward writes `∂qkv` in one pass.
///
/// Errors: `heads` of zero or not dividing the width into three equal
/// parts, or a `spec` that does not fit the sizes (see [`attention`]).
pub fn attention_packed(qkv: Tensor<3>, heads: usize, spec: &AttnSpec) -> Result<Tensor<3>, Error> {
    let len = qkv.dims()[1];
    attention_packed_tail(qkv, heads, len, spec)
}

/// [`attention_packed`] for the last `queries` positions only:
/// `qkv [B, T, 3·H·D]` → `o [B, queries, H·D]`, the queries reading keys
/// and values at every position their pattern allows (query `i` sits at
/// position `T − queries + i`): the way to the last timestep's output
/// without computing the others. Not with the ring schedule, which needs
/// as many queries as keys.
pub fn attention_packed_tail(
    qkv: Tensor<3>,
    heads: usize,
    queries: usize,
    spec: &AttnSpec,
) -> Result<Tensor<3>, Error> {
    let packing = qkv_packing(&qkv.dims(), heads)?;
    if queries > packing.len {
        return Err(Error::Shape(format!(
            "packed attention: {queries} trailing queries of a sequence of {}",
            packing.len
        )));
    }
    spec.kernel(packed_shape(packing, queries))?;
    Ok(Tensor::from_dispatch(Dispatch::fused_attention_packed(
        qkv.into_dispatch(),
        heads,
        queries,
        spec.clone(),
    )))
}

/// The packing of `qkv [B, T, 3·H·D]` with `heads` heads.
fn qkv_packing(dims: &[usize; 3], heads: usize) -> Result<Packing, Error> {
    let [batch, len, width] = *dims;
    if heads == 0 || width == 0 || width % (3 * heads) != 0 {
        return Err(Error::Shape(format!(
            "packed attention needs qkv [B, T, 3·heads·head_dim] with heads > 0 and head_dim > 0, got {dims:?} with {heads} heads"
        )));
    }
    Ok(Packing {
        batch,
        len,
        heads,
        head_dim: width / (3 * heads),
        parts: 3,
    })
}

/// The kernel's view of packed self-attention: `H` heads for q and kv, the
/// last `queries` positions as queries.
fn packed_shape(p: Packing, queries: usize) -> AttnShape {
    AttnShape {
        batch: p.batch,
        heads_q: p.heads,
        heads_kv: p.heads,
        len_q: queries,
        len_k: p.len,
        head_dim: p.head_dim,
    }
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

/// The LSTM recurrence over time (see [`edifice_kernels::lstm`]):
/// `xp [B, T, 4U]` (the input half of the gates, biases included) and
/// `w_hh [4U, U]` → every hidden state `h [B, T, U]`, zero initial state,
/// gates in PyTorch's order `i, f, g, o`. Differentiable in both inputs.
pub fn lstm_recurrence(xp: Tensor<3>, w_hh: Tensor<2>) -> Result<Tensor<3>, Error> {
    let ([_, _, gates], [rows, u]) = (xp.dims(), w_hh.dims());
    if rows != 4 * u || gates != 4 * u {
        return Err(Error::Shape(format!(
            "lstm needs xp [B, T, 4U] and w_hh [4U, U]; got xp {:?}, w_hh {:?}",
            xp.dims(),
            w_hh.dims()
        )));
    }
    Ok(Tensor::from_dispatch(Dispatch::fused_lstm(
        xp.into_dispatch(),
        w_hh.into_dispatch(),
    )))
}

/// GELU, exact (erf) form, elementwise (see [`edifice_kernels::gelu`]).
/// Differentiable.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(Dispatch::fused_gelu(x.into_dispatch()))
}

/// Layer normalisation over the last dimension of `x [..., n]` with
/// `gamma, beta [n]` (see [`edifice_kernels::layer_norm`]). Differentiable in
/// all three.
pub fn layer_norm<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
) -> Result<Tensor<D>, Error> {
    let (n, g, b) = (x.dims()[D - 1], gamma.dims()[0], beta.dims()[0]);
    if g != n || b != n {
        return Err(Error::Shape(format!(
            "layer norm over width {n} (input {:?}) got gamma [{g}] and beta [{b}]",
            x.dims()
        )));
    }
    Ok(Tensor::from_dispatch(Dispatch::fused_layer_norm(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        epsilon as f32,
    )))
}

/// Inverted dropout with the counter-based mask of `seed` (see
/// [`edifice_kernels::dropout`]): each element kept with probability `keep`
/// and scaled by `1/keep`. Differentiable; the backward pass regenerates the
/// mask from the seed.
pub fn dropout<const D: usize>(x: Tensor<D>, keep: f32, seed: u64) -> Result<Tensor<D>, Error> {
    dropout::check_keep(keep)?;
    Ok(Tensor::from_dispatch(Dispatch::fused_dropout(
        x.into_dispatch(),
        keep,
        seed,
    )))
}

/// A dense layer `y = x·W + b` over the last dimension of `x [..., d_in]`,
/// with `weight [d_in, d_out]` and `bias [d_out]` (see
/// [`edifice_kernels::linear`]). Differentiable in all three.
pub fn linear<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<2>,
    bias: Tensor<1>,
) -> Result<Tensor<D>, Error> {
    dense(x, weight, bias, false)
}

/// [`linear()`] with the weight in PyTorch's layout, `[d_out, d_in]` (read in
/// place, never transposed into a copy).
pub fn linear_out_in<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<2>,
    bias: Tensor<1>,
) -> Result<Tensor<D>, Error> {
    dense(x, weight, bias, true)
}

fn dense<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<2>,
    bias: Tensor<1>,
    out_in: bool,
) -> Result<Tensor<D>, Error> {
    let [r, c] = weight.dims();
    let (d_in, d_out) = if out_in { (c, r) } else { (r, c) };
    let (n, b) = (x.dims()[D - 1], bias.dims()[0]);
    if n != d_in || b != d_out {
        return Err(Error::Shape(format!(
            "linear layer [{d_in} → {d_out}] (bias [{b}]) got input {:?}",
            x.dims()
        )));
    }
    Ok(Tensor::from_dispatch(Dispatch::fused_linear(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        out_in,
    )))
}

/// The extension: the fused operations, dispatched to Flex or `Autodiff<Flex>`.
#[backend_extension(Autodiff, Flex)]
pub trait KernelBackend: burn::backend::Backend {
    /// See [`attention`]; inputs are already validated.
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        spec: AttnSpec,
    ) -> FloatTensor<Self>;

    /// See [`attention_packed`]; inputs are already validated.
    fn fused_attention_packed(
        qkv: FloatTensor<Self>,
        heads: usize,
        queries: usize,
        spec: AttnSpec,
    ) -> FloatTensor<Self>;

    /// See [`lstm_recurrence`]; inputs are already validated.
    fn fused_lstm(xp: FloatTensor<Self>, w_hh: FloatTensor<Self>) -> FloatTensor<Self>;

    /// See [`gelu()`].
    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// See [`linear()`]; inputs are already validated.
    fn fused_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        out_in: bool,
    ) -> FloatTensor<Self>;

    /// See [`dropout()`]; `keep` is already validated.
    fn fused_dropout(x: FloatTensor<Self>, keep: f32, seed: u64) -> FloatTensor<Self>;

    /// See [`layer_norm()`]; inputs are already validated.
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f32,
    ) -> FloatTensor<Self>;
}

/// The raw forward and backward passes on a concrete backend, callable from
/// the generic autodiff nodes.
pub trait Kernels: burn::backend::Backend {
    /// Returns `o` and the row log-sum-exp `[B, Hq, Nq]`.
    fn attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        spec: &AttnSpec,
    ) -> (FloatTensor<Self>, Arc<[f32]>);

    /// Returns `(dq, dk, dv)` for upstream gradient `d_o`.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        o: FloatTensor<Self>,
        lse: &[f32],
        d_o: FloatTensor<Self>,
        spec: &AttnSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// Returns the merged `o [B, T, H·D]` and what the backward needs.
    fn attention_packed_forward(
        qkv: FloatTensor<Self>,
        heads: usize,
        queries: usize,
        spec: &AttnSpec,
    ) -> (FloatTensor<Self>, Arc<PackedTrace>);

    /// Returns `∂qkv` for upstream gradient `d_o [B, T, H·D]`.
    fn attention_packed_backward(
        trace: &PackedTrace,
        d_o: FloatTensor<Self>,
        spec: &AttnSpec,
    ) -> FloatTensor<Self>;

    /// Returns `h` and the trace the backward pass needs.
    fn lstm_forward(
        xp: FloatTensor<Self>,
        w_hh: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, Arc<LstmTrace>);

    /// Returns `(∂xp, ∂w_hh)` for upstream gradient `d_h`.
    fn lstm_backward(
        w_hh: FloatTensor<Self>,
        trace: &LstmTrace,
        d_h: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// `y = x·W + b`.
    fn linear_forward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        out_in: bool,
    ) -> FloatTensor<Self>;

    /// Returns `(∂x, ∂W, ∂b)` for upstream gradient `d_y`, `∂x` only when
    /// `input_grad`.
    fn linear_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        d_y: FloatTensor<Self>,
        out_in: bool,
        input_grad: bool,
    ) -> (
        Option<FloatTensor<Self>>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    );

    /// `x` through the dropout mask of `seed` (forward and backward alike).
    fn dropout_masked(x: FloatTensor<Self>, keep: f32, seed: u64) -> FloatTensor<Self>;

    /// `dy · gelu'(x)`.
    fn fused_gelu_backward(x: FloatTensor<Self>, d_y: FloatTensor<Self>) -> FloatTensor<Self>;

    /// Returns `y` and the row statistics.
    fn layer_norm_forward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f32,
    ) -> (FloatTensor<Self>, Arc<layer_norm::Stats>);

    /// Returns `(∂x, ∂γ, ∂β)` for upstream gradient `d_y`.
    fn layer_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        stats: &layer_norm::Stats,
        d_y: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// What packed attention keeps for its backward: the heads in the kernel's
/// layout (`q`, `o` `[B, H, queries, D]`, `k`, `v` `[B, H, T, D]`) and the
/// row log-sum-exp.
#[derive(Debug)]
pub struct PackedTrace {
    packing: Packing,
    queries: usize,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    o: Vec<f32>,
    lse: Vec<f32>,
}

/// The kernel's forward on `[B, H, N, D]` slices, in the spec's schedule.
fn attend(
    att: &Attention,
    spec: &AttnSpec,
    q: &[f32],
    k: &[f32],
    v: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    match spec.schedule {
        Schedule::Fused => att.forward_vec(q, k, v),
        Schedule::Ring { chunks } => ring::forward(*att.shape(), chunks, att.scale(), q, k, v),
    }
    .expect("validated by the public function")
}

/// The packing of packed attention's output `o [B, queries, H·D]`.
fn output_packing(p: Packing, queries: usize) -> Packing {
    Packing {
        parts: 1,
        len: queries,
        ..p
    }
}

/// The last `queries` rows of every `[T, D]` plane of `x [B, H, T, D]`.
fn tail_rows(x: Vec<f32>, p: Packing, queries: usize) -> Vec<f32> {
    if queries == p.len {
        return x;
    }
    let (t, d) = (p.len, p.head_dim);
    x.chunks_exact(t * d)
        .flat_map(|plane| &plane[(t - queries) * d..])
        .copied()
        .collect()
}

/// The inverse of [`tail_rows`] for gradients: zero rows before the tail.
fn padded_rows(x: Vec<f32>, p: Packing, queries: usize) -> Vec<f32> {
    if queries == p.len {
        return x;
    }
    let (t, d) = (p.len, p.head_dim);
    let mut out = vec![0.0; p.part_len()];
    if queries > 0 {
        for (plane, tail) in out.chunks_exact_mut(t * d).zip(x.chunks_exact(queries * d)) {
            plane[(t - queries) * d..].copy_from_slice(tail);
        }
    }
    out
}

fn lstm_shape(w_hh: &FlexTensor, h_or_xp: &FlexTensor) -> LstmShape {
    let (s, w) = (h_or_xp.shape(), w_hh.shape());
    LstmShape {
        batch: s[0],
        len: s[1],
        hidden: w[1],
    }
}

fn dims4(t: &FlexTensor) -> [usize; 4] {
    let s = t.shape();
    [s[0], s[1], s[2], s[3]]
}

/// The tensor's values as contiguous f32 (a view when they already are).
fn values(t: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        _ => std::borrow::Cow::Owned(
            t.to_contiguous()
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .expect("converted to f32"),
        ),
    }
}

fn tensor(data: Vec<f32>, dims: [usize; 4]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, dims))
}

fn kernel_for(q: &FlexTensor, k: &FlexTensor, spec: &AttnSpec) -> Attention {
    let shape = attn_shape(&dims4(q), &dims4(k), &dims4(k)).expect("validated by attention()");
    spec.kernel(shape).expect("validated by attention()")
}

impl Kernels for Flex {
    fn attention_forward(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        spec: &AttnSpec,
    ) -> (FlexTensor, Arc<[f32]>) {
        let att = kernel_for(&q, &k, spec);
        let (o, lse) = attend(&att, spec, &values(&q), &values(&k), &values(&v));
        (tensor(o, dims4(&q)), lse.into())
    }

    fn attention_backward(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        o: FlexTensor,
        lse: &[f32],
        d_o: FlexTensor,
        spec: &AttnSpec,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let att = kernel_for(&q, &k, spec);
        let (dq, dk, dv) = att
            .backward_vec(
                &values(&q),
                &values(&k),
                &values(&v),
                &values(&o),
                lse,
                &values(&d_o),
            )
            .expect("validated by attention()");
        (
            tensor(dq, dims4(&q)),
            tensor(dk, dims4(&k)),
            tensor(dv, dims4(&v)),
        )
    }

    fn attention_packed_forward(
        qkv: FlexTensor,
        heads: usize,
        queries: usize,
        spec: &AttnSpec,
    ) -> (FlexTensor, Arc<PackedTrace>) {
        let s = qkv.shape();
        let packing = qkv_packing(&[s[0], s[1], s[2]], heads).expect("validated");
        let att = spec
            .kernel(packed_shape(packing, queries))
            .expect("validated");
        let [q, k, v]: [Vec<f32>; 3] = heads::split(packing, &values(&qkv))
            .expect("validated")
            .try_into()
            .expect("three parts");
        let q = tail_rows(q, packing, queries);
        let (o, lse) = attend(&att, spec, &q, &k, &v);
        let merged = heads::merge(output_packing(packing, queries), &[&o]).expect("validated");
        let dims = [packing.batch, queries, heads * packing.head_dim];
        let o_packed = FlexTensor::from_data(TensorData::new(merged, dims));
        let trace = PackedTrace {
            packing,
            queries,
            q,
            k,
            v,
            o,
            lse,
        };
        (o_packed, Arc::new(trace))
    }

    fn attention_packed_backward(
        trace: &PackedTrace,
        d_o: FlexTensor,
        spec: &AttnSpec,
    ) -> FlexTensor {
        let (p, queries) = (trace.packing, trace.queries);
        let att = spec.kernel(packed_shape(p, queries)).expect("validated");
        let d_o = heads::split(output_packing(p, queries), &values(&d_o))
            .expect("validated")
            .remove(0);
        let (dq, dk, dv) = att
            .backward_vec(&trace.q, &trace.k, &trace.v, &trace.o, &trace.lse, &d_o)
            .expect("validated");
        let dq = padded_rows(dq, p, queries);
        let d_qkv = heads::merge(p, &[&dq, &dk, &dv]).expect("validated");
        let dims = [p.batch, p.len, 3 * p.heads * p.head_dim];
        FlexTensor::from_data(TensorData::new(d_qkv, dims))
    }

    fn lstm_forward(xp: FlexTensor, w_hh: FlexTensor) -> (FlexTensor, Arc<LstmTrace>) {
        let shape = lstm_shape(&w_hh, &xp);
        let trace = lstm::forward(shape, &values(&xp), &values(&w_hh))
            .expect("validated by lstm_recurrence()");
        let dims = [shape.batch, shape.len, shape.hidden];
        let h = FlexTensor::from_data(TensorData::new(trace.h.clone(), dims));
        (h, Arc::new(trace))
    }

    fn lstm_backward(
        w_hh: FlexTensor,
        trace: &LstmTrace,
        d_h: FlexTensor,
    ) -> (FlexTensor, FlexTensor) {
        let shape = lstm_shape(&w_hh, &d_h);
        let (d_xp, d_w) = lstm::backward(shape, &values(&w_hh), trace, &values(&d_h))
            .expect("validated by lstm_recurrence()");
        let LstmShape { batch, len, hidden } = shape;
        (
            FlexTensor::from_data(TensorData::new(d_xp, [batch, len, 4 * hidden])),
            FlexTensor::from_data(TensorData::new(d_w, [4 * hidden, hidden])),
        )
    }

    fn linear_forward(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        out_in: bool,
    ) -> FlexTensor {
        let shape = linear_shape(&x, &weight, out_in);
        let y = linear::forward(shape, &values(&x), &values(&weight), &values(&bias))
            .expect("validated by linear()");
        let mut dims = x.shape();
        let last = dims.num_dims() - 1;
        dims[last] = shape.d_out;
        FlexTensor::from_data(TensorData::new(y, dims))
    }

    fn linear_backward(
        x: FlexTensor,
        weight: FlexTensor,
        d_y: FlexTensor,
        out_in: bool,
        input_grad: bool,
    ) -> (Option<FlexTensor>, FlexTensor, FlexTensor) {
        let shape = linear_shape(&x, &weight, out_in);
        let (xs, ws, dys) = (values(&x), values(&weight), values(&d_y));
        let g = linear::backward(shape, &xs, &ws, &dys, input_grad).expect("validated by linear()");
        let db = FlexTensor::from_data(TensorData::new(g.db, [shape.d_out]));
        (g.dx.map(|dx| like(&x, dx)), like(&weight, g.dw), db)
    }

    fn dropout_masked(x: FlexTensor, keep: f32, seed: u64) -> FlexTensor {
        elementwise(&x, |xs, y| dropout::apply(seed, keep, xs, y))
    }

    fn fused_gelu_backward(x: FlexTensor, d_y: FlexTensor) -> FlexTensor {
        elementwise(&x, |xs, dx| gelu::backward(xs, &values(&d_y), dx))
    }

    fn layer_norm_forward(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f32,
    ) -> (FlexTensor, Arc<layer_norm::Stats>) {
        let xs = values(&x);
        let mut y = vec![0.0; xs.len()];
        let stats = layer_norm::forward(&xs, &values(&gamma), &values(&beta), epsilon, &mut y)
            .expect("validated by layer_norm()");
        (like(&x, y), Arc::new(stats))
    }

    fn layer_norm_backward(
        x: FlexTensor,
        gamma: FlexTensor,
        stats: &layer_norm::Stats,
        d_y: FlexTensor,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let g = layer_norm::backward(&values(&x), &values(&gamma), stats, &values(&d_y))
            .expect("validated by layer_norm()");
        (
            like(&x, g.dx),
            like(&gamma, g.dgamma),
            like(&gamma, g.dbeta),
        )
    }
}

fn linear_shape(x: &FlexTensor, weight: &FlexTensor, out_in: bool) -> LinearShape {
    let w = weight.shape();
    let (d_in, d_out) = if out_in { (w[1], w[0]) } else { (w[0], w[1]) };
    LinearShape {
        rows: x.shape().num_elements() / d_in.max(1),
        d_in,
        d_out,
        weight_out_in: out_in,
    }
}

/// A tensor of `x`'s shape filled by `f(x's values, out)`, an elementwise
/// kernel whose inputs the public functions already validated.
fn elementwise(
    x: &FlexTensor,
    f: impl FnOnce(&[f32], &mut [f32]) -> Result<(), edifice_kernels::KernelError>,
) -> FlexTensor {
    let xs = values(x);
    let mut out = vec![0.0; xs.len()];
    f(&xs, &mut out).expect("validated by the public function");
    like(x, out)
}

/// A tensor of `x`'s shape holding `data`.
fn like(x: &FlexTensor, data: Vec<f32>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, x.shape()))
}

impl KernelBackend for Flex {
    fn fused_attention(q: FlexTensor, k: FlexTensor, v: FlexTensor, spec: AttnSpec) -> FlexTensor {
        Self::attention_forward(q, k, v, &spec).0
    }

    fn fused_attention_packed(
        qkv: FlexTensor,
        heads: usize,
        queries: usize,
        spec: AttnSpec,
    ) -> FlexTensor {
        Self::attention_packed_forward(qkv, heads, queries, &spec).0
    }

    fn fused_lstm(xp: FlexTensor, w_hh: FlexTensor) -> FlexTensor {
        Self::lstm_forward(xp, w_hh).0
    }

    fn fused_gelu(x: FlexTensor) -> FlexTensor {
        elementwise(&x, gelu::forward)
    }

    fn fused_linear(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        out_in: bool,
    ) -> FlexTensor {
        Self::linear_forward(x, weight, bias, out_in)
    }

    fn fused_dropout(x: FlexTensor, keep: f32, seed: u64) -> FlexTensor {
        Self::dropout_masked(x, keep, seed)
    }

    fn fused_layer_norm(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f32,
    ) -> FlexTensor {
        Self::layer_norm_forward(x, gamma, beta, epsilon).0
    }
}

/// Hands each parent that tracks gradients its gradient.
fn register<B: burn::backend::Backend, const N: usize>(
    grads: &mut Gradients,
    parents: [Option<NodeId>; N],
    values: [FloatTensor<B>; N],
) {
    for (id, grad) in parents.into_iter().zip(values) {
        if let Some(id) = id {
            grads.register::<B>(id, grad);
        }
    }
}

/// The autodiff node: saves `q, k, v, o, lse` and calls the kernel backward.
#[derive(Debug)]
struct AttentionNode;

type NodeState<B> = (
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    Arc<[f32]>,
    AttnSpec,
);

impl<B: Kernels> Backward<B, 3> for AttentionNode {
    type State = NodeState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let parents = ops.parents.map(|p| p.map(|node| node.id));
        let d_o = grads.consume::<B>(&ops.node);
        let (q, k, v, o, lse, spec) = ops.state;
        let (dq, dk, dv) = B::attention_backward(q, k, v, o, &lse, d_o, &spec);
        register::<B, 3>(grads, parents, [dq, dk, dv]);
    }
}

/// The packed attention node: saves the heads and `lse` (in the trace).
#[derive(Debug)]
struct PackedAttentionNode;

impl<B: Kernels> Backward<B, 1> for PackedAttentionNode {
    type State = (Arc<PackedTrace>, AttnSpec);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let parents = ops.parents.map(|p| p.map(|node| node.id));
        let d_o = grads.consume::<B>(&ops.node);
        let (trace, spec) = ops.state;
        let d_qkv = B::attention_packed_backward(&trace, d_o, &spec);
        register::<B, 1>(grads, parents, [d_qkv]);
    }
}

/// The LSTM node: saves `w_hh` and the trace, calls the kernel backward.
#[derive(Debug)]
struct LstmNode;

impl<B: Kernels> Backward<B, 2> for LstmNode {
    type State = (FloatTensor<B>, Arc<LstmTrace>);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let parents = ops.parents.map(|p| p.map(|node| node.id));
        let d_h = grads.consume::<B>(&ops.node);
        let (w_hh, trace) = ops.state;
        let (d_xp, d_w) = B::lstm_backward(w_hh, &trace, d_h);
        register::<B, 2>(grads, parents, [d_xp, d_w]);
    }
}

/// The GELU node: saves `x`.
#[derive(Debug)]
struct GeluNode;

impl<B: Kernels> Backward<B, 1> for GeluNode {
    type State = FloatTensor<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_x] = ops.parents;
        let d_y = grads.consume::<B>(&ops.node);
        if let Some(node) = node_x {
            grads.register::<B>(node.id, B::fused_gelu_backward(ops.state, d_y));
        }
    }
}

/// The linear node: saves `x` and the weight.
#[derive(Debug)]
struct LinearNode;

impl<B: Kernels> Backward<B, 3> for LinearNode {
    type State = (FloatTensor<B>, FloatTensor<B>, bool);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let parents = ops.parents.map(|p| p.map(|node| node.id));
        let d_y = grads.consume::<B>(&ops.node);
        let (x, weight, out_in) = ops.state;
        let [x_parent, w_parent, b_parent] = parents;
        let (dx, dw, db) = B::linear_backward(x, weight, d_y, out_in, x_parent.is_some());
        register::<B, 2>(grads, [w_parent, b_parent], [dw, db]);
        if let Some(dx) = dx {
            register::<B, 1>(grads, [x_parent], [dx]);
        }
    }
}

/// The dropout node: saves the keep probability and the seed.
#[derive(Debug)]
struct DropoutNode;

impl<B: Kernels> Backward<B, 1> for DropoutNode {
    type State = (f32, u64);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_x] = ops.parents;
        let d_y = grads.consume::<B>(&ops.node);
        let (keep, seed) = ops.state;
        if let Some(node) = node_x {
            grads.register::<B>(node.id, B::dropout_masked(d_y, keep, seed));
        }
    }
}

/// The LayerNorm node: saves `x`, `gamma` and the row statistics.
#[derive(Debug)]
struct LayerNormNode;

impl<B: Kernels> Backward<B, 3> for LayerNormNode {
    type State = (FloatTensor<B>, FloatTensor<B>, Arc<layer_norm::Stats>);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let parents = ops.parents.map(|p| p.map(|node| node.id));
        let d_y = grads.consume::<B>(&ops.node);
        let (x, gamma, stats) = ops.state;
        let (dx, dgamma, dbeta) = B::layer_norm_backward(x, gamma, &stats, d_y);
        register::<B, 3>(grads, parents, [dx, dgamma, dbeta]);
    }
}

impl<B: KernelBackend + Kernels, C: CheckpointStrategy> KernelBackend for Autodiff<B, C> {
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        spec: AttnSpec,
    ) -> FloatTensor<Self> {
        let ((q, node_q), (k, node_k), (v, node_v)) =
            (q.into_parts(), k.into_parts(), v.into_parts());
        match AttentionNode
            .prepare::<C>([node_q, node_k, node_v])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (o, lse) = B::attention_forward(q.clone(), k.clone(), v.clone(), &spec);
                prep.finish((q, k, v, o.clone(), lse, spec), o)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::attention_forward(q, k, v, &spec).0),
        }
    }

    fn fused_attention_packed(
        qkv: FloatTensor<Self>,
        heads: usize,
        queries: usize,
        spec: AttnSpec,
    ) -> FloatTensor<Self> {
        let (qkv, node) = qkv.into_parts();
        match PackedAttentionNode
            .prepare::<C>([node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (o, trace) = B::attention_packed_forward(qkv, heads, queries, &spec);
                prep.finish((trace, spec), o)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::fused_attention_packed(qkv, heads, queries, spec))
            }
        }
    }

    fn fused_lstm(xp: FloatTensor<Self>, w_hh: FloatTensor<Self>) -> FloatTensor<Self> {
        let ((xp, node_xp), (w_hh, node_w)) = (xp.into_parts(), w_hh.into_parts());
        match LstmNode
            .prepare::<C>([node_xp, node_w])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (h, trace) = B::lstm_forward(xp, w_hh.clone());
                prep.finish((w_hh, trace), h)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::lstm_forward(xp, w_hh).0),
        }
    }

    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let (x, node_x) = x.into_parts();
        match GeluNode.prepare::<C>([node_x]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let y = B::fused_gelu(x.clone());
                prep.finish(x, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_gelu(x)),
        }
    }

    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f32,
    ) -> FloatTensor<Self> {
        let ((x, node_x), (gamma, node_gamma), (beta, node_beta)) =
            (x.into_parts(), gamma.into_parts(), beta.into_parts());
        match LayerNormNode
            .prepare::<C>([node_x, node_gamma, node_beta])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (y, stats) = B::layer_norm_forward(x.clone(), gamma.clone(), beta, epsilon);
                prep.finish((x, gamma, stats), y)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::layer_norm_forward(x, gamma, beta, epsilon).0)
            }
        }
    }

    fn fused_dropout(x: FloatTensor<Self>, keep: f32, seed: u64) -> FloatTensor<Self> {
        let (x, node_x) = x.into_parts();
        match DropoutNode
            .prepare::<C>([node_x])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((keep, seed), B::dropout_masked(x, keep, seed)),
            OpsKind::UnTracked(prep) => prep.finish(B::dropout_masked(x, keep, seed)),
        }
    }

    fn fused_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        out_in: bool,
    ) -> FloatTensor<Self> {
        let ((x, node_x), (weight, node_w), (bias, node_b)) =
            (x.into_parts(), weight.into_parts(), bias.into_parts());
        match LinearNode
            .prepare::<C>([node_x, node_w, node_b])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = B::linear_forward(x.clone(), weight.clone(), bias, out_in);
                prep.finish((x, weight, out_in), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::linear_forward(x, weight, bias, out_in)),
        }
    }
}
