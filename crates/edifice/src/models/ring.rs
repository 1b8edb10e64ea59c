//! Edifice's `RingAttention.build`: pre-norm transformer blocks whose
//! attention is exact causal attention computed in ring order
//! ([`Schedule::Ring`]). `[B, window_size, embed_dim]` → `[B, hidden_size]`.

use burn::prelude::*;
use edifice_kernels::{Pattern, PatternKind};

use super::backbone::{Backbone, BlockAttention, SequenceModel};
use super::{Model, ModelInfo, ModelOptions};
use crate::kernel::{AttnSpec, Schedule};
use crate::layers::{validate_dropout, validate_heads, validate_positive, PatternAttention};
use crate::weights::Walker;
use crate::Error;

/// `ring` in the model registry.
pub const INFO: ModelInfo = ModelInfo {
    name: "ring",
    edifice: "RingAttention.build",
    length_key: "window_size",
    shapes: "[B, window_size, embed_dim] → [B, hidden_size]",
    enum_options: &[],
    refused_options: &[],
    example: r#"{"model": "ring", "embed_dim": 32, "hidden_size": 16, "num_heads": 2, "num_layers": 2, "window_size": 8}"#,
};

impl ModelOptions for RingConfig {
    fn input_dims(&self) -> (usize, usize) {
        (self.window_size, self.embed_dim)
    }

    fn len_multiple(&self) -> usize {
        self.num_chunks.max(1)
    }

    fn with_len(&self, len: usize) -> Self {
        self.clone().with_window_size(len)
    }

    fn model(&self, device: &Device) -> Result<Model, Error> {
        Ok(Model::Ring(self.init(device)?))
    }
}

/// Options of `Edifice.Attention.RingAttention.build`. As in Edifice, the
/// sequence length is `window_size`.
#[derive(Config, Debug)]
pub struct RingConfig {
    /// Width of each input frame.
    pub embed_dim: usize,
    /// Model width.
    #[config(default = 256)]
    pub hidden_size: usize,
    /// Attention heads.
    #[config(default = 4)]
    pub num_heads: usize,
    /// Ring steps; `window_size` must be a multiple of it.
    #[config(default = 4)]
    pub num_chunks: usize,
    /// Transformer blocks.
    #[config(default = 4)]
    pub num_layers: usize,
    /// Dropout after attention, after the FFN and between blocks.
    #[config(default = 0.1)]
    pub dropout: f64,
    /// Sequence length.
    #[config(default = 60)]
    pub window_size: usize,
}

impl RingConfig {
    /// Checks sizes, divisibility and dropout.
    pub fn validate(&self) -> Result<(), Error> {
        validate_positive(&[
            ("embed_dim", self.embed_dim),
            ("hidden_size", self.hidden_size),
            ("num_heads", self.num_heads),
            ("num_chunks", self.num_chunks),
            ("num_layers", self.num_layers),
            ("window_size", self.window_size),
        ])?;
        validate_heads(self.hidden_size, self.num_heads)?;
        validate_dropout(self.dropout)?;
        if !self.window_size.is_multiple_of(self.num_chunks) {
            return Err(Error::Config(format!(
                "window_size {} is not a multiple of num_chunks {}",
                self.window_size, self.num_chunks
            )));
        }
        Ok(())
    }

    /// Width of the output, `hidden_size`.
    pub fn output_size(&self) -> usize {
        self.hidden_size
    }

    /// Builds the model after [`validate`](Self::validate).
    pub fn init(&self, device: &Device) -> Result<Ring, Error> {
        self.validate()?;
        let (h, heads, chunks) = (self.hidden_size, self.num_heads, self.num_chunks);
        let spec = AttnSpec {
            schedule: Schedule::Ring { chunks },
            ..AttnSpec::new(Pattern::new(PatternKind::Full, true))
        };
        let backbone = Backbone::new(
            self.embed_dim,
            h,
            self.num_layers,
            self.dropout,
            self.dropout,
            "ring",
            device,
            |_| Ok(PatternAttention::new(h, heads, spec.clone(), device)),
        )?;
        Ok(SequenceModel::new(backbone, self.window_size, "ring"))
    }
}

impl BlockAttention for PatternAttention {
    fn forward(&self, x: Tensor<3>) -> Result<Tensor<3>, Error> {
        PatternAttention::forward(self, x)
    }

    fn forward_padded(&self, x: Tensor<3>, lengths: &[usize]) -> Result<Tensor<3>, Error> {
        PatternAttention::forward_padded(self, x, lengths)
    }

    fn forward_last(&self, x: Tensor<3>) -> Result<Tensor<3>, Error> {
        PatternAttention::forward_last(self, x)
    }

    fn walk(&mut self, w: &mut Walker, axon: &str) {
        w.linear("qkv", &format!("{axon}_qkv"), &mut self.qkv);
        w.linear("out_proj", &format!("{axon}_out_proj"), &mut self.out_proj);
    }
}

/// The ring model: the shared backbone with [`PatternAttention`] blocks.
pub type Ring = SequenceModel<PatternAttention>;

impl Ring {
    /// The same model with every block's attention scheduled by `schedule`
    /// (e.g. [`Schedule::Parallel`]: its sequence spread over processes).
    pub fn with_schedule(mut self, schedule: Schedule) -> Self {
        for block in &mut self.backbone.blocks {
            block.attn = block.attn.clone().with_schedule(schedule.clone());
        }
        self
    }
}
