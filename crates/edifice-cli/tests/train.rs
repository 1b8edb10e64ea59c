//! `edifice train` and `eval` end to end: metrics, checkpoints, resuming,
//! interruption, divergence.

mod common;

use common::*;
use safetensors::SafeTensors;
use std::path::Path;
use std::process::Command;

/// `edifice train` arguments for a small quiet run of `steps` steps into
/// `out` (sequences of 24 frames, batches of 8).
fn small_train(out: &Path, steps: usize) -> Vec<String> {
    let steps = steps.to_string();
    [
        "train",
        "--quiet",
        "--seq-len",
        "24",
        "--batch-size",
        "8",
        "--steps",
        &steps,
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([out.to_str().unwrap().to_string()])
    .collect()
}

/// Waits (up to a minute) until a training run in `out` has written its
/// first checkpoint.
fn wait_for_checkpoint(out: &Path) {
    let ckpt = out.join("checkpoint.safetensors");
    let start = std::time::Instant::now();
    while !ckpt.exists() && start.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn train_writes_metrics_and_checkpoints_and_resumes() {
    let dir = Dir::new("train");
    let out = dir.path("run");
    let out_s = out.to_str().unwrap();
    let common = [
        "train",
        "--quiet",
        "--out",
        out_s,
        "--seq-len",
        "16",
        "--batch-size",
        "4",
    ];
    let log = run_ok(&[&common[..], &["--steps", "6"]].concat());
    assert!(
        log.contains("done: 6 steps of sliding_window on lookback (seq_len 16)"),
        "{log}"
    );
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(
        metrics.lines().filter(|l| l.contains("\"train\"")).count(),
        6
    );
    assert!(out.join("checkpoint.safetensors").exists());
    assert_eq!(
        &std::fs::read(out.join("curves.png")).unwrap()[1..4],
        b"PNG"
    );
    let ckpt = out.join("checkpoint.safetensors");
    let eval = run_ok(&["eval", ckpt.to_str().unwrap(), "--json", "--batches", "2"]);
    let eval: serde_json::Value = serde_json::from_str(&eval).unwrap();
    assert_eq!(eval["step"], 6);
    assert!((0.0..=1.0).contains(&eval["accuracy"].as_f64().unwrap()));
    // Resuming with more steps continues from step 6; the log is appended.
    let log = run_ok(&[&common[..], &["--steps", "8", "--resume"]].concat());
    assert!(log.contains("done: 8 steps"), "{log}");
    let err = run_err(&[&common[..], &["--steps", "8", "--resume", "--lr", "0.5"]].concat());
    assert!(err.contains("different run config"), "{err}");
    std::fs::write(out.join("checkpoint.safetensors"), b"broken").unwrap();
    let err = run_err(&[&common[..], &["--steps", "8", "--resume"]].concat());
    assert!(err.contains("not a valid safetensors"), "{err}");
    let err = run_err(&["eval", ckpt.to_str().unwrap()]);
    assert!(err.contains("not a valid safetensors"), "{err}");
    let err = run_err(&["train", "--out", out_s, "--task", "guess"]);
    assert!(err.contains("bad [task]"), "{err}");
}

/// A learning rate that makes the loss NaN stops the run with an error
/// naming the step and a non-zero exit; the checkpoint of the run before it
/// is left byte for byte and still evaluates.
#[test]
fn a_diverging_run_stops_and_keeps_the_last_good_checkpoint() {
    let dir = Dir::new("diverge");
    let out = dir.path("run");
    let out_s = out.to_str().unwrap();
    let common = [
        "train",
        "--quiet",
        "--out",
        out_s,
        "--seq-len",
        "16",
        "--batch-size",
        "4",
    ];
    run_ok(&[&common[..], &["--steps", "4"]].concat());
    let ckpt = out.join("checkpoint.safetensors");
    let before = std::fs::read(&ckpt).unwrap();
    let err = run_err(&[&common[..], &["--steps", "6", "--lr", "1e30"]].concat());
    assert!(
        err.contains("diverged") && err.contains("of step 2 is NaN"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(std::fs::read(&ckpt).unwrap(), before);
    let eval = run_ok(&["eval", ckpt.to_str().unwrap(), "--json", "--batches", "2"]);
    let eval: serde_json::Value = serde_json::from_str(&eval).unwrap();
    assert_eq!(eval["step"], 4);
    assert!(eval["loss"].as_f64().unwrap().is_finite());
}

/// Killing `edifice train` mid-run (SIGKILL, like a crash) and resuming ends
/// with the same weights as an uninterrupted run. (The optimizer state is
/// keyed by parameter ids, which differ between processes, so its bytes are
/// not compared; the weights depend on it at every step.)
#[test]
fn killed_and_resumed_run_ends_like_an_uninterrupted_one() {
    let dir = Dir::new("kill");
    let (a, b) = (dir.path("a"), dir.path("b"));
    let args = |out: &Path| small_train(out, 300);
    run_ok(&refs(&args(&a)));
    let mut child = edifice()
        .args(args(&b))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill once the first checkpoint (step 100) exists and before the end.
    wait_for_checkpoint(&b);
    child.kill().unwrap();
    child.wait().unwrap();
    let resume: Vec<String> = args(&b)
        .into_iter()
        .chain(["--resume".to_string()])
        .collect();
    run_ok(&refs(&resume));
    let load = |out: &Path| {
        let bytes = std::fs::read(out.join("checkpoint.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut all: Vec<(String, Vec<u8>)> = st
            .tensors()
            .into_iter()
            .filter(|(n, _)| n != "__optimizer__")
            .map(|(n, v)| (n, v.data().to_vec()))
            .collect();
        all.sort();
        all
    };
    let (wa, wb) = (load(&a), load(&b));
    assert!(wa.len() > 10);
    for ((na, da), (nb, db)) in wa.iter().zip(&wb) {
        assert_eq!(na, nb);
        assert!(da == db, "weights of `{na}` differ after kill + resume");
    }
}

/// Ctrl-C (SIGINT) evaluates, saves a checkpoint and exits cleanly; the run
/// then resumes from the step it stopped at.
#[test]
fn sigint_saves_and_exits_cleanly() {
    let dir = Dir::new("sigint");
    let out = dir.path("run");
    let args = small_train(&out, 100_000);
    let child = edifice()
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_checkpoint(&out);
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "exit status {:?}", output.status);
    let log = String::from_utf8(output.stdout).unwrap();
    let step: usize = log
        .split("interrupted at step ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no interruption message in {log:?}"));
    assert!((100..100000).contains(&step), "{log}");
    let ckpt = out.join("checkpoint.safetensors");
    let eval = run_ok(&["eval", ckpt.to_str().unwrap(), "--json", "--batches", "1"]);
    let eval: serde_json::Value = serde_json::from_str(&eval).unwrap();
    assert_eq!(eval["step"], step);
}
