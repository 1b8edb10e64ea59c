//! Layer normalisation over the last dimension, forward and backward in one
//! pass each (a framework composes it from a dozen elementwise ops and as many
//! autograd nodes).
//!
//! For each row `x` of width `n`:
//!
//! ```text
//! μ = Σ x / n      σ² = Σ (x − μ)² / n      r = 1 / √(σ² + ε)      x̂ = (x − μ)·r
//! y = x̂·γ + β
//! ∂x = r·(g − mean(g) − x̂·mean(g·x̂))      g = ∂y·γ
//! ∂γ = Σ_rows ∂y·x̂                       ∂β = Σ_rows ∂y
//! ```
//!
//! Rows run in parallel in fixed blocks; `∂γ` and `∂β` are summed over the
//! blocks in order, so results do not depend on the thread count.

use rayon::prelude::*;

use crate::{same_len, KernelError};

/// Rows per parallel task.
const ROWS: usize = 32;

/// Per-row statistics the backward pass reuses: `[μ, r]` per row.
pub type Stats = Vec<[f32; 2]>;

/// `x [rows, n]`, `gamma, beta [n]` → `y [rows, n]` and the row statistics.
pub fn forward(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    epsilon: f32,
    y: &mut [f32],
) -> Result<Stats, KernelError> {
    let n = check(x.len(), gamma, beta)?;
    same_len("layer norm", "y", y.len(), x.len())?;
    let mut stats = vec![[0.0; 2]; x.len() / n];
    y.par_chunks_mut(ROWS * n)
        .zip(x.par_chunks(ROWS * n))
        .zip(stats.par_chunks_mut(ROWS))
        .for_each(|((y, x), stats)| {
            for ((y, x), stat) in y.chunks_exact_mut(n).zip(x.chunks_exact(n)).zip(stats) {
                *stat = normalize(x, gamma, beta, epsilon, y);
            }
        });
    Ok(stats)
}

/// One row on the calling thread, no allocation (a stream's step):
/// `x, gamma, beta, y [n]`.
pub fn row(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    epsilon: f32,
    y: &mut [f32],
) -> Result<(), KernelError> {
    let n = check(x.len(), gamma, beta)?;
    same_len("layer norm row", "x", x.len(), n)?;
    same_len("layer norm row", "y", y.len(), n)?;
    normalize(x, gamma, beta, epsilon, y);
    Ok(())
}

/// One row of equal-length slices; returns `[μ, r]`.
#[inline]
fn normalize(x: &[f32], gamma: &[f32], beta: &[f32], epsilon: f32, y: &mut [f32]) -> [f32; 2] {
    let n = x.len();
    let mean = sum(n, |i| x[i]) / n as f32;
    let var = sum(n, |i| (x[i] - mean) * (x[i] - mean)) / n as f32;
    let r = 1.0 / (var + epsilon).sqrt();
    for (((y, &x), &g), &b) in y.iter_mut().zip(x).zip(gamma).zip(beta) {
        *y = (x - mean) * r * g + b;
    }
    [mean, r]
}

/// The gradients of one layer norm.
#[derive(Clone, Debug)]
pub struct Grads {
    /// `∂x [rows, n]`.
    pub dx: Vec<f32>,
    /// `∂γ [n]`.
    pub dgamma: Vec<f32>,
    /// `∂β [n]`.
    pub dbeta: Vec<f32>,
}

/// Gradients for upstream `dy [rows, n]`.
pub fn backward(
    x: &[f32],
    gamma: &[f32],
    stats: &[[f32; 2]],
    dy: &[f32],
) -> Result<Grads, KernelError> {
    let n = check(x.len(), gamma, gamma)?;
    same_len("layer norm", "dy", dy.len(), x.len())?;
    same_len("layer norm", "stats", stats.len(), x.len() / n)?;
    let mut dx = vec![0.0; x.len()];
    let partial: Vec<(Vec<f32>, Vec<f32>)> = dx
        .par_chunks_mut(ROWS * n)
        .zip(x.par_chunks(ROWS * n))
        .zip(dy.par_chunks(ROWS * n).zip(stats.par_chunks(ROWS)))
        .map(|((dx, x), (dy, stats))| {
            let (mut dgamma, mut dbeta) = (vec![0.0; n], vec![0.0; n]);
            let rows = dx.chunks_exact_mut(n).zip(x.chunks_exact(n));
            for ((dx, x), (dy, &[mean, r])) in rows.zip(dy.chunks_exact(n).zip(stats)) {
                let (x, dy, gamma, dx) = (&x[..n], &dy[..n], &gamma[..n], &mut dx[..n]);
                let (dgamma, dbeta) = (&mut dgamma[..n], &mut dbeta[..n]);
                let xhat = |i: usize| (x[i] - mean) * r;
                let g_mean = sum(n, |i| dy[i] * gamma[i]) / n as f32;
                let gx_mean = sum(n, |i| dy[i] * gamma[i] * xhat(i)) / n as f32;
                for i in 0..n {
                    let xh = xhat(i);
                    dx[i] = r * (dy[i] * gamma[i] - g_mean - xh * gx_mean);
                    dgamma[i] += dy[i] * xh;
                    dbeta[i] += dy[i];
                }
            }
            (dgamma, dbeta)
        })
        .collect();
    let (mut dgamma, mut dbeta) = (vec![0.0; n], vec![0.0; n]);
    for (pg, pb) in partial {
        for i in 0..n {
            dgamma[i] += pg[i];
            dbeta[i] += pb[i];
        }
    }
    Ok(Grads { dx, dgamma, dbeta })
}

/// `Σ_{i<n} f(i)` over eight independent partial sums, so the loop
/// vectorises (one chained f32 sum may not be reordered).
#[inline(always)]
fn sum(n: usize, f: impl Fn(usize) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let body = n / 8 * 8;
    for i0 in (0..body).step_by(8) {
        for (l, acc) in acc.iter_mut().enumerate() {
            *acc += f(i0 + l);
        }
    }
    let tail: f32 = (body..n).map(f).sum();
    acc.iter().sum::<f32>() + tail
}

/// The row width, after checking that `gamma` and `beta` agree and divide `x`.
fn check(len: usize, gamma: &[f32], beta: &[f32]) -> Result<usize, KernelError> {
    let n = gamma.len();
    if n == 0 || beta.len() != n || !len.is_multiple_of(n) {
        return Err(KernelError::Shape(format!(
            "layer norm: gamma has {n} and beta {} elements; x ({len} elements) must be rows of that width",
            beta.len()
        )));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatched_lengths_are_errors() {
        let (x, g) = (vec![0.0; 12], vec![1.0; 4]);
        let mut y = vec![0.0; 12];
        assert!(forward(&x, &g, &g[..3], 1e-5, &mut y).is_err());
        assert!(forward(&x[..10], &g, &g, 1e-5, &mut y[..10]).is_err());
        assert!(forward(&x, &g, &g, 1e-5, &mut y[..8]).is_err());
        let stats = forward(&x, &g, &g, 1e-5, &mut y).unwrap();
        assert!(backward(&x, &g, &stats[..2], &y).is_err());
        assert!(backward(&x, &g, &stats, &y[..8]).is_err());
    }
}
