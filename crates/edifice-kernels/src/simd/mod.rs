//! A minimal SIMD layer with run-time dispatch (pulp's pattern, for the few
//! operations the kernels need).
//!
//! Micro-kernels are written once, generic over [`Simd`], and marked
//! `#[inline(always)]`. [`Simd::vectorize`] runs an operation inside a
//! function compiled with the instruction set's target features, so the
//! generic code inlined into it is compiled for that instruction set. A value
//! of an ISA type is proof that the CPU supports it: the only constructors
//! check at run time.

use half::bf16;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod scalar;

#[cfg(target_arch = "x86_64")]
pub(crate) use avx2::Avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) use avx512::Avx512;
pub(crate) use scalar::Scalar;

/// Two bf16 that one product step consumes together: consecutive elements
/// of a row along the reduction (a K row's `d, d+1`; P's keys `j, j+1`).
pub(crate) type Pair = [bf16; 2];

/// `x` rounded to the nearest bf16, ties to even, as the high half of an f32
/// bit pattern (finite inputs; what `vcvtne2ps2bf16` computes).
#[inline(always)]
pub(super) fn round_bf16_bits(bits: u32) -> u32 {
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
    /// The sum of the lanes (in a fixed order per instruction set).
    fn sum(self, v: Self::V) -> f32;
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
pub(super) const EXP2_POLY: [f32; 6] = [
    1.535_336_2e-4,
    1.339_887_4e-3,
    9.618_437e-3,
    5.550_332_5e-2,
    2.402_264_8e-1,
    6.931_472e-1,
];

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
        // Detected once: a stream's step asks per call and must not allocate.
        static WIDEST: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *WIDEST.get_or_init(|| Isa::available()[0])
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
