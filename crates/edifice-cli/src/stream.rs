//! `edifice stream`: a model stepped one frame at a time, over a file of
//! frames or timed on random frames against Edifice's per-frame recompute.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::tensor::Device;
use clap::Args;
use edifice::stream::{Mode, StreamOptions, StreamState, Streamer};
use edifice::{Model, ModelConfig};
use serde::Serialize;

use crate::model::{load_model, read_config, write};
use crate::tensors::TensorFile;

/// `edifice stream`.
#[derive(Args)]
pub struct StreamArgs {
    /// Model config (TOML, or JSON when it ends in .json).
    #[arg(long)]
    config: PathBuf,
    /// Weights (default: random, from `--seed`).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Frames `x [B, T, E]` f32 to stream (B streams, T steps); needs `--output`.
    #[arg(long, requires = "output")]
    input: Option<PathBuf>,
    /// Where to write every step's output, `y [B, T, out]`.
    #[arg(long, requires = "input")]
    output: Option<PathBuf>,
    /// Without `--input`: random frames to time per stream.
    #[arg(long, default_value_t = 2000)]
    frames: usize,
    /// Without `--input`: streams stepped together (`step_batch`).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Steps a stream can rewind.
    #[arg(long, default_value_t = 0)]
    rollback: usize,
    /// Positions a growing state may reach (models without a window).
    #[arg(long, default_value_t = 4096)]
    max_len: usize,
    /// Seed of the random weights and frames.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Threads (Recompute's burn forward uses them; a step uses one).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print the timings as JSON.
    #[arg(long)]
    json: bool,
}

/// Per-step latency percentiles, in microseconds.
#[derive(Serialize)]
struct Latency {
    steps: usize,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
}

impl Latency {
    fn of(mut us: Vec<f64>) -> Self {
        us.sort_by(f64::total_cmp);
        let at = |q: f64| us[((us.len() - 1) as f64 * q).round() as usize];
        Self {
            steps: us.len(),
            p50_us: at(0.5),
            p99_us: at(0.99),
            p999_us: at(0.999),
            max_us: at(1.0),
        }
    }
}

#[derive(Serialize)]
struct Report {
    model: &'static str,
    embed_dim: usize,
    output_size: usize,
    batch: usize,
    threads: usize,
    incremental: Latency,
    recompute: Latency,
    /// Recompute's p50 over the incremental p50.
    speedup_p50: f64,
}

pub fn run(args: StreamArgs) -> Result<()> {
    if args.batch == 0 || args.frames == 0 || args.threads == 0 {
        bail!("--batch, --frames and --threads must be positive");
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build()
        .context("cannot start the thread pool")?;
    pool.install(|| match (&args.input, &args.output) {
        (Some(input), Some(output)) => stream_file(&args, input, output),
        _ => time(&args),
    })
}

fn model(args: &StreamArgs) -> Result<(ModelConfig, Model)> {
    let config = read_config(&args.config)?;
    let device = Device::flex();
    device.seed(args.seed);
    let model = match &args.weights {
        Some(path) => load_model(&config, path, &device)?,
        None => config.init(&device)?,
    };
    Ok((config, model))
}

fn streamer(
    args: &StreamArgs,
    config: &ModelConfig,
    model: &Model,
    mode: Mode,
) -> Result<Streamer> {
    let options = StreamOptions {
        mode,
        rollback: args.rollback,
        max_len: args.max_len,
    };
    Streamer::new(config, model, options)
        .with_context(|| format!("cannot stream `{}`", config.name()))
}

/// Steps `B` streams through `x [B, T, E]`, writes `y [B, T, out]`.
fn stream_file(args: &StreamArgs, input: &Path, output: &Path) -> Result<()> {
    let (config, model) = model(args)?;
    let streamer = streamer(args, &config, &model, Mode::Incremental)?;
    let (x, dims) = TensorFile::read(input)?.f32("x", 3)?;
    let [b, t, e] = [dims[0], dims[1], dims[2]];
    if e != streamer.input_size() {
        bail!(
            "input `x` has dims {dims:?}; the `{}` config takes frames of {}",
            config.name(),
            streamer.input_size()
        );
    }
    let o = streamer.output_size();
    let mut states: Vec<StreamState> = (0..b).map(|_| streamer.state()).collect();
    let (mut frames, mut out) = (vec![0.0; b * e], vec![0.0; b * o]);
    let mut y = vec![0.0; b * t * o];
    for step in 0..t {
        for s in 0..b {
            frames[s * e..(s + 1) * e]
                .copy_from_slice(&x[(s * t + step) * e..(s * t + step + 1) * e]);
        }
        streamer
            .step_batch(&mut states, &frames, &mut out)
            .with_context(|| format!("step {step}"))?;
        for s in 0..b {
            y[(s * t + step) * o..(s * t + step + 1) * o].copy_from_slice(&out[s * o..(s + 1) * o]);
        }
    }
    write(
        output,
        &BTreeMap::from([("y".to_string(), (vec![b, t, o], y))]),
    )?;
    println!("wrote y {:?} to {}", [b, t, o], output.display());
    Ok(())
}

/// Times `frames` steps of `batch` streams, incremental and recompute.
fn time(args: &StreamArgs) -> Result<()> {
    let (config, model) = model(args)?;
    let incremental = streamer(args, &config, &model, Mode::Incremental)?;
    let recompute = streamer(args, &config, &model, Mode::Recompute)?;
    let frames = edifice_kernels::reference::uniform(
        args.batch * incremental.input_size(),
        args.seed as u32,
    );
    // Recompute runs the whole model per frame: at most 300 steps or about
    // ten seconds give its percentiles.
    let inc = Latency::of(step_times(&incremental, args, &frames, args.frames, None)?);
    let budget = Some(std::time::Duration::from_secs(10));
    let rec = Latency::of(step_times(
        &recompute,
        args,
        &frames,
        args.frames.min(300),
        budget,
    )?);
    let report = Report {
        model: config.name(),
        embed_dim: incremental.input_size(),
        output_size: incremental.output_size(),
        batch: args.batch,
        threads: args.threads,
        speedup_p50: rec.p50_us / inc.p50_us,
        incremental: inc,
        recompute: rec,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{} (embed {}, out {}), {} stream(s), {} thread(s): µs per step",
        report.model, report.embed_dim, report.output_size, report.batch, report.threads
    );
    println!(
        "{:<12} {:>7} {:>9} {:>9} {:>9} {:>9}",
        "mode", "steps", "p50", "p99", "p99.9", "max"
    );
    for (name, l) in [
        ("incremental", &report.incremental),
        ("recompute", &report.recompute),
    ] {
        println!(
            "{name:<12} {:>7} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            l.steps, l.p50_us, l.p99_us, l.p999_us, l.max_us
        );
    }
    println!("recompute / incremental at p50: {:.1}x", report.speedup_p50);
    Ok(())
}

/// Each step's wall time in µs, after a warm-up, until `steps` or (with at
/// least 10 timed) `budget` is spent.
fn step_times(
    streamer: &Streamer,
    args: &StreamArgs,
    frame: &[f32],
    steps: usize,
    budget: Option<std::time::Duration>,
) -> Result<Vec<f64>> {
    let mut states: Vec<StreamState> = (0..args.batch).map(|_| streamer.state()).collect();
    let mut out = vec![0.0; args.batch * streamer.output_size()];
    let warmup = if budget.is_some() {
        3
    } else {
        64.min(args.max_len / 2)
    };
    let began = Instant::now();
    let mut times = Vec::with_capacity(steps);
    for i in 0..warmup + steps {
        if budget.is_some_and(|b| times.len() >= 10 && began.elapsed() > b) {
            break;
        }
        if states[0].position() + 1 >= args.max_len as u64 {
            states.iter_mut().for_each(StreamState::reset);
        }
        let start = Instant::now();
        streamer.step_batch(&mut states, frame, &mut out)?;
        if i >= warmup {
            times.push(start.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok(times)
}
