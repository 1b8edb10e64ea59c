//! Layer normalisation as one op, one pass each way (see
//! [`edifice_kernels::layer_norm`]).

use burn::backend::flex::FlexTensor;
use burn::tensor::Tensor;
use edifice_kernels::layer_norm::{self, Stats};

use super::{apply3, like, values, FusedOp, Grads};
use crate::Error;

/// Layer normalisation over the last dimension of `x [..., n]` with
/// `gamma, beta [n]`. Differentiable in all three.
pub fn layer_norm<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
) -> Result<Tensor<D>, Error> {
    let (n, g, b) = (x.dims()[D - 1], gamma.dims()[0], beta.dims()[0]);
    if g != n || b != n {
        return Err(Error::Shape(format!(
            "layer norm over width {n} (input {:?}) got gamma [{g}] and beta [{b}]",
            x.dims()
        )));
    }
    Ok(apply3(
        LayerNormOp {
            epsilon: epsilon as f32,
        },
        x,
        gamma,
        beta,
    ))
}

/// Layer norm with `epsilon` under the square root.
#[derive(Debug)]
struct LayerNormOp {
    epsilon: f32,
}

impl FusedOp<3> for LayerNormOp {
    /// `x`, `γ` and the row statistics.
    type Saved = (FlexTensor, FlexTensor, Stats);
    const NAME: &'static str = "layer norm";

    fn forward(
        &self,
        [x, gamma, beta]: [FlexTensor; 3],
    ) -> Result<(FlexTensor, Self::Saved), Error> {
        let xs = values(&x)?;
        let mut y = vec![0.0; xs.len()];
        let stats =
            layer_norm::forward(&xs, &values(&gamma)?, &values(&beta)?, self.epsilon, &mut y)?;
        drop(xs);
        Ok((like(&x, y), (x, gamma, stats)))
    }

    fn backward(
        &self,
        (x, gamma, stats): &Self::Saved,
        d_y: FlexTensor,
        _wanted: [bool; 3],
    ) -> Grads<3> {
        let g = layer_norm::backward(&values(x)?, &values(gamma)?, stats, &values(&d_y)?)?;
        Ok([
            Some(like(x, g.dx)),
            Some(like(gamma, g.dgamma)),
            Some(like(gamma, g.dbeta)),
        ])
    }
}
