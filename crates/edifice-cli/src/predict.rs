//! `edifice predict` and `edifice eval --data`: a checkpoint trained with
//! `--data` applied to other sequences (standardised, padded and patched as
//! in training): class probabilities or regression targets to a file, or
//! accuracy, per-class F1 and a confusion matrix (regression: mean squared
//! and absolute errors and R² in the data's units).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use edifice::data::run::DataMeta;
use edifice::data::{Dataset, Targets};
use edifice::train::Trainer;
use edifice::weights;
use safetensors::Dtype;
use serde_json::json;

/// `edifice predict`.
#[derive(Args)]
pub struct PredictArgs {
    /// A checkpoint written by `edifice train --data`.
    checkpoint: PathBuf,
    /// Sequences to predict for (any `--data` format; their labels or
    /// targets are not used).
    #[arg(long)]
    data: PathBuf,
    /// Where to write: .csv (index, predicted class, one probability per
    /// class; regression: index, y0, y1, ...) or .safetensors (`classes [N]`
    /// I64, `probabilities [N, K]` F32; regression: `values [N, K]` F32).
    #[arg(long)]
    output: PathBuf,
}

/// A checkpoint trained on data and `data` prepared for it.
fn load(checkpoint: &Path, data: &Path) -> Result<(Trainer, Dataset, DataMeta)> {
    let trainer = Trainer::load(checkpoint, None)?;
    let Some(restored) = trainer.restored.clone() else {
        bail!(
            "{} was not trained with --data: it has no data statistics",
            checkpoint.display()
        );
    };
    let prepared = restored
        .prepare(Dataset::read(data)?, trainer.run.task.seq_len)
        .with_context(|| format!("{} does not fit {}", data.display(), checkpoint.display()))?;
    Ok((trainer, prepared, restored))
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(
            (0, f32::MIN),
            |best, (i, &p)| if p > best.1 { (i, p) } else { best },
        )
        .0
}

pub fn predict(args: PredictArgs) -> Result<()> {
    let (trainer, data, meta) = load(&args.checkpoint, &args.data)?;
    let out = trainer.predict(&data)?;
    if meta.targets.is_some() {
        return write_values(&args.output, &out, trainer.run.task.classes);
    }
    let (probs, classes) = (out, meta.classes);
    let k = classes.len();
    let predicted: Vec<usize> = probs.chunks_exact(k).map(argmax).collect();
    let ext = args
        .output
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("");
    match ext {
        "csv" => {
            let mut text = format!(
                "index,predicted,{}\n",
                classes
                    .iter()
                    .map(|c| format!("p_{c}"))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            for (i, (row, &p)) in probs.chunks_exact(k).zip(&predicted).enumerate() {
                let cells: Vec<String> = row.iter().map(|v| v.to_string()).collect();
                text += &format!("{i},{},{}\n", classes[p], cells.join(","));
            }
            std::fs::write(&args.output, text)
        }
        "safetensors" => {
            let p: Vec<u8> = probs.iter().flat_map(|v| v.to_le_bytes()).collect();
            let ids: Vec<u8> = predicted
                .iter()
                .flat_map(|&c| (c as i64).to_le_bytes())
                .collect();
            let tensors = [
                (
                    "probabilities".to_string(),
                    Dtype::F32,
                    vec![data.len(), k],
                    p.into(),
                ),
                (
                    "classes".to_string(),
                    Dtype::I64,
                    vec![data.len()],
                    ids.into(),
                ),
            ];
            let metadata = HashMap::from([("classes".to_string(), json!(classes).to_string())]);
            std::fs::write(&args.output, weights::serialize(&tensors, Some(metadata))?)
        }
        _ => bail!("--output must end in .csv or .safetensors"),
    }
    .with_context(|| format!("cannot write {}", args.output.display()))?;
    println!(
        "wrote {} predictions of {} classes to {}",
        data.len(),
        k,
        args.output.display()
    );
    Ok(())
}

/// Regression predictions `[N, K]` to `path` (.csv or .safetensors).
fn write_values(path: &Path, values: &[f32], k: usize) -> Result<()> {
    let n = values.len() / k.max(1);
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "csv" => {
            let header: Vec<String> = (0..k).map(|j| format!("y{j}")).collect();
            let mut text = format!("index,{}\n", header.join(","));
            for (i, row) in values.chunks_exact(k).enumerate() {
                let cells: Vec<String> = row.iter().map(|v| v.to_string()).collect();
                text += &format!("{i},{}\n", cells.join(","));
            }
            std::fs::write(path, text)
        }
        "safetensors" => {
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            let tensors = [("values".to_string(), Dtype::F32, vec![n, k], bytes.into())];
            std::fs::write(path, weights::serialize(&tensors, None)?)
        }
        _ => bail!("--output must end in .csv or .safetensors"),
    }
    .with_context(|| format!("cannot write {}", path.display()))?;
    println!("wrote {n} predictions of {k} values to {}", path.display());
    Ok(())
}

/// Errors of predictions against targets, both `[N, K]` in the data's
/// units: mean squared error, mean absolute error and R² (1 − SSE / SST
/// over all targets, each centred on its own mean).
fn regression_scores(predicted: &[f32], truth: &[f32], k: usize) -> (f64, f64, f64) {
    let n = (truth.len() / k.max(1)).max(1) as f64;
    let mut mean = vec![0.0f64; k];
    for row in truth.chunks_exact(k) {
        row.iter()
            .zip(&mut mean)
            .for_each(|(&v, m)| *m += v as f64 / n);
    }
    let (mut sse, mut sae, mut sst) = (0.0, 0.0, 0.0);
    for (p, t) in predicted.chunks_exact(k).zip(truth.chunks_exact(k)) {
        for ((&p, &t), m) in p.iter().zip(t).zip(&mean) {
            let e = p as f64 - t as f64;
            (sse, sae, sst) = (sse + e * e, sae + e.abs(), sst + (t as f64 - m).powi(2));
        }
    }
    let count = n * k as f64;
    (
        sse / count,
        sae / count,
        1.0 - sse / sst.max(f64::MIN_POSITIVE),
    )
}

/// `edifice eval CHECKPOINT --data TEST` for a regression head.
fn eval_values(trainer: &Trainer, test: &Dataset, meta: &DataMeta, as_json: bool) -> Result<()> {
    let Targets::Values { values, width } = &test.y else {
        bail!("the test data has no regression targets");
    };
    let mut truth = values.clone();
    if let Some(targets) = &meta.targets {
        targets.restore(&mut truth);
    }
    let predicted = trainer.predict(test)?;
    let (mse, mae, r2) = regression_scores(&predicted, &truth, *width);
    if as_json {
        println!(
            "{}",
            json!({"mse": mse, "mae": mae, "r2": r2, "sequences": test.len(), "targets": width})
        );
    } else {
        println!(
            "mean squared error {mse:.6}, mean absolute error {mae:.6}, R² {r2:.4} on {} sequences",
            test.len()
        );
    }
    Ok(())
}

/// `edifice eval CHECKPOINT --data TEST`: accuracy, per-class F1, and
/// `confusion.png` beside the checkpoint (regression: errors and R²).
pub fn eval_data(checkpoint: &Path, data: &Path, as_json: bool) -> Result<()> {
    let (trainer, test, meta) = load(checkpoint, data)?;
    let Targets::Classes { labels, .. } = &test.y else {
        return eval_values(&trainer, &test, &meta, as_json);
    };
    let classes = meta.classes;
    let stats = trainer.evaluate_on(&test)?;
    let k = classes.len();
    let probs = trainer.predict(&test)?;
    let mut counts = vec![vec![0usize; k]; k];
    for (row, &truth) in probs.chunks_exact(k).zip(labels) {
        counts[truth][argmax(row)] += 1;
    }
    let f1: Vec<f64> = (0..k)
        .map(|c| {
            let tp = counts[c][c] as f64;
            let predicted: usize = counts.iter().map(|r| r[c]).sum();
            let actual: usize = counts[c].iter().sum();
            if tp == 0.0 {
                0.0
            } else {
                2.0 * tp / (predicted + actual) as f64
            }
        })
        .collect();
    let png = checkpoint.with_file_name("confusion.png");
    crate::curves::confusion(&png, &counts, &classes)?;
    if as_json {
        println!(
            "{}",
            json!({"accuracy": stats.accuracy, "loss": stats.loss, "sequences": test.len(),
                              "classes": classes, "f1": f1, "confusion": counts})
        );
    } else {
        println!("{stats} on {} sequences of {}", test.len(), data.display());
        for (c, f) in classes.iter().zip(&f1) {
            println!("  class {c}: F1 {f:.4}");
        }
        println!("confusion matrix: {}", png.display());
    }
    Ok(())
}
