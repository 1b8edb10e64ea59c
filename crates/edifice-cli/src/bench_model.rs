//! `edifice bench model`: forward time and peak memory of a model over
//! sequence lengths, or the time of one training step (forward, backward,
//! AdamW).

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use clap::Args;
use edifice::optim::AdamWConfig;
use edifice::weights;
use edifice::{Model, ModelConfig};
use serde::Serialize;

use crate::alloc;
use crate::bench::time_it;

#[derive(Args)]
pub struct ModelArgs {
    /// Model config (TOML, or JSON when it ends in .json).
    #[arg(long)]
    config: PathBuf,
    /// Sequence lengths (default: the config's own).
    #[arg(long, value_delimiter = ',')]
    seq_lens: Vec<usize>,
    /// Batch size.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Time one training step (forward, loss, backward, AdamW) instead of a forward pass.
    #[arg(long)]
    train: bool,
    /// Minimum seconds of timed calls per case.
    #[arg(long, default_value_t = 1.0)]
    min_time: f64,
    /// Print one JSON array instead of a table.
    #[arg(long)]
    json: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Serialize)]
struct Record {
    model: String,
    /// `forward` or `train_step`.
    pass: String,
    seq_len: usize,
    batch: usize,
    threads: usize,
    parameters: usize,
    /// Median wall time of one call.
    ms: f64,
    /// Peak bytes allocated during one call on top of the weights and input.
    peak_extra_bytes: usize,
    iters: usize,
}

fn input(config: &ModelConfig, batch: usize, device: &Device) -> Tensor<3> {
    let (t, e) = config.input_dims();
    let x = edifice_kernels::reference::uniform(batch * t * e, 11);
    Tensor::from_data(TensorData::new(x, [batch, t, e]), device)
}

fn forward(model: &Model, x: &Tensor<3>) -> Result<()> {
    let y = model.forward(x.clone())?;
    std::hint::black_box(y.into_data());
    Ok(())
}

/// One step of AdamW on the mean squared output (a stand-in loss: the point
/// is the cost of forward + backward + update).
fn train_step(model: Model, optim: &mut ModuleOptimizer, x: &Tensor<3>) -> Result<Model> {
    let y = model.forward(x.clone())?;
    let loss = y.clone().mul(y).mean();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    Ok(optim.step(1e-4, model, grads))
}

pub fn run(args: &ModelArgs, threads: usize) -> Result<()> {
    let base = ModelConfig::from_path(&args.config)
        .with_context(|| format!("config {}", args.config.display()))?;
    let lens = if args.seq_lens.is_empty() {
        vec![base.input_dims().0]
    } else {
        args.seq_lens.clone()
    };
    let mut records = Vec::new();
    for len in lens {
        let config = base.with_seq_len(len);
        config.validate()?;
        let device = if args.train {
            Device::flex().autodiff()
        } else {
            Device::flex()
        };
        let mut model = config.init(&device)?;
        let parameters = weights::entries(&mut model)
            .iter()
            .map(|e| e.shape.iter().product::<usize>())
            .sum();
        let x = input(&config, args.batch, &device);
        let (ms, iters, peak) = if args.train {
            let mut optim = AdamWConfig::new().init();
            let mut slot = Some(model);
            let mut failure = None;
            let mut step = || match train_step(slot.take().expect("model"), &mut optim, &x) {
                Ok(m) => slot = Some(m),
                Err(e) => failure = Some(e),
            };
            let ((), peak) = alloc::measure(&mut step);
            let (secs, iters) = time_it(args.min_time, &mut step);
            if let Some(e) = failure {
                return Err(e);
            }
            (secs * 1e3, iters, peak)
        } else {
            let (result, peak) = alloc::measure(|| forward(&model, &x));
            result?;
            let (secs, iters) = time_it(args.min_time, || {
                forward(&model, &x).expect("ran once already")
            });
            (secs * 1e3, iters, peak)
        };
        records.push(Record {
            model: config.name().into(),
            pass: if args.train { "train_step" } else { "forward" }.into(),
            seq_len: len,
            batch: args.batch,
            threads,
            parameters,
            ms,
            peak_extra_bytes: peak,
            iters,
        });
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&records)?);
    } else {
        println!(
            "{:<14} {:<10} {:>8} {:>6} {:>11} {:>10} {:>12}",
            "model", "pass", "seq_len", "batch", "params", "ms", "peak MiB"
        );
        for r in &records {
            println!(
                "{:<14} {:<10} {:>8} {:>6} {:>11} {:>10.3} {:>12.1}",
                r.model,
                r.pass,
                r.seq_len,
                r.batch,
                r.parameters,
                r.ms,
                r.peak_extra_bytes as f64 / (1 << 20) as f64
            );
        }
    }
    Ok(())
}
