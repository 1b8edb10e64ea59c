//! `edifice forward --distributed` and `edifice train --distributed` under
//! `mpirun` against the same commands on one process (with the `dist`
//! feature; scripts/test.sh turns it on).
#![cfg(feature = "dist")]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{data, f32_tensor, read_f32, refs, run_ok, write, Dir};
use edifice_dist::launch;

/// The ring model over an uneven number of positions, without dropout
/// (whose masks are drawn per rank).
const RING: &str = "model = \"ring\"\nembed_dim = 24\nhidden_size = 32\nnum_heads = 4\nnum_layers = 2\nnum_chunks = 1\ndropout = 0.0\nwindow_size = 61\n";

fn max_diff<T: Copy + Into<f64>>(a: &[T], b: &[T]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&p, &q)| (p.into() - q.into()).abs())
        .fold(0.0, f64::max)
}

fn edifice_mpirun(ranks: usize, args: &[&str]) -> String {
    let program = Path::new(env!("CARGO_BIN_EXE_edifice"));
    let run = launch::mpirun(ranks, program, args, &[], Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        run.success,
        "mpirun -n {ranks} edifice {args:?}:\n{}",
        run.output
    );
    run.output
}

/// `mpirun -n ranks edifice args` fails with one error containing `message`
/// and no panic.
fn edifice_mpirun_refused(ranks: usize, args: &[&str], message: &str) {
    let program = Path::new(env!("CARGO_BIN_EXE_edifice"));
    let run = launch::mpirun(ranks, program, args, &[], Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!run.success, "{}", run.output);
    assert!(run.output.contains(message), "{}", run.output);
    assert!(!run.output.contains("panicked"), "{}", run.output);
}

#[test]
fn distributed_forward_matches_one_process() {
    let dir = Dir::new("dist-forward");
    let (w, x, y) = dir.wxy();
    let config = dir.path("ring.toml");
    std::fs::write(&config, RING).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    run_ok(&[
        "init",
        "--config",
        &s(&config),
        "--seed",
        "3",
        "--out",
        &s(&w),
    ]);
    write(
        &x,
        &[f32_tensor("x", vec![2, 61, 24], &data(2 * 61 * 24, 5))],
    );
    let (config, w, x) = (s(&config), s(&w), s(&x));
    for all in [true, false] {
        let mut args = vec![
            "forward",
            "--config",
            &config,
            "--weights",
            &w,
            "--input",
            &x,
        ];
        let (one, spread) = (s(&dir.path("one.safetensors")), s(&y));
        let flag = if all { vec!["--all-timesteps"] } else { vec![] };
        run_ok(&[args.clone(), vec!["--output", &one], flag.clone()].concat());
        args.push("--distributed");
        for ranks in [2, 3] {
            let out = edifice_mpirun(
                ranks,
                &[args.clone(), vec!["--output", &spread], flag.clone()].concat(),
            );
            assert_eq!(
                out.matches("wrote y").count(),
                1,
                "rank 0 alone writes: {out}"
            );
            let ((a, da), (b, db)) = (read_f32(Path::new(&one), "y"), read_f32(&y, "y"));
            assert_eq!(da, db);
            let err = max_diff(&a, &b);
            assert!(
                err <= 1e-5,
                "{ranks} ranks, all timesteps {all}: max |diff| {err}"
            );
        }
    }
}

#[test]
fn distributed_training_follows_one_process() {
    let dir = Dir::new("dist-train");
    let run = dir.path("run.toml");
    std::fs::write(
        &run,
        format!("[model]\n{}\n[task]\nkind = \"recall\"\nseq_len = 61\nembed_dim = 24\n[train]\nsteps = 20\nbatch_size = 8\neval_every = 10\n",
            RING.replace("embed_dim = 24\n", "").replace("window_size = 61\n", "")),
    )
    .unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let (one, spread) = (dir.path("one"), dir.path("spread"));
    run_ok(&["train", "--config", &s(&run), "--out", &s(&one), "--quiet"]);
    let out = edifice_mpirun(
        3,
        &[
            "train",
            "--distributed",
            "--config",
            &s(&run),
            "--out",
            &s(&spread),
            "--quiet",
        ],
    );
    assert_eq!(
        out.matches("done: 20 steps").count(),
        1,
        "rank 0 alone reports: {out}"
    );
    let (a, b) = (losses(&one), losses(&spread));
    assert_eq!(a.len(), 22, "20 steps and 2 evaluations, written once");
    assert_eq!(a.len(), b.len());
    let err = max_diff(&a, &b);
    assert!(
        err <= 1e-4,
        "loss curves differ by {err}: {a:?} against {b:?}"
    );
    assert!(spread.join("checkpoint.safetensors").exists());
}

#[test]
fn distributed_runs_refuse_other_models() {
    let dir = Dir::new("dist-refuse");
    let out = dir.path("run");
    let args = [
        "train",
        "--distributed",
        "--steps",
        "1",
        "--out",
        out.to_str().unwrap(),
    ];
    edifice_mpirun_refused(
        2,
        &args,
        "spreads the `ring` model's sequence over processes, not a `sliding_window`",
    );
}

/// A two-class `.ts` set of `n` sequences of `len` frames (rising or
/// falling), or of 6 to 12 frames when `len` is None.
fn slopes(n: usize, len: Option<usize>) -> String {
    let noise = data(n * 12, 5);
    let mut s =
        String::from("@problemName Slopes\n@univariate true\n@classLabel true up down\n@data\n");
    for i in 0..n {
        let frames: Vec<String> = (0..len.unwrap_or(6 + i % 7))
            .map(|t| {
                let v = if i % 2 == 0 { t as f32 } else { -(t as f32) };
                (0.1 * v + noise[i * 12 + t]).to_string()
            })
            .collect();
        let label = if i % 2 == 0 { "up" } else { "down" };
        s += &format!("{}:{label}\n", frames.join(","));
    }
    s
}

#[test]
fn distributed_training_on_data_follows_one_process() {
    let dir = Dir::new("dist-data");
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let (train, test, run) = (
        dir.path("train.ts"),
        dir.path("test.ts"),
        dir.path("run.toml"),
    );
    std::fs::write(&train, slopes(40, Some(12))).unwrap();
    std::fs::write(&test, slopes(20, Some(12))).unwrap();
    std::fs::write(
        &run,
        "[model]\nmodel = \"ring\"\nhidden_size = 16\nnum_heads = 2\nnum_layers = 1\nnum_chunks = 1\ndropout = 0.0\n[train]\nsteps = 12\nbatch_size = 8\neval_every = 6\n",
    )
    .unwrap();
    let (one, spread) = (dir.path("one"), dir.path("spread"));
    let args = |out: &Path| {
        vec![
            "train".to_string(),
            "--quiet".into(),
            "--config".into(),
            s(&run),
            "--data".into(),
            s(&train),
            "--test".into(),
            s(&test),
            "--out".into(),
            s(out),
        ]
    };
    run_ok(&refs(&args(&one)));
    let mut spread_args = args(&spread);
    spread_args.push("--distributed".into());
    let out = edifice_mpirun(3, &refs(&spread_args));
    assert_eq!(
        out.matches("test: accuracy").count(),
        1,
        "rank 0 alone reports: {out}"
    );
    let (a, b) = (losses(&one), losses(&spread));
    assert_eq!(a.len(), 14, "12 steps and 2 evaluations");
    assert!(max_diff(&a, &b) <= 1e-4, "{a:?} against {b:?}");
    assert!(spread.join("best.safetensors").exists());
    // Padded sequences are refused up front, on every rank.
    std::fs::write(&train, slopes(40, None)).unwrap();
    edifice_mpirun_refused(
        2,
        &refs(&spread_args),
        "--distributed trains on sequences of one length",
    );
}

/// The `loss` of every line of a run's metrics.jsonl.
fn losses(dir: &Path) -> Vec<f64> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect()
}
