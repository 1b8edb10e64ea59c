//! Edifice's `MultiHead.build` / `build_sliding_window`: a post-norm
//! transformer over windowed causal attention.
//!
//! ```text
//! x = input_proj(x) + pe                      Dense E → nh·hd (always), sine positions (scale 0.01)
//! for each layer:
//!     x = LayerNorm(x + sliding_window_attention(x))      no output projection
//!     x = LayerNorm(x + dropout(ffn2(gelu(ffn1(x)))))     nh·hd → ffn_dim → nh·hd
//! out = x[:, seq_len - 1]                      [B, nh·hd]
//! ```

use std::sync::{Arc, OnceLock};

use burn::module::Module;
use burn::prelude::*;

use super::backbone::{check_len, last_timestep};
use super::{Model, ModelInfo, ModelOptions};
use crate::functional::{add_table, positional_table};
use crate::kernel::gelu;
use crate::layers::{
    check_input, dense, last_position, layer_norm, validate_dropout, validate_positive, Dropout,
    LayerNorm, Linear, SlidingWindowAttention, SlidingWindowAttentionConfig,
};
use crate::weights::{Walk, Walker};
use crate::Error;

/// The positional encoding's `scale` (Edifice's default).
pub const PE_SCALE: f64 = 0.01;

/// `sliding_window` in the model registry.
pub const INFO: ModelInfo = ModelInfo {
    name: "sliding_window",
    edifice: "MultiHead.build / build_sliding_window",
    length_key: "seq_len",
    shapes: "[B, seq_len, embed_dim] → [B, num_heads·head_dim]",
    enum_options: &[],
    refused_options: &[],
    example: r#"{"model": "sliding_window", "embed_dim": 32, "num_heads": 2, "head_dim": 8, "num_layers": 2, "ffn_dim": 32}"#,
};

impl ModelOptions for SlidingWindowConfig {
    fn input_dims(&self) -> (usize, usize) {
        (self.seq_len(), self.embed_dim)
    }

    fn with_len(&self, len: usize) -> Self {
        self.clone().with_seq_len(Some(len))
    }

    fn model(&self, device: &Device) -> Result<Model, Error> {
        Ok(Model::SlidingWindow(self.init(device)?))
    }
}

/// Options of `Edifice.Attention.MultiHead.build_sliding_window` (and of
/// `MultiHead.build`, whose `hidden_size` sets `head_dim = hidden_size / num_heads`).
#[derive(Config, Debug)]
pub struct SlidingWindowConfig {
    /// Width of each input frame.
    pub embed_dim: usize,
    /// Keys each query sees, itself included.
    #[config(default = 60)]
    pub window_size: usize,
    /// Attention heads.
    #[config(default = 4)]
    pub num_heads: usize,
    /// Width of one head.
    #[config(default = 64)]
    pub head_dim: usize,
    /// Post-norm layers.
    #[config(default = 2)]
    pub num_layers: usize,
    /// Inner width of the FFN.
    #[config(default = 256)]
    pub ffn_dim: usize,
    /// Dropout after the FFN (training only).
    #[config(default = 0.1)]
    pub dropout: f64,
    /// Sequence length (default `window_size`).
    pub seq_len: Option<usize>,
    /// `MultiHead.build`'s override: `head_dim = hidden_size / num_heads`.
    pub hidden_size: Option<usize>,
}

impl SlidingWindowConfig {
    /// Edifice's `MultiHead.recommended_defaults`: window 60, 4 heads of 64,
    /// 2 layers, dropout 0.1 (the defaults of [`SlidingWindowConfig::new`]).
    pub fn recommended_defaults(embed_dim: usize) -> Self {
        Self::new(embed_dim)
            .with_window_size(60)
            .with_num_heads(4)
            .with_head_dim(64)
            .with_num_layers(2)
            .with_dropout(0.1)
    }

    /// Head width after the `hidden_size` override.
    pub fn effective_head_dim(&self) -> usize {
        match self.hidden_size {
            Some(h) if self.num_heads > 0 => h / self.num_heads,
            _ => self.head_dim,
        }
    }

    /// The sequence length the model runs on.
    pub fn seq_len(&self) -> usize {
        self.seq_len.unwrap_or(self.window_size)
    }

    /// Checks sizes and dropout.
    pub fn validate(&self) -> Result<(), Error> {
        validate_positive(&[
            ("embed_dim", self.embed_dim),
            ("window_size", self.window_size),
            ("num_heads", self.num_heads),
            ("num_layers", self.num_layers),
            ("ffn_dim", self.ffn_dim),
            ("seq_len", self.seq_len()),
        ])?;
        validate_positive(&[(
            "head_dim (hidden_size / num_heads)",
            self.effective_head_dim(),
        )])?;
        validate_dropout(self.dropout)
    }

    /// Width of the output, `num_heads · head_dim`. (Edifice's `output_size`
    /// ignores `hidden_size`; this one does not.)
    pub fn output_size(&self) -> usize {
        self.num_heads * self.effective_head_dim()
    }

    /// Builds the model after [`validate`](Self::validate).
    pub fn init(&self, device: &Device) -> Result<SlidingWindow, Error> {
        self.validate()?;
        let width = self.output_size();
        let attn = SlidingWindowAttentionConfig::new(width)
            .with_window_size(self.window_size)
            .with_num_heads(self.num_heads)
            .with_head_dim(self.effective_head_dim());
        let layers = (0..self.num_layers)
            .map(|_| {
                Ok(PostNormLayer {
                    attn: attn.init(device)?,
                    norm1: layer_norm(width, 1e-5, device),
                    ffn1: dense(width, self.ffn_dim, device),
                    ffn2: dense(self.ffn_dim, width, device),
                    dropout: Dropout::new(self.dropout),
                    norm2: layer_norm(width, 1e-5, device),
                })
            })
            .collect::<Result<_, Error>>()?;
        Ok(SlidingWindow {
            input_proj: dense(self.embed_dim, width, device),
            layers,
            seq_len: self.seq_len(),
            positions: Default::default(),
        })
    }
}

/// One post-norm layer.
#[derive(Module, Debug)]
pub struct PostNormLayer {
    /// Windowed attention (Axon `layer_i_attn_qkv`).
    pub attn: SlidingWindowAttention,
    /// Norm after the attention residual.
    pub norm1: LayerNorm,
    /// FFN in.
    pub ffn1: Linear,
    /// FFN out.
    pub ffn2: Linear,
    dropout: Dropout,
    /// Norm after the FFN residual.
    pub norm2: LayerNorm,
}

/// The sliding-window model.
#[derive(Module, Debug)]
pub struct SlidingWindow {
    /// `E → nh·hd` (Axon `input_proj`).
    pub input_proj: Linear,
    /// The layers.
    pub layers: Vec<PostNormLayer>,
    seq_len: usize,
    /// The positional table of `seq_len` positions, made at first use (an
    /// f64 sine per element: 80 µs at Edifice's sizes, a tenth of a
    /// batch-1 forward).
    #[module(skip)]
    positions: Arc<OnceLock<Vec<f32>>>,
}

impl SlidingWindow {
    /// `[B, seq_len, embed_dim]` → every timestep `[B, seq_len, nh·hd]`.
    pub fn forward_all(&self, x: Tensor<3>) -> Result<Tensor<3>, Error> {
        self.run(x, false)
    }

    /// `[B, seq_len, embed_dim]` → last position `[B, nh·hd]`, equal to the
    /// last row of [`forward_all`](Self::forward_all): the last layer's
    /// attention reads every position, its residuals, norms and FFN run on
    /// the last position alone.
    pub fn forward(&self, x: Tensor<3>) -> Result<Tensor<2>, Error> {
        Ok(last_timestep(self.run(x, true)?))
    }

    fn run(&self, x: Tensor<3>, last_only: bool) -> Result<Tensor<3>, Error> {
        check_input(&x, self.input_proj.weight.dims()[0], "sliding_window")?;
        check_len(&x, self.seq_len, "sliding_window")?;
        let x = self.input_proj.forward(x);
        let [_, t, e] = x.dims();
        let table = self
            .positions
            .get_or_init(|| positional_table(t, e, PE_SCALE));
        let mut x = add_table(x, table);
        let n = self.layers.len();
        for (i, layer) in self.layers.iter().enumerate() {
            let a = if last_only && i + 1 == n {
                let a = layer.attn.forward_last(x.clone())?;
                x = last_position(x);
                a
            } else {
                layer.attn.forward(x.clone())?
            };
            x = layer.norm1.forward(x.add(a));
            let f = layer
                .dropout
                .forward(layer.ffn2.forward(gelu(layer.ffn1.forward(x.clone()))));
            x = layer.norm2.forward(x.add(f));
        }
        Ok(x)
    }
}

impl Walk for SlidingWindow {
    fn walk(&mut self, w: &mut Walker) {
        w.linear("input_proj", "input_proj", &mut self.input_proj);
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let axon = format!("layer_{}", i + 1);
            w.scope(&format!("layers.{i}"), |w| {
                w.linear("attn.qkv", &format!("{axon}_attn_qkv"), &mut layer.attn.qkv);
                w.norm("norm1", &format!("{axon}_norm1"), &mut layer.norm1);
                w.linear("ffn1", &format!("{axon}_ffn1"), &mut layer.ffn1);
                w.linear("ffn2", &format!("{axon}_ffn2"), &mut layer.ffn2);
                w.norm("norm2", &format!("{axon}_norm2"), &mut layer.norm2);
            });
        }
    }
}
