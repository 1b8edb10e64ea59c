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

use crate::matmul::{matmul, product, Dims, Mat, Threads, Write};
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
    /// How `W` is stored.
    pub weight: WeightLayout,
}

/// How a dense layer's weight is stored, row-major.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightLayout {
    /// `[d_in, d_out]` (burn's layout): `y = x·W`.
    #[default]
    InOut,
    /// `[d_out, d_in]` (PyTorch's `weight`): `y = x·Wᵀ`.
    OutIn,
}

impl WeightLayout {
    /// `w` as the logical `[d_in, d_out]` operand of `x·W`.
    fn stored(self, w: &[f32]) -> Mat<'_> {
        match self {
            Self::InOut => Mat::as_is(w),
            Self::OutIn => Mat::transposed(w),
        }
    }
}

/// Whether [`backward`] computes `∂x`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputGrad {
    /// The input needs a gradient.
    Wanted,
    /// It does not (a model's first layer reading data): skip a third of the
    /// backward's matmul work.
    Skipped,
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
    let (rows, d_in, d_out) = shape.sizes();
    shape.check("x", x.len(), rows * d_in)?;
    shape.check("weight", w.len(), d_in * d_out)?;
    shape.check("bias", b.len(), d_out)?;
    let mut y = Vec::with_capacity(rows * d_out);
    for _ in 0..rows {
        y.extend_from_slice(b);
    }
    matmul(
        &mut y,
        Mat::as_is(x),
        shape.weight.stored(w),
        Dims {
            m: rows,
            n: d_out,
            k: d_in,
        },
        Write::Accumulate,
        Threads::Pool,
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
/// says so.
pub fn backward(
    shape: LinearShape,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    input_grad: InputGrad,
) -> Result<Grads, KernelError> {
    let (rows, d_in, d_out) = shape.sizes();
    shape.check("x", x.len(), rows * d_in)?;
    shape.check("weight", w.len(), d_in * d_out)?;
    shape.check("dy", dy.len(), rows * d_out)?;
    let dx = (input_grad == InputGrad::Wanted).then(|| {
        let w_t = match shape.weight {
            WeightLayout::InOut => Mat::transposed(w),
            WeightLayout::OutIn => Mat::as_is(w),
        };
        let dims = Dims {
            m: rows,
            n: d_in,
            k: d_out,
        };
        product(Mat::as_is(dy), w_t, dims, Threads::Pool)
    });
    // ∂W in W's own layout: xᵀ·∂y, or (∂y)ᵀ·x when W is [d_out, d_in].
    let (first, second, (m, n)) = match shape.weight {
        WeightLayout::InOut => (x, dy, (d_in, d_out)),
        WeightLayout::OutIn => (dy, x, (d_out, d_in)),
    };
    let dims = Dims { m, n, k: rows };
    let dw = product(
        Mat::transposed(first),
        Mat::as_is(second),
        dims,
        Threads::Pool,
    );
    let mut db = vec![0.0; d_out];
    for row in dy.chunks_exact(d_out.max(1)) {
        for (db, &g) in db.iter_mut().zip(row) {
            *db += g;
        }
    }
    Ok(Grads { dx, dw, db })
}
