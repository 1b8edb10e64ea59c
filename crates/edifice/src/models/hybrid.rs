//! Edifice's `MultiHead.build_hybrid` and `build_hybrid_mlp`: LSTM layers,
//! then one causal multi-head attention, post-norm, then an optional MLP head.
//!
//! ```text
//! x = LayerNorm_1e-6(x)                                   "input_ln"
//! for each LSTM layer: x = LayerNorm_1e-6(LSTM(x)); dropout between layers
//! x = Dense(U → nh·hd)(x)                                 "lstm_to_attn_proj"
//! x = LayerNorm(x + self_attention(x, causal))            "hybrid_attn", "attn_norm"
//! y = x[:, seq_len - 1]                                   [B, nh·hd]
//! for each size in mlp_sizes: y = dropout(relu(Dense(y)))  (hybrid_mlp)
//! ```

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::activation::relu;

use super::backbone::{check_len, last_timestep};
use super::{Model, ModelInfo, ModelOptions};
use crate::layers::{
    check_input, dense, last_position, layer_norm, validate_dropout, validate_positive, Dropout,
    LayerNorm, Linear, Lstm, SelfAttention, SelfAttentionConfig,
};
use crate::weights::{Walk, Walker};
use crate::Error;

/// `hybrid` in the model registry.
pub const INFO: ModelInfo = ModelInfo {
    name: "hybrid",
    edifice: "MultiHead.build_hybrid",
    length_key: "seq_len",
    shapes: "[B, seq_len, embed_dim] → [B, num_heads·head_dim]",
    enum_options: &[],
    refused_options: &[("mlp_sizes", "hybrid_mlp")],
    example: r#"{"model": "hybrid", "embed_dim": 32, "lstm_hidden": 16, "lstm_layers": 2, "num_heads": 2, "head_dim": 8}"#,
};

/// `hybrid_mlp` in the model registry.
pub const INFO_MLP: ModelInfo = ModelInfo {
    name: "hybrid_mlp",
    edifice: "MultiHead.build_hybrid_mlp",
    length_key: "seq_len",
    shapes: "[B, seq_len, embed_dim] → [B, last of mlp_sizes]",
    enum_options: &[],
    refused_options: &[],
    example: r#"{"model": "hybrid_mlp", "embed_dim": 32, "lstm_hidden": 16, "num_heads": 2, "head_dim": 8, "mlp_sizes": [16, 8]}"#,
};

impl ModelOptions for HybridConfig {
    fn input_dims(&self) -> (usize, usize) {
        (self.seq_len(), self.embed_dim)
    }

    fn with_len(&self, len: usize) -> Self {
        self.clone().with_seq_len(Some(len))
    }

    fn model(&self, device: &Device) -> Result<Model, Error> {
        Ok(Model::Hybrid(self.init(device)?))
    }
}

/// Options of `MultiHead.build_hybrid` and `build_hybrid_mlp` (Edifice's
/// names and defaults; `mlp_sizes` is empty for `hybrid`, `[256, 256]` by
/// default for `hybrid_mlp`).
#[derive(Config, Debug)]
pub struct HybridConfig {
    /// Width of each input frame.
    pub embed_dim: usize,
    /// LSTM width `U`.
    #[config(default = 256)]
    pub lstm_hidden: usize,
    /// Stacked LSTM layers.
    #[config(default = 1)]
    pub lstm_layers: usize,
    /// Attention heads.
    #[config(default = 4)]
    pub num_heads: usize,
    /// Width of one head.
    #[config(default = 64)]
    pub head_dim: usize,
    /// Dropout between LSTM layers, after attention and in the MLP head.
    #[config(default = 0.1)]
    pub dropout: f64,
    /// Default sequence length.
    #[config(default = 60)]
    pub window_size: usize,
    /// Sequence length (default `window_size`).
    pub seq_len: Option<usize>,
    /// Widths of the Dense-ReLU-Dropout head.
    #[config(default = "Vec::new()")]
    pub mlp_sizes: Vec<usize>,
    /// Keys each attention query sees, itself included (default: every
    /// earlier position, as Edifice). Not an Edifice option: it bounds a
    /// stream's state ([`crate::stream`]).
    pub attention_window: Option<usize>,
    /// Edifice's LSTM initial state; only `"zeros"` is supported (Edifice's
    /// default draws a random state, which its own docs call a bug).
    pub recurrent_initializer: Option<String>,
}

impl HybridConfig {
    /// `build_hybrid_mlp`'s defaults: `mlp_sizes = [256, 256]`.
    pub fn new_mlp(embed_dim: usize) -> Self {
        Self::new(embed_dim).with_mlp_sizes(vec![256, 256])
    }

    /// The sequence length the model runs on.
    pub fn seq_len(&self) -> usize {
        self.seq_len.unwrap_or(self.window_size)
    }

    /// Checks sizes and dropout.
    pub fn validate(&self) -> Result<(), Error> {
        validate_positive(&[
            ("embed_dim", self.embed_dim),
            ("lstm_hidden", self.lstm_hidden),
            ("lstm_layers", self.lstm_layers),
            ("num_heads", self.num_heads),
            ("head_dim", self.head_dim),
            ("seq_len", self.seq_len()),
            ("attention_window", self.attention_window.unwrap_or(1)),
        ])?;
        if let Some(init) = self.recurrent_initializer.as_deref() {
            if init != "zeros" {
                return Err(Error::Config(format!(
                    "recurrent_initializer `{init}` is not supported: the LSTM initial state here is always zeros"
                )));
            }
        }
        for size in &self.mlp_sizes {
            validate_positive(&[("each of mlp_sizes", *size)])?;
        }
        validate_dropout(self.dropout)
    }

    /// Width of the output: the last MLP size, else `num_heads · head_dim`.
    /// (Edifice's `output_size` ignores `mlp_sizes`; this one does not.)
    pub fn output_size(&self) -> usize {
        self.mlp_sizes
            .last()
            .copied()
            .unwrap_or(self.num_heads * self.head_dim)
    }

    /// Builds the model after [`validate`](Self::validate).
    pub fn init(&self, device: &Device) -> Result<Hybrid, Error> {
        self.validate()?;
        let u = self.lstm_hidden;
        let width = self.num_heads * self.head_dim;
        let lstm = (0..self.lstm_layers)
            .map(|l| Lstm::new(if l == 0 { self.embed_dim } else { u }, u, device))
            .collect();
        let lstm_norms = (0..self.lstm_layers)
            .map(|_| layer_norm(u, 1e-6, device))
            .collect();
        let attn = SelfAttentionConfig::multi_head(width, self.num_heads, self.head_dim)
            .with_dropout(self.dropout)
            .with_causal(true)
            .with_window(self.attention_window)
            .init(device)?;
        let mut prev = width;
        let mlp = self
            .mlp_sizes
            .iter()
            .map(|&size| dense(std::mem::replace(&mut prev, size), size, device))
            .collect();
        Ok(Hybrid {
            input_ln: layer_norm(self.embed_dim, 1e-6, device),
            lstm,
            lstm_norms,
            lstm_to_attn_proj: dense(u, width, device),
            attn,
            attn_norm: layer_norm(width, 1e-5, device),
            mlp,
            dropout: Dropout::new(self.dropout),
            seq_len: self.seq_len(),
        })
    }
}

/// The hybrid LSTM + attention model (with an optional MLP head).
#[derive(Module, Debug)]
pub struct Hybrid {
    /// Norm of the raw input (Axon `input_ln`).
    pub input_ln: LayerNorm,
    /// LSTM layers (Axon `lstm_{l}`).
    pub lstm: Vec<Lstm>,
    /// Norm after each LSTM layer (Axon `lstm_{l}_ln`).
    pub lstm_norms: Vec<LayerNorm>,
    /// `U → nh·hd` (Axon `lstm_to_attn_proj`).
    pub lstm_to_attn_proj: Linear,
    /// Causal multi-head attention (Axon `hybrid_attn_qkv`, `hybrid_attn_output`).
    pub attn: SelfAttention,
    /// Norm after the attention residual (Axon `attn_norm`).
    pub attn_norm: LayerNorm,
    /// MLP head (Axon `hybrid_mlp_{i}`).
    pub mlp: Vec<Linear>,
    dropout: Dropout,
    seq_len: usize,
}

impl Hybrid {
    /// Every timestep, or (`last_only`) the last `[B, 1, ·]`: the attention
    /// reads every position either way; its output projection, residual
    /// and norm then run on the last one alone.
    fn encode(&self, x: Tensor<3>, last_only: bool) -> Result<Tensor<3>, Error> {
        check_input(&x, self.input_ln.gamma.dims()[0], "hybrid")?;
        check_len(&x, self.seq_len, "hybrid")?;
        let mut x = self.input_ln.forward(x);
        for (l, (lstm, norm)) in self.lstm.iter().zip(&self.lstm_norms).enumerate() {
            x = norm.forward(lstm.forward(x)?);
            if l + 1 < self.lstm.len() {
                x = self.dropout.forward(x);
            }
        }
        let x = self.lstm_to_attn_proj.forward(x);
        let (x, a) = if last_only {
            let a = self.attn.forward_last(x.clone())?;
            (last_position(x), a)
        } else {
            let a = self.attn.forward(x.clone())?;
            (x, a)
        };
        Ok(self.attn_norm.forward(x.add(a)))
    }

    fn head<const D: usize>(&self, mut y: Tensor<D>) -> Tensor<D> {
        for layer in &self.mlp {
            y = self.dropout.forward(relu(layer.forward(y)));
        }
        y
    }

    /// `[B, seq_len, embed_dim]` → every timestep `[B, seq_len, output_size]`.
    pub fn forward_all(&self, x: Tensor<3>) -> Result<Tensor<3>, Error> {
        Ok(self.head(self.encode(x, false)?))
    }

    /// `[B, seq_len, embed_dim]` → last timestep `[B, output_size]`.
    pub fn forward(&self, x: Tensor<3>) -> Result<Tensor<2>, Error> {
        Ok(self.head(last_timestep(self.encode(x, true)?)))
    }
}

impl Walk for Hybrid {
    fn walk(&mut self, w: &mut Walker) {
        w.norm("input_ln", "input_ln", &mut self.input_ln);
        w.scope("lstm", |w| {
            for (l, lstm) in self.lstm.iter_mut().enumerate() {
                w.lstm(l, &format!("lstm_{}", l + 1), lstm);
            }
        });
        for (l, norm) in self.lstm_norms.iter_mut().enumerate() {
            w.norm(
                &format!("lstm_norms.{l}"),
                &format!("lstm_{}_ln", l + 1),
                norm,
            );
        }
        w.linear(
            "lstm_to_attn_proj",
            "lstm_to_attn_proj",
            &mut self.lstm_to_attn_proj,
        );
        w.linear("attn.qkv", "hybrid_attn_qkv", &mut self.attn.qkv);
        w.linear("attn.output", "hybrid_attn_output", &mut self.attn.output);
        w.norm("attn_norm", "attn_norm", &mut self.attn_norm);
        for (i, layer) in self.mlp.iter_mut().enumerate() {
            w.linear(&format!("mlp.{i}"), &format!("hybrid_mlp_{i}"), layer);
        }
    }
}
