//! `edifice predict` and `edifice eval --data`: a checkpoint trained with
//! `--data` applied to other sequences (standardised, padded and patched as
//! in training): class probabilities to a file, or accuracy, per-class F1
//! and a confusion matrix.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
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
    /// Sequences to classify (any `--data` format; their labels, if any,
    /// are not used).
    #[arg(long)]
    data: PathBuf,
    /// Where to write: .csv (index, predicted class, one probability per
    /// class) or .safetensors (`classes [N]` I64, `probabilities [N, K]` F32).
    #[arg(long)]
    output: PathBuf,
}

/// A checkpoint trained on data and `data` prepared for it.
fn load(checkpoint: &Path, data: &Path) -> Result<(Trainer, Dataset, Vec<String>)> {
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
    Ok((trainer, prepared, restored.classes))
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
    let (trainer, data, classes) = load(&args.checkpoint, &args.data)?;
    let probs = trainer.predict(&data)?;
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

/// `edifice eval CHECKPOINT --data TEST`: accuracy, per-class F1, and
/// `confusion.png` beside the checkpoint.
pub fn eval_data(checkpoint: &Path, data: &Path, as_json: bool) -> Result<()> {
    let (trainer, test, classes) = load(checkpoint, data)?;
    let Targets::Classes { labels, .. } = &test.y else {
        bail!("{} has no class labels to score", data.display());
    };
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
        println!(
            "accuracy {:.4}, loss {:.4} on {} sequences of {}",
            stats.accuracy,
            stats.loss,
            test.len(),
            data.display()
        );
        for (c, f) in classes.iter().zip(&f1) {
            println!("  class {c}: F1 {f:.4}");
        }
        println!("confusion matrix: {}", png.display());
    }
    Ok(())
}
