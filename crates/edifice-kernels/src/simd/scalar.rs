//! Portable scalar code: one lane.

use half::bf16;

use super::{round_bf16_bits, Pair, Simd, WithSimd, EXP2_POLY};

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
    fn sum(self, v: f32) -> f32 {
        v
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
