//! Other Rust attention implementations, prepared on the same dense inputs as
//! `edifice bench kernel` so they can be timed side by side:
//!
//! * burn 0.22.1 `tensor::module::attention` on the Flex backend;
//! * candle-nn 0.11 CPU flash attention (`attention::flash_attn`).
//!
//! Inputs are `[B, H, N, D]` f32 (as in `edifice_kernels`). Preparation
//! (tensor creation, layout changes) happens outside the returned closure;
//! the closure runs one attention call and waits for its result.

use burn::tensor::{module::attention, ops::AttentionModuleOptions, Device, Tensor, TensorData};
use candle_core::Tensor as CTensor;
use candle_nn::attention::{flash_attn, AttnMask};

/// One dense attention problem.
pub struct Case<'a> {
    pub batch: usize,
    pub heads: usize,
    pub n: usize,
    pub head_dim: usize,
    pub causal: bool,
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
}

/// A prepared peer call.
pub type Call = Box<dyn FnMut()>;

/// Names of the peers, in the order [`prepare`] accepts them.
pub const PEERS: &[&str] = &["burn-flex", "candle-flash"];

/// Prepares one call of peer `name` on `case`.
pub fn prepare(name: &str, case: &Case) -> Result<Call, String> {
    match name {
        "burn-flex" => Ok(burn_flex(case)),
        "candle-flash" => candle_flash(case).map_err(|e| e.to_string()),
        other => Err(format!("unknown peer `{other}`")),
    }
}

fn burn_flex(case: &Case) -> Call {
    let device = Device::flex();
    let dims = [case.batch, case.heads, case.n, case.head_dim];
    let make = |x: &[f32]| Tensor::<4>::from_data(TensorData::new(x.to_vec(), dims), &device);
    let (q, k, v) = (make(case.q), make(case.k), make(case.v));
    let options = AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal: case.causal,
    };
    Box::new(move || {
        let o = attention(q.clone(), k.clone(), v.clone(), None, None, options);
        std::hint::black_box(o.into_data());
    })
}

fn candle_flash(case: &Case) -> candle_core::Result<Call> {
    let dev = candle_core::Device::Cpu;
    let dims = (case.batch, case.heads, case.n, case.head_dim);
    // candle's kernel takes (B, S, H, D).
    let make = |x: &[f32]| -> candle_core::Result<CTensor> {
        CTensor::from_slice(x, dims, &dev)?
            .transpose(1, 2)?
            .contiguous()
    };
    let (q, k, v) = (make(case.q)?, make(case.k)?, make(case.v)?);
    let scale = 1.0 / (case.head_dim as f32).sqrt();
    let causal = case.causal;
    Ok(Box::new(move || {
        let mask = if causal {
            AttnMask::causal()
        } else {
            AttnMask::None
        };
        let o = flash_attn::<f32>(&q, &k, &v, scale, mask, None, None).expect("candle flash_attn");
        std::hint::black_box(o);
    }))
}
