//! Edifice's attention functions (`Edifice.Attention.MultiHead` and
//! `Primitives`), parameter-free.
//!
//! | Edifice | here | shapes |
//! |---|---|---|
//! | `scaled_dot_product_attention(q, k, v, mask:)` | [`scaled_dot_product_attention`] | `q [B, Tq, D]`, `k, v [B, Tk, D]` → `[B, Tq, D]` |
//! | `chunked_attention(q, k, v, chunk_size:, mask:)` | [`chunked_attention`] | same |
//! | `memory_efficient_attention(q, k, v, chunk_size:, causal:)` | [`memory_efficient_attention`] | same |
//! | `causal_mask(T)`, `window_mask(T, w)` | [`causal_mask`], [`window_mask`] | `[T, T]`, `true` = may attend |
//! | `qk_layer_norm(x)` | [`qk_layer_norm`] | any rank, over the last axis |
//! | `RoPE.apply_rotary_4d(q, k)` | [`rotary`] | `[B, H, T, hd]` |
//! | `add_positional_encoding(x, scale:)` | [`add_positional_encoding`] | `[B, T, E]` |
//!
//! The plain and chunked attentions run on the fused kernel
//! ([`crate::kernel`]), so neither builds a `Tq × Tk` score tensor; a mask is
//! read by the kernel as a predicate. The plain one makes one kernel call,
//! the chunked one one call per query chunk. The memory-efficient one is
//! Edifice's algorithm itself, an online softmax over chunks of keys in burn
//! ops ([`online_softmax_attention`], one `Tq × chunk` block at a time):
//! slower than the kernel, but a second, independent computation of the
//! same numbers. Scale is `1/sqrt(D)`.
//!
//! One difference from Edifice: a query row whose mask allows no key gets
//! zeros from the kernel paths (Edifice's `-1e9` fill gives the mean of `v`
//! over all keys).

use burn::tensor::{Bool, Device, Tensor, TensorData};
use edifice_kernels::{BoolMask, Pattern, PatternKind};

use crate::kernel::{attention, AttnSpec};
use crate::Error;

/// `mask[i, j] = i >= j`: Edifice's `causal_mask(T)`.
pub fn causal_mask(len: usize, device: &Device) -> Tensor<2, Bool> {
    mask_from(len, len, device, |i, j| i >= j)
}

/// `mask[i, j] = 0 <= i - j <= window - 1`: Edifice's `window_mask(T, w)`
/// (causal, itself included; `window >= T` is the causal mask, `0` allows
/// nothing).
pub fn window_mask(len: usize, window: usize, device: &Device) -> Tensor<2, Bool> {
    mask_from(len, len, device, |i, j| i >= j && i - j < window)
}

fn mask_from(
    rows: usize,
    cols: usize,
    device: &Device,
    allowed: impl Fn(usize, usize) -> bool,
) -> Tensor<2, Bool> {
    let data: Vec<bool> = (0..rows * cols)
        .map(|x| allowed(x / cols, x % cols))
        .collect();
    Tensor::from_data(TensorData::new(data, [rows, cols]), device)
}

/// A mask for the 3-D functions: `[Tq, Tk]` shared by the batch, or
/// `[B, Tq, Tk]` one per batch element.
#[derive(Clone, Debug)]
pub enum Mask {
    /// `[Tq, Tk]`.
    Shared(Tensor<2, Bool>),
    /// `[B, Tq, Tk]`.
    PerBatch(Tensor<3, Bool>),
}

impl Mask {
    /// The kernel pattern for rows `[start, start + rows)` of the mask.
    fn pattern(&self, start: usize, rows: usize) -> Pattern {
        let (dims, data) = match self {
            Mask::Shared(m) => {
                let [_, tk] = m.dims();
                (vec![rows, tk], m.clone().narrow(0, start, rows).into_data())
            }
            Mask::PerBatch(m) => {
                let [b, _, tk] = m.dims();
                (
                    vec![b, 1, rows, tk],
                    m.clone().narrow(1, start, rows).into_data(),
                )
            }
        };
        let data: Vec<bool> = data.try_to_vec().expect("bool tensor data");
        let mask = BoolMask::new(data, &dims).expect("dims match the data");
        Pattern::new(PatternKind::Mask(mask), false)
    }

    fn check(&self, batch: usize, tq: usize, tk: usize) -> Result<(), Error> {
        let (got, want) = match self {
            Mask::Shared(m) => (m.dims().to_vec(), vec![tq, tk]),
            Mask::PerBatch(m) => (m.dims().to_vec(), vec![batch, tq, tk]),
        };
        if got != want {
            return Err(Error::Shape(format!(
                "mask has shape {got:?} but the attention needs {want:?}"
            )));
        }
        Ok(())
    }
}

/// Checks 3-D `q [B, Tq, D]`, `k, v [B, Tk, D]`; returns `(B, Tq, Tk)`.
fn dims3(q: &Tensor<3>, k: &Tensor<3>, v: &Tensor<3>) -> Result<(usize, usize, usize), Error> {
    let ([b, tq, d], kd, vd) = (q.dims(), k.dims(), v.dims());
    if kd != vd || kd[0] != b || kd[2] != d {
        return Err(Error::Shape(format!(
            "need q [B, Tq, D] and k, v [B, Tk, D]; got q {:?}, k {kd:?}, v {vd:?}",
            q.dims()
        )));
    }
    Ok((b, tq, kd[1]))
}

/// One kernel call on 3-D tensors (one head).
fn attend3(q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, pattern: Pattern) -> Result<Tensor<3>, Error> {
    let o = attention(
        q.unsqueeze_dim(1),
        k.unsqueeze_dim(1),
        v.unsqueeze_dim(1),
        &AttnSpec::new(pattern),
    )?;
    Ok(o.squeeze_dim(1))
}

/// `softmax(q kᵀ / sqrt(D), masked) v`. `q [B, Tq, D]`, `k, v [B, Tk, D]`.
pub fn scaled_dot_product_attention(
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    mask: Option<&Mask>,
) -> Result<Tensor<3>, Error> {
    let (b, tq, tk) = dims3(&q, &k, &v)?;
    let pattern = match mask {
        Some(m) => {
            m.check(b, tq, tk)?;
            m.pattern(0, tq)
        }
        None => Pattern::new(PatternKind::Full, false),
    };
    attend3(q, k, v, pattern)
}

/// [`scaled_dot_product_attention`] over query chunks of `chunk_size` rows
/// (the last chunk may be shorter), concatenated: Edifice's
/// `chunked_attention`.
pub fn chunked_attention(
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    chunk_size: usize,
    mask: Option<&Mask>,
) -> Result<Tensor<3>, Error> {
    let (b, tq, tk) = dims3(&q, &k, &v)?;
    if chunk_size == 0 {
        return Err(Error::Config("chunk_size must be at least 1".into()));
    }
    if let Some(m) = mask {
        m.check(b, tq, tk)?;
    }
    let mut parts = Vec::with_capacity(tq.div_ceil(chunk_size));
    for start in (0..tq).step_by(chunk_size) {
        let rows = chunk_size.min(tq - start);
        let pattern = match mask {
            Some(m) => m.pattern(start, rows),
            None => Pattern::new(PatternKind::Full, false),
        };
        parts.push(attend3(
            q.clone().narrow(1, start, rows),
            k.clone(),
            v.clone(),
            pattern,
        )?);
    }
    if parts.is_empty() {
        return attend3(q, k, v, Pattern::new(PatternKind::Full, false));
    }
    Ok(Tensor::cat(parts, 1))
}

/// Online-softmax attention over key/value chunks: Edifice's
/// `memory_efficient_attention`. `causal` allows `i >= j` (query and key
/// positions both counted from 0, as in Edifice). Runs
/// [`online_softmax_attention`] with chunks of `chunk_size` keys.
pub fn memory_efficient_attention(
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    chunk_size: usize,
    causal: bool,
) -> Result<Tensor<3>, Error> {
    dims3(&q, &k, &v)?;
    let o = online_softmax_attention(
        q.unsqueeze_dim(1),
        k.unsqueeze_dim(1),
        v.unsqueeze_dim(1),
        chunk_size,
        |i, j| !causal || i >= j,
    )?;
    Ok(o.squeeze_dim(1))
}

/// Attention computed the way Edifice's memory-efficient path does it, one
/// chunk of `chunk_size` keys at a time with a running max `m`, sum `l` and
/// output `acc` per query row, in burn ops (differentiable by burn's
/// autodiff, independent of the fused kernel):
///
/// ```text
/// s = q·k_cᵀ/√D (−1e30 where !allowed(i, j))   m' = max(m, rowmax s)
/// l = l·e^(m−m') + Σ_j e^(s−m')                 acc = acc·e^(m−m') + e^(s−m')·v_c
/// o = acc / l
/// ```
///
/// `q [B, H, Tq, D]`, `k, v [B, H, Tk, D]` → `[B, H, Tq, D]`; `allowed(i, j)`
/// is the mask for query row `i` and key `j`. Memory holds one `[Tq, chunk]`
/// block of scores per head. A row that allows no key at all gets the mean of
/// `v` (Edifice's finite fill), unlike the fused kernel's zeros.
pub fn online_softmax_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    chunk_size: usize,
    allowed: impl Fn(usize, usize) -> bool,
) -> Result<Tensor<4>, Error> {
    let ([b, h, tq, d], [bk, hk, tk, dk]) = (q.dims(), k.dims());
    if chunk_size == 0 {
        return Err(Error::Config("chunk_size must be at least 1".into()));
    }
    if [b, h, d] != [bk, hk, dk] || k.dims() != v.dims() {
        return Err(Error::Shape(format!(
            "online softmax attention needs q [B, H, Tq, D] and k, v [B, H, Tk, D], got {:?}, {:?}, {:?}",
            q.dims(),
            k.dims(),
            v.dims()
        )));
    }
    const FLOOR: f32 = -1.0e30;
    let device = q.device();
    let q = q.mul_scalar(1.0 / (d as f32).sqrt());
    let mut m = Tensor::<4>::full([b, h, tq, 1], FLOOR, &device);
    let mut l = Tensor::<4>::zeros([b, h, tq, 1], &device);
    let mut acc = Tensor::<4>::zeros([b, h, tq, d], &device);
    for start in (0..tk).step_by(chunk_size) {
        let len = chunk_size.min(tk - start);
        let (k_c, v_c) = (
            k.clone().narrow(2, start, len),
            v.clone().narrow(2, start, len),
        );
        let blocked = mask_from(tq, len, &device, |i, j| !allowed(i, start + j));
        let scores = q
            .clone()
            .matmul(k_c.swap_dims(2, 3))
            .mask_fill(blocked.unsqueeze::<4>().expand([b, h, tq, len]), FLOOR);
        let m_new = m.clone().max_pair(scores.clone().max_dim(3));
        let p = scores.sub(m_new.clone()).exp();
        let correction = m.sub(m_new.clone()).exp();
        l = l.mul(correction.clone()).add(p.clone().sum_dim(3));
        acc = acc.mul(correction).add(p.matmul(v_c));
        m = m_new;
    }
    if tk == 0 {
        return Ok(acc);
    }
    Ok(acc.div(l))
}

/// `(x - mean) / sqrt(var + 1e-6)` over the last axis, no affine
/// parameters: Edifice's `qk_layer_norm`.
pub fn qk_layer_norm<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let (var, mean) = x.clone().var_mean_bias(D - 1);
    x.sub(mean).div(var.add_scalar(1e-6).sqrt())
}

/// Rotary position embedding, half-split ("rotate half") layout, base 10000,
/// positions `0..T`: Edifice's `RoPE.apply_rotary_4d`. `x [B, H, T, hd]`
/// with `hd` even.
///
/// `out = [x1·cos − x2·sin, x1·sin + x2·cos]` with `x1 = x[.., :hd/2]`,
/// `x2 = x[.., hd/2:]`, angle `t · 10000^(−2i/hd)`.
pub fn rotary(x: Tensor<4>) -> Result<Tensor<4>, Error> {
    let [_, _, t, hd] = x.dims();
    if hd % 2 != 0 {
        return Err(Error::Shape(format!(
            "rotary embedding needs an even head dim, got {hd}"
        )));
    }
    let half = hd / 2;
    let (mut cos, mut sin) = (Vec::with_capacity(t * half), Vec::with_capacity(t * half));
    for pos in 0..t {
        for i in 0..half {
            let freq = 10000f32.powf(-((2 * i) as f32) / hd as f32);
            let angle = pos as f32 * freq;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    let device = x.device();
    let table = |v: Vec<f32>| {
        Tensor::<2>::from_data(TensorData::new(v, [t, half]), &device).unsqueeze::<4>()
    };
    let (cos, sin) = (table(cos), table(sin));
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.narrow(3, half, half);
    let first = x1.clone().mul(cos.clone()).sub(x2.clone().mul(sin.clone()));
    let second = x1.mul(sin).add(x2.mul(cos));
    Ok(Tensor::cat(vec![first, second], 3))
}

/// `x + pe` with `pe[t, d] = sin(t / (1 + d·scale))`: Edifice's sine-only
/// `add_positional_encoding` (default `scale` 0.01). `x [B, T, E]`.
pub fn add_positional_encoding(x: Tensor<3>, scale: f64) -> Tensor<3> {
    let [_, t, e] = x.dims();
    add_table(x, &positional_table(t, e, scale))
}

/// `x [B, T, E] + table [T·E]` (a [`positional_table`] made earlier).
pub fn add_table(x: Tensor<3>, table: &[f32]) -> Tensor<3> {
    let [_, t, e] = x.dims();
    let pe = Tensor::<2>::from_data(TensorData::new(table.to_vec(), [t, e]), &x.device());
    x.add(pe.unsqueeze())
}

/// The `[T, E]` table [`add_positional_encoding`] adds, row-major.
pub fn positional_table(t: usize, e: usize, scale: f64) -> Vec<f32> {
    (0..t * e)
        .map(|idx| positional_encoding(idx as u64 / e as u64, idx % e, scale))
        .collect()
}

/// `sin(pos / (1 + d·scale))`, one element of [`add_positional_encoding`]'s
/// table, and what a stream adds at absolute position `pos`. The angle is
/// an f64 quotient and its sine is taken in f64, then rounded once: an f32
/// product of a position and a frequency loses `pos · 2⁻²⁴` radians (0.3
/// at frame 10⁷), this stays within 1e-7 of the exact value for positions
/// below 10⁹ (the quotient's own rounding, `pos · 2⁻⁵³`).
pub fn positional_encoding(pos: u64, d: usize, scale: f64) -> f32 {
    sin(pos as f64 / (1.0 + d as f64 * scale)) as f32
}

/// `sin x` for `x >= 0` in f64, within a few ulps of libm's: a stream adds
/// one per feature per step, and libm's general reduction costs 4 µs a step
/// at width 256. Cody-Waite reduction by π/2 split in three 26-bit parts
/// (each `k·part` exact for `x < 2²⁶`), fdlibm's kernels on `[-π/4, π/4]`;
/// libm beyond.
// The constants are written with the digits fdlibm publishes (and the
// exact split of π/2); clippy would shorten them to what f64 keeps.
#[allow(clippy::excessive_precision)]
fn sin(x: f64) -> f64 {
    // fdlibm's __kernel_sin and __kernel_cos coefficients.
    const S1: f64 = -1.666_666_666_666_663_243_48e-01;
    const S2: f64 = 8.333_333_333_322_489_461_2e-03;
    const S3: f64 = -1.984_126_982_985_794_931_6e-04;
    const S4: f64 = 2.755_731_370_707_006_783_1e-06;
    const S5: f64 = -2.505_076_025_340_686_317_9e-08;
    const S6: f64 = 1.589_690_995_211_550_189_6e-10;
    const C1: f64 = 4.166_666_666_666_660_190_37e-02;
    const C2: f64 = -1.388_888_888_887_410_957_49e-03;
    const C3: f64 = 2.480_158_728_947_672_941_7e-05;
    const C4: f64 = -2.755_731_435_139_066_330_1e-07;
    const C5: f64 = 2.087_572_321_298_174_827_2e-09;
    const C6: f64 = -1.135_964_755_778_819_482_2e-11;
    const LIMIT: f64 = (1u64 << 26) as f64;
    if !(0.0..LIMIT).contains(&x) {
        return x.sin();
    }
    // π/2 = PIO2_1 + PIO2_2 + PIO2_3 (+ 1e-33): 26, 26 and 53 bits.
    const PIO2_1: f64 = 1.570_796_310_901_641_845_703_125;
    const PIO2_2: f64 = 1.589_325_471_229_585_673_427_209_258_079_528_808_593_75e-8;
    const PIO2_3: f64 = 6.123_233_995_736_766e-17;
    // Rounds to the nearest integer (|x·2/π| < 2⁵¹) without a libm call.
    const ROUND: f64 = 6_755_399_441_055_744.0; // 1.5 · 2⁵²
    let k = (x * std::f64::consts::FRAC_2_PI + ROUND) - ROUND;
    let r = ((x - k * PIO2_1) - k * PIO2_2) - k * PIO2_3;
    let z = r * r;
    let sin_r = r + r * z * (S1 + z * (S2 + z * (S3 + z * (S4 + z * (S5 + z * S6)))));
    let cos_r = 1.0 - 0.5 * z + z * z * (C1 + z * (C2 + z * (C3 + z * (C4 + z * (C5 + z * C6)))));
    match (k as u64) & 3 {
        0 => sin_r,
        1 => cos_r,
        2 => -sin_r,
        _ => -cos_r,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sin_matches_libm_everywhere_it_is_used() {
        let mut x = 0.0f64;
        let mut worst = 0.0f64;
        while x < 1.2e8 {
            worst = worst.max((super::sin(x) - x.sin()).abs());
            x = x * 1.001 + 0.377;
        }
        assert!(worst < 1e-14, "worst difference {worst}");
        for k in 0..2000 {
            let x = k as f64 * std::f64::consts::FRAC_PI_4;
            assert!((super::sin(x) - x.sin()).abs() < 1e-14, "sin({x})");
        }
    }
}
