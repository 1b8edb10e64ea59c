//! Edifice's `DualChunk.build`: pre-norm transformer blocks whose attention
//! is [`DualChunkAttention`] (intra-chunk causal + inter-chunk over chunk
//! means, mixed by a learned gate). `[B, seq_len, embed_dim]` → `[B, hidden_size]`.

use burn::prelude::*;

use super::backbone::{Backbone, BlockAttention, SequenceModel};
use super::{Model, ModelInfo, ModelOptions};
use crate::layers::{
    validate_dropout, validate_heads, validate_positive, Combine, DualChunkAttention,
    DualChunkAttentionConfig,
};
use crate::weights::{Source, Walker};
use crate::Error;

/// `dual_chunk` in the model registry.
pub const INFO: ModelInfo = ModelInfo {
    name: "dual_chunk",
    edifice: "DualChunk.build",
    length_key: "seq_len",
    shapes: "[B, seq_len, embed_dim] → [B, hidden_size]",
    enum_options: &["combine"],
    refused_options: &[],
    example: r#"{"model": "dual_chunk", "embed_dim": 32, "hidden_size": 16, "num_heads": 2, "num_layers": 2, "chunk_size": 4, "seq_len": 8}"#,
};

impl ModelOptions for DualChunkConfig {
    fn input_dims(&self) -> (usize, usize) {
        (self.seq_len(), self.embed_dim)
    }

    fn len_multiple(&self) -> usize {
        self.chunk_size.max(1)
    }

    fn with_len(&self, len: usize) -> Self {
        self.clone().with_seq_len(Some(len))
    }

    fn model(&self, device: &Device) -> Result<Model, Error> {
        Ok(Model::DualChunk(self.init(device)?))
    }
}

/// Options of `Edifice.Attention.DualChunk.build` (Edifice's names and defaults).
#[derive(Config, Debug)]
pub struct DualChunkConfig {
    /// Width of each input frame.
    pub embed_dim: usize,
    /// Model width.
    #[config(default = 256)]
    pub hidden_size: usize,
    /// Attention heads (`head_dim = hidden_size / num_heads`).
    #[config(default = 8)]
    pub num_heads: usize,
    /// Transformer blocks.
    #[config(default = 4)]
    pub num_layers: usize,
    /// Chunk length; `seq_len` must be a multiple of it.
    #[config(default = 64)]
    pub chunk_size: usize,
    /// Dropout after attention and after the FFN (training only).
    #[config(default = 0.1)]
    pub dropout: f64,
    /// Sequence length (Edifice: `seq_len`, else `window_size`; default 64 as
    /// documented, because Edifice's code default 60 cannot run with chunk 64).
    pub seq_len: Option<usize>,
    /// Alias of `seq_len`, as Edifice accepts it.
    pub window_size: Option<usize>,
    /// Inter-chunk path reads only earlier chunks: output at `t` depends on frames `<= t`.
    #[config(default = false)]
    pub strict_causal: bool,
    /// `gate` (Edifice) or `sum`.
    #[config(default = "Combine::Gate")]
    pub combine: Combine,
}

impl DualChunkConfig {
    /// The sequence length the model runs on.
    pub fn seq_len(&self) -> usize {
        self.seq_len.or(self.window_size).unwrap_or(64)
    }

    /// Checks sizes, divisibility and dropout.
    pub fn validate(&self) -> Result<(), Error> {
        validate_positive(&[
            ("embed_dim", self.embed_dim),
            ("hidden_size", self.hidden_size),
            ("num_heads", self.num_heads),
            ("num_layers", self.num_layers),
            ("chunk_size", self.chunk_size),
            ("seq_len", self.seq_len()),
        ])?;
        validate_heads(self.hidden_size, self.num_heads)?;
        validate_dropout(self.dropout)?;
        let (t, c) = (self.seq_len(), self.chunk_size);
        if t % c != 0 {
            return Err(Error::Config(format!(
                "seq_len {t} is not a multiple of chunk_size {c} (Edifice's own defaults, 60 and 64, fail this way)"
            )));
        }
        Ok(())
    }

    /// Width of the output, `hidden_size`.
    pub fn output_size(&self) -> usize {
        self.hidden_size
    }

    /// Builds the model after [`validate`](Self::validate).
    pub fn init(&self, device: &Device) -> Result<DualChunk, Error> {
        self.validate()?;
        let attn = DualChunkAttentionConfig::new(
            self.hidden_size,
            self.hidden_size,
            self.num_heads,
            self.hidden_size / self.num_heads,
            self.chunk_size,
        )
        .with_strict_causal(self.strict_causal)
        .with_combine(self.combine);
        let backbone = Backbone::new(
            self.embed_dim,
            self.hidden_size,
            self.num_layers,
            self.dropout,
            0.0,
            "dual_chunk_block",
            device,
            |_| attn.init(device),
        )?;
        Ok(SequenceModel::new(backbone, self.seq_len(), "dual_chunk"))
    }
}

impl BlockAttention for DualChunkAttention {
    fn forward(&self, x: Tensor<3>) -> Result<Tensor<3>, Error> {
        DualChunkAttention::forward(self, x)
    }

    fn forward_padded(&self, x: Tensor<3>, lengths: &[usize]) -> Result<Tensor<3>, Error> {
        DualChunkAttention::forward_padded(self, x, lengths)
    }

    fn forward_last(&self, x: Tensor<3>) -> Result<Tensor<3>, Error> {
        DualChunkAttention::forward_last(self, x)
    }

    fn walk(&mut self, w: &mut Walker, axon: &str) {
        walk_dual_chunk_attention(self, w, &format!("{axon}_attn"));
    }
}

/// The parameters of a [`DualChunkAttention`] whose Axon name is `axon`
/// (`qkv`, `gate`, `out`).
pub fn walk_dual_chunk_attention(attn: &mut DualChunkAttention, w: &mut Walker, axon: &str) {
    w.linear("qkv", &format!("{axon}_qkv"), &mut attn.qkv);
    w.tensor(
        "gate",
        Source::Raw(format!("{axon}_compute.{axon}_gate")),
        &mut attn.gate,
        false,
    );
    w.linear("out", &format!("{axon}_out"), &mut attn.out);
}

/// The dual_chunk model: the shared backbone with [`DualChunkAttention`] blocks.
pub type DualChunk = SequenceModel<DualChunkAttention>;
