//! DualChunk's attention layer.

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::prelude::*;
use burn::tensor::activation::sigmoid;
use edifice_kernels::{Pattern, PatternKind};

use crate::kernel::{attention, attention_packed, AttnSpec};
use crate::Error;

use super::{check_input, dense, last_position, merge_heads, split_qkv, validate_positive, Linear};

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
        Ok(self.out.forward(self.mix(x, None)?))
    }

    /// `x [B, T, input_size]` of which the first `lengths[b]` positions are
    /// real → `[B, T, hidden_size]`, real positions' outputs independent of
    /// the padding: a chunk's summary is the mean of its real positions
    /// (so `T` may be padded up to a multiple of the chunk length). Both
    /// attentions are causal over tokens or chunks already.
    pub fn forward_padded(&self, x: Tensor<3>, lengths: &[usize]) -> Result<Tensor<3>, Error> {
        Ok(self.out.forward(self.mix(x, Some(lengths))?))
    }

    /// `x [B, T, input_size]` → the last position's output
    /// `[B, 1, hidden_size]` (both paths as in [`forward`](Self::forward));
    /// the output projection runs on that position only.
    pub fn forward_last(&self, x: Tensor<3>) -> Result<Tensor<3>, Error> {
        Ok(self.out.forward(last_position(self.mix(x, None)?)))
    }

    /// Both paths mixed, before the output projection: `[B, T, nh·hd]`.
    fn mix(&self, x: Tensor<3>, lengths: Option<&[usize]>) -> Result<Tensor<3>, Error> {
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
        let by_chunk = qkv.clone().reshape([b, chunks, c, 3 * width]);
        let summary = match lengths {
            Some(lengths) => real_means(by_chunk, lengths)?,
            None => by_chunk.mean_dim(2),
        };
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

/// `x [B, chunks, C, F]` → the mean over each chunk's real positions
/// `[B, chunks, 1, F]`, of which batch element `b` has its first
/// `lengths[b]` (a chunk with none gets 0: no real query reads it).
fn real_means(x: Tensor<4>, lengths: &[usize]) -> Result<Tensor<4>, Error> {
    let [b, chunks, c, _] = x.dims();
    if lengths.len() != b || lengths.iter().any(|&n| n > chunks * c) {
        return Err(Error::Shape(format!(
            "lengths {lengths:?} for a batch of {b} sequences of {} positions",
            chunks * c
        )));
    }
    let real: Vec<f32> = lengths
        .iter()
        .flat_map(|&n| (0..chunks * c).map(move |t| f32::from(u8::from(t < n))))
        .collect();
    let inv_count: Vec<f32> = lengths
        .iter()
        .flat_map(|&n| (0..chunks).map(move |k| 1.0 / n.saturating_sub(k * c).clamp(1, c) as f32))
        .collect();
    let device = x.device();
    let real = Tensor::<4>::from_data(TensorData::new(real, [b, chunks, c, 1]), &device);
    let inv_count = Tensor::<4>::from_data(TensorData::new(inv_count, [b, chunks, 1, 1]), &device);
    Ok(x.mul(real).sum_dim(2).mul(inv_count))
}
