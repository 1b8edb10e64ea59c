//! A minimal SIMD layer with run-time dispatch (pulp's pattern, for the few
//! operations the kernels need).
//!
//! Micro-kernels are written once, generic over [`Simd`], and marked
//! `#[inline(always)]`. [`Simd::vectorize`] runs an operation inside a
//! function compiled with the instruction set's target features, so the
//! generic code inlined into it is compiled for that instruction set. A value
//! of an ISA type is proof that the CPU supports it: the only constructors
//! check at run time.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// An operation to run with a particular instruction set.
pub(crate) trait WithSimd {
    type Output;
    fn with_simd<S: Simd>(self, simd: S) -> Self::Output;
}

/// f32 vector operations of one instruction set.
pub(crate) trait Simd: Copy + Send + Sync + 'static {
    /// f32 lanes per vector.
    const LANES: usize;
    /// A vector of `LANES` f32.
    type V: Copy;

    fn splat(self, x: f32) -> Self::V;
    /// # Safety
    /// `p` must be valid for reading `LANES` f32.
    unsafe fn load(self, p: *const f32) -> Self::V;
    /// # Safety
    /// `p` must be valid for writing `LANES` f32.
    unsafe fn store(self, p: *mut f32, v: Self::V);
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    fn sub(self, a: Self::V, b: Self::V) -> Self::V;
    fn mul(self, a: Self::V, b: Self::V) -> Self::V;
    fn div(self, a: Self::V, b: Self::V) -> Self::V;
    fn max(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a * b + c`, fused where the hardware has it.
    fn fma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `2^x` per lane, relative error below 1e-6 for `x` in `[-126, 127]`;
    /// exactly 0 for `x < -126` (and for `-inf`).
    fn exp2(self, x: Self::V) -> Self::V;

    /// Runs `op` with this instruction set enabled.
    fn vectorize<Op: WithSimd>(self, op: Op) -> Op::Output;
}

/// Cephes' minimax polynomial for `2^f` on `[-0.5, 0.5]` (relative error
/// about 2e-7), highest degree first; the constant term is 1.
const EXP2_POLY: [f32; 6] = [
    1.535_336_2e-4,
    1.339_887_4e-3,
    9.618_437e-3,
    5.550_332_5e-2,
    2.402_264_8e-1,
    6.931_472e-1,
];

/// Portable fallback: one lane, plain f32.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Scalar;

impl Simd for Scalar {
    const LANES: usize = 1;
    type V = f32;

    #[inline(always)]
    fn splat(self, x: f32) -> f32 {
        x
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> f32 {
        *p
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: f32) {
        *p = v
    }
    #[inline(always)]
    fn add(self, a: f32, b: f32) -> f32 {
        a + b
    }
    #[inline(always)]
    fn sub(self, a: f32, b: f32) -> f32 {
        a - b
    }
    #[inline(always)]
    fn mul(self, a: f32, b: f32) -> f32 {
        a * b
    }
    #[inline(always)]
    fn div(self, a: f32, b: f32) -> f32 {
        a / b
    }
    #[inline(always)]
    fn max(self, a: f32, b: f32) -> f32 {
        a.max(b)
    }
    #[inline(always)]
    fn fma(self, a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
    #[inline(always)]
    fn exp2(self, x: f32) -> f32 {
        if x < -126.0 {
            return 0.0;
        }
        let x = x.min(127.0);
        let n = x.round();
        let f = x - n;
        let p = EXP2_POLY.iter().fold(0.0, |acc, &c| acc * f + c) * f + 1.0;
        f32::from_bits((p.to_bits() as i32 + ((n as i32) << 23)) as u32)
    }
    #[inline(always)]
    fn vectorize<Op: WithSimd>(self, op: Op) -> Op::Output {
        op.with_simd(self)
    }
}

/// AVX2 + FMA: 8 lanes.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2(());

#[cfg(target_arch = "x86_64")]
impl Avx2 {
    pub(crate) fn detect() -> Option<Self> {
        (is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")).then_some(Avx2(()))
    }
}

// SAFETY (both x86 impls): an `Avx2`/`Avx512` value exists only after
// run-time detection of its features, so calling the intrinsics is sound.
#[cfg(target_arch = "x86_64")]
impl Simd for Avx2 {
    const LANES: usize = 8;
    type V = __m256;

    #[inline(always)]
    fn splat(self, x: f32) -> __m256 {
        unsafe { _mm256_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: __m256) {
        _mm256_storeu_ps(p, v)
    }
    #[inline(always)]
    fn add(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_sub_ps(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_mul_ps(a, b) }
    }
    #[inline(always)]
    fn div(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_div_ps(a, b) }
    }
    #[inline(always)]
    fn max(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_max_ps(a, b) }
    }
    #[inline(always)]
    fn fma(self, a: __m256, b: __m256, c: __m256) -> __m256 {
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn exp2(self, x: __m256) -> __m256 {
        unsafe {
            let lo = _mm256_set1_ps(-126.0);
            let xc = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(127.0));
            let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(xc);
            let f = _mm256_sub_ps(xc, n);
            let mut p = _mm256_set1_ps(EXP2_POLY[0]);
            for &c in &EXP2_POLY[1..] {
                p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(c));
            }
            p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0));
            let scaled = _mm256_add_epi32(
                _mm256_castps_si256(p),
                _mm256_slli_epi32::<23>(_mm256_cvtps_epi32(n)),
            );
            let keep = _mm256_cmp_ps::<_CMP_GE_OQ>(x, lo);
            _mm256_and_ps(keep, _mm256_castsi256_ps(scaled))
        }
    }
    #[inline(always)]
    fn vectorize<Op: WithSimd>(self, op: Op) -> Op::Output {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn run<Op: WithSimd>(simd: Avx2, op: Op) -> Op::Output {
            op.with_simd(simd)
        }
        // SAFETY: `self` proves AVX2 and FMA are available.
        unsafe { run(self, op) }
    }
}

/// AVX-512F: 16 lanes.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512(());

#[cfg(target_arch = "x86_64")]
impl Avx512 {
    pub(crate) fn detect() -> Option<Self> {
        (is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma"))
        .then_some(Avx512(()))
    }
}

#[cfg(target_arch = "x86_64")]
impl Simd for Avx512 {
    const LANES: usize = 16;
    type V = __m512;

    #[inline(always)]
    fn splat(self, x: f32) -> __m512 {
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: __m512) {
        _mm512_storeu_ps(p, v)
    }
    #[inline(always)]
    fn add(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_sub_ps(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[inline(always)]
    fn div(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_div_ps(a, b) }
    }
    #[inline(always)]
    fn max(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_max_ps(a, b) }
    }
    #[inline(always)]
    fn fma(self, a: __m512, b: __m512, c: __m512) -> __m512 {
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn exp2(self, x: __m512) -> __m512 {
        unsafe {
            let lo = _mm512_set1_ps(-126.0);
            let xc = _mm512_min_ps(_mm512_max_ps(x, lo), _mm512_set1_ps(127.0));
            let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(xc);
            let f = _mm512_sub_ps(xc, n);
            let mut p = _mm512_set1_ps(EXP2_POLY[0]);
            for &c in &EXP2_POLY[1..] {
                p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
            }
            p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0));
            let scaled = _mm512_add_epi32(
                _mm512_castps_si512(p),
                _mm512_slli_epi32::<23>(_mm512_cvtps_epi32(n)),
            );
            let keep = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, lo);
            _mm512_maskz_mov_ps(keep, _mm512_castsi512_ps(scaled))
        }
    }
    #[inline(always)]
    fn vectorize<Op: WithSimd>(self, op: Op) -> Op::Output {
        #[target_feature(enable = "avx512f,avx2,fma")]
        unsafe fn run<Op: WithSimd>(simd: Avx512, op: Op) -> Op::Output {
            op.with_simd(simd)
        }
        // SAFETY: `self` proves AVX-512F, AVX2 and FMA are available.
        unsafe { run(self, op) }
    }
}

/// The instruction sets the kernels can run on, widest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512F, 16 f32 lanes.
    Avx512,
    /// AVX2 + FMA, 8 f32 lanes.
    Avx2,
    /// Portable scalar code.
    Scalar,
}

impl Isa {
    /// f32 lanes of the instruction set.
    pub fn lanes(self) -> usize {
        match self {
            Isa::Avx512 => 16,
            Isa::Avx2 => 8,
            Isa::Scalar => 1,
        }
    }

    /// Every instruction set this CPU supports, widest first (always ends
    /// with `Scalar`).
    pub fn available() -> Vec<Isa> {
        let mut out = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if Avx512::detect().is_some() {
                out.push(Isa::Avx512);
            }
            if Avx2::detect().is_some() {
                out.push(Isa::Avx2);
            }
        }
        out.push(Isa::Scalar);
        out
    }

    /// The widest available instruction set whose vectors divide `head_dim`.
    pub fn best_for(head_dim: usize) -> Isa {
        Isa::available()
            .into_iter()
            .find(|isa| head_dim.is_multiple_of(isa.lanes()))
            .unwrap_or(Isa::Scalar)
    }

    /// Runs `op` on this instruction set; falls back to scalar code if the
    /// CPU lacks it.
    pub(crate) fn run<Op: WithSimd>(self, op: Op) -> Op::Output {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => match Avx512::detect() {
                Some(simd) => simd.vectorize(op),
                None => Scalar.vectorize(op),
            },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => match Avx2::detect() {
                Some(simd) => simd.vectorize(op),
                None => Scalar.vectorize(op),
            },
            _ => Scalar.vectorize(op),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Exp2Check(Vec<f32>);

    impl WithSimd for Exp2Check {
        type Output = Vec<f32>;
        #[inline(always)]
        fn with_simd<S: Simd>(self, simd: S) -> Vec<f32> {
            let mut out = self.0.clone();
            for chunk in out.chunks_exact_mut(S::LANES) {
                unsafe {
                    let v = simd.exp2(simd.load(chunk.as_ptr()));
                    simd.store(chunk.as_mut_ptr(), v);
                }
            }
            out
        }
    }

    #[test]
    fn exp2_is_accurate_on_every_isa() {
        let xs: Vec<f32> = (0..4096)
            .map(|i| -130.0 + i as f32 * (140.0 / 4096.0))
            .collect();
        for isa in Isa::available() {
            let got = isa.run(Exp2Check(xs.clone()));
            for (&x, &y) in xs.iter().zip(&got) {
                let want = (x as f64).exp2();
                if x < -126.0 {
                    assert_eq!(y, 0.0, "{isa:?} exp2({x})");
                } else if x > -125.0 {
                    let rel = ((y as f64 - want) / want).abs();
                    assert!(
                        rel < 1e-6,
                        "{isa:?} exp2({x}) = {y}, want {want}, rel {rel}"
                    );
                }
            }
            let inf = isa.run(Exp2Check(vec![f32::NEG_INFINITY; 16]));
            assert!(inf.iter().all(|&y| y == 0.0), "{isa:?} exp2(-inf)");
        }
    }
}
