//! `edifice bench`: timings, useful GFLOP/s and measured extra memory.

use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use edifice_kernels::reference::uniform;
use edifice_kernels::{
    bf16, Attention, AttnShape, BackwardSchedule, Element, Isa, Pattern, PatternKind,
};
use serde::Serialize;

use crate::alloc;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// The fused attention kernel over the standard patterns and lengths.
    Kernel(KernelArgs),
    /// A model: forward time and peak memory per sequence length, or a training step.
    Model(crate::bench_model::ModelArgs),
    /// Ring attention over the ranks of `mpirun -n P` (build with
    /// `--features dist`): per-rank time, memory, transfers hidden.
    #[cfg(feature = "dist")]
    Dist(crate::bench_dist::DistArgs),
}

/// The sizes of a benchmarked attention besides its length.
#[derive(Args, Clone, Copy, Debug)]
pub struct Dims {
    /// Batch size.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Heads (query and key/value).
    #[arg(long, default_value_t = 8)]
    pub heads: usize,
    /// Head dimension.
    #[arg(long, default_value_t = 64)]
    pub head_dim: usize,
}

impl Dims {
    /// Self-attention of `len` positions of these sizes.
    pub fn shape(&self, len: usize) -> AttnShape {
        AttnShape {
            batch: self.batch,
            heads_q: self.heads,
            heads_kv: self.heads,
            len_q: len,
            len_k: len,
            head_dim: self.head_dim,
        }
    }
}

#[derive(Args)]
pub struct KernelArgs {
    /// Print one JSON array of results instead of a table.
    #[arg(long)]
    json: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Also run N = 65536.
    #[arg(long)]
    long: bool,
    /// Sequence lengths (overrides the default 64,1024,4096,16384).
    #[arg(long, value_delimiter = ',')]
    sizes: Option<Vec<usize>>,
    /// Patterns to run, as `PATTERN[+causal]` (default: the standard six).
    #[arg(long, value_delimiter = ',')]
    patterns: Option<Vec<String>>,
    /// Keep timing each case until this many seconds have passed.
    #[arg(long, default_value_t = 1.0)]
    min_time: f64,
    #[command(flatten)]
    dims: Dims,
    /// Also time the Rust peers (burn Flex attention, candle CPU flash
    /// attention) on the dense patterns. Needs a build with `--features peers`.
    #[arg(long)]
    peers: bool,
    /// Also time forward + backward (gradients of q, k and v).
    #[arg(long)]
    backward: bool,
    /// How the backward pass splits its work: `auto` (one pass when there are
    /// at least four (batch, head) pairs per thread), `one-pass` or `two-pass`.
    #[arg(long, value_enum, default_value_t = Schedule::Auto)]
    backward_schedule: Schedule,
    /// Storage type of q, k, v and o (bf16: f32 accumulation).
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    dtype: Dtype,
    /// Instruction set (default: the widest the CPU has for the head
    /// dimension; bf16 then uses `vdpbf16ps` pair products where they run at
    /// full rate). `avx512-bf16` forces pair products, any other widening.
    #[arg(long, value_enum)]
    isa: Option<IsaArg>,
    /// Print the standard pattern set, one per line, and exit.
    #[arg(long)]
    list_patterns: bool,
    /// Largest N for the peers (burn materialises N × N scores per head).
    #[arg(long, default_value_t = 4096)]
    peers_max_n: usize,
}

/// The storage type on the command line.
#[derive(Clone, Copy, ValueEnum)]
enum Dtype {
    F32,
    Bf16,
}

/// [`Isa`] on the command line.
#[derive(Clone, Copy, ValueEnum)]
enum IsaArg {
    Avx512Bf16,
    Avx512,
    Avx2,
    Scalar,
}

impl From<IsaArg> for Isa {
    fn from(isa: IsaArg) -> Self {
        match isa {
            IsaArg::Avx512Bf16 => Isa::Avx512Bf16,
            IsaArg::Avx512 => Isa::Avx512,
            IsaArg::Avx2 => Isa::Avx2,
            IsaArg::Scalar => Isa::Scalar,
        }
    }
}

/// [`BackwardSchedule`] on the command line.
#[derive(Clone, Copy, ValueEnum)]
enum Schedule {
    Auto,
    OnePass,
    TwoPass,
}

impl From<Schedule> for BackwardSchedule {
    fn from(s: Schedule) -> Self {
        match s {
            Schedule::Auto => BackwardSchedule::Auto,
            Schedule::OnePass => BackwardSchedule::OnePass,
            Schedule::TwoPass => BackwardSchedule::TwoPass,
        }
    }
}

/// The standard set: dense, causal and four sparse patterns.
const STANDARD_PATTERNS: &[&str] = &[
    "full",
    "full+causal",
    "window:256+causal",
    "chunk:64+causal",
    "strided:8:64+causal",
    "shifted:1024+causal",
];

/// One benchmark result.
#[derive(Serialize)]
struct Record {
    impl_name: String,
    /// `forward`, or `forward+backward`.
    pass: String,
    pattern: String,
    n: usize,
    batch: usize,
    heads: usize,
    head_dim: usize,
    threads: usize,
    isa: String,
    /// Storage type of q, k, v and o.
    dtype: String,
    /// How the forward's tile products ran: `f32`, or for bf16 `widen`
    /// (widened to f32) or `pairs` (`vdpbf16ps`).
    products: String,
    /// Median wall time of one call.
    ms: f64,
    /// Useful FLOPs over the median time: 4 × allowed pairs × D for the
    /// forward pass, 3.5 times that for forward + backward (FlashAttention's
    /// convention: 2 matmuls forward, 5 backward).
    gflops: f64,
    allowed_pairs: u64,
    /// Peak bytes allocated during one call beyond inputs and outputs.
    extra_bytes: usize,
    iters: usize,
}

/// Parses `PATTERN[+causal]`.
pub fn parse_pattern(spec: &str) -> Result<Pattern> {
    let (kind, causal) = match spec.strip_suffix("+causal") {
        Some(kind) => (kind, true),
        None => (spec, false),
    };
    Ok(Pattern::new(
        kind.parse()
            .with_context(|| format!("bad pattern `{spec}`"))?,
        causal,
    ))
}

/// Calls `f` once to warm up, then until `min_time` has passed (at least
/// once more); returns (median seconds, timed calls).
pub fn time_it(min_time: f64, mut f: impl FnMut()) -> (f64, usize) {
    let start = Instant::now();
    f();
    let warm = start.elapsed().as_secs_f64();
    let iters = ((min_time / warm.max(1e-9)).ceil() as usize).clamp(1, 200);
    let mut samples: Vec<f64> = (0..iters)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    samples.sort_by(|a, b| a.total_cmp(b));
    (samples[samples.len() / 2], iters)
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    let threads = match &cmd {
        BenchCommand::Kernel(args) => args.threads,
        BenchCommand::Model(args) => args.threads,
        #[cfg(feature = "dist")]
        BenchCommand::Dist(_) => None,
    }
    .unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .context("cannot start the thread pool")?;
    match cmd {
        BenchCommand::Kernel(args) => pool.install(|| kernel(&args, threads)),
        BenchCommand::Model(args) => pool.install(|| crate::bench_model::run(&args, threads)),
        // MPI runs on this thread, the kernels on a pool of its own.
        #[cfg(feature = "dist")]
        BenchCommand::Dist(args) => crate::bench_dist::run(args),
    }
}

fn kernel(args: &KernelArgs, threads: usize) -> Result<()> {
    if args.list_patterns {
        STANDARD_PATTERNS.iter().for_each(|p| println!("{p}"));
        return Ok(());
    }
    if args.peers && !cfg!(feature = "peers") {
        anyhow::bail!("--peers needs a build with `--features peers` (cargo build --release -p edifice-cli --features peers)");
    }
    let mut sizes = args
        .sizes
        .clone()
        .unwrap_or_else(|| vec![64, 1024, 4096, 16384]);
    if args.long {
        sizes.push(65536);
    }
    let patterns: Vec<String> = args
        .patterns
        .clone()
        .unwrap_or_else(|| STANDARD_PATTERNS.iter().map(|s| s.to_string()).collect());
    let mut records = Vec::new();
    if !args.json {
        println!(
            "{:<22} {:>6} {:>10} {:>9} {:>10} {:>13} {:>8}",
            "pattern", "N", "ms", "GFLOP/s", "extra MiB", "impl", "products"
        );
    }
    for spec in &patterns {
        let pattern = parse_pattern(spec)?;
        for &n in &sizes {
            let shape = args.dims.shape(n);
            let mut att = Attention::new(shape, pattern.clone())?
                .with_backward_schedule(args.backward_schedule.into());
            if let Some(isa) = args.isa {
                att = att.with_isa(isa.into());
            }
            let mut found = match args.dtype {
                Dtype::F32 => time_kernel::<f32>(args, &att, spec, threads)?,
                Dtype::Bf16 => time_kernel::<bf16>(args, &att, spec, threads)?,
            };
            let dense = matches!(pattern.kind, PatternKind::Full);
            if args.peers && n <= args.peers_max_n && dense && matches!(args.dtype, Dtype::F32) {
                found.extend(peers(args, &found[0], pattern.causal)?);
            }
            for record in found {
                if !args.json {
                    println!(
                        "{:<22} {:>6} {:>10.3} {:>9.1} {:>10.2} {:>13} {:>8} {}",
                        record.pattern,
                        n,
                        record.ms,
                        record.gflops,
                        record.extra_bytes as f64 / (1 << 20) as f64,
                        record.impl_name,
                        record.products,
                        if record.pass == "forward" {
                            ""
                        } else {
                            "fwd+bwd"
                        }
                    );
                }
                records.push(record);
            }
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&records)?);
    }
    Ok(())
}

/// Inputs of one case: uniform in [-1, 1), the same for every dtype (up to
/// rounding) and every implementation.
fn inputs<E: Element>(n: usize, seed: u32) -> Vec<E> {
    uniform(n, seed).into_iter().map(E::from_f32).collect()
}

/// Times our kernel's forward pass (and forward + backward with
/// `--backward`) on one case with storage type `E`.
fn time_kernel<E: Element>(
    args: &KernelArgs,
    att: &Attention,
    spec: &str,
    threads: usize,
) -> Result<Vec<Record>> {
    let shape = *att.shape();
    let q = inputs::<E>(shape.q_len(), 1);
    let k = inputs::<E>(shape.kv_len(), 2);
    let v = inputs::<E>(shape.kv_len(), 3);
    let mut o = vec![E::default(); shape.q_len()];
    let mut lse = vec![0.0; shape.lse_len()];
    let (result, extra_bytes) = alloc::measure(|| att.forward(&q, &k, &v, &mut o, &mut lse));
    result?;
    let (secs, iters) = time_it(args.min_time, || {
        att.forward(&q, &k, &v, &mut o, &mut lse)
            .expect("validated above")
    });
    let allowed_pairs = att.allowed_pairs();
    let record = Record {
        impl_name: "edifice".into(),
        pass: "forward".into(),
        pattern: spec.to_string(),
        n: shape.len_q,
        batch: args.dims.batch,
        heads: args.dims.heads,
        head_dim: args.dims.head_dim,
        threads,
        isa: format!("{:?}", att.isa()),
        dtype: E::NAME.into(),
        products: match E::NAME {
            "bf16" => format!("{:?}", att.bf16_products()).to_lowercase(),
            other => other.into(),
        },
        ms: secs * 1e3,
        gflops: 4.0 * allowed_pairs as f64 * args.dims.head_dim as f64 / secs / 1e9,
        allowed_pairs,
        extra_bytes,
        iters,
    };
    let mut found = vec![record];
    if args.backward {
        let d_o = inputs::<E>(shape.q_len(), 4);
        let (mut dq, mut dk, mut dv) = (
            vec![E::default(); shape.q_len()],
            vec![E::default(); shape.kv_len()],
            vec![E::default(); shape.kv_len()],
        );
        let mut step = || -> Result<(), edifice_kernels::KernelError> {
            att.forward(&q, &k, &v, &mut o, &mut lse)?;
            att.backward(&q, &k, &v, &o, &lse, &d_o, &mut dq, &mut dk, &mut dv)
        };
        let (result, extra_bytes) = alloc::measure(&mut step);
        result?;
        let (secs, iters) = time_it(args.min_time, || step().expect("validated above"));
        found.push(Record {
            pass: "forward+backward".into(),
            ms: secs * 1e3,
            gflops: 3.5 * found[0].gflops * found[0].ms / (secs * 1e3),
            extra_bytes,
            iters,
            impl_name: found[0].impl_name.clone(),
            pattern: found[0].pattern.clone(),
            isa: found[0].isa.clone(),
            dtype: found[0].dtype.clone(),
            products: found[0].products.clone(),
            ..found[0]
        });
    }
    Ok(found)
}

/// Times the Rust peers (f32) on the dense case `ours` was measured on.
#[cfg(feature = "peers")]
fn peers(args: &KernelArgs, ours: &Record, causal: bool) -> Result<Vec<Record>> {
    let len = ours.batch * ours.heads * ours.n * ours.head_dim;
    let [q, k, v] = [1, 2, 3].map(|seed| inputs::<f32>(len, seed));
    let (q, k, v) = (&q, &k, &v);
    let case = edifice_bench_peers::Case {
        batch: ours.batch,
        heads: ours.heads,
        n: ours.n,
        head_dim: ours.head_dim,
        causal,
        q,
        k,
        v,
    };
    let mut out = Vec::new();
    for name in edifice_bench_peers::PEERS {
        let mut call = edifice_bench_peers::prepare(name, &case).map_err(anyhow::Error::msg)?;
        let (_, extra_bytes) = alloc::measure(&mut call);
        let (secs, iters) = time_it(args.min_time, &mut call);
        out.push(Record {
            impl_name: name.to_string(),
            pass: "forward".into(),
            isa: String::new(),
            dtype: "f32".into(),
            products: "f32".into(),
            ms: secs * 1e3,
            gflops: 4.0 * ours.allowed_pairs as f64 * ours.head_dim as f64 / secs / 1e9,
            extra_bytes,
            iters,
            pattern: ours.pattern.clone(),
            ..*ours
        });
    }
    Ok(out)
}

#[cfg(not(feature = "peers"))]
fn peers(_: &KernelArgs, _: &Record, _: bool) -> Result<Vec<Record>> {
    Ok(Vec::new())
}
