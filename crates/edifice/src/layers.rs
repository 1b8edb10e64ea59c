//! Layers shared by the models: Edifice's attention layers, the FFN, and an
//! LSTM with PyTorch's parameter layout.
//!
//! Initialisation follows Axon 0.8 where it is sound: Dense kernels
//! glorot-uniform, biases and the DualChunk gate zero. LayerNorm gamma starts
//! at one (Axon draws it glorot-uniform, ±√3) and the LSTM initial state is
//! zero (Axon's is random); both are listed in the README.

use burn::module::{Module, Param};
use burn::nn::{DropoutConfig, Initializer, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::sigmoid;
use burn::tensor::Distribution;
use edifice_kernels::{AttnShape, Pattern, PatternKind};

use crate::functional::{online_softmax_attention, qk_layer_norm, rotary};
use crate::kernel::{
    self, attention, attention_packed, attention_packed_tail, gelu, lstm_recurrence, AttnSpec,
    Schedule,
};
use crate::Error;

/// Axon's `Dense`: `y = x·W + b`, W glorot-uniform, b zero.
pub fn dense(input: usize, output: usize, device: &Device) -> Linear {
    let init = LinearConfig::new(input, output)
        .with_initializer(Initializer::XavierUniform { gain: 1.0 })
        .init(device);
    Linear {
        weight: init.weight,
        bias: Initializer::Zeros.init([output], device),
    }
}

/// A dense layer `y = x·W + b` over the last axis (burn's parameter layout:
/// `weight [d_in, d_out]`; the weights files hold PyTorch's transpose),
/// through the fused kernel ([`kernel::linear`]: three matmuls forward and
/// backward, no transposing copies).
#[derive(Module, Debug)]
pub struct Linear {
    /// `W [d_in, d_out]`.
    pub weight: Param<Tensor<2>>,
    /// `b [d_out]`.
    pub bias: Param<Tensor<1>>,
}

impl Linear {
    /// `[..., d_in]` → `[..., d_out]`. The models check their input widths
    /// before any layer sees them, so a mismatch here is a bug, and panics.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        kernel::linear(x, self.weight.val(), self.bias.val()).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// LayerNorm over the last axis with the given epsilon, gamma one, beta zero.
pub fn layer_norm(size: usize, epsilon: f64, device: &Device) -> LayerNorm {
    LayerNorm {
        gamma: Initializer::Ones.init([size], device),
        beta: Initializer::Zeros.init([size], device),
        epsilon,
    }
}

/// Dropout with burn's semantics (active only on an autodiff device and
/// while the module trains; kept elements scaled by `1/(1 − prob)`), through
/// the fused kernel ([`kernel::dropout`]: a counter-based mask drawn from a
/// seed, instead of a random tensor per call). The seed comes from the
/// device's RNG, so `device.seed(..)` makes runs repeatable.
#[derive(Module, Debug)]
pub struct Dropout {
    inner: burn::nn::Dropout,
}

impl Dropout {
    /// Dropout with probability `prob` of zeroing an element.
    pub fn new(prob: f64) -> Self {
        Self {
            inner: DropoutConfig::new(prob).init(),
        }
    }

    /// `[...]` → `[...]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let prob = self.inner.prob;
        if !self.inner.training.is_enabled() || !x.device().is_autodiff() || prob == 0.0 {
            return x;
        }
        let bits = Tensor::<1>::random([2], Distribution::Default, &x.device())
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap_or_default();
        let seed = bits
            .iter()
            .fold(0u64, |acc, b| (acc << 32) | u64::from(b.to_bits()));
        // Configs validate prob in [0, 1), so keep is in (0, 1].
        kernel::dropout(x, (1.0 - prob) as f32, seed).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// LayerNorm over the last axis, `y = (x − μ)/√(σ² + ε)·γ + β` per row, with
/// PyTorch's parameters (`weight` γ, `bias` β), through the fused kernel
/// ([`kernel::layer_norm`]: one pass forward, one backward).
#[derive(Module, Debug)]
pub struct LayerNorm {
    /// Scale γ `[n]`.
    pub gamma: Param<Tensor<1>>,
    /// Shift β `[n]`.
    pub beta: Param<Tensor<1>>,
    epsilon: f64,
}

impl LayerNorm {
    /// `[..., n]` → `[..., n]`. The models check their input widths before
    /// any norm sees them, so a mismatch here is a bug, and panics.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        kernel::layer_norm(x, self.gamma.val(), self.beta.val(), self.epsilon)
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

/// `[B, T, nh·hd]` → `[B, nh, T, hd]`.
pub fn split_heads(x: Tensor<3>, heads: usize) -> Tensor<4> {
    let [b, t, width] = x.dims();
    x.reshape([b, t, heads, width / heads]).swap_dims(1, 2)
}

/// `[B, nh, T, hd]` → `[B, T, nh·hd]` (feature index `h·hd + d`).
pub fn merge_heads(x: Tensor<4>) -> Tensor<3> {
    let [b, h, t, d] = x.dims();
    x.swap_dims(1, 2).reshape([b, t, h * d])
}

/// `[B, T, W]` → the last position `[B, 1, W]`.
pub fn last_position(x: Tensor<3>) -> Tensor<3> {
    let t = x.dims()[1];
    x.narrow(1, t.saturating_sub(1), t.min(1))
}

/// Splits a fused projection `[B, T, 3·width]` into q, k, v `[B, nh, T, hd]`.
pub(crate) fn split_qkv(qkv: Tensor<3>, heads: usize) -> [Tensor<4>; 3] {
    let width = qkv.dims()[2] / 3;
    [0, 1, 2].map(|i| split_heads(qkv.clone().narrow(2, i * width, width), heads))
}

/// How an attention layer walks its queries and keys (Edifice's `chunked`
/// and `memory_efficient` options). Every way gives the same result up to
/// float summation order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Chunking {
    /// One fused kernel call.
    Whole,
    /// One kernel call per chunk of this many query rows (`chunked`).
    Queries(usize),
    /// Edifice's online softmax over chunks of this many keys, in burn ops
    /// (`memory_efficient`; [`online_softmax_attention`]).
    Keys(usize),
}

impl Chunking {
    /// The chunking Edifice's options ask for (`memory_efficient` wins).
    fn of(chunked: bool, memory_efficient: bool, chunk_size: usize) -> Self {
        match (chunked, memory_efficient) {
            (_, true) => Chunking::Keys(chunk_size),
            (true, false) => Chunking::Queries(chunk_size),
            (false, false) => Chunking::Whole,
        }
    }
}

/// Attention over `[B, nh, T, hd]` heads with a structural pattern, walked
/// as `chunking` says.
fn attend(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    pattern: &Pattern,
    chunking: Chunking,
) -> Result<Tensor<4>, Error> {
    let spec = AttnSpec::new(pattern.clone());
    let chunk = match chunking {
        Chunking::Whole => return attention(q, k, v, &spec),
        Chunking::Keys(chunk) => {
            let [b, h, tq, d] = q.dims();
            let shape = AttnShape {
                batch: b,
                heads_q: h,
                heads_kv: h,
                len_q: tq,
                len_k: k.dims()[2],
                head_dim: d,
            };
            pattern.validate(&shape)?;
            let allowed = |i, j| pattern.allowed(&shape, 0, 0, i, j);
            return online_softmax_attention(q, k, v, chunk, allowed);
        }
        Chunking::Queries(chunk) => chunk,
    };
    let t = q.dims()[2];
    let mut parts = Vec::with_capacity(t.div_ceil(chunk));
    for start in (0..t).step_by(chunk) {
        let rows = chunk.min(t - start);
        // Queries align to the end of the keys they are given, so a causal
        // chunk gets the prefix up to its last row; a non-causal one all keys.
        let keys = if pattern.causal { start + rows } else { t };
        parts.push(attention(
            q.clone().narrow(2, start, rows),
            k.clone().narrow(2, 0, keys),
            v.clone().narrow(2, 0, keys),
            &spec,
        )?);
    }
    Ok(Tensor::cat(parts, 2))
}

/// Checks a `[B, T, E]` input against the width a layer was built for.
pub fn check_input(x: &Tensor<3>, width: usize, what: &str) -> Result<(), Error> {
    let dims = x.dims();
    if dims[2] != width {
        return Err(Error::Shape(format!(
            "{what} expects input [batch, time, {width}], got {dims:?}"
        )));
    }
    Ok(())
}

pub(crate) fn validate_dropout(rate: f64) -> Result<(), Error> {
    if !(0.0..1.0).contains(&rate) {
        return Err(Error::Config(format!(
            "dropout must be in [0, 1), got {rate}"
        )));
    }
    Ok(())
}

pub(crate) fn validate_positive(values: &[(&str, usize)]) -> Result<(), Error> {
    for (name, value) in values {
        if *value == 0 {
            return Err(Error::Config(format!("{name} must be at least 1")));
        }
    }
    Ok(())
}

pub(crate) fn validate_heads(hidden: usize, heads: usize) -> Result<(), Error> {
    if !hidden.is_multiple_of(heads) {
        return Err(Error::Config(format!(
            "hidden_size {hidden} is not divisible by num_heads {heads}"
        )));
    }
    Ok(())
}

/// Options of Edifice's `MultiHead.self_attention` (defaults are Edifice's).
#[derive(Config, Debug)]
pub struct SelfAttentionConfig {
    /// Width of the input features.
    pub input_size: usize,
    /// Width of q, k, v and the output.
    #[config(default = 256)]
    pub hidden_size: usize,
    /// Number of heads (Edifice's default here is 1).
    #[config(default = 1)]
    pub num_heads: usize,
    /// Dropout after the output projection.
    #[config(default = 0.1)]
    pub dropout: f64,
    /// Causal mask (`i >= j`).
    #[config(default = true)]
    pub causal: bool,
    /// Normalise q and k per head ([`qk_layer_norm`]) before attention.
    #[config(default = false)]
    pub qk_layernorm: bool,
    /// Rotary position embedding on q and k (after the QK norm).
    #[config(default = false)]
    pub rope: bool,
    /// Process queries `chunk_size` rows at a time.
    #[config(default = false)]
    pub chunked: bool,
    /// Online-softmax attention (the kernel's own; same result).
    #[config(default = false)]
    pub memory_efficient: bool,
    /// Chunk length for `chunked`.
    #[config(default = 32)]
    pub chunk_size: usize,
}

impl SelfAttentionConfig {
    /// Edifice's `multi_head_attention`: `hidden_size = num_heads · head_dim`.
    pub fn multi_head(input_size: usize, num_heads: usize, head_dim: usize) -> Self {
        Self::new(input_size)
            .with_num_heads(num_heads)
            .with_hidden_size(num_heads * head_dim)
    }

    /// Checks sizes, divisibility and the dropout rate.
    pub fn validate(&self) -> Result<(), Error> {
        validate_positive(&[
            ("input_size", self.input_size),
            ("hidden_size", self.hidden_size),
            ("num_heads", self.num_heads),
            ("chunk_size", self.chunk_size),
        ])?;
        validate_heads(self.hidden_size, self.num_heads)?;
        validate_dropout(self.dropout)?;
        if self.rope && !(self.hidden_size / self.num_heads).is_multiple_of(2) {
            return Err(Error::Config(
                "rope needs an even head dim (hidden_size / num_heads)".into(),
            ));
        }
        Ok(())
    }

    /// Width of the output, `hidden_size`.
    pub fn output_size(&self) -> usize {
        self.hidden_size
    }

    /// Builds the layer after [`validate`](Self::validate).
    pub fn init(&self, device: &Device) -> Result<SelfAttention, Error> {
        self.validate()?;
        Ok(SelfAttention {
            qkv: dense(self.input_size, 3 * self.hidden_size, device),
            output: dense(self.hidden_size, self.hidden_size, device),
            dropout: Dropout::new(self.dropout),
            num_heads: self.num_heads,
            causal: self.causal,
            qk_layernorm: self.qk_layernorm,
            rope: self.rope,
            chunking: Chunking::of(self.chunked, self.memory_efficient, self.chunk_size),
        })
    }
}

/// Edifice's `self_attention` layer: `[B, T, input_size]` → `[B, T, hidden_size]`.
///
/// ```text
/// q, k, v = split(x·W_qkv + b)          each [B, nh, T, hd]
/// q, k = qk_layer_norm(q, k)?; q, k = rotary(q, k)?
/// o = attention(q, k, v, causal?) → [B, T, hidden]
/// y = dropout(o·W_out + b)
/// ```
#[derive(Module, Debug)]
pub struct SelfAttention {
    /// `input_size → 3·hidden` projection (Axon `{name}_qkv`).
    pub qkv: Linear,
    /// `hidden → hidden` projection (Axon `{name}_output`).
    pub output: Linear,
    dropout: Dropout,
    num_heads: usize,
    causal: bool,
    qk_layernorm: bool,
    rope: bool,
    #[module(skip)]
    chunking: Chunking,
}

impl SelfAttention {
    /// `x [B, T, input_size]` → `[B, T, hidden_size]`.
    pub fn forward(&self, x: Tensor<3>) -> Result<Tensor<3>, Error> {
        let o = self.heads(x)?;
        Ok(self.dropout.forward(self.output.forward(o)))
    }

    /// `x [B, T, input_size]` → the last position's output
    /// `[B, 1, hidden_size]`, its query reading every position: the output
    /// projection runs on that position only.
    pub fn forward_last(&self, x: Tensor<3>) -> Result<Tensor<3>, Error> {
        let o = if self.packed() {
            attention_packed_tail(self.project(x)?, self.num_heads, 1, &self.spec())?
        } else {
            last_position(self.heads(x)?)
        };
        Ok(self.dropout.forward(self.output.forward(o)))
    }

    /// Whether the heads come straight from the packed projection.
    fn packed(&self) -> bool {
        !self.qk_layernorm && !self.rope && self.chunking == Chunking::Whole
    }

    /// The checked input through the fused q, k, v projection.
    fn project(&self, x: Tensor<3>) -> Result<Tensor<3>, Error> {
        check_input(&x, self.qkv.weight.dims()[0], "self_attention")?;
        Ok(self.qkv.forward(x))
    }

    fn spec(&self) -> AttnSpec {
        AttnSpec::new(Pattern::new(PatternKind::Full, self.causal))
    }

    /// The attention output before the output projection, heads merged.
    fn heads(&self, x: Tensor<3>) -> Result<Tensor<3>, Error> {
        let (qkv, spec) = (self.project(x)?, self.spec());
        if self.packed() {
            return attention_packed(qkv, self.num_heads, &spec);
        }
        let [mut q, mut k, v] = split_qkv(qkv, self.num_heads);
        if self.qk_layernorm {
            q = qk_layer_norm(q);
            k = qk_layer_norm(k);
        }
        if self.rope {
            q = rotary(q)?;
            k = rotary(k)?;
        }
        Ok(merge_heads(attend(q, k, v, &spec.pattern, self.chunking)?))
    }
}

/// Options of Edifice's `MultiHead.sliding_window_attention`.
#[derive(Config, Debug)]
pub struct SlidingWindowAttentionConfig {
    /// Width of the input features.
    pub input_size: usize,
    /// Keys each query sees, itself included (causal).
    #[config(default = 60)]
    pub window_size: usize,
    /// Number of heads.
    #[config(default = 4)]
    pub num_heads: usize,
    /// Width of one head.
    #[config(default = 64)]
    pub head_dim: usize,
    /// Normalise q and k per head before attention.
    #[config(default = false)]
    pub qk_layernorm: bool,
    /// Process queries `chunk_size` rows at a time.
    #[config(default = false)]
    pub chunked: bool,
    /// Online-softmax attention. Unlike Edifice, it keeps the window.
    #[config(default = false)]
    pub memory_efficient: bool,
    /// Chunk length for `chunked`.
    #[config(default = 32)]
    pub chunk_size: usize,
}

impl SlidingWindowAttentionConfig {
    /// Checks sizes.
    pub fn validate(&self) -> Result<(), Error> {
        validate_positive(&[
            ("input_size", self.input_size),
            ("window_size", self.window_size),
            ("num_heads", self.num_heads),
            ("head_dim", self.head_dim),
            ("chunk_size", self.chunk_size),
        ])
    }

    /// Width of the output, `num_heads · head_dim`.
    pub fn output_size(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// Builds the layer after [`validate`](Self::validate).
    pub fn init(&self, device: &Device) -> Result<SlidingWindowAttention, Error> {
        self.validate()?;
        Ok(SlidingWindowAttention {
            qkv: dense(self.input_size, 3 * self.output_size(), device),
            num_heads: self.num_heads,
            window: self.window_size,
            qk_layernorm: self.qk_layernorm,
            chunking: Chunking::of(self.chunked, self.memory_efficient, self.chunk_size),
        })
    }
}

/// Edifice's `sliding_window_attention`: causal attention over the last
/// `window_size` positions, no output projection.
/// `[B, T, input_size]` → `[B, T, num_heads·head_dim]`.
#[derive(Module, Debug)]
pub struct SlidingWindowAttention {
    /// `input_size → 3·nh·hd` projection (Axon `{name}_qkv`).
    pub qkv: Linear,
    num_heads: usize,
    window: usize,
    qk_layernorm: bool,
    #[module(skip)]
    chunking: Chunking,
}

impl SlidingWindowAttention {
    /// `x [B, T, input_size]` → `[B, T, nh·hd]`.
    pub fn forward(&self, x: Tensor<3>) -> Result<Tensor<3>, Error> {
        let (qkv, pattern) = (self.project(x)?, self.pattern());
        if self.packed() {
            return attention_packed(qkv, self.num_heads, &AttnSpec::new(pattern));
        }
        let [mut q, mut k, v] = split_qkv(qkv, self.num_heads);
        if self.qk_layernorm {
            q = qk_layer_norm(q);
            k = qk_layer_norm(k);
        }
        Ok(merge_heads(attend(q, k, v, &pattern, self.chunking)?))
    }

    /// `x [B, T, input_size]` → the last position's output `[B, 1, nh·hd]`,
    /// its query reading its window.
    pub fn forward_last(&self, x: Tensor<3>) -> Result<Tensor<3>, Error> {
        if !self.packed() {
            return Ok(last_position(self.forward(x)?));
        }
        let spec = AttnSpec::new(self.pattern());
        attention_packed_tail(self.project(x)?, self.num_heads, 1, &spec)
    }

    /// Whether the heads come straight from the packed projection.
    fn packed(&self) -> bool {
        !self.qk_layernorm && self.chunking == Chunking::Whole
    }

    /// The checked input through the fused q, k, v projection.
    fn project(&self, x: Tensor<3>) -> Result<Tensor<3>, Error> {
        check_input(&x, self.qkv.weight.dims()[0], "sliding_window_attention")?;
        Ok(self.qkv.forward(x))
    }

    fn pattern(&self) -> Pattern {
        Pattern::new(
            PatternKind::Window {
                window: self.window,
            },
            true,
        )
    }
}

/// How DualChunk mixes its two paths.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum Combine {
    /// Edifice: `g·inter + (1 − g)·intra`, `g = sigmoid(gate)` per head and feature.
    Gate,
    /// `intra + inter`, as in the dual chunk attention text.
    Sum,
}

/// Options of Edifice's `DualChunk.build_dual_chunk_attention`.
#[derive(Config, Debug)]
pub struct DualChunkAttentionConfig {
    /// Width of the input features.
    pub input_size: usize,
    /// Width of the output projection.
    pub hidden_size: usize,
    /// Number of heads.
    pub num_heads: usize,
    /// Width of one head (Edifice passes `hidden_size / num_heads`).
    pub head_dim: usize,
    /// Chunk length; the sequence length must be a multiple of it.
    pub chunk_size: usize,
    /// Inter-chunk path reads earlier chunks only (see [`DualChunkAttention`]).
    #[config(default = false)]
    pub strict_causal: bool,
    /// Gate (Edifice) or sum.
    #[config(default = "Combine::Gate")]
    pub combine: Combine,
}

impl DualChunkAttentionConfig {
    /// Checks sizes.
    pub fn validate(&self) -> Result<(), Error> {
        validate_positive(&[
            ("input_size", self.input_size),
            ("hidden_size", self.hidden_size),
            ("num_heads", self.num_heads),
            ("head_dim", self.head_dim),
            ("chunk_size", self.chunk_size),
        ])
    }

    /// Width of the output, `hidden_size`.
    pub fn output_size(&self) -> usize {
        self.hidden_size
    }

    /// Builds the layer after [`validate`](Self::validate).
    pub fn init(&self, device: &Device) -> Result<DualChunkAttention, Error> {
        self.validate()?;
        let width = self.num_heads * self.head_dim;
        Ok(DualChunkAttention {
            qkv: dense(self.input_size, 3 * width, device),
            gate: Initializer::Zeros.init([self.num_heads, self.head_dim], device),
            out: dense(width, self.hidden_size, device),
            num_heads: self.num_heads,
            chunk: self.chunk_size,
            strict_causal: self.strict_causal,
            sum: self.combine == Combine::Sum,
        })
    }
}

/// Edifice's dual chunk attention. `[B, T, input_size]` → `[B, T, hidden_size]`,
/// `T` a multiple of the chunk length `C`.
///
/// ```text
/// q, k, v = split(x·W_qkv + b)                        [B, nh, T, hd]
/// intra   = causal attention inside each chunk        (token level)
/// qs, ks, vs = mean of q, k, v over each chunk        [B, nh, T/C, hd]
/// inter   = causal attention of qs over (ks, vs), copied to the chunk's tokens
/// out     = g·inter + (1 − g)·intra,  g = sigmoid(gate [nh, hd])   (or intra + inter)
/// y       = out·W_out + b
/// ```
///
/// Edifice's inter path lets a token see the mean of its whole chunk, later
/// tokens included. With `strict_causal`, token `t` instead queries with its
/// own `q` the summaries of the chunks strictly before its own, so the output
/// at `t` depends only on positions `<= t` (tokens of the first chunk get no
/// inter contribution).
#[derive(Module, Debug)]
pub struct DualChunkAttention {
    /// Fused q, k, v projection (Axon `{name}_qkv`).
    pub qkv: Linear,
    /// Gate logits `[nh, hd]` (Axon `{name}_compute.{name}_gate`).
    pub gate: Param<Tensor<2>>,
    /// Output projection (Axon `{name}_out`).
    pub out: Linear,
    num_heads: usize,
    chunk: usize,
    strict_causal: bool,
    sum: bool,
}

impl DualChunkAttention {
    /// `x [B, T, input_size]` → `[B, T, hidden_size]`.
    pub fn forward(&self, x: Tensor<3>) -> Result<Tensor<3>, Error> {
        Ok(self.out.forward(self.mix(x)?))
    }

    /// `x [B, T, input_size]` → the last position's output
    /// `[B, 1, hidden_size]` (both paths as in [`forward`](Self::forward));
    /// the output projection runs on that position only.
    pub fn forward_last(&self, x: Tensor<3>) -> Result<Tensor<3>, Error> {
        Ok(self.out.forward(last_position(self.mix(x)?)))
    }

    /// Both paths mixed, before the output projection: `[B, T, nh·hd]`.
    fn mix(&self, x: Tensor<3>) -> Result<Tensor<3>, Error> {
        check_input(&x, self.qkv.weight.dims()[0], "dual_chunk_attention")?;
        let [b, t, _] = x.dims();
        let c = self.chunk;
        if t == 0 || t % c != 0 {
            return Err(Error::Shape(format!(
                "dual chunk attention needs a sequence length that is a positive multiple of chunk_size {c}, got {t}"
            )));
        }
        let (nh, chunks) = (self.num_heads, t / c);
        let qkv = self.qkv.forward(x);
        let width = qkv.dims()[2] / 3;
        // Both paths stay in the projection's packed layout [B, T, (3·)nh·hd]:
        // the mean over a chunk commutes with splitting the heads.
        let intra = attention_packed(
            qkv.clone(),
            nh,
            &AttnSpec::new(Pattern::new(PatternKind::Chunk { chunk: c }, true)),
        )?;
        let summary = qkv.clone().reshape([b, chunks, c, 3 * width]).mean_dim(2);
        let inter = if self.strict_causal {
            let [q, _, _] = split_qkv(qkv, nh);
            let [_, ks, vs] = split_qkv(summary.reshape([b, chunks, 3 * width]), nh);
            let allowed: Vec<bool> = (0..t * chunks)
                .map(|x| x % chunks < (x / chunks) / c)
                .collect();
            let mask = edifice_kernels::BoolMask::new(allowed, &[t, chunks])?;
            merge_heads(attention(
                q,
                ks,
                vs,
                &AttnSpec::new(Pattern::new(PatternKind::Mask(mask), false)),
            )?)
        } else {
            attention_packed(
                summary.reshape([b, chunks, 3 * width]),
                nh,
                &AttnSpec::new(Pattern::new(PatternKind::Full, true)),
            )?
            .reshape([b, chunks, 1, width])
            .expand([b, chunks, c, width])
            .reshape([b, t, width])
        };
        let mixed = if self.sum {
            intra.add(inter)
        } else {
            let g = sigmoid(self.gate.val()).reshape([1, 1, width]);
            inter.mul(g.clone()).add(intra.mul(g.neg().add_scalar(1.0)))
        };
        Ok(mixed)
    }
}

/// Multi-head self-attention through one kernel pattern: fused qkv
/// projection, `attention(q, k, v, spec)`, output projection.
/// `[B, T, H]` → `[B, T, H]`. RingAttention's blocks (ring schedule) and
/// shifted sparse attention (strided / shifted patterns) are this layer.
#[derive(Module, Debug)]
pub struct PatternAttention {
    /// `H → 3H`.
    pub qkv: Linear,
    /// `H → H`.
    pub out_proj: Linear,
    num_heads: usize,
    #[module(skip)]
    spec: AttnSpec,
}

impl PatternAttention {
    /// A new layer of width `hidden` with `num_heads` heads.
    pub fn new(hidden: usize, num_heads: usize, spec: AttnSpec, device: &Device) -> Self {
        Self {
            qkv: dense(hidden, 3 * hidden, device),
            out_proj: dense(hidden, hidden, device),
            num_heads,
            spec,
        }
    }

    /// `x [B, T, H]` → `[B, T, H]`.
    pub fn forward(&self, x: Tensor<3>) -> Result<Tensor<3>, Error> {
        let o = attention_packed(self.qkv.forward(x), self.num_heads, &self.spec)?;
        Ok(self.out_proj.forward(o))
    }

    /// `x [B, T, H]` → the last position's output `[B, 1, H]`: the last
    /// query alone, or with the ring schedule (which needs every query) the
    /// full attention; the output projection on that position only.
    pub fn forward_last(&self, x: Tensor<3>) -> Result<Tensor<3>, Error> {
        let qkv = self.qkv.forward(x);
        let o = match self.spec.schedule {
            Schedule::Fused => attention_packed_tail(qkv, self.num_heads, 1, &self.spec)?,
            Schedule::Ring { .. } => {
                last_position(attention_packed(qkv, self.num_heads, &self.spec)?)
            }
        };
        Ok(self.out_proj.forward(o))
    }
}

/// Edifice's standard FFN: `Dense(H → 4H) → GELU (erf) → Dense(4H → H)`.
#[derive(Module, Debug)]
pub struct Ffn {
    /// `H → 4H` (Axon `{name}_up`).
    pub up: Linear,
    /// `4H → H` (Axon `{name}_down`).
    pub down: Linear,
}

impl Ffn {
    /// A new FFN of width `hidden` and inner width `inner`.
    pub fn new(hidden: usize, inner: usize, device: &Device) -> Self {
        Self {
            up: dense(hidden, inner, device),
            down: dense(inner, hidden, device),
        }
    }

    /// `[B, T, H]` → `[B, T, H]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.down.forward(gelu(self.up.forward(x)))
    }
}

/// One LSTM layer with PyTorch's parameter layout (gates `i, f, g, o`
/// stacked along the first axis) and a zero initial state.
///
/// ```text
/// [i f g o] = x_t·W_ihᵀ + b_ih + h_{t-1}·W_hhᵀ + b_hh
/// c_t = σ(f)·c_{t-1} + σ(i)·tanh(g);   h_t = σ(o)·tanh(c_t)
/// ```
#[derive(Module, Debug)]
pub struct Lstm {
    /// `[4U, in]`.
    pub weight_ih: Param<Tensor<2>>,
    /// `[4U, U]`.
    pub weight_hh: Param<Tensor<2>>,
    /// `[4U]`.
    pub bias_ih: Param<Tensor<1>>,
    /// `[4U]`.
    pub bias_hh: Param<Tensor<1>>,
}

impl Lstm {
    /// A new layer; each gate's kernels are glorot-uniform as in Axon, biases zero.
    pub fn new(input: usize, hidden: usize, device: &Device) -> Self {
        // One draw per stacked matrix with each gate's fans: the same
        // distribution as Axon's four separate [fan_in, U] kernels.
        let stacked = |fan_in: usize| {
            Initializer::XavierUniform { gain: 1.0 }.init_with(
                [4 * hidden, fan_in],
                Some(fan_in),
                Some(hidden),
                device,
            )
        };
        Self {
            weight_ih: stacked(input),
            weight_hh: stacked(hidden),
            bias_ih: Initializer::Zeros.init([4 * hidden], device),
            bias_hh: Initializer::Zeros.init([4 * hidden], device),
        }
    }

    /// Hidden width `U`.
    pub fn hidden_size(&self) -> usize {
        self.weight_hh.dims()[1]
    }

    /// `x [B, T, in]` → every hidden state `[B, T, U]`, through the fused
    /// recurrence ([`lstm_recurrence`]).
    pub fn forward(&self, x: Tensor<3>) -> Result<Tensor<3>, Error> {
        lstm_recurrence(self.input_gates(x), self.weight_hh.val())
    }

    /// `x·W_ihᵀ + b_ih + b_hh` for every step: `[B, T, 4U]`, one matmul.
    fn input_gates(&self, x: Tensor<3>) -> Tensor<3> {
        let bias = self.bias_ih.val().add(self.bias_hh.val());
        kernel::linear_out_in(x, self.weight_ih.val(), bias).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The same recurrence composed step by step from burn's own ops: the
    /// reference the fused kernel is tested against (forward and gradients).
    pub fn forward_reference(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let u = self.hidden_size();
        let bias = self.bias_ih.val().add(self.bias_hh.val());
        let projected = x
            .matmul(self.weight_ih.val().transpose().unsqueeze())
            .add(bias.reshape([1, 1, 4 * u]));
        let w_hh = self.weight_hh.val().transpose();
        let device = projected.device();
        let mut h = Tensor::<2>::zeros([b, u], &device);
        let mut c = Tensor::<2>::zeros([b, u], &device);
        let mut outputs = Vec::with_capacity(t);
        for step in 0..t {
            let gates = projected
                .clone()
                .narrow(1, step, 1)
                .reshape([b, 4 * u])
                .add(h.matmul(w_hh.clone()));
            let gate = |i: usize| gates.clone().narrow(1, i * u, u);
            let (i, f, g, o) = (
                sigmoid(gate(0)),
                sigmoid(gate(1)),
                gate(2).tanh(),
                sigmoid(gate(3)),
            );
            c = f.mul(c).add(i.mul(g));
            h = o.mul(c.clone().tanh());
            outputs.push(h.clone().unsqueeze_dim(1));
        }
        Tensor::cat(outputs, 1)
    }
}
