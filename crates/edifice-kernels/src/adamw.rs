//! One AdamW step over a parameter tensor, fused: a single pass reads the
//! parameter, its gradient and both moments and writes the three updated
//! tensors, where the same update composed from tensor operations makes
//! about fifteen passes and as many temporaries.
//!
//! The update is burn's `AdamW` (decoupled weight decay, bias-corrected
//! moments, `ε` added after the square root), step `t ≥ 1`:
//!
//! ```text
//! m ← β₁·m + (1 − β₁)·g            v ← β₂·v + (1 − β₂)·g²
//! δ = (m / (1 − β₁ᵗ)) / (sqrt(v / (1 − β₂ᵗ)) + ε)
//! θ ← θ·(1 − lr·λ) − lr·δ
//! ```
//!
//! On the first step pass zeroed moments: `β·0 + (1 − β)·x` is what the
//! composed update computes there.

use rayon::prelude::*;

use crate::{same_len, KernelError};

/// Hyper-parameters of one step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    /// Learning rate `lr`.
    pub lr: f64,
    /// First-moment decay `β₁`.
    pub beta_1: f32,
    /// Second-moment decay `β₂`.
    pub beta_2: f32,
    /// `ε` added to `sqrt(v̂)`.
    pub epsilon: f32,
    /// Decoupled weight decay `λ`.
    pub weight_decay: f32,
    /// Step number `t`, from 1.
    pub time: i32,
}

/// Elements per parallel task: large enough that a task outweighs its
/// scheduling, small enough to split a layer's weights across threads.
const TASK: usize = 1 << 14;

/// Updates `param`, `m` and `v` in place from `grad` (all the same length).
pub fn step(
    h: &AdamW,
    param: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
) -> Result<(), KernelError> {
    let n = param.len();
    same_len("adamw", "grad", grad.len(), n)?;
    same_len("adamw", "first moment", m.len(), n)?;
    same_len("adamw", "second moment", v.len(), n)?;
    if h.time < 1 {
        return Err(KernelError::Shape(format!(
            "adamw step number must be at least 1, got {}",
            h.time
        )));
    }
    let (b1, b2) = (h.beta_1, h.beta_2);
    let (c1, c2) = (1.0 - b1.powi(h.time), 1.0 - b2.powi(h.time));
    let decay = (1.0 - h.lr * f64::from(h.weight_decay)) as f32;
    let lr = h.lr as f32;
    let eps = h.epsilon;
    param
        .par_chunks_mut(TASK)
        .zip(grad.par_chunks(TASK))
        .zip(m.par_chunks_mut(TASK).zip(v.par_chunks_mut(TASK)))
        .for_each(|((param, grad), (m, v))| {
            for (((p, &g), m), v) in param.iter_mut().zip(grad).zip(m).zip(v) {
                *m = b1 * *m + (1.0 - b1) * g;
                *v = b2 * *v + (1.0 - b2) * (g * g);
                let delta = (*m / c1) / ((*v / c2).sqrt() + eps);
                *p = *p * decay - lr * delta;
            }
        });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three steps against the formula written out in f64.
    #[test]
    fn matches_the_formula() {
        let h = AdamW {
            lr: 0.01,
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-5,
            weight_decay: 0.1,
            time: 1,
        };
        let n = 3 * TASK + 5;
        let mut param = crate::reference::uniform(n, 1);
        let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
        let mut want: Vec<[f64; 3]> = param.iter().map(|&p| [f64::from(p), 0.0, 0.0]).collect();
        for t in 1..=3 {
            let grad = crate::reference::uniform(n, 10 + t as u32);
            step(&AdamW { time: t, ..h }, &mut param, &grad, &mut m, &mut v).unwrap();
            let (b1, b2) = (f64::from(h.beta_1), f64::from(h.beta_2));
            for (w, &g) in want.iter_mut().zip(&grad) {
                let g = f64::from(g);
                w[1] = b1 * w[1] + (1.0 - b1) * g;
                w[2] = b2 * w[2] + (1.0 - b2) * g * g;
                let delta = (w[1] / (1.0 - b1.powi(t)))
                    / ((w[2] / (1.0 - b2.powi(t))).sqrt() + f64::from(h.epsilon));
                w[0] = w[0] * (1.0 - h.lr * f64::from(h.weight_decay)) - h.lr * delta;
            }
        }
        for (i, (p, w)) in param.iter().zip(&want).enumerate() {
            assert!((f64::from(*p) - w[0]).abs() < 1e-6, "[{i}] {p} vs {}", w[0]);
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let h = AdamW {
            lr: 0.01,
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-5,
            weight_decay: 0.0,
            time: 1,
        };
        let (mut p, mut m, mut v) = (vec![0.0; 4], vec![0.0; 4], vec![0.0; 4]);
        assert!(step(&h, &mut p, &[0.0; 3], &mut m, &mut v).is_err());
        assert!(step(&h, &mut p, &[0.0; 4], &mut m[..3], &mut v).is_err());
        assert!(step(&AdamW { time: 0, ..h }, &mut p, &[0.0; 4], &mut m, &mut v).is_err());
    }
}
