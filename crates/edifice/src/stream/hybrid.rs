//! The step of `hybrid` / `hybrid_mlp`: the LSTM state carried from frame
//! to frame, attention over the LSTM outputs.
//!
//! ```text
//! x = input_ln(frame)
//! per LSTM layer: [i f g o] = [x | h_{t-1}]·[W_ih | W_hh]ᵀ + b_ih + b_hh;  x = LN(h_t)
//! a = lstm_to_attn_proj(x);  x = attn_norm(a + output(attn(qkv(a))))
//! per MLP layer: x = relu(dense(x))
//! ```
//!
//! Each LSTM layer keeps `[h | c]` after each of the last `rollback + 1`
//! positions, so a rewind picks the state it continues from.

use edifice_kernels::linear::WeightLayout;
use edifice_kernels::lstm;
use edifice_kernels::step::Dense;

use super::buffers::{dense, Buf};
use super::net::{self, add, caches, Layout, Net, Norm, Reach, SelfAttn};
use super::{StreamOptions, StreamState};
use crate::layers::Lstm;
use crate::models::{Hybrid, HybridConfig};
use crate::Error;

struct LstmLayer {
    /// `[x | h_{t-1}]` → the four gates `[4U]`.
    gates: Dense,
    norm: Norm,
    input: usize,
    hidden: usize,
}

impl LstmLayer {
    fn new(lstm: &Lstm, norm: Norm) -> Result<Self, Error> {
        let [four_u, input] = lstm.weight_ih.dims();
        let hidden = four_u / 4;
        let (w_ih, w_hh) = (net::values(&lstm.weight_ih)?, net::values(&lstm.weight_hh)?);
        // [4U, in + U]: each gate row is its W_ih row, then its W_hh row.
        let stacked: Vec<f32> = (0..four_u)
            .flat_map(|r| {
                let ih = &w_ih[r * input..(r + 1) * input];
                let hh = &w_hh[r * hidden..(r + 1) * hidden];
                ih.iter().chain(hh).copied()
            })
            .collect();
        let bias: Vec<f32> = net::values(&lstm.bias_ih)?
            .iter()
            .zip(net::values(&lstm.bias_hh)?)
            .map(|(a, b)| a + b)
            .collect();
        Ok(Self {
            gates: Dense::new(&stacked, WeightLayout::OutIn, input + hidden, &bias)?,
            norm,
            input,
            hidden,
        })
    }

    /// `[x | h_{t-1}]` into [`Buf::A`], `x` from [`Buf::X`].
    fn gather(&self, s: &mut StreamState, layer: usize) {
        let (t, u, n) = (s.t, self.hidden, self.input);
        let (x, cat) = s.scratch.pair(Buf::X, Buf::A);
        cat[..n].copy_from_slice(&x[..n]);
        match t.checked_sub(1) {
            Some(prev) => cat[n..n + u].copy_from_slice(&s.history[layer].row(prev)[..u]),
            None => cat[n..n + u].fill(0.0),
        }
    }

    /// The cell on the gates in [`Buf::Qkv`]: `[h_t | c_t]` into the
    /// history at `t`, `LN(h_t)` into [`Buf::X`].
    fn update(&self, s: &mut StreamState, layer: usize) -> Result<(), Error> {
        let (t, u) = (s.t, self.hidden);
        let history = &mut s.history[layer];
        match t.checked_sub(1) {
            Some(prev) => history.copy(prev, t),
            None => history.row_mut(t).fill(0.0),
        }
        let (h, c) = history.row_mut(t).split_at_mut(u);
        lstm::cell(&mut s.scratch.get_mut(Buf::Qkv)[..4 * u], c, h)?;
        self.norm.row(h, s.scratch.get_mut(Buf::X))
    }
}

/// The hybrid model, one position at a time.
pub(super) struct HybridNet {
    input_ln: Norm,
    lstm: Vec<LstmLayer>,
    proj: Dense,
    qkv: Dense,
    attn: SelfAttn,
    output: Dense,
    attn_norm: Norm,
    mlp: Vec<Dense>,
    embed: usize,
}

impl HybridNet {
    pub fn new(config: &HybridConfig, model: &Hybrid) -> Result<Self, Error> {
        let width = config.num_heads * config.head_dim;
        let lstm = model
            .lstm
            .iter()
            .zip(&model.lstm_norms)
            .map(|(l, n)| LstmLayer::new(l, Norm::of(n)?))
            .collect::<Result<_, Error>>()?;
        Ok(Self {
            input_ln: Norm::of(&model.input_ln)?,
            lstm,
            proj: net::from_linear(&model.lstm_to_attn_proj)?,
            qkv: net::from_linear(&model.attn.qkv)?,
            attn: SelfAttn {
                heads: config.num_heads,
                width,
                reach: config.attention_window.map_or(Reach::All, Reach::Window),
            },
            output: net::from_linear(&model.attn.output)?,
            attn_norm: Norm::of(&model.attn_norm)?,
            mlp: model
                .mlp
                .iter()
                .map(net::from_linear)
                .collect::<Result<_, Error>>()?,
            embed: config.embed_dim,
        })
    }
}

impl Net for HybridNet {
    fn layout(&self, options: &StreamOptions) -> Layout {
        let (kv, max_len) = caches(std::iter::once(&self.attn), options);
        let widths = self
            .lstm
            .iter()
            .flat_map(|l| [l.input + l.hidden, 4 * l.hidden])
            .chain(self.mlp.iter().map(Dense::d_out))
            .chain([self.embed, 3 * self.attn.width]);
        Layout {
            kv,
            history: self
                .lstm
                .iter()
                .map(|l| (options.rollback + 1, 2 * l.hidden))
                .collect(),
            heads: self.attn.heads,
            span: widths.max().unwrap_or(1),
            max_len,
        }
    }

    fn step(&self, states: &mut [StreamState]) -> Result<Buf, Error> {
        let width = self.attn.width;
        for s in states.iter_mut() {
            self.input_ln.apply(s, Buf::In, Buf::X)?;
        }
        for (l, layer) in self.lstm.iter().enumerate() {
            states.iter_mut().for_each(|s| layer.gather(s, l));
            dense(&layer.gates, states, Buf::A, Buf::Qkv)?;
            for s in states.iter_mut() {
                layer.update(s, l)?;
            }
        }
        dense(&self.proj, states, Buf::X, Buf::A)?;
        dense(&self.qkv, states, Buf::A, Buf::Qkv)?;
        for s in states.iter_mut() {
            self.attn.step(s, 0, Buf::Qkv, Buf::G)?;
        }
        dense(&self.output, states, Buf::G, Buf::F)?;
        for s in states.iter_mut() {
            add(s, Buf::F, Buf::A, width);
            self.attn_norm.apply(s, Buf::F, Buf::X)?;
        }
        for layer in &self.mlp {
            dense(layer, states, Buf::X, Buf::A)?;
            for s in states.iter_mut() {
                let (a, x) = s.scratch.pair(Buf::A, Buf::X);
                let n = layer.d_out();
                x[..n]
                    .iter_mut()
                    .zip(&a[..n])
                    .for_each(|(x, a)| *x = a.max(0.0));
            }
        }
        Ok(Buf::X)
    }
}
