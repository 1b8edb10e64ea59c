//! GELU, exact (erf) form, as one elementwise op each way (see
//! [`edifice_kernels::gelu`]).

use burn::backend::flex::FlexTensor;
use burn::tensor::Tensor;
use edifice_kernels::gelu;

use super::{apply1, elementwise, values, FusedOp, Grads};
use crate::Error;

/// GELU, exact (erf) form, elementwise. Differentiable.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    apply1(GeluOp, x)
}

#[derive(Debug)]
struct GeluOp;

impl FusedOp<1> for GeluOp {
    /// `x`.
    type Saved = FlexTensor;
    const NAME: &'static str = "gelu";

    fn forward(&self, [x]: [FlexTensor; 1]) -> Result<(FlexTensor, FlexTensor), Error> {
        Ok((elementwise(&x, gelu::forward)?, x))
    }

    fn backward(&self, x: &FlexTensor, d_y: FlexTensor, _wanted: [bool; 1]) -> Grads<1> {
        let d_y = values(&d_y)?;
        Ok([Some(elementwise(x, |xs, dx| gelu::backward(xs, &d_y, dx))?)])
    }
}
