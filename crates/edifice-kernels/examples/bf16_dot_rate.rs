//! Whether bf16 pair products (`vdpbf16ps`) beat widening bf16 to f32 on
//! this CPU: the ratio of pair-product to f32 FMA instructions retired per
//! second, and the path bf16 attention takes by default (see
//! `edifice_kernels::calibrate`).
//!
//! `cargo run --release -p edifice-kernels --example bf16_dot_rate`

use edifice_kernels::calibrate::{bf16_pairs_full_rate, pair_rate};

fn main() {
    match pair_rate() {
        None => println!("no AVX512-BF16 on this CPU: bf16 attention widens to f32"),
        Some(rate) => println!(
            "vdpbf16ps retires {rate:.2} instructions per 512-bit FMA ({:.2}x the f32 FLOP rate); \
             bf16 attention uses {}",
            2.0 * rate,
            if bf16_pairs_full_rate() {
                "pair products"
            } else {
                "widening to f32"
            }
        ),
    }
}
