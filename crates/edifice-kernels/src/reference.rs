//! The naive reference: materialised scores, f64 accumulation.
//!
//! Independent of the tile map and of the SIMD code; it shares only the
//! predicate [`Pattern::allowed`](crate::Pattern::allowed) with the kernel.
//! Memory is `O(Nk)` per row, time `O(B·Hq·Nq·Nk·D)`: for tests only.

use crate::Attention;

/// Computes `(o, lse)` for `att` in f64, returned as f32. Shapes as in
/// [`Attention::forward`]; panics if the buffers do not match the shape.
pub fn forward(att: &Attention, q: &[f32], k: &[f32], v: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let s = att.shape();
    let d = s.head_dim;
    let scale = att.scale() as f64;
    assert_eq!(q.len(), s.q_len());
    assert_eq!(k.len(), s.kv_len());
    assert_eq!(v.len(), s.kv_len());
    let mut o = vec![0.0f32; s.q_len()];
    let mut lse = vec![f32::NEG_INFINITY; s.lse_len()];
    let mut scores = vec![0.0f64; s.len_k];
    for b in 0..s.batch {
        for h in 0..s.heads_q {
            let hk = h / (s.heads_q / s.heads_kv);
            let kv = (b * s.heads_kv + hk) * s.len_k * d;
            for i in 0..s.len_q {
                let row = (b * s.heads_q + h) * s.len_q + i;
                let qi = &q[row * d..(row + 1) * d];
                let mut max = f64::NEG_INFINITY;
                for (j, sc) in scores.iter_mut().enumerate() {
                    *sc = if att.pattern().allowed(s, b, h, i, j) {
                        let kj = &k[kv + j * d..kv + (j + 1) * d];
                        scale
                            * qi.iter()
                                .zip(kj)
                                .map(|(&a, &b)| a as f64 * b as f64)
                                .sum::<f64>()
                    } else {
                        f64::NEG_INFINITY
                    };
                    max = max.max(*sc);
                }
                if max == f64::NEG_INFINITY {
                    continue;
                }
                let mut sum = 0.0;
                let mut acc = vec![0.0f64; d];
                for (j, &sc) in scores.iter().enumerate() {
                    if sc == f64::NEG_INFINITY {
                        continue;
                    }
                    let p = (sc - max).exp();
                    sum += p;
                    for (a, &x) in acc.iter_mut().zip(&v[kv + j * d..kv + (j + 1) * d]) {
                        *a += p * x as f64;
                    }
                }
                for (out, a) in o[row * d..(row + 1) * d].iter_mut().zip(&acc) {
                    *out = (a / sum) as f32;
                }
                lse[row] = (max + sum.ln()) as f32;
            }
        }
    }
    (o, lse)
}

/// Deterministic inputs uniform in `[-1, 1)` (xorshift32), for tests and
/// benchmarks that must be reproducible without a random-number crate.
pub fn uniform(n: usize, seed: u32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(12_345) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}
