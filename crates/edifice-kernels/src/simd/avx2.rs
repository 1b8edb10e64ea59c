//! AVX2 + FMA: 8 f32 lanes.

use std::arch::x86_64::*;

use half::bf16;

use super::{Pair, Simd, WithSimd, EXP2_POLY};

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
    fn sum(self, v: __m256) -> f32 {
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
        }
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
    unsafe fn widen(self, p: *const bf16) -> __m256 {
        let x = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(x))
    }

    type P = __m256i;
    #[inline(always)]
    unsafe fn load_pairs(self, p: *const Pair) -> __m256i {
        _mm256_loadu_si256(p as *const __m256i)
    }
    #[inline(always)]
    unsafe fn store_pairs(self, p: *mut Pair, x: __m256i) {
        _mm256_storeu_si256(p as *mut __m256i, x)
    }
    #[inline(always)]
    unsafe fn splat_pair(self, p: *const Pair) -> __m256i {
        _mm256_set1_epi32((p as *const i32).read_unaligned())
    }
    #[inline(always)]
    fn dot_pairs(self, acc: __m256, a: __m256i, b: __m256i) -> __m256 {
        // No closures here: they would not inherit the target features.
        unsafe {
            let high = _mm256_set1_epi32(0xffff_0000u32 as i32);
            let a_lo = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(a));
            let b_lo = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(b));
            let a_hi = _mm256_castsi256_ps(_mm256_and_si256(a, high));
            let b_hi = _mm256_castsi256_ps(_mm256_and_si256(b, high));
            _mm256_fmadd_ps(a_hi, b_hi, _mm256_fmadd_ps(a_lo, b_lo, acc))
        }
    }
    #[inline(always)]
    fn pack_pairs(self, lo: __m256, hi: __m256) -> __m256i {
        unsafe { _mm256_or_si256(_mm256_srli_epi32::<16>(round256(lo)), round256(hi)) }
    }
    #[inline(always)]
    unsafe fn zip_rows(self, lo: *const bf16, hi: *const bf16) -> __m256i {
        let lo = _mm256_cvtepu16_epi32(_mm_loadu_si128(lo as *const __m128i));
        let hi = _mm256_cvtepu16_epi32(_mm_loadu_si128(hi as *const __m128i));
        _mm256_or_si256(lo, _mm256_slli_epi32::<16>(hi))
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

/// [`round_bf16_bits`](super::round_bf16_bits) on 8 lanes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn round256(x: __m256) -> __m256i {
    let bits = _mm256_castps_si256(x);
    let odd = _mm256_and_si256(_mm256_srli_epi32::<16>(bits), _mm256_set1_epi32(1));
    let up = _mm256_add_epi32(_mm256_set1_epi32(0x7fff), odd);
    _mm256_and_si256(
        _mm256_add_epi32(bits, up),
        _mm256_set1_epi32(0xffff_0000u32 as i32),
    )
}
