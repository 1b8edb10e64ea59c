//! The fused LSTM recurrence against an f64 step-by-step reference, and its
//! backward pass against central finite differences of that reference.

mod common;

use common::data;
use edifice_kernels::lstm::{self, LstmShape};
use edifice_kernels::reference;

fn to64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

#[test]
fn forward_matches_the_reference() {
    // Hidden sizes around the vector widths (tails), one long sequence.
    for (batch, len, hidden) in [
        (1, 1, 1),
        (3, 5, 7),
        (2, 9, 16),
        (4, 3, 33),
        (1, 200, 8),
        (5, 4, 64),
    ] {
        let shape = LstmShape { batch, len, hidden };
        let xp: Vec<f32> = data(batch * len * 4 * hidden, 1)
            .iter()
            .map(|x| 2.0 * x)
            .collect();
        let w_hh: Vec<f32> = data(4 * hidden * hidden, 2)
            .iter()
            .map(|x| x / (hidden as f32).sqrt())
            .collect();
        let trace = lstm::forward(shape, &xp, &w_hh).unwrap();
        let want = reference::lstm_forward(shape, &to64(&xp), &to64(&w_hh));
        let worst = trace
            .h
            .iter()
            .zip(&want)
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0.0, f64::max);
        assert!(worst < 2e-6, "{shape:?}: max |h - reference| = {worst}");
    }
}

#[test]
fn backward_matches_finite_differences() {
    for (batch, len, hidden) in [(2, 4, 3), (1, 6, 17), (3, 3, 16)] {
        let shape = LstmShape { batch, len, hidden };
        let xp: Vec<f32> = data(batch * len * 4 * hidden, 3)
            .iter()
            .map(|x| 1.5 * x)
            .collect();
        let w_hh: Vec<f32> = data(4 * hidden * hidden, 4)
            .iter()
            .map(|x| x / (hidden as f32).sqrt())
            .collect();
        let r = data(batch * len * hidden, 5);
        let trace = lstm::forward(shape, &xp, &w_hh).unwrap();
        let (d_xp, d_w) = lstm::backward(shape, &w_hh, &trace, &r).unwrap();

        // loss = Σ h ⊙ r in f64.
        let loss = |xp: &[f64], w: &[f64]| -> f64 {
            reference::lstm_forward(shape, xp, w)
                .iter()
                .zip(&r)
                .map(|(h, r)| h * *r as f64)
                .sum()
        };
        let (xp64, w64) = (to64(&xp), to64(&w_hh));
        let eps = 1e-5;
        let fd = |which: usize, idx: usize| {
            let (mut a, mut b) = (xp64.clone(), w64.clone());
            let (mut a2, mut b2) = (xp64.clone(), w64.clone());
            if which == 0 {
                a[idx] += eps;
                a2[idx] -= eps;
            } else {
                b[idx] += eps;
                b2[idx] -= eps;
            }
            (loss(&a, &b) - loss(&a2, &b2)) / (2.0 * eps)
        };
        let scale = d_xp.iter().chain(&d_w).fold(0.0f32, |m, g| m.max(g.abs())) as f64;
        for (which, grads) in [(0, &d_xp), (1, &d_w)] {
            for idx in (0..grads.len()).step_by(grads.len() / 23 + 1) {
                let want = fd(which, idx);
                let got = grads[idx] as f64;
                assert!(
                    (got - want).abs() < 1e-4 * scale.max(1.0),
                    "{shape:?} grad {which}[{idx}]: {got} vs {want}"
                );
            }
        }
    }
}

#[test]
fn wrong_sizes_are_errors() {
    let shape = LstmShape {
        batch: 2,
        len: 3,
        hidden: 4,
    };
    assert!(lstm::forward(shape, &[0.0; 10], &[0.0; 64]).is_err());
    assert!(lstm::forward(shape, &[0.0; 96], &[0.0; 63]).is_err());
    let trace = lstm::forward(shape, &[0.0; 96], &[0.0; 64]).unwrap();
    assert!(lstm::backward(shape, &[0.0; 64], &trace, &[0.0; 5]).is_err());
}
