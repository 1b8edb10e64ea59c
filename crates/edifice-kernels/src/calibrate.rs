//! Whether bf16 pair products (`vdpbf16ps`) run at full rate on this CPU,
//! decided once per process by timing them against f32 FMAs.
//!
//! A 512-bit `vdpbf16ps` does 64 FLOPs (32 pair products), a 512-bit
//! `vfmadd231ps` 32. Where the CPU retires both at the same rate (AMD Zen 4:
//! bf16 attention measured 319 GFLOP/s against 182 when widened to f32),
//! pairs double the arithmetic rate; where `vdpbf16ps` retires at a quarter
//! of the FMA rate (the Intel vCPUs these kernels were first measured on:
//! 1.3 against 5.3 G instructions/s per core) pairs halve it, and widening
//! bf16 to f32 wins. A CPU model table would go stale; the measurement
//! takes about a millisecond, once.

use std::sync::OnceLock;

/// Pair-product instructions must retire at least this fraction of the FMA
/// rate for pairs to be chosen (full rate is 1; the slow case is 0.25).
const FULL_RATE: f64 = 0.75;

/// Whether [`Isa::Avx512Bf16`](crate::Isa)'s pair products are worth using
/// for bf16 attention on this CPU: `false` without AVX512-BF16, else the
/// outcome of a short timing, measured at the first call and cached.
pub fn bf16_pairs_full_rate() -> bool {
    static DECISION: OnceLock<bool> = OnceLock::new();
    *DECISION.get_or_init(|| pair_rate().is_some_and(|rate| rate >= FULL_RATE))
}

/// Pair-product instructions retired per FMA instruction, best of a few
/// interleaved rounds; `None` without AVX512-BF16.
pub fn pair_rate() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")) {
            return None;
        }
        let time = |f: unsafe fn(usize) -> f32| {
            let start = std::time::Instant::now();
            // SAFETY: both timed functions need AVX-512F and AVX512-BF16,
            // detected above.
            std::hint::black_box(unsafe { f(ITERS) });
            start.elapsed().as_secs_f64()
        };
        let (mut fma, mut pairs) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..ROUNDS {
            fma = fma.min(time(x86::fma));
            pairs = pairs.min(time(x86::pairs));
        }
        Some(fma / pairs)
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// Iterations of `ACC` independent instructions per timing (about 0.1 ms at
/// 5 G instructions/s).
#[cfg(target_arch = "x86_64")]
const ITERS: usize = 50_000;

/// Timings per kind; the best counts (others may be interrupted).
#[cfg(target_arch = "x86_64")]
const ROUNDS: usize = 5;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Independent accumulators, so that latency limits neither kind.
    const ACC: usize = 10;

    /// `ACC · iters` 512-bit FMAs.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn fma(iters: usize) -> f32 {
        let (a, b) = (_mm512_set1_ps(1.0001), _mm512_set1_ps(0.9999));
        let mut acc = [_mm512_setzero_ps(); ACC];
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(a, b, *x);
            }
            // Keeps LLVM from folding iterations together.
            std::arch::asm!("", options(nomem, nostack));
        }
        acc.iter().map(|&x| _mm512_reduce_add_ps(x)).sum()
    }

    /// `ACC · iters` 512-bit bf16 pair products.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn pairs(iters: usize) -> f32 {
        let a: __m512bh = std::mem::transmute(_mm512_set1_epi16(0x3f80));
        let mut acc = [_mm512_setzero_ps(); ACC];
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm512_dpbf16_ps(*x, a, a);
            }
            std::arch::asm!("", options(nomem, nostack));
        }
        acc.iter().map(|&x| _mm512_reduce_add_ps(x)).sum()
    }
}
