//! `edifice bench dist`: ring attention over the ranks of `mpirun -n P`:
//! per-rank time, work, peak memory and the share of the ring's transfers
//! hidden behind the kernels. With one rank (or without `mpirun`) it times
//! the one-process fused kernel on the whole sequence instead: the
//! baseline the ranks are compared with.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use edifice_dist::{Comm, RingAttention};
use edifice_kernels::reference::uniform;
use edifice_kernels::Attention;
use serde::Serialize;

use crate::alloc;
use crate::bench::{parse_pattern, Dims};
use crate::world::World;

#[derive(Args)]
pub struct DistArgs {
    /// Total sequence length N (spread over the ranks).
    #[arg(long, default_value_t = 32768)]
    len: usize,
    /// Pattern over the whole sequence, `PATTERN[+causal]` (full or window).
    #[arg(long, default_value = "full+causal")]
    pattern: String,
    #[command(flatten)]
    dims: Dims,
    /// Timed forward passes (after one warm-up).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Kernel threads per rank (default: this machine's cores over the
    /// ranks on it, at least 1).
    #[arg(long)]
    threads: Option<usize>,
    /// Print one JSON object per rank instead of a table.
    #[arg(long)]
    json: bool,
}

/// One rank's figures (medians over the rounds).
#[derive(Clone, Copy, Debug, Default, Serialize)]
struct RankStats {
    rank: usize,
    ranks: usize,
    /// Positions this rank holds.
    positions: usize,
    /// Wall time of one forward pass.
    forward_ms: f64,
    /// Wall time of its kernels.
    compute_ms: f64,
    /// Process CPU time of one forward pass (all its threads).
    cpu_ms: f64,
    /// Time it waited for transfers the kernels did not hide.
    exposed_ms: f64,
    /// The same transfers alone, without any work.
    transfer_ms: f64,
    /// `1 − exposed / transfer`.
    hidden: f64,
    /// Bytes sent per forward.
    sent_mib: f64,
    /// Peak heap bytes live (inputs, outputs, ring buffers).
    peak_mib: f64,
    /// Peak resident memory of the process (VmHWM).
    resident_mib: f64,
}

impl RankStats {
    fn to_vec(self) -> Vec<f32> {
        [
            self.rank as f64,
            self.ranks as f64,
            self.positions as f64,
            self.forward_ms,
            self.compute_ms,
            self.cpu_ms,
            self.exposed_ms,
            self.transfer_ms,
            self.hidden,
            self.sent_mib,
            self.peak_mib,
            self.resident_mib,
        ]
        .iter()
        .map(|&x| x as f32)
        .collect()
    }

    fn from_slice(v: &[f32]) -> Self {
        let f = |i: usize| f64::from(v[i]);
        RankStats {
            rank: v[0] as usize,
            ranks: v[1] as usize,
            positions: v[2] as usize,
            forward_ms: f(3),
            compute_ms: f(4),
            cpu_ms: f(5),
            exposed_ms: f(6),
            transfer_ms: f(7),
            hidden: f(8),
            sent_mib: f(9),
            peak_mib: f(10),
            resident_mib: f(11),
        }
    }
}

pub fn run(args: DistArgs) -> Result<()> {
    let world = World::new(true)?;
    let comm = world.comm().context("no MPI world")?.clone();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = args.threads.unwrap_or((cores / comm.size()).max(1));
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .context("cannot start the thread pool")?;
    let (stats, peak) = alloc::measure(|| rank_stats(&args, &comm));
    let mut stats = stats?;
    stats.peak_mib = peak as f64 / (1 << 20) as f64;
    stats.resident_mib = resident_mib();
    let Some(all) = comm.gather(&stats.to_vec(), "the benchmark figures") else {
        return Ok(());
    };
    let all: Vec<RankStats> = all.iter().map(|v| RankStats::from_slice(v)).collect();
    report(&args, threads, &all);
    Ok(())
}

fn median(mut x: Vec<f64>) -> f64 {
    x.sort_by(f64::total_cmp);
    x[x.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Process CPU time (every thread).
fn cpu_time() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// VmHWM of this process, MiB (0 where /proc is missing).
fn resident_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn rank_stats(args: &DistArgs, comm: &Arc<Comm>) -> Result<RankStats> {
    anyhow::ensure!(
        args.rounds > 0 && args.len > 0,
        "--rounds and --len must be positive"
    );
    let pattern = parse_pattern(&args.pattern)?;
    let shape = |len| args.dims.shape(len);
    let (r, p) = (comm.rank(), comm.size());
    let mut stats = RankStats {
        rank: r,
        ranks: p,
        positions: args.len,
        ..Default::default()
    };
    let (mut forward, mut compute, mut cpu, mut exposed) = (vec![], vec![], vec![], vec![]);
    if p == 1 {
        let s = shape(args.len);
        let att = Attention::new(s, pattern)?;
        let (q, k, v) = (
            uniform(s.q_len(), 1),
            uniform(s.kv_len(), 2),
            uniform(s.kv_len(), 3),
        );
        for round in 0..=args.rounds {
            let (start, cpu0) = (Instant::now(), cpu_time());
            drop(att.forward_vec(&q, &k, &v)?);
            if round > 0 {
                forward.push(ms(start.elapsed()));
                compute.push(ms(start.elapsed()));
                cpu.push(ms(cpu_time() - cpu0));
            }
        }
    } else {
        let ring = RingAttention::new(comm.clone(), args.len, pattern)?;
        let local = shape(ring.layout().local_len(r));
        stats.positions = local.len_q;
        let scale = 1.0 / (args.dims.head_dim as f32).sqrt();
        let seed = 10 * r as u32;
        let q = uniform(local.q_len(), seed + 1);
        let (mut k, mut v) = (
            uniform(local.kv_len(), seed + 2),
            uniform(local.kv_len(), seed + 3),
        );
        for round in 0..=args.rounds {
            let (start, cpu0) = (Instant::now(), cpu_time());
            let out = ring.forward_owned(&local, scale, &q, k, v)?;
            (k, v) = (out.k, out.v);
            drop((out.o, out.lse));
            let timing = ring.timing();
            if round > 0 {
                forward.push(ms(start.elapsed()));
                cpu.push(ms(cpu_time() - cpu0));
                compute.push(ms(timing.compute));
                exposed.push(ms(timing.exposed));
                stats.sent_mib = timing.bytes_sent as f64 / (1 << 20) as f64;
            }
        }
        drop((q, k, v));
        // Every rank starts the transfers together: each times the ring's.
        let transfers: Vec<f64> = (0..args.rounds)
            .map(|_| {
                comm.barrier("the transfer timing");
                ring.time_transfers(&local).map(ms)
            })
            .collect::<Result<_, _>>()?;
        stats.transfer_ms = median(transfers);
        stats.exposed_ms = median(exposed);
        stats.hidden = if stats.transfer_ms > 0.0 {
            (1.0 - stats.exposed_ms / stats.transfer_ms).clamp(0.0, 1.0)
        } else {
            1.0
        };
    }
    stats.forward_ms = median(forward);
    stats.compute_ms = median(compute);
    stats.cpu_ms = median(cpu);
    Ok(stats)
}

fn report(args: &DistArgs, threads: usize, all: &[RankStats]) {
    if args.json {
        for s in all {
            println!("{}", serde_json::to_string(s).unwrap_or_default());
        }
        return;
    }
    let p = all.len();
    println!(
        "ring attention {}, N = {}, B = {}, H = {}, D = {}: {p} rank(s), {threads} kernel thread(s) each{}",
        args.pattern,
        args.len,
        args.dims.batch,
        args.dims.heads,
        args.dims.head_dim,
        if p == 1 { " (one process: the fused kernel on the whole sequence)" } else { "" }
    );
    println!("rank  positions  forward ms  kernels ms  CPU ms  exposed ms  transfers alone ms  hidden  sent MiB  peak heap MiB  VmHWM MiB");
    for s in all {
        println!(
            "{:>4}  {:>9}  {:>10.1}  {:>10.1}  {:>6.0}  {:>10.2}  {:>18.2}  {:>5.1}%  {:>8.1}  {:>13.1}  {:>9.1}",
            s.rank,
            s.positions,
            s.forward_ms,
            s.compute_ms,
            s.cpu_ms,
            s.exposed_ms,
            s.transfer_ms,
            100.0 * s.hidden,
            s.sent_mib,
            s.peak_mib,
            s.resident_mib
        );
    }
    if p > 1 {
        let cpu: Vec<f64> = all.iter().map(|s| s.cpu_ms).collect();
        let (lo, hi) = cpu
            .iter()
            .fold((f64::MAX, 0.0f64), |(l, h), &x| (l.min(x), h.max(x)));
        let peak = all.iter().map(|s| s.peak_mib).fold(0.0, f64::max);
        let hidden = all.iter().map(|s| s.hidden).fold(1.0, f64::min);
        println!(
            "balance: slowest / fastest rank CPU time {:.3}; largest peak heap {peak:.1} MiB; least hidden {:.1}%",
            hi / lo.max(1e-9),
            100.0 * hidden
        );
    }
}
