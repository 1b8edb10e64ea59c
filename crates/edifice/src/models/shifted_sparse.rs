//! Shifted sparse attention (the LongLoRA S2-Attn family): pre-norm
//! transformer blocks (the DualChunk skeleton) whose attention lets each head
//! read a sparse subset of positions, chosen so that the heads together
//! cover every token. `[B, seq_len, embed_dim]` → `[B, hidden_size]`.
//!
//! Patterns (per query head `h`, query `i`, key `j`, causal by default):
//! - `strided`: `|i − j| < local_window`, or `j mod stride == h mod stride`,
//!   or `j < global_tokens` (and, without causal, `i < global_tokens` reads
//!   everything). With `stride <= num_heads` every residue has a head, so
//!   every pair is read by some head ([`Pattern::uncovered`]).
//! - `shifted`: groups of `group_size` positions; the second half of the
//!   heads shifts its groups by half a group (S2-Attn without its
//!   wrap-around), so information crosses group borders from layer to layer.
//!
//! Edifice has no such module; this is ours, built on the same kernel.

use burn::prelude::*;
use edifice_kernels::{Pattern, PatternKind};

use super::backbone::{Backbone, SequenceModel};
use super::{Model, ModelInfo, ModelOptions};
use crate::kernel::AttnSpec;
use crate::layers::{validate_dropout, validate_heads, validate_positive, PatternAttention};
use crate::Error;

/// `shifted_sparse` in the model registry.
pub const INFO: ModelInfo = ModelInfo {
    name: "shifted_sparse",
    edifice: "none in Edifice",
    length_key: "seq_len",
    shapes: "[B, seq_len, embed_dim] → [B, hidden_size]",
    enum_options: &["pattern"],
    refused_options: &[],
    example: r#"{"model": "shifted_sparse", "embed_dim": 32, "hidden_size": 16, "num_heads": 2, "num_layers": 2}"#,
};

impl ModelOptions for ShiftedSparseConfig {
    fn input_dims(&self) -> (usize, usize) {
        (self.seq_len, self.embed_dim)
    }

    fn with_len(&self, len: usize) -> Self {
        self.clone().with_seq_len(len)
    }

    fn model(&self, device: &Device) -> Result<Model, Error> {
        Ok(Model::ShiftedSparse(self.init(device)?))
    }
}

/// Which sparse pattern the heads use.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum SparsePattern {
    /// Local window + per-head strided residue (+ global tokens).
    Strided,
    /// Half the heads in groups, half in groups shifted by half a group.
    Shifted,
}

/// Options of the `shifted_sparse` model.
#[derive(Config, Debug)]
pub struct ShiftedSparseConfig {
    /// Width of each input frame.
    pub embed_dim: usize,
    /// Model width.
    #[config(default = 256)]
    pub hidden_size: usize,
    /// Attention heads.
    #[config(default = 8)]
    pub num_heads: usize,
    /// Transformer blocks.
    #[config(default = 4)]
    pub num_layers: usize,
    /// Dropout after attention and after the FFN (training only).
    #[config(default = 0.1)]
    pub dropout: f64,
    /// Sequence length.
    #[config(default = 64)]
    pub seq_len: usize,
    /// `strided` or `shifted`.
    #[config(default = "SparsePattern::Strided")]
    pub pattern: SparsePattern,
    /// Strided: distance between a head's far keys (default `num_heads`).
    pub stride: Option<usize>,
    /// Strided: width of the local band.
    #[config(default = 16)]
    pub local_window: usize,
    /// Strided: positions at the start that everyone reads.
    #[config(default = 0)]
    pub global_tokens: usize,
    /// Shifted: group length (default `seq_len / 4`, as LongLoRA trains).
    pub group_size: Option<usize>,
    /// Keys after the query are never read.
    #[config(default = true)]
    pub causal: bool,
    /// Accept a strided pattern whose heads leave pairs unread.
    #[config(default = false)]
    pub allow_uncovered: bool,
}

impl ShiftedSparseConfig {
    /// The stride after its default.
    pub fn stride(&self) -> usize {
        self.stride.unwrap_or(self.num_heads)
    }

    /// The group length after its default.
    pub fn group_size(&self) -> usize {
        self.group_size.unwrap_or((self.seq_len / 4).max(1))
    }

    /// The kernel pattern every block uses.
    pub fn attention_pattern(&self) -> Pattern {
        let kind = match self.pattern {
            SparsePattern::Strided => {
                let strided = PatternKind::Strided {
                    stride: self.stride(),
                    local: self.local_window,
                };
                if self.global_tokens > 0 {
                    PatternKind::Union(vec![
                        strided,
                        PatternKind::Global {
                            tokens: self.global_tokens,
                        },
                    ])
                } else {
                    strided
                }
            }
            SparsePattern::Shifted => PatternKind::Shifted {
                group: self.group_size(),
            },
        };
        Pattern::new(kind, self.causal)
    }

    /// Checks sizes, dropout, and that the strided heads cover every pair.
    pub fn validate(&self) -> Result<(), Error> {
        validate_positive(&[
            ("embed_dim", self.embed_dim),
            ("hidden_size", self.hidden_size),
            ("num_heads", self.num_heads),
            ("num_layers", self.num_layers),
            ("seq_len", self.seq_len),
            ("stride", self.stride()),
            ("group_size", self.group_size()),
        ])?;
        validate_heads(self.hidden_size, self.num_heads)?;
        validate_dropout(self.dropout)?;
        if self.pattern == SparsePattern::Strided
            && self.stride() > self.num_heads
            && !self.allow_uncovered
        {
            // A few strides past the local band show the first gap.
            let len = self.seq_len.min(self.local_window + 4 * self.stride() + 1);
            let gap = self
                .attention_pattern()
                .uncovered(self.num_heads, len)?
                .first()
                .copied();
            let detail = match gap {
                Some((i, j)) => format!("first uncovered offset {} (query {i}, key {j})", i - j),
                None => "some offsets beyond the first few strides are unread".into(),
            };
            return Err(Error::Config(format!(
                "stride {} > num_heads {} leaves keys no head reads: {detail}; set allow_uncovered = true to accept",
                self.stride(),
                self.num_heads
            )));
        }
        Ok(())
    }

    /// Width of the output, `hidden_size`.
    pub fn output_size(&self) -> usize {
        self.hidden_size
    }

    /// Builds the model after [`validate`](Self::validate).
    pub fn init(&self, device: &Device) -> Result<ShiftedSparse, Error> {
        self.validate()?;
        let spec = AttnSpec::new(self.attention_pattern());
        let (h, heads) = (self.hidden_size, self.num_heads);
        let backbone = Backbone::new(
            self.embed_dim,
            h,
            self.num_layers,
            self.dropout,
            0.0,
            "shifted_sparse",
            device,
            |_| Ok(PatternAttention::new(h, heads, spec.clone(), device)),
        )?;
        Ok(SequenceModel::new(backbone, self.seq_len, "shifted_sparse"))
    }
}

/// The shifted_sparse model: the shared backbone with [`PatternAttention`] blocks.
pub type ShiftedSparse = SequenceModel<PatternAttention>;
