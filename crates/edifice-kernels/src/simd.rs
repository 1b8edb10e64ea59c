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

use half::bf16;

/// Two bf16 that one product step consumes together: consecutive elements
/// of a row along the reduction (a K row's `d, d+1`; P's keys `j, j+1`).
pub(crate) type Pair = [bf16; 2];

/// `x` rounded to the nearest bf16, ties to even, as the high half of an f32
/// bit pattern (finite inputs; what `vcvtne2ps2bf16` computes).
#[inline(always)]
fn round_bf16_bits(bits: u32) -> u32 {
    bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) & 0xffff_0000
}

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

    /// `LANES` bf16 widened to f32 (exact).
    /// # Safety
    /// `p` must be valid for reading `LANES` bf16.
    unsafe fn widen(self, p: *const bf16) -> Self::V;

    /// A vector of `LANES` bf16 pairs (two reduction terms per f32 lane).
    type P: Copy;
    /// # Safety
    /// `p` must be valid for reading `LANES` pairs.
    unsafe fn load_pairs(self, p: *const Pair) -> Self::P;
    /// # Safety
    /// `p` must be valid for writing `LANES` pairs.
    unsafe fn store_pairs(self, p: *mut Pair, x: Self::P);
    /// # Safety
    /// `p` must be valid for reading one pair.
    unsafe fn splat_pair(self, p: *const Pair) -> Self::P;
    /// `acc + a.0·b.0 + a.1·b.1` per lane, products of bf16 summed in f32
    /// (`vdpbf16ps` where the CPU has it).
    fn dot_pairs(self, acc: Self::V, a: Self::P, b: Self::P) -> Self::V;
    /// Lane `i` = `(bf16(lo[i]), bf16(hi[i]))`, rounded to nearest even.
    fn pack_pairs(self, lo: Self::V, hi: Self::V) -> Self::P;
    /// Lane `i` = `(lo[i], hi[i])`: two rows of bf16 interleaved.
    /// # Safety
    /// `lo` and `hi` must be valid for reading `LANES` bf16.
    unsafe fn zip_rows(self, lo: *const bf16, hi: *const bf16) -> Self::P;

    /// Runs `op` with this instruction set enabled.
    fn vectorize<Op: WithSimd>(self, op: Op) -> Op::Output;
}

/// An element of a tile product's operands: an f32, or a [`Pair`] of bf16
/// that one product step consumes (two terms of the reduction). The tile
/// kernels are written once over it.
pub(crate) trait Operand: Copy + Send + Sync + 'static {
    /// Reduction terms per element.
    const TERMS: usize;
    /// A vector of `LANES` elements.
    type Vec<S: Simd>: Copy;
    /// # Safety
    /// `p` must be valid for reading `LANES` elements.
    unsafe fn load<S: Simd>(simd: S, p: *const Self) -> Self::Vec<S>;
    /// # Safety
    /// `p` must be valid for reading one element.
    unsafe fn splat<S: Simd>(simd: S, p: *const Self) -> Self::Vec<S>;
    /// `acc + Σ_terms a · b` per lane.
    fn madd<S: Simd>(simd: S, acc: S::V, a: Self::Vec<S>, b: Self::Vec<S>) -> S::V;
    /// A vector of zeros.
    fn zero<S: Simd>(simd: S) -> Self::Vec<S>;
    /// One zero element.
    fn zero_value() -> Self;
}

impl Operand for f32 {
    const TERMS: usize = 1;
    type Vec<S: Simd> = S::V;
    #[inline(always)]
    unsafe fn load<S: Simd>(simd: S, p: *const f32) -> S::V {
        simd.load(p)
    }
    #[inline(always)]
    unsafe fn splat<S: Simd>(simd: S, p: *const f32) -> S::V {
        simd.splat(*p)
    }
    #[inline(always)]
    fn madd<S: Simd>(simd: S, acc: S::V, a: S::V, b: S::V) -> S::V {
        simd.fma(a, b, acc)
    }
    #[inline(always)]
    fn zero<S: Simd>(simd: S) -> S::V {
        simd.splat(0.0)
    }
    fn zero_value() -> f32 {
        0.0
    }
}

impl Operand for Pair {
    const TERMS: usize = 2;
    type Vec<S: Simd> = S::P;
    #[inline(always)]
    unsafe fn load<S: Simd>(simd: S, p: *const Pair) -> S::P {
        simd.load_pairs(p)
    }
    #[inline(always)]
    unsafe fn splat<S: Simd>(simd: S, p: *const Pair) -> S::P {
        simd.splat_pair(p)
    }
    #[inline(always)]
    fn madd<S: Simd>(simd: S, acc: S::V, a: S::P, b: S::P) -> S::V {
        simd.dot_pairs(acc, a, b)
    }
    #[inline(always)]
    fn zero<S: Simd>(simd: S) -> S::P {
        // SAFETY: reads one pair from a local.
        unsafe { simd.splat_pair(&[bf16::ZERO; 2]) }
    }
    fn zero_value() -> Pair {
        [bf16::ZERO; 2]
    }
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
    unsafe fn widen(self, p: *const bf16) -> f32 {
        (*p).to_f32()
    }

    type P = u32;
    #[inline(always)]
    unsafe fn load_pairs(self, p: *const Pair) -> u32 {
        (p as *const u32).read_unaligned()
    }
    #[inline(always)]
    unsafe fn store_pairs(self, p: *mut Pair, x: u32) {
        (p as *mut u32).write_unaligned(x)
    }
    #[inline(always)]
    unsafe fn splat_pair(self, p: *const Pair) -> u32 {
        self.load_pairs(p)
    }
    #[inline(always)]
    fn dot_pairs(self, acc: f32, a: u32, b: u32) -> f32 {
        let lo = |x: u32| f32::from_bits(x << 16);
        let hi = |x: u32| f32::from_bits(x & 0xffff_0000);
        acc + lo(a) * lo(b) + hi(a) * hi(b)
    }
    #[inline(always)]
    fn pack_pairs(self, lo: f32, hi: f32) -> u32 {
        (round_bf16_bits(lo.to_bits()) >> 16) | round_bf16_bits(hi.to_bits())
    }
    #[inline(always)]
    unsafe fn zip_rows(self, lo: *const bf16, hi: *const bf16) -> u32 {
        (*lo).to_bits() as u32 | ((*hi).to_bits() as u32) << 16
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

/// [`round_bf16_bits`] on 8 lanes.
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

/// [`round_bf16_bits`] on 16 lanes.
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

/// The instruction sets the kernels can run on, widest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512F with AVX512-BF16: 16 f32 lanes, bf16 pair products in one
    /// instruction. The same f32 code as `Avx512`.
    Avx512Bf16,
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
            Isa::Avx512Bf16 | Isa::Avx512 => 16,
            Isa::Avx2 => 8,
            Isa::Scalar => 1,
        }
    }

    /// The widest instruction set this CPU has (for elementwise kernels,
    /// which take any width).
    pub(crate) fn widest() -> Isa {
        Isa::available()[0]
    }

    /// Every instruction set this CPU supports, widest first (always ends
    /// with `Scalar`).
    pub fn available() -> Vec<Isa> {
        let mut out = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if Avx512::<true>::detect().is_some() {
                out.push(Isa::Avx512Bf16);
            }
            if Avx512::<false>::detect().is_some() {
                out.push(Isa::Avx512);
            }
            if Avx2::detect().is_some() {
                out.push(Isa::Avx2);
            }
        }
        out.push(Isa::Scalar);
        out
    }

    /// The widest available instruction set whose vectors divide `head_dim`,
    /// never `Avx512Bf16`: its f32 code is `Avx512`'s, and whether bf16
    /// attention uses its pair products is decided per CPU (see
    /// [`Attention::bf16_products`](crate::Attention::bf16_products)).
    pub fn best_for(head_dim: usize) -> Isa {
        Isa::available()
            .into_iter()
            .filter(|&isa| isa != Isa::Avx512Bf16)
            .find(|isa| head_dim.is_multiple_of(isa.lanes()))
            .unwrap_or(Isa::Scalar)
    }

    /// Runs `op` on this instruction set; falls back to scalar code if the
    /// CPU lacks it.
    pub(crate) fn run<Op: WithSimd>(self, op: Op) -> Op::Output {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Bf16 => match Avx512::<true>::detect() {
                Some(simd) => simd.vectorize(op),
                None => Isa::Avx512.run(op),
            },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => match Avx512::<false>::detect() {
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
