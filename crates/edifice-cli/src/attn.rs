//! `edifice attn`: the fused kernel on tensors from a safetensors file.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use edifice_kernels::{bf16, Attention, AttnShape, BoolMask, Pattern, PatternKind};
use safetensors::Dtype;

use crate::tensors::{encode, write, Stored, TensorFile};

#[derive(Args)]
pub struct AttnArgs {
    /// safetensors file with tensors q [B, Hq, Nq, D], k and v [B, Hkv, Nk, D],
    /// all F32 or all BF16 (and `mask` [Nq, Nk] or [B, Hq, Nq, Nk], BOOL or U8,
    /// for `--pattern mask`; and optionally `do` [B, Hq, Nq, D], the gradient of
    /// a loss with respect to o, in q's dtype). BF16 is computed with f32
    /// accumulation.
    #[arg(long)]
    input: PathBuf,
    /// Where to write o [B, Hq, Nq, D] (q's dtype) and lse [B, Hq, Nq] (F32),
    /// and, when the input has `do`, dq, dk and dv (shaped like q, k and v, in
    /// q's dtype).
    #[arg(long)]
    output: PathBuf,
    /// full, window:W, chunk:C, strided:S:L, shifted:G or mask.
    #[arg(long, default_value = "full")]
    pattern: String,
    /// Intersect the pattern with j <= i + (Nk - Nq).
    #[arg(long)]
    causal: bool,
    /// Score scale (default 1/sqrt(D)).
    #[arg(long)]
    scale: Option<f32>,
}

pub fn run(args: AttnArgs) -> Result<()> {
    let file = TensorFile::read(&args.input)?;
    match file.dtype("q")? {
        Dtype::BF16 => run_as::<bf16>(&args, &file),
        _ => run_as::<f32>(&args, &file),
    }
}

/// `attn` with q, k, v, o (and do, dq, dk, dv) stored as `E`; q's dtype
/// picks `E` and the other tensors must have it too.
fn run_as<E: Stored>(args: &AttnArgs, file: &TensorFile) -> Result<()> {
    let (q, qd) = file.floats::<E>("q", 4)?;
    let (k, kd) = file.floats::<E>("k", 4)?;
    let (v, vd) = file.floats::<E>("v", 4)?;
    if kd != vd {
        bail!("k has dims {kd:?} but v has dims {vd:?}; they must match");
    }
    if qd[0] != kd[0] || qd[3] != kd[3] {
        bail!("q has dims {qd:?} and k {kd:?}: batch (dim 0) and head dim (dim 3) must match");
    }
    let shape = AttnShape {
        batch: qd[0],
        heads_q: qd[1],
        heads_kv: kd[1],
        len_q: qd[2],
        len_k: kd[2],
        head_dim: qd[3],
    };
    let kind = if args.pattern.trim() == "mask" {
        let (data, dims) = file.bool("mask")?;
        PatternKind::Mask(BoolMask::new(data, &dims)?)
    } else {
        args.pattern.parse()?
    };
    let mut att = Attention::new(shape, Pattern::new(kind, args.causal))?;
    if let Some(scale) = args.scale {
        att = att.with_scale(scale)?;
    }
    let (o, lse) = att.forward_vec(&q, &k, &v)?;
    let mut out = vec![encode("o", &qd, &o), encode("lse", &qd[..3], &lse)];
    if file.has("do") {
        let (d_o, dod) = file.floats::<E>("do", 4)?;
        if dod != qd {
            bail!("do has dims {dod:?} but q has dims {qd:?}; they must match");
        }
        let (dq, dk, dv) = att.backward_vec(&q, &k, &v, &o, &lse, &d_o)?;
        out.push(encode("dq", &qd, &dq));
        out.push(encode("dk", &kd, &dk));
        out.push(encode("dv", &kd, &dv));
    }
    write(&args.output, &out).context("writing the output")?;
    Ok(())
}
