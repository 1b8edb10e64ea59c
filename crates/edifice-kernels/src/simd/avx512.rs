//! AVX-512F (and AVX512-BF16): 16 f32 lanes.

use std::arch::x86_64::*;

use half::bf16;

use super::{Pair, Simd, WithSimd, EXP2_POLY};

/// AVX-512F: 16 lanes; with `BF16`, also AVX512-BF16 (and BW), whose
/// `vdpbf16ps` does a pair product in one instruction.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512<const BF16: bool>(());

#[cfg(target_arch = "x86_64")]
impl<const BF16: bool> Avx512<BF16> {
    pub(crate) fn detect() -> Option<Self> {
        (is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && (!BF16
                || is_x86_feature_detected!("avx512bf16") && is_x86_feature_detected!("avx512bw")))
        .then_some(Avx512(()))
    }
}

#[cfg(target_arch = "x86_64")]
impl<const BF16: bool> Simd for Avx512<BF16> {
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
    fn sum(self, v: __m512) -> f32 {
        unsafe { _mm512_reduce_add_ps(v) }
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
    unsafe fn widen(self, p: *const bf16) -> __m512 {
        let x = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i));
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(x))
    }

    type P = __m512i;
    #[inline(always)]
    unsafe fn load_pairs(self, p: *const Pair) -> __m512i {
        _mm512_loadu_si512(p as *const __m512i)
    }
    #[inline(always)]
    unsafe fn store_pairs(self, p: *mut Pair, x: __m512i) {
        _mm512_storeu_si512(p as *mut __m512i, x)
    }
    #[inline(always)]
    unsafe fn splat_pair(self, p: *const Pair) -> __m512i {
        _mm512_set1_epi32((p as *const i32).read_unaligned())
    }
    #[inline(always)]
    fn dot_pairs(self, acc: __m512, a: __m512i, b: __m512i) -> __m512 {
        unsafe {
            if BF16 {
                _mm512_dpbf16_ps(
                    acc,
                    std::mem::transmute::<__m512i, __m512bh>(a),
                    std::mem::transmute::<__m512i, __m512bh>(b),
                )
            } else {
                let high = _mm512_set1_epi32(0xffff_0000u32 as i32);
                let a_lo = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(a));
                let b_lo = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(b));
                let a_hi = _mm512_castsi512_ps(_mm512_and_si512(a, high));
                let b_hi = _mm512_castsi512_ps(_mm512_and_si512(b, high));
                _mm512_fmadd_ps(a_hi, b_hi, _mm512_fmadd_ps(a_lo, b_lo, acc))
            }
        }
    }
    #[inline(always)]
    fn pack_pairs(self, lo: __m512, hi: __m512) -> __m512i {
        unsafe {
            if BF16 {
                // Element i of the result is lo[i], element 16 + i is hi[i];
                // the permutation puts them side by side.
                let both = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
                let zip = _mm512_set_epi16(
                    31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21,
                    5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0,
                );
                _mm512_permutexvar_epi16(zip, both)
            } else {
                _mm512_or_si512(_mm512_srli_epi32::<16>(round512(lo)), round512(hi))
            }
        }
    }
    #[inline(always)]
    unsafe fn zip_rows(self, lo: *const bf16, hi: *const bf16) -> __m512i {
        let lo = _mm512_cvtepu16_epi32(_mm256_loadu_si256(lo as *const __m256i));
        let hi = _mm512_cvtepu16_epi32(_mm256_loadu_si256(hi as *const __m256i));
        _mm512_or_si512(lo, _mm512_slli_epi32::<16>(hi))
    }

    #[inline(always)]
    fn vectorize<Op: WithSimd>(self, op: Op) -> Op::Output {
        #[target_feature(enable = "avx512f,avx2,fma")]
        unsafe fn run<Op: WithSimd, const BF16: bool>(simd: Avx512<BF16>, op: Op) -> Op::Output {
            op.with_simd(simd)
        }
        #[target_feature(enable = "avx512f,avx512bw,avx512bf16,avx2,fma")]
        unsafe fn run_bf16<Op: WithSimd, const BF16: bool>(
            simd: Avx512<BF16>,
            op: Op,
        ) -> Op::Output {
            op.with_simd(simd)
        }
        // SAFETY: `self` proves AVX-512F, AVX2 and FMA are available, and
        // with BF16 also AVX512-BF16 and AVX512-BW.
        unsafe {
            if BF16 {
                run_bf16(self, op)
            } else {
                run(self, op)
            }
        }
    }
}

/// [`round_bf16_bits`](super::round_bf16_bits) on 16 lanes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn round512(x: __m512) -> __m512i {
    let bits = _mm512_castps_si512(x);
    let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(1));
    let up = _mm512_add_epi32(_mm512_set1_epi32(0x7fff), odd);
    _mm512_and_si512(
        _mm512_add_epi32(bits, up),
        _mm512_set1_epi32(0xffff_0000u32 as i32),
    )
}
