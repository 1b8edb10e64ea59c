//! `sliding_window`'s step: post-norm layers over windowed attention.
//!
//! ```text
//! x = input_proj(frame) + pe(t)
//! per layer: x = LN1(x + attn(qkv(x)));  x = LN2(x + ffn2(gelu(ffn1(x))))
//! ```

use edifice_kernels::step::Dense;

use super::buffers::{dense, Buf};
use super::net::{add, caches, ffn, Layout, Net, Norm, Reach, SelfAttn};
use super::{StreamOptions, StreamState};
use crate::functional::positional_encoding;
use crate::models::sliding_window::PE_SCALE;
use crate::models::{SlidingWindow, SlidingWindowConfig};
use crate::Error;

struct Layer {
    qkv: Dense,
    attn: SelfAttn,
    norm1: Norm,
    ffn1: Dense,
    ffn2: Dense,
    norm2: Norm,
}

/// The sliding-window model, one position at a time.
pub(super) struct PostNorm {
    input_proj: Dense,
    layers: Vec<Layer>,
    width: usize,
}

impl PostNorm {
    pub fn new(config: &SlidingWindowConfig, model: &SlidingWindow) -> Result<Self, Error> {
        let width = config.output_size();
        let layers = model
            .layers
            .iter()
            .map(|l| {
                Ok(Layer {
                    qkv: super::net::from_linear(&l.attn.qkv)?,
                    attn: SelfAttn {
                        heads: config.num_heads,
                        width,
                        reach: Reach::Window(config.window_size),
                    },
                    norm1: Norm::of(&l.norm1)?,
                    ffn1: super::net::from_linear(&l.ffn1)?,
                    ffn2: super::net::from_linear(&l.ffn2)?,
                    norm2: Norm::of(&l.norm2)?,
                })
            })
            .collect::<Result<_, Error>>()?;
        Ok(Self {
            input_proj: super::net::from_linear(&model.input_proj)?,
            layers,
            width,
        })
    }
}

impl Net for PostNorm {
    fn layout(&self, options: &StreamOptions) -> Layout {
        let (kv, max_len) = caches(self.layers.iter().map(|l| &l.attn), options);
        let ffn = self.layers.first().map_or(0, |l| l.ffn1.d_out());
        Layout {
            kv,
            history: Vec::new(),
            heads: self.layers.first().map_or(1, |l| l.attn.heads),
            span: self.input_proj.d_in().max(3 * self.width).max(ffn),
            max_len,
        }
    }

    fn step(&self, states: &mut [StreamState]) -> Result<Buf, Error> {
        let w = self.width;
        dense(&self.input_proj, states, Buf::In, Buf::X)?;
        for s in states.iter_mut() {
            let t = s.t;
            let x = &mut s.scratch.get_mut(Buf::X)[..w];
            for (d, x) in x.iter_mut().enumerate() {
                *x += positional_encoding(t, d, PE_SCALE);
            }
        }
        for (i, layer) in self.layers.iter().enumerate() {
            dense(&layer.qkv, states, Buf::X, Buf::Qkv)?;
            for s in states.iter_mut() {
                layer.attn.step(s, i, Buf::Qkv, Buf::A)?;
                add(s, Buf::A, Buf::X, w);
                layer.norm1.apply(s, Buf::A, Buf::X)?;
            }
            ffn(&layer.ffn1, &layer.ffn2, states, Buf::X, Buf::A)?;
            for s in states.iter_mut() {
                add(s, Buf::A, Buf::X, w);
                layer.norm2.apply(s, Buf::A, Buf::X)?;
            }
        }
        Ok(Buf::X)
    }
}
