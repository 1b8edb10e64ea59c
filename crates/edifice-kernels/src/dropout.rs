//! Inverted dropout with a counter-based mask: element `i` is kept when
//! `hash(seed, i) < keep · 2³²`, so the backward pass regenerates the forward's
//! mask from the seed instead of storing it, and any split of the work over
//! threads draws the same mask.
//!
//! ```text
//! y[i] = x[i] / keep   if element i is kept,   0 otherwise
//! ```
//!
//! The backward pass is the same map applied to `∂y`. The hash is two rounds
//! of a 32-bit integer finaliser ("lowbias32", Wellons), keyed by the two
//! halves of the seed: plain integer arithmetic the compiler vectorises.

use rayon::prelude::*;

use crate::{same_len, KernelError};

/// Elements per parallel task.
const TASK: usize = 1 << 14;

/// `out[i] = x[i] / keep` where element `i` of the `seed`'s mask is kept,
/// else 0. `keep` is the probability of keeping an element, in `(0, 1]`.
pub fn apply(seed: u64, keep: f32, x: &[f32], out: &mut [f32]) -> Result<(), KernelError> {
    check_keep(keep)?;
    same_len("dropout", "out", out.len(), x.len())?;
    if x.len() > u32::MAX as usize {
        return Err(KernelError::Shape(format!(
            "dropout: {} elements is more than the mask counter covers (2³²)",
            x.len()
        )));
    }
    // keep = 1 must keep everything: the threshold saturates at 2³² − 1 and
    // the comparison below is `≤`.
    let threshold = ((keep as f64 * 4_294_967_296.0) as u64).saturating_sub(1) as u32;
    let (k0, k1) = (seed as u32, (seed >> 32) as u32);
    let scale = 1.0 / keep;
    out.par_chunks_mut(TASK)
        .zip(x.par_chunks(TASK))
        .enumerate()
        .for_each(|(t, (out, x))| {
            let task = Task {
                first: (t * TASK) as u32,
                keys: (k0, k1),
                threshold,
                scale,
            };
            task.run(x, out)
        });
    Ok(())
}

/// `Ok` when `keep` is a probability of keeping an element, in `(0, 1]`.
pub fn check_keep(keep: f32) -> Result<(), KernelError> {
    if keep > 0.0 && keep <= 1.0 {
        Ok(())
    } else {
        Err(KernelError::KeepProbability(keep))
    }
}

/// The mask parameters of one parallel task.
#[derive(Clone, Copy)]
struct Task {
    /// Index of the task's first element.
    first: u32,
    keys: (u32, u32),
    threshold: u32,
    scale: f32,
}

impl Task {
    /// Runs [`Task::apply`] compiled for the widest integer vectors the CPU
    /// has (32-bit multiplies need AVX2; baseline x86-64 runs it scalar).
    fn run(self, x: &[f32], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F.
                return unsafe { self.apply_avx512(x, out) };
            }
            if is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2.
                return unsafe { self.apply_avx2(x, out) };
            }
        }
        self.apply(x, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn apply_avx512(self, x: &[f32], out: &mut [f32]) {
        self.apply(x, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn apply_avx2(self, x: &[f32], out: &mut [f32]) {
        self.apply(x, out)
    }

    #[inline(always)]
    fn apply(self, x: &[f32], out: &mut [f32]) {
        let (k0, k1) = self.keys;
        for (i, (o, &v)) in out.iter_mut().zip(x).enumerate() {
            let h = mix(mix(self.first.wrapping_add(i as u32) ^ k0) ^ k1);
            *o = if h <= self.threshold {
                v * self.scale
            } else {
                0.0
            };
        }
    }
}

/// The "lowbias32" integer finaliser.
#[inline(always)]
fn mix(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_right_share_and_scales_the_kept() {
        let x = vec![2.0f32; 100_000];
        let mut y = vec![0.0; x.len()];
        apply(42, 0.9, &x, &mut y).unwrap();
        let kept = y.iter().filter(|&&v| v != 0.0).count();
        // 100k Bernoulli(0.9) draws: standard deviation ~95.
        assert!((kept as i64 - 90_000).abs() < 600, "kept {kept}");
        assert!(y.iter().all(|&v| v == 0.0 || (v - 2.0 / 0.9).abs() < 1e-6));
        // Same seed, same mask; another seed, another mask.
        let mut again = vec![0.0; x.len()];
        apply(42, 0.9, &x, &mut again).unwrap();
        assert_eq!(y, again);
        apply(43, 0.9, &x, &mut again).unwrap();
        assert_ne!(y, again);
        apply(7, 1.0, &x, &mut again).unwrap();
        assert!(again.iter().all(|&v| v == 2.0));
    }

    #[test]
    fn vector_paths_draw_the_scalar_mask() {
        let x: Vec<f32> = (0..1000).map(|i| i as f32 - 500.0).collect();
        let task = Task {
            first: 77,
            keys: (0x1234_5678, 0x9abc_def0),
            threshold: u32::MAX / 3,
            scale: 1.5,
        };
        let (mut scalar, mut vector) = (vec![0.0; 1000], vec![0.0; 1000]);
        task.apply(&x, &mut scalar);
        task.run(&x, &mut vector);
        assert_eq!(scalar, vector);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let x = [1.0; 8];
        assert!(apply(0, 0.0, &x, &mut [0.0; 8]).is_err());
        assert!(apply(0, 1.5, &x, &mut [0.0; 8]).is_err());
        assert!(apply(0, f32::NAN, &x, &mut [0.0; 8]).is_err());
        assert!(apply(0, 0.5, &x, &mut [0.0; 7]).is_err());
    }
}
