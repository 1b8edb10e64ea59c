//! Layers shared by the models: Edifice's attention layers, the FFN, and an
//! LSTM with PyTorch's parameter layout.
//!
//! Initialisation follows Axon 0.8 where it is sound: Dense kernels
//! glorot-uniform, biases and the DualChunk gate zero. LayerNorm gamma starts
//! at one (Axon draws it glorot-uniform, ±√3) and the LSTM initial state is
//! zero (Axon's is random); both are listed in the README.
//!
//! `attention.rs`: Edifice's `self_attention` and `sliding_window_attention`
//! and the pattern attention of the ring and shifted sparse models;
//! `dual_chunk.rs`: DualChunk's attention; `lstm.rs`: the LSTM layer.

use burn::module::{Module, Param};
use burn::nn::{DropoutConfig, Initializer, LinearConfig};
use burn::prelude::*;
use burn::tensor::Distribution;

use crate::kernel::{self, gelu, WeightLayout};
use crate::Error;

mod attention;
mod dual_chunk;
mod lstm;

pub use attention::{
    PatternAttention, SelfAttention, SelfAttentionConfig, SlidingWindowAttention,
    SlidingWindowAttentionConfig,
};
pub use dual_chunk::{Combine, DualChunkAttention, DualChunkAttentionConfig};
pub use lstm::Lstm;

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
        kernel::linear(x, self.weight.val(), self.bias.val(), WeightLayout::InOut)
            .unwrap_or_else(|e| panic!("{e}"))
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
    /// The ε under the square root.
    pub fn epsilon(&self) -> f64 {
        self.epsilon
    }

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
