//! `edifice train --data` end to end: a learnable two-class problem in the
//! UCR .ts format and in CSV, a test set scored with the best checkpoint,
//! statistics restored on resume, one-line errors for malformed files.

mod common;

use common::*;
use std::fmt::Write;

/// A two-class set: class `up` rises, class `down` falls, plus an offset
/// and a scale far from 0 and 1 (so standardisation matters), with
/// sequences of 6 to 12 frames.
fn sequences(n: usize, seed: u32) -> Vec<(Vec<f32>, &'static str)> {
    let noise = data(n * 12, seed);
    (0..n)
        .map(|i| {
            let len = 6 + i % 7;
            let up = i % 2 == 0;
            let frames = (0..len)
                .map(|t| {
                    50.0 + 10.0 * (if up { t as f32 } else { -(t as f32) }) / 12.0
                        + noise[i * 12 + t]
                })
                .collect();
            (frames, if up { "up" } else { "down" })
        })
        .collect()
}

fn ts(n: usize, seed: u32) -> String {
    let mut s = String::from("@problemName Slopes\n@univariate true\n@equalLength false\n@classLabel true up down\n@data\n");
    for (frames, label) in sequences(n, seed) {
        let values: Vec<String> = frames.iter().map(f32::to_string).collect();
        writeln!(s, "{}:{label}", values.join(",")).unwrap();
    }
    s
}

fn csv(n: usize, seed: u32) -> String {
    let mut s = String::from("sequence,y,f0\n");
    for (i, (frames, label)) in sequences(n, seed).into_iter().enumerate() {
        for v in frames {
            writeln!(s, "s{i},{label},{v}").unwrap();
        }
    }
    s
}

/// The accuracy on the `test: accuracy A, ...` line of a training run.
fn test_accuracy(text: &str) -> f64 {
    text.split("test: accuracy ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no test accuracy in {text}"))
}

/// `edifice eval CHECKPOINT --data TEST --json`.
fn eval_json(checkpoint: &std::path::Path, test: &std::path::Path) -> serde_json::Value {
    let text = run_ok(&[
        "eval",
        checkpoint.to_str().unwrap(),
        "--data",
        test.to_str().unwrap(),
        "--json",
    ]);
    serde_json::from_str(&text).unwrap()
}

/// `edifice predict CHECKPOINT --data DATA --output OUT` (.csv): the file.
fn predict_csv(
    checkpoint: &std::path::Path,
    data: &std::path::Path,
    out: &std::path::Path,
) -> String {
    run_ok(&[
        "predict",
        checkpoint.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    std::fs::read_to_string(out).unwrap()
}

const RUN: [&str; 7] = [
    "train",
    "--quiet",
    "--steps",
    "150",
    "--batch-size",
    "8",
    "--patience",
];

#[test]
fn a_ts_set_trains_and_scores_its_test_set() {
    let dir = Dir::new("data-ts");
    std::fs::write(dir.path("train.ts"), ts(48, 1)).unwrap();
    std::fs::write(dir.path("test.ts"), ts(40, 2)).unwrap();
    let out = dir.path("run");
    let (train, test, out_s) = (
        dir.path("train.ts"),
        dir.path("test.ts"),
        out.to_str().unwrap().to_string(),
    );
    let mut args: Vec<&str> = RUN.to_vec();
    args.extend([
        "0",
        "--data",
        train.to_str().unwrap(),
        "--test",
        test.to_str().unwrap(),
        "--out",
        &out_s,
    ]);
    let text = run_ok(&args);
    let trained = text.clone();
    let acc = test_accuracy(&text);
    assert!(acc >= 0.9, "{text}");
    let best = out.join("best.safetensors");
    // eval --data scores the test file as training did, with F1 per class
    // and a confusion matrix beside the checkpoint.
    let eval = eval_json(&best, &test);
    assert!(
        (eval["accuracy"].as_f64().unwrap() - acc).abs() < 1e-4,
        "{eval} vs {text}"
    );
    assert_eq!(eval["confusion"].as_array().unwrap().len(), 2);
    assert!(out.join("confusion.png").exists());
    // predict: one row per sequence, probabilities summing to 1, and the
    // predicted classes agree with eval's confusion matrix.
    let text = predict_csv(&best, &test, &dir.path("p.csv"));
    let rows: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(rows.len(), 40);
    let mut predicted = [0usize; 2];
    for row in rows {
        let cells: Vec<&str> = row.split(',').collect();
        let p: Vec<f64> = cells[2..].iter().map(|c| c.parse().unwrap()).collect();
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-5);
        predicted[["up", "down"].iter().position(|c| *c == cells[1]).unwrap()] += 1;
    }
    let confusion = &eval["confusion"];
    let column = |c: usize| {
        (0..2)
            .map(|t| confusion[t][c].as_u64().unwrap() as usize)
            .sum::<usize>()
    };
    assert_eq!(predicted, [column(0), column(1)]);
    // Resuming takes the statistics and classes from the checkpoint.
    let mut resume: Vec<&str> = vec![
        "train",
        "--quiet",
        "--steps",
        "160",
        "--batch-size",
        "8",
        "--resume",
    ];
    resume.extend(["--data", train.to_str().unwrap(), "--out", &out_s]);
    resume.extend(["--test", test.to_str().unwrap()]);
    let resumed = run_ok(&resume);
    // The best checkpoint before the resume still counts: the best
    // validation score never gets worse.
    let validation = |text: &str| -> (f64, f64) {
        let v = text.split("(best validation accuracy ").nth(1).unwrap();
        let acc = v.split(',').next().unwrap().parse().unwrap();
        let loss = v.split("loss ").nth(1).unwrap().split(')').next().unwrap();
        (acc, loss.parse().unwrap())
    };
    let (before, after) = (validation(&trained), validation(&resumed));
    assert!(
        after.0 > before.0 || (after.0 == before.0 && after.1 <= before.1),
        "{trained}\n{resumed}"
    );
}

#[test]
fn a_csv_set_trains() {
    let dir = Dir::new("data-csv");
    std::fs::write(dir.path("d.csv"), csv(60, 3)).unwrap();
    let (path, out) = (dir.path("d.csv"), dir.path("run"));
    let mut args: Vec<&str> = RUN.to_vec();
    args.extend([
        "3",
        "--data",
        path.to_str().unwrap(),
        "--val-split",
        "0.25",
        "--out",
        out.to_str().unwrap(),
    ]);
    let text = run_ok(&args);
    assert!(text.contains("on data (seq_len 12)"), "{text}");
    // The README's UCR recipe, as committed, trains here too, and scores
    // its test file with the last checkpoint.
    let recipe = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/ucr.toml");
    let out = dir.path("recipe");
    let mut args = vec!["train", "--quiet", "--config", recipe, "--steps", "20"];
    args.extend([
        "--patch",
        "5",
        "--val-split",
        "0.25",
        "--out",
        out.to_str().unwrap(),
    ]);
    args.extend(["--data", path.to_str().unwrap(), "--test-with", "last"]);
    let err = run_err(&args);
    assert!(err.contains("--test"), "{err}");
    args.extend(["--test", path.to_str().unwrap()]);
    let text = run_ok(&args);
    assert!(text.contains("20 steps of ring on data"), "{text}");
    let last = out.join("checkpoint.safetensors");
    assert!(
        text.contains(&format!("with the last checkpoint {}", last.display())),
        "{text}"
    );
    let acc = test_accuracy(&text);
    let eval = eval_json(&last, &path);
    assert!(
        (eval["accuracy"].as_f64().unwrap() - acc).abs() < 1e-4,
        "{eval} vs {text}"
    );
}

#[test]
fn malformed_files_give_one_line_naming_file_and_line() {
    let dir = Dir::new("data-bad");
    let cases = [
        (
            "bad.ts",
            ts(8, 1).replacen(",", ",oops,", 1),
            "bad.ts:6: dimension 0: `oops` is not a number",
        ),
        (
            "bad.csv",
            "sequence,y,f0\n0,a,1\n0,b,2\n".to_string(),
            "bad.csv:3: sequence `0` changes its target",
        ),
        (
            "bad.npz",
            "not a zip".to_string(),
            "bad.npz: not a valid .npz",
        ),
        (
            "bad.safetensors",
            "nope".to_string(),
            "bad.safetensors: not a valid safetensors file",
        ),
        ("bad.txt", String::new(), "unknown extension `.txt`"),
    ];
    for (name, text, want) in cases {
        std::fs::write(dir.path(name), text).unwrap();
        let path = dir.path(name);
        let err = run_err(&[
            "train",
            "--quiet",
            "--data",
            path.to_str().unwrap(),
            "--out",
            dir.path("o").to_str().unwrap(),
        ]);
        assert!(err.contains(want), "{err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(lines.len() <= 3, "{err}");
    }
}

/// A regression set: each sequence rises or falls at its own rate `s`
/// around 50, its target `10·s`; 6 to 12 frames.
fn regression_csv(n: usize, seed: u32) -> String {
    let rates = data(n, seed);
    let noise = data(n * 12, seed + 1);
    let mut s = String::from("sequence,y0,f0\n");
    for i in 0..n {
        for t in 0..6 + i % 7 {
            let v = 50.0 + rates[i] * t as f32 + 0.05 * noise[i * 12 + t];
            writeln!(s, "s{i},{},{v}", 10.0 * rates[i]).unwrap();
        }
    }
    s
}

#[test]
fn a_regression_set_trains_predicts_and_scores() {
    let dir = Dir::new("data-regression");
    std::fs::write(dir.path("train.csv"), regression_csv(96, 5)).unwrap();
    std::fs::write(dir.path("test.csv"), regression_csv(40, 7)).unwrap();
    let (train, test, out) = (dir.path("train.csv"), dir.path("test.csv"), dir.path("run"));
    let text = run_ok(&[
        "train",
        "--quiet",
        "--steps",
        "300",
        "--batch-size",
        "16",
        "--data",
        train.to_str().unwrap(),
        "--test",
        test.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(text.contains("test: loss (mean squared error)"), "{text}");
    let best = out.join("best.safetensors");
    let eval = eval_json(&best, &test);
    let r2 = eval["r2"].as_f64().unwrap();
    assert!(r2 > 0.8, "{eval}\n{text}");
    // Predictions come back in the targets' units: their errors are eval's.
    let text = predict_csv(&best, &test, &dir.path("p.csv"));
    assert!(text.starts_with("index,y0\n"), "{text}");
    let rates = data(40, 7);
    let predicted: Vec<f64> = text
        .lines()
        .skip(1)
        .map(|row| row.split(',').nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(predicted.len(), 40);
    let mse = predicted
        .iter()
        .zip(&rates)
        .map(|(p, &r)| (p - 10.0 * r as f64).powi(2))
        .sum::<f64>()
        / 40.0;
    assert!(
        (mse - eval["mse"].as_f64().unwrap()).abs() < 1e-3 * mse.max(1.0),
        "{mse} vs {eval}"
    );
}
