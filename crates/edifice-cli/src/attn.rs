//! `edifice attn`: the fused kernel on tensors from a safetensors file.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use edifice_kernels::{Attention, AttnShape, BoolMask, Pattern, PatternKind};

use crate::tensors::{write_f32, TensorFile};

#[derive(Args)]
pub struct AttnArgs {
    /// safetensors file with f32 tensors q [B, Hq, Nq, D], k and v [B, Hkv, Nk, D]
    /// (and `mask` [Nq, Nk] or [B, Hq, Nq, Nk], BOOL or U8, for `--pattern mask`;
    /// and optionally `do` [B, Hq, Nq, D], the gradient of a loss with respect to o).
    #[arg(long)]
    input: PathBuf,
    /// Where to write o [B, Hq, Nq, D] and lse [B, Hq, Nq] (f32), and, when the
    /// input has `do`, dq, dk and dv (shaped like q, k and v).
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
    let (q, qd) = file.f32("q", 4)?;
    let (k, kd) = file.f32("k", 4)?;
    let (v, vd) = file.f32("v", 4)?;
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
    let mut out: Vec<(&str, Vec<usize>, &[f32])> =
        vec![("o", qd.clone(), &o), ("lse", qd[..3].to_vec(), &lse)];
    let grads;
    if file.has("do") {
        let (d_o, dod) = file.f32("do", 4)?;
        if dod != qd {
            bail!("do has dims {dod:?} but q has dims {qd:?}; they must match");
        }
        grads = att.backward_vec(&q, &k, &v, &o, &lse, &d_o)?;
        out.push(("dq", qd.clone(), &grads.0));
        out.push(("dk", kd.clone(), &grads.1));
        out.push(("dv", kd.clone(), &grads.2));
    }
    write_f32(&args.output, &out).context("writing the output")?;
    Ok(())
}
