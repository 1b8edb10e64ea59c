//! The LSTM recurrence over time as one op (see [`edifice_kernels::lstm`]).

use burn::backend::flex::FlexTensor;
use burn::tensor::Tensor;
use edifice_kernels::lstm::{self, LstmShape, LstmTrace};

use super::{apply2, tensor, values, FusedOp, Grads};
use crate::Error;

/// The LSTM recurrence over time: `xp [B, T, 4U]` (the input half of the
/// gates, biases included) and `w_hh [4U, U]` → every hidden state
/// `h [B, T, U]`, zero initial state, gates in PyTorch's order `i, f, g, o`.
/// Differentiable in both inputs.
pub fn lstm_recurrence(xp: Tensor<3>, w_hh: Tensor<2>) -> Result<Tensor<3>, Error> {
    let ([batch, len, gates], [rows, hidden]) = (xp.dims(), w_hh.dims());
    if rows != 4 * hidden || gates != 4 * hidden {
        return Err(Error::Shape(format!(
            "lstm needs xp [B, T, 4U] and w_hh [4U, U]; got xp {:?}, w_hh {:?}",
            xp.dims(),
            w_hh.dims()
        )));
    }
    let shape = LstmShape { batch, len, hidden };
    Ok(apply2(LstmOp(shape), xp, w_hh))
}

/// The recurrence of `shape`.
#[derive(Debug)]
struct LstmOp(LstmShape);

impl FusedOp<2> for LstmOp {
    /// `W_hh` and the trace (gates, cell and hidden states).
    type Saved = (FlexTensor, LstmTrace);
    const NAME: &'static str = "lstm";

    fn forward(&self, [xp, w_hh]: [FlexTensor; 2]) -> Result<(FlexTensor, Self::Saved), Error> {
        let LstmShape { batch, len, hidden } = self.0;
        let trace = lstm::forward(self.0, &values(&xp)?, &values(&w_hh)?)?;
        let h = tensor(trace.h.clone(), [batch, len, hidden]);
        Ok((h, (w_hh, trace)))
    }

    fn backward(
        &self,
        (w_hh, trace): &Self::Saved,
        d_h: FlexTensor,
        _wanted: [bool; 2],
    ) -> Grads<2> {
        let LstmShape { batch, len, hidden } = self.0;
        let (d_xp, d_w) = lstm::backward(self.0, &values(w_hh)?, trace, &values(&d_h)?)?;
        Ok([
            Some(tensor(d_xp, [batch, len, 4 * hidden])),
            Some(tensor(d_w, [4 * hidden, hidden])),
        ])
    }
}
