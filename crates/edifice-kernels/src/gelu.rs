//! GELU with the exact (erf) form, forward and backward, vectorised.
//!
//! ```text
//! gelu(x)  = x·Φ(x)            Φ(x) = (1 + erf(x/√2)) / 2
//! gelu'(x) = Φ(x) + x·φ(x)     φ(x) = exp(−x²/2) / √(2π)
//! ```
//!
//! `erf` is a rational function of `x` on `[−3.83, 3.83]` (erf is within
//! f32 rounding of ±1 outside), odd numerator of degree 9 over an even
//! denominator of degree 12: absolute error below 4e-7. That keeps every
//! lane branch-free, unlike the scalar `erff` a framework calls per element.

use rayon::prelude::*;

use crate::simd::{Isa, Simd, WithSimd};
use crate::{same_len, KernelError};

/// Elements per parallel task: large enough to amortise the task, small
/// enough to split a `[32·60, 1024]` activation over the threads.
const TASK: usize = 1 << 14;

/// `y = gelu(x)` elementwise.
pub fn forward(x: &[f32], y: &mut [f32]) -> Result<(), KernelError> {
    same_len("gelu", "y", y.len(), x.len())?;
    let isa = Isa::widest();
    y.par_chunks_mut(TASK)
        .zip(x.par_chunks(TASK))
        .for_each(|(y, x)| {
            isa.run(Pass {
                x,
                dy: None,
                out: y,
            })
        });
    Ok(())
}

/// `y = gelu(x)` on the calling thread (a stream's step: no task, no
/// allocation).
pub fn forward_serial(x: &[f32], y: &mut [f32]) -> Result<(), KernelError> {
    same_len("gelu", "y", y.len(), x.len())?;
    Isa::widest().run(Pass {
        x,
        dy: None,
        out: y,
    });
    Ok(())
}

/// `dx = dy · gelu'(x)` elementwise.
pub fn backward(x: &[f32], dy: &[f32], dx: &mut [f32]) -> Result<(), KernelError> {
    same_len("gelu", "dy", dy.len(), x.len())?;
    same_len("gelu", "dx", dx.len(), x.len())?;
    let isa = Isa::widest();
    dx.par_chunks_mut(TASK)
        .zip(x.par_chunks(TASK).zip(dy.par_chunks(TASK)))
        .for_each(|(dx, (x, dy))| {
            isa.run(Pass {
                x,
                dy: Some(dy),
                out: dx,
            })
        });
    Ok(())
}

/// One task: `out = gelu(x)`, or `out = dy · gelu'(x)` with `dy`.
struct Pass<'a> {
    x: &'a [f32],
    dy: Option<&'a [f32]>,
    out: &'a mut [f32],
}

const ERF_CLAMP: f32 = 3.832_507;
/// Numerator coefficients of `x`, `x³`, ..., `x⁹`.
const ERF_P: [f32; 5] = [
    std::f32::consts::FRAC_2_SQRT_PI,
    0.185_208_32,
    0.050_955_694,
    0.003_408_291,
    0.000_229_050_66,
];
/// Denominator coefficients of `1`, `x²`, ..., `x¹²`.
const ERF_Q: [f32; 7] = [
    1.0,
    0.497_469_25,
    0.110_985_05,
    0.014_070_47,
    0.001_017_962_5,
    0.000_023_547_966,
    -1.179_160_3e-7,
];

/// `erf(x)` per lane.
#[inline(always)]
fn erf<S: Simd>(s: S, x: S::V) -> S::V {
    // clamp(x, −c, c) with max only: min(x, c) = −max(−x, −c).
    let zero = s.splat(0.0);
    let x = s.max(x, s.splat(-ERF_CLAMP));
    let x = s.sub(zero, s.max(s.sub(zero, x), s.splat(-ERF_CLAMP)));
    let x2 = s.mul(x, x);
    let mut p = s.splat(ERF_P[4]);
    for &c in ERF_P[..4].iter().rev() {
        p = s.fma(p, x2, s.splat(c));
    }
    let mut q = s.splat(ERF_Q[6]);
    for &c in ERF_Q[..6].iter().rev() {
        q = s.fma(q, x2, s.splat(c));
    }
    s.div(s.mul(x, p), q)
}

/// `(gelu(x), gelu'(x))` per lane.
#[inline(always)]
fn gelu<S: Simd>(s: S, x: S::V) -> (S::V, S::V) {
    let half = s.splat(0.5);
    let phi_cdf = s.fma(
        half,
        erf(s, s.mul(x, s.splat(std::f32::consts::FRAC_1_SQRT_2))),
        half,
    );
    // φ(x) = 2^(−x²·log2(e)/2) / √(2π)
    let e = s.exp2(s.mul(s.mul(x, x), s.splat(-0.5 * std::f32::consts::LOG2_E)));
    let phi = s.mul(e, s.splat(0.398_942_3));
    (s.mul(x, phi_cdf), s.fma(x, phi, phi_cdf))
}

impl Pass<'_> {
    /// One vector from `x` (and `dy`) at `x`, result to `out`.
    ///
    /// # Safety
    /// Each pointer must be valid for `S::LANES` f32.
    #[inline(always)]
    unsafe fn lanes<S: Simd>(s: S, x: *const f32, dy: Option<*const f32>, out: *mut f32) {
        let (y, dydx) = gelu(s, s.load(x));
        let r = match dy {
            Some(dy) => s.mul(dydx, s.load(dy)),
            None => y,
        };
        s.store(out, r);
    }
}

impl WithSimd for Pass<'_> {
    type Output = ();

    // `match` rather than `Option::map`: a closure here may be compiled
    // outside the target-feature context (see `tile::RankUpdate::block`).
    #[allow(clippy::manual_map)]
    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let n = self.x.len();
        let body = n / S::LANES * S::LANES;
        for i in (0..body).step_by(S::LANES) {
            // SAFETY: i + LANES ≤ n, the length of x, dy and out.
            unsafe {
                Self::lanes(
                    s,
                    self.x.as_ptr().add(i),
                    match self.dy {
                        Some(dy) => Some(dy.as_ptr().add(i)),
                        None => None,
                    },
                    self.out.as_mut_ptr().add(i),
                )
            }
        }
        if body < n {
            // The tail goes through lane-wide buffers: one code path.
            let (mut x, mut dy, mut out) = ([0.0f32; 16], [0.0f32; 16], [0.0f32; 16]);
            let len = n - body;
            x[..len].copy_from_slice(&self.x[body..]);
            if let Some(d) = self.dy {
                dy[..len].copy_from_slice(&d[body..]);
            }
            // SAFETY: LANES ≤ 16, the length of the buffers.
            unsafe {
                Self::lanes(
                    s,
                    x.as_ptr(),
                    match self.dy {
                        Some(_) => Some(dy.as_ptr()),
                        None => None,
                    },
                    out.as_mut_ptr(),
                )
            }
            self.out[body..].copy_from_slice(&out[..len]);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn mismatched_lengths_are_errors() {
        let x = vec![0.5; 20];
        assert!(super::forward(&x, &mut [0.0; 19]).is_err());
        assert!(super::backward(&x, &x[..19], &mut [0.0; 20]).is_err());
        assert!(super::backward(&x, &x, &mut [0.0; 21]).is_err());
    }
}
