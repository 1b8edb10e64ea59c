//! One LSTM layer with PyTorch's parameter layout.

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::prelude::*;
use burn::tensor::activation::sigmoid;

use crate::kernel::{self, lstm_recurrence, WeightLayout};
use crate::Error;

/// One LSTM layer with PyTorch's parameter layout (gates `i, f, g, o`
/// stacked along the first axis) and a zero initial state.
///
/// ```text
/// [i f g o] = x_t·W_ihᵀ + b_ih + h_{t-1}·W_hhᵀ + b_hh
/// c_t = σ(f)·c_{t-1} + σ(i)·tanh(g);   h_t = σ(o)·tanh(c_t)
/// ```
#[derive(Module, Debug)]
pub struct Lstm {
    /// `[4U, in]`.
    pub weight_ih: Param<Tensor<2>>,
    /// `[4U, U]`.
    pub weight_hh: Param<Tensor<2>>,
    /// `[4U]`.
    pub bias_ih: Param<Tensor<1>>,
    /// `[4U]`.
    pub bias_hh: Param<Tensor<1>>,
}

impl Lstm {
    /// A new layer; each gate's kernels are glorot-uniform as in Axon, biases zero.
    pub fn new(input: usize, hidden: usize, device: &Device) -> Self {
        // One draw per stacked matrix with each gate's fans: the same
        // distribution as Axon's four separate [fan_in, U] kernels.
        let stacked = |fan_in: usize| {
            Initializer::XavierUniform { gain: 1.0 }.init_with(
                [4 * hidden, fan_in],
                Some(fan_in),
                Some(hidden),
                device,
            )
        };
        Self {
            weight_ih: stacked(input),
            weight_hh: stacked(hidden),
            bias_ih: Initializer::Zeros.init([4 * hidden], device),
            bias_hh: Initializer::Zeros.init([4 * hidden], device),
        }
    }

    /// Hidden width `U`.
    pub fn hidden_size(&self) -> usize {
        self.weight_hh.dims()[1]
    }

    /// `x [B, T, in]` → every hidden state `[B, T, U]`, through the fused
    /// recurrence ([`lstm_recurrence`]).
    pub fn forward(&self, x: Tensor<3>) -> Result<Tensor<3>, Error> {
        lstm_recurrence(self.input_gates(x), self.weight_hh.val())
    }

    /// `x·W_ihᵀ + b_ih + b_hh` for every step: `[B, T, 4U]`, one matmul.
    fn input_gates(&self, x: Tensor<3>) -> Tensor<3> {
        let bias = self.bias_ih.val().add(self.bias_hh.val());
        kernel::linear(x, self.weight_ih.val(), bias, WeightLayout::OutIn)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The same recurrence composed step by step from burn's own ops: the
    /// reference the fused kernel is tested against (forward and gradients).
    pub fn forward_reference(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let u = self.hidden_size();
        let bias = self.bias_ih.val().add(self.bias_hh.val());
        let projected = x
            .matmul(self.weight_ih.val().transpose().unsqueeze())
            .add(bias.reshape([1, 1, 4 * u]));
        let w_hh = self.weight_hh.val().transpose();
        let device = projected.device();
        let mut h = Tensor::<2>::zeros([b, u], &device);
        let mut c = Tensor::<2>::zeros([b, u], &device);
        let mut outputs = Vec::with_capacity(t);
        for step in 0..t {
            let gates = projected
                .clone()
                .narrow(1, step, 1)
                .reshape([b, 4 * u])
                .add(h.matmul(w_hh.clone()));
            let gate = |i: usize| gates.clone().narrow(1, i * u, u);
            let (i, f, g, o) = (
                sigmoid(gate(0)),
                sigmoid(gate(1)),
                gate(2).tanh(),
                sigmoid(gate(3)),
            );
            c = f.mul(c).add(i.mul(g));
            h = o.mul(c.clone().tanh());
            outputs.push(h.clone().unsqueeze_dim(1));
        }
        Tensor::cat(outputs, 1)
    }
}
