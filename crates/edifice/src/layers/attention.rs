//! Edifice's `self_attention` and `sliding_window_attention`, and the
//! pattern attention of the ring and shifted sparse models.

use burn::module::Module;
use burn::prelude::*;
use edifice_kernels::{AttnShape, Pattern, PatternKind};

use crate::functional::{online_softmax_attention, qk_layer_norm, rotary};
use crate::kernel::{attention, attention_packed, attention_packed_tail, AttnSpec, Schedule};
use crate::Error;

use super::{
    check_input, dense, last_position, merge_heads, split_qkv, validate_dropout, validate_heads,
    validate_positive, Dropout, Linear,
};

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
    /// Keys each query sees, itself included (`None`: every key; Edifice has
    /// no such option). With `causal`, Edifice's `window_mask`.
    pub window: Option<usize>,
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
            ("window", self.window.unwrap_or(1)),
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
            window: self.window,
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
    #[module(skip)]
    window: Option<usize>,
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
        let kind = match self.window {
            Some(window) => PatternKind::Window { window },
            None => PatternKind::Full,
        };
        AttnSpec::new(Pattern::new(kind, self.causal))
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

    /// `x [B, T, H]` of which the first `lengths[b]` positions are real →
    /// `[B, T, H]`, real positions' outputs independent of the padding: a
    /// non-causal pattern is cut at each sequence's end
    /// ([`Pattern::with_key_lengths`]); a causal one never reads past its
    /// query, so it runs as it is (and keeps a ring schedule).
    pub fn forward_padded(&self, x: Tensor<3>, lengths: &[usize]) -> Result<Tensor<3>, Error> {
        if self.spec.pattern.causal {
            return self.forward(x);
        }
        let spec = AttnSpec {
            pattern: self.spec.pattern.clone().with_key_lengths(lengths.to_vec()),
            ..self.spec.clone()
        };
        let o = attention_packed(self.qkv.forward(x), self.num_heads, &spec)?;
        Ok(self.out_proj.forward(o))
    }

    /// `x [B, T, H]` → the last position's output `[B, 1, H]`: the last
    /// query alone, or with a ring or parallel schedule (which need every
    /// query) the full attention; the output projection on that position
    /// only.
    pub fn forward_last(&self, x: Tensor<3>) -> Result<Tensor<3>, Error> {
        let qkv = self.qkv.forward(x);
        let o = match self.spec.schedule {
            Schedule::Fused => attention_packed_tail(qkv, self.num_heads, 1, &self.spec)?,
            Schedule::Ring { .. } | Schedule::Parallel(_) => {
                last_position(attention_packed(qkv, self.num_heads, &self.spec)?)
            }
        };
        Ok(self.out_proj.forward(o))
    }

    /// The same layer with its attention scheduled by `schedule`.
    pub fn with_schedule(mut self, schedule: Schedule) -> Self {
        self.spec.schedule = schedule;
        self
    }

    /// How the attention is scheduled.
    pub fn schedule(&self) -> &Schedule {
        &self.spec.schedule
    }
}
