//! How many 512-bit `vdpbf16ps` (bf16 pair products, 64 FLOPs each) and
//! `vfmadd231ps` (f32, 32 FLOPs each) one core retires per second, with 10
//! independent accumulators so that latency does not limit either. Decides
//! whether bf16 pair products can beat widening bf16 to f32 on this CPU.
//!
//! `cargo run --release -p edifice-kernels --example bf16_dot_rate`

#[cfg(target_arch = "x86_64")]
fn main() {
    use std::arch::x86_64::*;
    use std::time::Instant;

    const ACC: usize = 10;

    #[target_feature(enable = "avx512f")]
    unsafe fn fma(iters: usize) -> f32 {
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

    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn dot_pairs(iters: usize) -> f32 {
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

    let iters = 10_000_000;
    let rate = |name: &str, flops: f64, f: unsafe fn(usize) -> f32| {
        let t = Instant::now();
        // SAFETY: called only after the features were detected below.
        let sink = unsafe { f(iters) };
        let per_s = (iters * ACC) as f64 / t.elapsed().as_secs_f64();
        println!(
            "{name:<12} {:6.2} G instructions/s  {:6.1} GFLOP/s per core  (sink {sink:.0})",
            per_s / 1e9,
            per_s * flops / 1e9
        );
    };
    if !is_x86_feature_detected!("avx512f") {
        println!("no AVX-512F on this CPU");
        return;
    }
    rate("vfmadd231ps", 32.0, fma);
    if is_x86_feature_detected!("avx512bf16") {
        rate("vdpbf16ps", 64.0, dot_pairs);
    } else {
        println!("no AVX512-BF16 on this CPU");
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    println!("x86-64 only");
}
