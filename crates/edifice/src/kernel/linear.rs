//! A dense layer as one op (see [`edifice_kernels::linear`]): three strided
//! matmuls, the bias as the forward's starting value.

use burn::backend::flex::FlexTensor;
use burn::backend::TensorMetadata;
use burn::tensor::Tensor;
use edifice_kernels::linear::{self, InputGrad, LinearShape, WeightLayout};

use super::{apply3, like, tensor, values, FusedOp, Grads};
use crate::Error;

/// A dense layer `y = x·W + b` over the last dimension of `x [..., d_in]`,
/// with `weight` `[d_in, d_out]` ([`WeightLayout::InOut`], burn's layout) or
/// `[d_out, d_in]` ([`WeightLayout::OutIn`], PyTorch's, read in place) and
/// `bias [d_out]`. Differentiable in all three.
pub fn linear<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<2>,
    bias: Tensor<1>,
    layout: WeightLayout,
) -> Result<Tensor<D>, Error> {
    let [r, c] = weight.dims();
    let (d_in, d_out) = match layout {
        WeightLayout::InOut => (r, c),
        WeightLayout::OutIn => (c, r),
    };
    let (dims, b) = (x.dims(), bias.dims()[0]);
    if D == 0 || dims[D - 1] != d_in || b != d_out {
        return Err(Error::Shape(format!(
            "linear layer [{d_in} → {d_out}] (bias [{b}]) got input {dims:?}"
        )));
    }
    let shape = LinearShape {
        rows: dims[..D - 1].iter().product(),
        d_in,
        d_out,
        weight: layout,
    };
    Ok(apply3(LinearOp(shape), x, weight, bias))
}

/// `y = x·W + b` of `shape`.
#[derive(Debug)]
struct LinearOp(LinearShape);

impl FusedOp<3> for LinearOp {
    /// `x` and `W`.
    type Saved = (FlexTensor, FlexTensor);
    const NAME: &'static str = "linear";

    fn forward(&self, [x, w, b]: [FlexTensor; 3]) -> Result<(FlexTensor, Self::Saved), Error> {
        let y = linear::forward(self.0, &values(&x)?, &values(&w)?, &values(&b)?)?;
        let mut dims = x.shape();
        let last = dims.num_dims() - 1;
        dims[last] = self.0.d_out;
        Ok((tensor(y, dims), (x, w)))
    }

    fn backward(
        &self,
        (x, w): &Self::Saved,
        d_y: FlexTensor,
        [x_wanted, _, _]: [bool; 3],
    ) -> Grads<3> {
        let input_grad = if x_wanted {
            InputGrad::Wanted
        } else {
            InputGrad::Skipped
        };
        let g = linear::backward(self.0, &values(x)?, &values(w)?, &values(&d_y)?, input_grad)?;
        Ok([
            g.dx.map(|dx| like(x, dx)),
            Some(like(w, g.dw)),
            Some(tensor(g.db, [self.0.d_out])),
        ])
    }
}
