//! Edifice's `ModelBuilder.build_sequence_model` with the pre-norm
//! `TransformerBlock` (shared by DualChunk and RingAttention):
//!
//! ```text
//! x = input_projection(x)            only when embed_dim != hidden_size
//! for each block:
//!     x = x + dropout(attn(LayerNorm(x)))
//!     x = x + dropout(FFN(LayerNorm(x)))          FFN: H → 4H → GELU → H
//!     x = inter_block_dropout(x)                  (not after the last block)
//! x = final_norm(x)                               LayerNorm, eps 1e-5
//! ```

use burn::module::Module;
use burn::prelude::*;

use crate::layers::{
    check_input, dense, last_position, layer_norm, Dropout, Ffn, LayerNorm, Linear,
};
use crate::weights::{Walk, Walker};
use crate::Error;

/// The attention sublayer of a pre-norm block.
pub trait BlockAttention: Module {
    /// `[B, T, H]` → `[B, T, H]`.
    fn forward(&self, x: Tensor<3>) -> Result<Tensor<3>, Error>;
    /// `[B, T, H]` of which the first `lengths[b]` positions are real →
    /// `[B, T, H]`, the real positions' outputs independent of the padding.
    fn forward_padded(&self, x: Tensor<3>, lengths: &[usize]) -> Result<Tensor<3>, Error>;
    /// `[B, T, H]` → the last position's output `[B, 1, H]` (its query
    /// still reads every position it may).
    fn forward_last(&self, x: Tensor<3>) -> Result<Tensor<3>, Error>;
    /// Walks the sublayer's parameters; `axon` is the block's Axon name.
    fn walk(&mut self, w: &mut Walker, axon: &str);
}

/// One pre-norm transformer block.
#[derive(Module, Debug)]
pub struct Block<A: BlockAttention> {
    /// LayerNorm before attention (Axon `{block}_attn_norm`).
    pub attn_norm: LayerNorm,
    /// The attention sublayer.
    pub attn: A,
    /// LayerNorm before the FFN (Axon `{block}_ffn_norm`).
    pub ffn_norm: LayerNorm,
    /// The FFN (Axon `{block}_ffn_up`, `{block}_ffn_down`).
    pub ffn: Ffn,
    dropout: Dropout,
}

/// Input projection, blocks and final norm.
#[derive(Module, Debug)]
pub struct Backbone<A: BlockAttention> {
    /// `E → H`, present only when they differ (Axon `input_projection`).
    pub input_projection: Option<Linear>,
    /// The blocks.
    pub blocks: Vec<Block<A>>,
    /// Final LayerNorm (Axon `final_norm`).
    pub final_norm: LayerNorm,
    inter_block_dropout: Dropout,
    embed_dim: usize,
    axon_block: String,
}

impl<A: BlockAttention> Backbone<A> {
    /// Builds the backbone; `attn(i)` makes the attention of block `i`.
    /// `axon_block` is the Axon block name prefix (`dual_chunk_block`, `ring`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        embed_dim: usize,
        hidden: usize,
        layers: usize,
        dropout: f64,
        inter_block_dropout: f64,
        axon_block: &str,
        device: &Device,
        mut attn: impl FnMut(usize) -> Result<A, Error>,
    ) -> Result<Self, Error> {
        let blocks = (0..layers)
            .map(|i| {
                Ok(Block {
                    attn_norm: layer_norm(hidden, 1e-5, device),
                    attn: attn(i)?,
                    ffn_norm: layer_norm(hidden, 1e-5, device),
                    ffn: Ffn::new(hidden, 4 * hidden, device),
                    dropout: Dropout::new(dropout),
                })
            })
            .collect::<Result<_, Error>>()?;
        Ok(Self {
            input_projection: (embed_dim != hidden).then(|| dense(embed_dim, hidden, device)),
            blocks,
            final_norm: layer_norm(hidden, 1e-5, device),
            inter_block_dropout: Dropout::new(inter_block_dropout),
            embed_dim,
            axon_block: axon_block.into(),
        })
    }

    /// `[B, T, E]` → `[B, T, H]` (every timestep, after the final norm).
    pub fn forward(&self, x: Tensor<3>) -> Result<Tensor<3>, Error> {
        self.run(x, Pass::All)
    }

    /// `[B, T, E]` of which the first `lengths[b]` frames are real →
    /// `[B, T, H]`; real positions' outputs do not depend on the padding.
    pub fn forward_padded(&self, x: Tensor<3>, lengths: &[usize]) -> Result<Tensor<3>, Error> {
        self.run(x, Pass::Padded(lengths))
    }

    /// `[B, T, E]` → the last timestep `[B, 1, H]`, equal to the last row of
    /// [`forward`](Self::forward). Only the last block's attention needs
    /// every position (as keys and values); its residual stream, FFN and
    /// the final norm run on the last position alone.
    pub fn forward_last(&self, x: Tensor<3>) -> Result<Tensor<3>, Error> {
        self.run(x, Pass::Last)
    }

    fn run(&self, x: Tensor<3>, pass: Pass) -> Result<Tensor<3>, Error> {
        check_input(&x, self.embed_dim, "the model")?;
        let mut x = match &self.input_projection {
            Some(p) => p.forward(x),
            None => x,
        };
        let n = self.blocks.len();
        for (i, block) in self.blocks.iter().enumerate() {
            let h = block.attn_norm.forward(x.clone());
            let a = match pass {
                Pass::Last if i + 1 == n => {
                    x = last_position(x);
                    block.attn.forward_last(h)?
                }
                Pass::Padded(lengths) => block.attn.forward_padded(h, lengths)?,
                _ => block.attn.forward(h)?,
            };
            x = x.add(block.dropout.forward(a));
            let f = block.ffn.forward(block.ffn_norm.forward(x.clone()));
            x = x.add(block.dropout.forward(f));
            if i + 1 < n {
                x = self.inter_block_dropout.forward(x);
            }
        }
        if matches!(pass, Pass::Last) && n == 0 {
            x = last_position(x);
        }
        Ok(self.final_norm.forward(x))
    }
}

/// Which outputs a backbone pass computes.
#[derive(Clone, Copy)]
enum Pass<'a> {
    /// Every position.
    All,
    /// Every position, of which the first `lengths[b]` are real.
    Padded(&'a [usize]),
    /// The last position only.
    Last,
}

impl<A: BlockAttention> Walk for Backbone<A> {
    fn walk(&mut self, w: &mut Walker) {
        if let Some(p) = self.input_projection.as_mut() {
            w.linear("input_projection", "input_projection", p);
        }
        let axon_block = self.axon_block.clone();
        for (i, block) in self.blocks.iter_mut().enumerate() {
            let axon = format!("{axon_block}_{}", i + 1);
            w.scope(&format!("blocks.{i}"), |w| {
                w.norm(
                    "attn_norm",
                    &format!("{axon}_attn_norm"),
                    &mut block.attn_norm,
                );
                w.scope("attn", |w| block.attn.walk(w, &axon));
                w.norm("ffn_norm", &format!("{axon}_ffn_norm"), &mut block.ffn_norm);
                w.linear("ffn.up", &format!("{axon}_ffn_up"), &mut block.ffn.up);
                w.linear("ffn.down", &format!("{axon}_ffn_down"), &mut block.ffn.down);
            });
        }
        w.norm("final_norm", "final_norm", &mut self.final_norm);
    }
}

/// A backbone run on sequences of one length: DualChunk, RingAttention and
/// shifted sparse attention are this with their own attention.
#[derive(Module, Debug)]
pub struct SequenceModel<A: BlockAttention> {
    /// Projection, blocks, final norm.
    pub backbone: Backbone<A>,
    seq_len: usize,
    name: String,
}

impl<A: BlockAttention> SequenceModel<A> {
    /// Wraps `backbone` for inputs of `seq_len` frames; `name` is the
    /// model's config name, for error messages.
    pub fn new(backbone: Backbone<A>, seq_len: usize, name: &str) -> Self {
        Self {
            backbone,
            seq_len,
            name: name.into(),
        }
    }

    /// `[B, seq_len, embed_dim]` → every timestep `[B, seq_len, hidden_size]`
    /// (Edifice's `output_mode: :all`).
    pub fn forward_all(&self, x: Tensor<3>) -> Result<Tensor<3>, Error> {
        check_len(&x, self.seq_len, &self.name)?;
        self.backbone.forward(x)
    }

    /// `[B, seq_len, embed_dim]` of which the first `lengths[b]` frames are
    /// real → every timestep `[B, seq_len, hidden_size]`; real positions'
    /// outputs do not depend on the padding.
    pub fn forward_padded(&self, x: Tensor<3>, lengths: &[usize]) -> Result<Tensor<3>, Error> {
        check_len(&x, self.seq_len, &self.name)?;
        self.backbone.forward_padded(x, lengths)
    }

    /// `[B, seq_len, embed_dim]` → last timestep `[B, hidden_size]`.
    pub fn forward(&self, x: Tensor<3>) -> Result<Tensor<2>, Error> {
        check_len(&x, self.seq_len, &self.name)?;
        Ok(last_timestep(self.backbone.forward_last(x)?))
    }
}

impl<A: BlockAttention> Walk for SequenceModel<A> {
    fn walk(&mut self, w: &mut Walker) {
        self.backbone.walk(w);
    }
}

/// `[B, T, H]` → `[B, H]`: the last timestep.
pub fn last_timestep(x: Tensor<3>) -> Tensor<2> {
    let [b, t, h] = x.dims();
    x.narrow(1, t - 1, 1).reshape([b, h])
}

/// Checks the runtime sequence length against the configured one.
pub fn check_len(x: &Tensor<3>, seq_len: usize, what: &str) -> Result<(), Error> {
    let t = x.dims()[1];
    if t != seq_len {
        return Err(Error::Shape(format!(
            "{what} was configured for seq_len {seq_len} but the input has {t} timesteps (input {:?})",
            x.dims()
        )));
    }
    Ok(())
}
