//! Scenarios the tests run under `mpirun` (tests/mpirun.rs): each rank
//! checks its own slice against the single-process result and exits
//! non-zero with a message when it differs.
//!
//! * `kernel`: ring attention forward and backward for full, causal and
//!   window patterns, even and uneven lengths, against the one-process
//!   kernel; twice, bit for bit.
//! * `model`: the ring model's forward (every position and the last)
//!   spread over the ranks against one process.
//! * `train`: 20 training steps spread over the ranks against one
//!   process's loss curve and final weights.
//! * `mismatch`: rank 1 starts from another seed, then asks for another
//!   pattern, then another head dim; every rank must refuse each.
//! * `die` / `hang`: rank 1 is killed / stops answering at step 3 of a
//!   training run; the job must end (the test times it).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use burn::tensor::{Device, Tensor, TensorData};
use edifice::train::{RunConfig, Trainer};
use edifice::{weights, ModelConfig};
use edifice_dist::model::{Spread, SpreadTraining};
use edifice_dist::{Comm, RingAttention};
use edifice_kernels::{reference, Attention, AttnShape, Pattern, PatternKind};

/// The bar: within 1e-5 of one process.
const TOL: f32 = 1e-5;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let timeout = std::env::var("EDIFICE_DIST_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60.0);
    let comm = match Comm::init(Duration::from_secs_f64(timeout)) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match args.get(1).map(String::as_str) {
        Some("kernel") => kernel(&comm),
        Some("model") => model(&comm),
        Some("train") => train(&comm, Fault::None),
        Some("die") => train(&comm, Fault::Die),
        Some("hang") => train(&comm, Fault::Hang),
        Some("mismatch") => mismatch(&comm),
        other => Err(format!("unknown scenario {other:?}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: rank {}: {e}", comm.rank());
            ExitCode::FAILURE
        }
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| if x == y { 0.0 } else { (x - y).abs() })
        .fold(0.0, f32::max)
}

fn kernel(comm: &Arc<Comm>) -> Result<(), String> {
    let patterns = [
        Pattern::new(PatternKind::Full, false),
        Pattern::new(PatternKind::Full, true),
        Pattern::new(PatternKind::Window { window: 9 }, true),
        Pattern::new(PatternKind::Window { window: 40 }, true),
        Pattern::new(PatternKind::Window { window: 6 }, false),
    ];
    let mut worst = 0.0f32;
    // Two layouts of heads: 4 ring pieces (2 batches × 2 kv heads, query
    // heads in pairs) and 3 (3 batches × 1 head), whose rotation round 4
    // slots has more than one cycle.
    for len in [64, 37, 101, 3] {
        for (batch, heads_q, heads_kv) in [(2, 4, 2), (3, 1, 1)] {
            for pattern in &patterns {
                let shape = AttnShape {
                    batch,
                    heads_q,
                    heads_kv,
                    len_q: len,
                    len_k: len,
                    head_dim: 16,
                };
                let err = kernel_case(comm, shape, pattern.clone())
                    .map_err(|e| format!("N {len} {pattern:?}: {e}"))?;
                worst = worst.max(err);
            }
        }
    }
    println!(
        "rank {} of {}: kernel max |diff| {worst:e} (tolerance {TOL:e})",
        comm.rank(),
        comm.size()
    );
    Ok(())
}

/// The largest difference between the ring and one process on this rank.
fn kernel_case(comm: &Arc<Comm>, shape: AttnShape, pattern: Pattern) -> Result<f32, String> {
    let scale = 0.3;
    let (q, k, v, d_o) = (
        reference::uniform(shape.q_len(), 1),
        reference::uniform(shape.kv_len(), 2),
        reference::uniform(shape.kv_len(), 3),
        reference::uniform(shape.q_len(), 4),
    );
    let whole = Attention::new(shape, pattern.clone())
        .and_then(|a| a.with_scale(scale))
        .map_err(|e| e.to_string())?;
    let (o, lse) = whole.forward_vec(&q, &k, &v).map_err(|e| e.to_string())?;
    let (dq, dk, dv) = whole
        .backward_vec(&q, &k, &v, &o, &lse, &d_o)
        .map_err(|e| e.to_string())?;

    let ring = RingAttention::new(comm.clone(), shape.len_q, pattern.clone())
        .map_err(|e| e.to_string())?;
    // A causal window over contiguous slices of `c` positions reads the
    // blocks of ceil((W − 1) / c) earlier ranks: the ring stops there.
    let p = comm.size();
    if let (PatternKind::Window { window }, true) = (&pattern.kind, pattern.causal) {
        if shape.len_q.is_multiple_of(p) {
            let c = shape.len_q / p;
            let want = 1 + (p - 1).min((window - 1).div_ceil(c));
            if ring.steps().len() != want {
                return Err(format!(
                    "{} ring steps, expected {want}",
                    ring.steps().len()
                ));
            }
        }
    }
    let (layout, r, d) = (ring.layout(), comm.rank(), shape.head_dim);
    let local = AttnShape {
        len_q: layout.local_len(r),
        len_k: layout.local_len(r),
        ..shape
    };
    let (qo, kvo) = (shape.batch * shape.heads_q, shape.batch * shape.heads_kv);
    let slice = |x: &[f32], outer| layout.scatter(r, x, outer, d);
    let (lq, lk, lv, ldo) = (
        slice(&q, qo),
        slice(&k, kvo),
        slice(&v, kvo),
        slice(&d_o, qo),
    );
    let mut runs = Vec::new();
    for _ in 0..2 {
        let out = ring
            .forward_owned(&local, scale, &lq, lk.clone(), lv.clone())
            .map_err(|e| e.to_string())?;
        if out.k != lk || out.v != lv {
            return Err("the ring did not give back the keys and values it was given".into());
        }
        let (lo, llse) = (out.o, out.lse);
        let grads = ring
            .backward(&local, scale, [&lq, &lk, &lv, &lo], &llse, &ldo)
            .map_err(|e| e.to_string())?;
        runs.push((lo, llse, grads));
    }
    if runs[0] != runs[1] {
        return Err("two runs differ: the ring is not deterministic".into());
    }
    let (lo, llse, (ldq, ldk, ldv)) = &runs[0];
    let want_lse = layout.scatter(r, &lse, qo, 1);
    let errors = [
        ("o", max_diff(lo, &slice(&o, qo))),
        ("lse", max_diff(llse, &want_lse)),
        ("dq", max_diff(ldq, &slice(&dq, qo))),
        ("dk", max_diff(ldk, &slice(&dk, kvo))),
        ("dv", max_diff(ldv, &slice(&dv, kvo))),
    ];
    for (what, err) in errors {
        if err.is_nan() || err > TOL {
            return Err(format!(
                "{what} differs from one process by {err:e} (tolerance {TOL:e})"
            ));
        }
    }
    Ok(errors.iter().map(|e| e.1).fold(0.0, f32::max))
}

/// A small ring model over an uneven number of positions, no dropout.
const RING: &str = r#"model = "ring"
embed_dim = 24
hidden_size = 16
num_heads = 2
num_layers = 2
num_chunks = 1
dropout = 0.0
window_size = 45"#;

fn model(comm: &Arc<Comm>) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let config = ModelConfig::from_toml(RING).map_err(|e| err(&e))?;
    let device = Device::flex();
    device.seed(7);
    let model = config.init(&device).map_err(|e| err(&e))?;
    let (b, n, e) = (3, 45, 24);
    let x = Tensor::<3>::from_data(
        TensorData::new(reference::uniform(b * n * e, 9), [b, n, e]),
        &device,
    );
    let want_all = model.forward_all(x.clone()).map_err(|e| err(&e))?;
    let want_last = model.forward(x.clone()).map_err(|e| err(&e))?;
    let spread = Spread::new(comm.clone(), &config).map_err(|e| err(&e))?;
    let spread_model = spread.model(model).map_err(|e| err(&e))?;
    let all = spread
        .forward_all(&spread_model, x.clone())
        .map_err(|e| err(&e))?;
    let last = spread.forward_last(&spread_model, x).map_err(|e| err(&e))?;
    if let (Some((all, _)), Some((last, _))) = (all, last) {
        let read = |t: TensorData| t.try_into_vec::<f32>().map_err(|e| format!("{e:?}"));
        let (want_all, want_last) = (read(want_all.into_data())?, read(want_last.into_data())?);
        let (ea, el) = (max_diff(&all, &want_all), max_diff(&last, &want_last));
        if ea.is_nan() || el.is_nan() || ea.max(el) > TOL {
            return Err(format!(
                "forward differs from one process: every position {ea:e}, last {el:e}"
            ));
        }
        println!(
            "rank 0 of {}: model forward max |diff| {:e}",
            comm.size(),
            ea.max(el)
        );
    }
    Ok(())
}

/// A failure planted in rank 1 at step 3.
#[derive(Clone, Copy, PartialEq)]
enum Fault {
    None,
    Die,
    Hang,
}

fn run_config(seed: u64) -> Result<RunConfig, String> {
    let text = format!(
        "[model]\n{RING}\n[task]\nkind = \"recall\"\nseq_len = 45\nembed_dim = 24\n[train]\nsteps = 20\nbatch_size = 4\nwarmup_steps = 5\nseed = {seed}\n"
    );
    RunConfig::from_toml(&text).map_err(|e| e.to_string())
}

fn train(comm: &Arc<Comm>, fault: Fault) -> Result<(), String> {
    let run = run_config(3)?;
    let mut spread = Trainer::new(run.clone()).map_err(|e| e.to_string())?;
    SpreadTraining::install(comm.clone(), &mut spread).map_err(|e| e.to_string())?;
    let mut spread_losses = Vec::new();
    for step in 0..20 {
        if step == 3 && comm.rank() == 1 {
            match fault {
                Fault::None => {}
                Fault::Die => {
                    eprintln!("rank 1: killing itself at step 3");
                    kill_self();
                }
                Fault::Hang => loop {
                    std::thread::sleep(Duration::from_secs(3600));
                },
            }
        }
        spread_losses.push(spread.train_step().map_err(|e| e.to_string())?.loss);
    }
    let mut one = Trainer::new(run).map_err(|e| e.to_string())?;
    let one_losses: Vec<f64> = (0..20)
        .map(|_| one.train_step().map(|s| s.loss))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let worst = spread_losses
        .iter()
        .zip(&one_losses)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    if worst.is_nan() || worst > 1e-4 {
        return Err(format!(
            "loss curves differ by {worst:e}: {spread_losses:?} against {one_losses:?}"
        ));
    }
    let (a, b) = (
        weights::tensors(&mut spread.model),
        weights::tensors(&mut one.model),
    );
    let werr = a
        .values()
        .zip(b.values())
        .map(|((_, x), (_, y))| max_diff(x, y))
        .fold(0.0, f32::max);
    if werr.is_nan() || werr > 1e-4 {
        return Err(format!("weights after 20 steps differ by {werr:e}"));
    }
    if comm.rank() == 0 {
        println!(
            "rank 0 of {}: 20 steps, loss {:.4} -> {:.4}, max |loss diff| {worst:e}, max |weight diff| {werr:e}",
            comm.size(),
            one_losses[0],
            one_losses[19]
        );
    }
    Ok(())
}

/// Kills this process with SIGKILL, as an outside `kill -9` would.
fn kill_self() {
    std::process::Command::new("kill")
        .args(["-9", &std::process::id().to_string()])
        .status()
        .ok();
    std::thread::sleep(Duration::from_secs(3600));
}

fn mismatch(comm: &Arc<Comm>) -> Result<(), String> {
    let odd = comm.rank() == 1;
    let refused = |what: &str, result: Result<(), String>| match result {
        Err(e) => {
            println!("rank {}: refused: {e}", comm.rank());
            Ok(())
        }
        Ok(()) => Err(format!("ranks with different {what} were not refused")),
    };
    // Another seed: other weights.
    let run = run_config(if odd { 4 } else { 3 })?;
    let mut trainer = Trainer::new(run).map_err(|e| e.to_string())?;
    refused(
        "weights",
        SpreadTraining::install(comm.clone(), &mut trainer).map_err(|e| e.to_string()),
    )?;
    // Another pattern.
    let kind = if odd {
        PatternKind::Window { window: 5 }
    } else {
        PatternKind::Full
    };
    let ring = RingAttention::new(comm.clone(), 64, Pattern::new(kind, true));
    refused("patterns", ring.map(drop).map_err(|e| e.to_string()))?;
    // Another head dim, at the call.
    let ring = RingAttention::new(comm.clone(), 64, Pattern::new(PatternKind::Full, true))
        .map_err(|e| e.to_string())?;
    let d = if odd { 8 } else { 16 };
    let l = ring.layout().local_len(comm.rank());
    let shape = AttnShape {
        batch: 1,
        heads_q: 2,
        heads_kv: 2,
        len_q: l,
        len_k: l,
        head_dim: d,
    };
    let x = vec![0.5; shape.q_len()];
    let out = ring.forward(&shape, 0.25, &x, &x, &x);
    refused("head dims", out.map(drop).map_err(|e| e.to_string()))
}
