//! The naive reference: materialised scores, f64 accumulation.
//!
//! Independent of the tile map and of the SIMD code; it shares only the
//! predicate [`Pattern::allowed`](crate::Pattern::allowed) with the kernel.
//! Memory is `O(Nk)` per row, time `O(B·Hq·Nq·Nk·D)`: for tests only.

use crate::Attention;

/// Computes `(o, lse)` for `att` in f64, returned as f32. Shapes as in
/// [`Attention::forward`]; panics if the buffers do not match the shape.
pub fn forward(att: &Attention, q: &[f32], k: &[f32], v: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (o, lse) = forward_f64(att, q, k, v);
    (
        o.iter().map(|&x| x as f32).collect(),
        lse.iter().map(|&x| x as f32).collect(),
    )
}

/// [`forward`] on f32 or f64 inputs, without the final rounding to f32
/// (for finite differences).
pub fn forward_f64<T: Copy + Into<f64>>(
    att: &Attention,
    q: &[T],
    k: &[T],
    v: &[T],
) -> (Vec<f64>, Vec<f64>) {
    let s = att.shape();
    let d = s.head_dim;
    let mut o = vec![0.0f64; s.q_len()];
    let mut lse = vec![f64::NEG_INFINITY; s.lse_len()];
    for_each_row(att, q, k, |row, kv, p, row_lse| {
        lse[row] = row_lse;
        for (j, &pj) in p.iter().enumerate() {
            for (out, &x) in o[row * d..(row + 1) * d]
                .iter_mut()
                .zip(&v[kv + j * d..kv + (j + 1) * d])
            {
                *out += pj * x.into();
            }
        }
    });
    (o, lse)
}

/// Analytic gradients `(dq, dk, dv)` of `Σ o·d_o` in f64, returned as f32:
/// `dV = Pᵀ dO`, `dS = P ∘ (dO Vᵀ - rowsum(dO ∘ O))`, `dQ = scale dS K`,
/// `dK = scale dSᵀ Q`, with dK and dV summed over grouped query heads.
pub fn backward(
    att: &Attention,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    d_o: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let s = att.shape();
    let d = s.head_dim;
    let scale = att.scale() as f64;
    let (o, _) = forward_f64(att, q, k, v);
    let mut dq = vec![0.0f64; s.q_len()];
    let mut dk = vec![0.0f64; s.kv_len()];
    let mut dv = vec![0.0f64; s.kv_len()];
    for_each_row(att, q, k, |row, kv, p, _| {
        let g = &d_o[row * d..(row + 1) * d];
        let delta: f64 = g
            .iter()
            .zip(&o[row * d..(row + 1) * d])
            .map(|(&a, &b)| a as f64 * b)
            .sum();
        for (j, &pj) in p.iter().enumerate() {
            if pj == 0.0 {
                continue;
            }
            let (kr, vr) = (kv + j * d..kv + (j + 1) * d, kv + j * d..kv + (j + 1) * d);
            let dp: f64 = g
                .iter()
                .zip(&v[vr.clone()])
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum();
            let ds = pj * (dp - delta);
            for dd in 0..d {
                dv[vr.start + dd] += pj * g[dd] as f64;
                dq[row * d + dd] += scale * ds * k[kr.start + dd] as f64;
                dk[kr.start + dd] += scale * ds * q[row * d + dd] as f64;
            }
        }
    });
    let f = |x: Vec<f64>| x.into_iter().map(|x| x as f32).collect();
    (f(dq), f(dk), f(dv))
}

/// Calls `f(row, kv_offset, p, lse)` for every query row with at least one
/// allowed key, where `p[j]` is the softmax probability of key `j` (0 where
/// forbidden) and `row` indexes `[B·Hq·Nq]`.
fn for_each_row<T: Copy + Into<f64>>(
    att: &Attention,
    q: &[T],
    k: &[T],
    mut f: impl FnMut(usize, usize, &[f64], f64),
) {
    let s = att.shape();
    let d = s.head_dim;
    let scale = att.scale() as f64;
    assert_eq!(q.len(), s.q_len());
    assert_eq!(k.len(), s.kv_len());
    let mut p = vec![0.0f64; s.len_k];
    for b in 0..s.batch {
        for h in 0..s.heads_q {
            let kv = s.kv_offset(b, s.kv_head(h));
            for i in 0..s.len_q {
                let row = (b * s.heads_q + h) * s.len_q + i;
                let qi = &q[row * d..(row + 1) * d];
                let mut max = f64::NEG_INFINITY;
                for (j, sc) in p.iter_mut().enumerate() {
                    *sc = if att.pattern().allowed(s, b, h, i, j) {
                        let kj = &k[kv + j * d..kv + (j + 1) * d];
                        scale
                            * qi.iter()
                                .zip(kj)
                                .map(|(&a, &b)| a.into() * b.into())
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
                for sc in p.iter_mut() {
                    *sc = if *sc == f64::NEG_INFINITY {
                        0.0
                    } else {
                        (*sc - max).exp()
                    };
                    sum += *sc;
                }
                p.iter_mut().for_each(|x| *x /= sum);
                f(row, kv, &p, max + sum.ln());
            }
        }
    }
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

/// The LSTM recurrence of [`crate::lstm`] in f64, step by step:
/// `xp [B, T, 4U]`, `w_hh [4U, U]` → `h [B, T, U]`.
pub fn lstm_forward(shape: crate::lstm::LstmShape, xp: &[f64], w_hh: &[f64]) -> Vec<f64> {
    let crate::lstm::LstmShape {
        batch,
        len,
        hidden: u,
    } = shape;
    let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
    let mut h_out = vec![0.0; batch * len * u];
    for b in 0..batch {
        let (mut h, mut c) = (vec![0.0; u], vec![0.0; u]);
        for t in 0..len {
            let at = (b * len + t) * 4 * u;
            let gate = |r: usize, h: &[f64]| {
                xp[at + r] + (0..u).map(|j| w_hh[r * u + j] * h[j]).sum::<f64>()
            };
            let pre: Vec<f64> = (0..4 * u).map(|r| gate(r, &h)).collect();
            for j in 0..u {
                let (i, f, g, o) = (
                    sig(pre[j]),
                    sig(pre[u + j]),
                    pre[2 * u + j].tanh(),
                    sig(pre[3 * u + j]),
                );
                c[j] = f * c[j] + i * g;
                h[j] = o * c[j].tanh();
            }
            h_out[(b * len + t) * u..(b * len + t + 1) * u].copy_from_slice(&h);
        }
    }
    h_out
}
