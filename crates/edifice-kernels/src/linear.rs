//! A dense layer, forward and backward, as three matmuls with no copies:
//! transposed operands are read in place through their strides, the bias is
//! the matmul's starting value, and each gradient is written once.
//!
//! ```text
//! y  = x·W + b          x [rows, d_in], W [d_in, d_out], b [d_out]
//! ∂x = ∂y·Wᵀ            ∂W = xᵀ·∂y            ∂b = Σ_rows ∂y
//! ```
//!
//! `W` is stored `[d_in, d_out]` (burn's layout) or `[d_out, d_in]`
//! (PyTorch's `weight`, e.g. an LSTM's `W_ih`); either is read in place.

use crate::matmul::{matmul, product};
use crate::KernelError;

/// Sizes of one dense layer call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearShape {
    /// Rows of `x` (every leading dimension flattened).
    pub rows: usize,
    /// Input width.
    pub d_in: usize,
    /// Output width.
    pub d_out: usize,
    /// `W` stored `[d_out, d_in]` (PyTorch's layout) instead of `[d_in, d_out]`.
    pub weight_out_in: bool,
}

impl LinearShape {
    /// `(rows, d_in, d_out)`.
    fn sizes(&self) -> (usize, usize, usize) {
        (self.rows, self.d_in, self.d_out)
    }

    fn check(&self, what: &str, got: usize, want: usize) -> Result<(), KernelError> {
        if got != want {
            return Err(KernelError::Shape(format!(
                "linear {what} has {got} elements, {self:?} needs {want}"
            )));
        }
        Ok(())
    }
}

/// `y = x·W + b`.
pub fn forward(
    shape: LinearShape,
    x: &[f32],
    w: &[f32],
    b: &[f32],
) -> Result<Vec<f32>, KernelError> {
    let ((rows, d_in, d_out), weight_out_in) = (shape.sizes(), shape.weight_out_in);
    shape.check("x", x.len(), rows * d_in)?;
    shape.check("weight", w.len(), d_in * d_out)?;
    shape.check("bias", b.len(), d_out)?;
    let mut y = Vec::with_capacity(rows * d_out);
    for _ in 0..rows {
        y.extend_from_slice(b);
    }
    matmul(
        &mut y,
        x,
        false,
        w,
        weight_out_in,
        (rows, d_out, d_in),
        true,
        true,
    );
    Ok(y)
}

/// The gradients of one dense layer call.
#[derive(Clone, Debug)]
pub struct Grads {
    /// `∂x [rows, d_in]`, when asked for.
    pub dx: Option<Vec<f32>>,
    /// `∂W`, laid out as `W`.
    pub dw: Vec<f32>,
    /// `∂b [d_out]`.
    pub db: Vec<f32>,
}

/// Gradients for upstream `dy [rows, d_out]`; `∂x` only when `input_grad`
/// (a model's first layer reads data that needs none, and skipping it saves
/// a third of the backward's matmul work there).
pub fn backward(
    shape: LinearShape,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    input_grad: bool,
) -> Result<Grads, KernelError> {
    let ((rows, d_in, d_out), weight_out_in) = (shape.sizes(), shape.weight_out_in);
    shape.check("x", x.len(), rows * d_in)?;
    shape.check("weight", w.len(), d_in * d_out)?;
    shape.check("dy", dy.len(), rows * d_out)?;
    let dx = input_grad.then(|| product(dy, false, w, !weight_out_in, (rows, d_in, d_out), true));
    let dw = if weight_out_in {
        product(dy, true, x, false, (d_out, d_in, rows), true)
    } else {
        product(x, true, dy, false, (d_in, d_out, rows), true)
    };
    let mut db = vec![0.0; d_out];
    for row in dy.chunks_exact(d_out.max(1)) {
        for (db, &g) in db.iter_mut().zip(row) {
            *db += g;
        }
    }
    Ok(Grads { dx, dw, db })
}
