//! `edifice`: attention kernels and models from the command line.

mod alloc;
mod attn;
mod bench;
#[cfg(feature = "dist")]
mod bench_dist;
mod bench_model;
mod curves;
mod data;
mod model;
mod patterns;
mod predict;
mod stream;
mod tensors;
mod train;
mod world;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

/// Long-context and real-time attention on the CPU.
#[derive(Parser)]
#[command(name = "edifice", version, about, after_help = edifice::models::models_help())]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the fused attention kernel on tensors from a safetensors file.
    Attn(attn::AttnArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Write randomly initialised weights for a model config.
    Init(model::InitArgs),
    /// List the tensors of a weights file.
    Inspect(model::InspectArgs),
    /// Run a model on an input file.
    Forward(model::ForwardArgs),
    /// Convert another library's parameters into our weights.
    Convert(model::ConvertArgs),
    /// Draw attention patterns: one PNG per head, and their coverage.
    Patterns(patterns::PatternsArgs),
    /// Train a model on a built-in task (the default run needs no file).
    Train(train::TrainArgs),
    /// Evaluate a training checkpoint on its task's held-out data, or with
    /// --data on a labelled file (accuracy, per-class F1, confusion.png).
    Eval(train::EvalArgs),
    /// Class probabilities of a checkpoint trained with --data for the
    /// sequences of a file.
    Predict(predict::PredictArgs),
    /// Step a model one frame at a time: over a file of frames, or timed
    /// against Edifice's per-frame recompute.
    Stream(stream::StreamArgs),
}

/// Keeps large blocks on the heap instead of glibc's per-call mmap: model
/// activations above glibc's 32 MiB mmap ceiling were otherwise returned to
/// the OS after every op and page-faulted back in (20% of a DualChunk forward
/// at 16k frames). One arena: the worker threads' own arenas are mmapped
/// heaps that glibc shrinks and regrows, so buffers freed on one thread and
/// allocated on another kept faulting in fresh pages (a DualChunk training
/// step, batch 32: about 25% faster with one arena).
fn keep_large_blocks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes glibc's allocator; called before any threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

fn main() -> ExitCode {
    keep_large_blocks();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Attn(args) => attn::run(args),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Init(args) => model::init(args),
        Command::Inspect(args) => model::inspect(args),
        Command::Forward(args) => model::forward(args),
        Command::Convert(args) => model::convert(args),
        Command::Patterns(args) => patterns::run(args),
        Command::Train(args) => train::run(args),
        Command::Eval(args) => train::eval(args),
        Command::Predict(args) => predict::predict(args),
        Command::Stream(args) => stream::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
