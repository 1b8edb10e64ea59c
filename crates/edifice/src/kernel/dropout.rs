//! Inverted dropout as one op with a counter-based mask (see
//! [`edifice_kernels::dropout`]): the backward regenerates the mask from the
//! seed, so nothing is saved.

use burn::backend::flex::FlexTensor;
use burn::tensor::Tensor;
use edifice_kernels::dropout;

use super::{apply1, elementwise, FusedOp, Grads};
use crate::Error;

/// Inverted dropout with the counter-based mask of `seed`: each element kept
/// with probability `keep` and scaled by `1/keep`. Differentiable.
pub fn dropout<const D: usize>(x: Tensor<D>, keep: f32, seed: u64) -> Result<Tensor<D>, Error> {
    dropout::check_keep(keep)?;
    Ok(apply1(DropoutOp { keep, seed }, x))
}

/// The mask of `seed` keeping each element with probability `keep`.
#[derive(Debug)]
struct DropoutOp {
    keep: f32,
    seed: u64,
}

impl DropoutOp {
    /// `x` through the mask (forward and backward alike).
    fn masked(&self, x: &FlexTensor) -> Result<FlexTensor, Error> {
        elementwise(x, |xs, y| dropout::apply(self.seed, self.keep, xs, y))
    }
}

impl FusedOp<1> for DropoutOp {
    type Saved = ();
    const NAME: &'static str = "dropout";

    fn forward(&self, [x]: [FlexTensor; 1]) -> Result<(FlexTensor, ()), Error> {
        Ok((self.masked(&x)?, ()))
    }

    fn backward(&self, _saved: &(), d_y: FlexTensor, _wanted: [bool; 1]) -> Grads<1> {
        Ok([Some(self.masked(&d_y)?)])
    }
}
