//! `edifice train`: train a model on a built-in task, with a progress bar,
//! held-out evaluation, metrics as JSON lines and atomic checkpoints that
//! resume exactly.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use edifice::train::{RunConfig, Stats, Trainer};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::data::{score, DataArgs, Loaded, TestWith};
use crate::world::World;

#[derive(Args)]
pub struct TrainArgs {
    /// Run config (TOML with optional [model], [task], [train] tables);
    /// without it, the built-in default run.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output folder: checkpoint.safetensors, metrics.jsonl, curves.png.
    #[arg(long, default_value = "runs/default")]
    out: PathBuf,
    /// Continue from the checkpoint in --out (same run config).
    #[arg(long)]
    resume: bool,
    /// No progress bar: one log line per evaluation.
    #[arg(long)]
    quiet: bool,
    /// Override [train] steps.
    #[arg(long)]
    steps: Option<usize>,
    /// Override [train] batch_size.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Override [train] lr.
    #[arg(long)]
    lr: Option<f64>,
    /// Override [train] seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Override [task] kind: lookback, recall or frames.
    #[arg(long)]
    task: Option<String>,
    /// Override [task] seq_len.
    #[arg(long)]
    seq_len: Option<usize>,
    #[command(flatten)]
    data: DataArgs,
    /// Spread the `ring` model's sequence over the ranks of `mpirun -n P`
    /// (build with `--features dist`): rank 0 writes the files.
    #[arg(long)]
    distributed: bool,
}

fn run_config(args: &TrainArgs, data: Option<&Loaded>) -> Result<RunConfig> {
    let mut value: Value = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            toml::from_str(&text)
                .with_context(|| format!("{} is not valid TOML", path.display()))?
        }
        None => json!({}),
    };
    let map = value
        .as_object_mut()
        .context("a run config must be a table")?;
    let mut set = |table: &str, key: &str, v: Option<Value>| {
        if let Some(v) = v {
            let t = map.entry(table).or_insert_with(|| json!({}));
            if let Some(t) = t.as_object_mut() {
                t.insert(key.into(), v);
            }
        }
    };
    set("train", "steps", args.steps.map(Into::into));
    set("train", "batch_size", args.batch_size.map(Into::into));
    set("train", "lr", args.lr.map(Into::into));
    set("train", "seed", args.seed.map(Into::into));
    set("task", "kind", args.task.clone().map(Into::into));
    set("task", "seq_len", args.seq_len.map(Into::into));
    if let Some(data) = data {
        if let Value::Object(task) = data.task() {
            for (key, v) in task {
                set("task", &key, Some(v));
            }
        }
        if args.data.class_weights.is_some() {
            set(
                "train",
                "class_weights",
                Some(data.balanced_weights()?.into()),
            );
        }
    }
    let from = args
        .config
        .as_ref()
        .map_or("the default run".into(), |p| p.display().to_string());
    RunConfig::from_value(value).with_context(|| format!("run config ({from})"))
}

/// Appends one record as one write, so a killed run leaves whole lines
/// (only where this process writes the run's files).
fn log_line(out: &mut Option<std::fs::File>, record: Value) -> Result<()> {
    match out {
        Some(out) => out
            .write_all(format!("{record}\n").as_bytes())
            .context("cannot append to metrics.jsonl"),
        None => Ok(()),
    }
}

/// Before resuming at `step`: keeps the records of steps up to the
/// checkpoint's and drops the rest (steps the killed run did past its last
/// checkpoint, which the resumed run redoes, and any partial last line).
fn trim_metrics(path: &std::path::Path, step: usize) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).context("cannot read metrics.jsonl"),
    };
    let kept: String = text
        .split_inclusive('\n')
        .filter(|line| line.ends_with('\n'))
        .filter(|line| {
            serde_json::from_str::<Value>(line)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step as u64)
        })
        .collect();
    std::fs::write(path, kept).context("cannot rewrite metrics.jsonl")
}

pub fn run(args: TrainArgs) -> Result<()> {
    let loaded = args.data.load(args.seed.unwrap_or(0))?;
    let run = run_config(&args, loaded.as_ref())?;
    let world = World::new(args.distributed)?;
    let root = world.is_root();
    if root {
        std::fs::create_dir_all(&args.out)
            .with_context(|| format!("cannot create {}", args.out.display()))?;
    }
    let checkpoint = args.out.join("checkpoint.safetensors");
    let best = args.out.join("best.safetensors");
    let mut trainer = if args.resume {
        Trainer::load(&checkpoint, Some(&run))?
    } else {
        Trainer::new(run)?
    };
    let mut test = None;
    if let Some(loaded) = loaded {
        (trainer, test) = loaded.attach(trainer)?;
    }
    if let (true, Some(data)) = (args.distributed, trainer.data()) {
        // Spread over ranks, the loss reads the last position.
        let t = data.train.dims[1];
        anyhow::ensure!(
            [&data.train, &data.val]
                .iter()
                .all(|d| d.lengths.iter().all(|&n| n == t)),
            "--distributed trains on sequences of one length that the model takes whole \
             ({t} tokens here); this data has shorter ones (padded)"
        );
    }
    let mut early = EarlyStop::new(args.data.patience);
    if let (true, true, Some(data)) = (args.resume, best.exists(), trainer.data()) {
        // The best checkpoint so far stays unless a later one beats it
        // (patience counts afresh from the resumed step).
        early.best = Some(score(&best, &data.val)?);
    }
    #[cfg(feature = "dist")]
    if let Some(comm) = world.comm() {
        edifice_dist::model::SpreadTraining::install(comm.clone(), &mut trainer)?;
    }
    let steps = trainer.run.train.steps;
    if args.resume && root {
        trim_metrics(&args.out.join("metrics.jsonl"), trainer.step)?;
    }
    let mut metrics = if root {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(args.resume)
            .write(true)
            .truncate(!args.resume)
            .open(args.out.join("metrics.jsonl"))
            .context("cannot open metrics.jsonl")?;
        Some(file)
    } else {
        None
    };

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // A second Ctrl-C while saving still kills the process the usual way.
        let _ = ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst));
    }
    let bar = if args.quiet || !root {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(steps as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  [{elapsed} < {eta}]")
            .expect("valid template"),
    );
    bar.set_position(trainer.step as u64);
    let started = Instant::now();
    let first_step = trainer.step;
    let (mut loss_avg, mut acc_avg) = (None::<f64>, None::<f64>);
    let batch = trainer.run.train.batch_size as f64;
    let mut last_eval: Option<Stats> = None;
    while trainer.step < steps {
        let lr = trainer.run.lr(trainer.step);
        let stats = trainer.train_step()?;
        let smooth = |avg: Option<f64>, x: f64| Some(avg.map_or(x, |a| 0.9 * a + 0.1 * x));
        loss_avg = smooth(loss_avg, stats.loss);
        if let Some(accuracy) = stats.accuracy {
            acc_avg = smooth(acc_avg, accuracy);
        }
        let secs = started.elapsed().as_secs_f64();
        let throughput = (trainer.step - first_step) as f64 * batch / secs.max(1e-9);
        bar.set_position(trainer.step as u64);
        let acc = acc_avg.map_or(String::new(), |a| format!("  acc {a:.3}"));
        bar.set_message(format!(
            "loss {:.3}{acc}  {:.0} seq/s",
            loss_avg.unwrap_or(0.0),
            throughput
        ));
        log_line(
            &mut metrics,
            json!({"step": trainer.step, "split": "train", "loss": stats.loss, "accuracy": stats.accuracy,
                   "lr": lr, "seconds": secs, "seq_per_sec": throughput}),
        )?;
        let stopping = world.any(stop.load(Ordering::SeqCst));
        if trainer.step % trainer.run.train.eval_every == 0 || trainer.step == steps || stopping {
            let eval = trainer.evaluate()?;
            log_line(
                &mut metrics,
                json!({"step": trainer.step, "split": "eval", "loss": eval.loss, "accuracy": eval.accuracy,
                       "seconds": started.elapsed().as_secs_f64()}),
            )?;
            if let Some(file) = &mut metrics {
                // Only the process that writes the run's files has them.
                trainer.save(&checkpoint)?;
                file.flush().context("cannot write metrics.jsonl")?;
                crate::curves::draw(
                    &args.out.join("metrics.jsonl"),
                    &args.out.join("curves.png"),
                )?;
            }
            let line = format!("step {}/{steps}: eval {eval}", trainer.step);
            match (root, args.quiet) {
                (false, _) => {}
                (true, true) => println!("{line}"),
                (true, false) => bar.println(line),
            }
            last_eval = Some(eval);
            // Every rank keeps the same record (the stats are the same on
            // each); the root, which writes the run's files, saves.
            if trainer.data().is_some() && early.improved(eval) && root {
                trainer.save(&best)?;
            }
        }
        if early.exhausted() {
            bar.println(format!(
                "early stop at step {}: no better validation score in {} evaluations",
                trainer.step, args.data.patience
            ));
            break;
        }
        if stopping {
            bar.abandon_with_message("interrupted");
            if !root {
                return Ok(());
            }
            println!(
                "interrupted at step {}; checkpoint saved to {} (continue with --resume)",
                trainer.step,
                checkpoint.display()
            );
            return Ok(());
        }
    }
    bar.finish_and_clear();
    let eval = match last_eval {
        Some(e) => e,
        None => trainer.evaluate()?,
    };
    if !root {
        return Ok(());
    }
    println!(
        "done: {} steps of {} on {} (seq_len {}) in {:.1} s; held-out {eval}; checkpoint {} (curves.png beside it)",
        trainer.step,
        trainer.run.model.name(),
        trainer.run.task.kind.name(),
        trainer.run.task.seq_len,
        started.elapsed().as_secs_f64(),
        checkpoint.display()
    );
    if let Some(test) = test {
        let (scored, name) = match args.data.test_with {
            TestWith::Best => (&best, "best"),
            TestWith::Last => (&checkpoint, "last"),
        };
        let stats = score(scored, &test)?;
        let validation = early
            .best
            .map_or(String::new(), |b| format!(" (best validation {b})"));
        println!(
            "test: {stats} on {} sequences with the {name} checkpoint {}{validation}",
            test.len(),
            scored.display(),
        );
    }
    Ok(())
}

/// Early stopping on the validation score ([`Stats::better_than`]).
struct EarlyStop {
    patience: usize,
    best: Option<Stats>,
    since: usize,
}

impl EarlyStop {
    fn new(patience: usize) -> Self {
        Self {
            patience,
            best: None,
            since: 0,
        }
    }

    /// Records an evaluation; true when it is the best so far.
    fn improved(&mut self, eval: Stats) -> bool {
        let better = self.best.is_none_or(|b| eval.better_than(&b));
        if better {
            self.best = Some(eval);
            self.since = 0;
        } else {
            self.since += 1;
        }
        better
    }

    fn exhausted(&self) -> bool {
        self.patience > 0 && self.since >= self.patience
    }
}

/// `edifice eval`.
#[derive(Args)]
pub struct EvalArgs {
    /// A checkpoint written by `edifice train`.
    checkpoint: PathBuf,
    /// Held-out batches (default: the run's eval_batches).
    #[arg(long)]
    batches: Option<usize>,
    /// Print one JSON object instead of a line of text.
    #[arg(long)]
    json: bool,
    /// Score a checkpoint trained with --data on this labelled file.
    #[arg(long, conflicts_with = "batches")]
    data: Option<PathBuf>,
}

pub fn eval(args: EvalArgs) -> Result<()> {
    if let Some(data) = &args.data {
        return crate::predict::eval_data(&args.checkpoint, data, args.json);
    }
    let mut trainer = Trainer::load(&args.checkpoint, None)?;
    if let Some(b) = args.batches {
        anyhow::ensure!(b > 0, "--batches must be at least 1");
        trainer.run.train.eval_batches = b;
    }
    let stats = trainer.evaluate()?;
    let run = &trainer.run;
    if args.json {
        println!(
            "{}",
            json!({"step": trainer.step, "model": run.model.name(), "task": run.task, "loss": stats.loss,
                   "accuracy": stats.accuracy, "batches": run.train.eval_batches})
        );
    } else {
        println!(
            "{} after {} steps on {} (seq_len {}): held-out {stats} over {} batches of {}",
            run.model.name(),
            trainer.step,
            run.task.kind.name(),
            run.task.seq_len,
            run.train.eval_batches,
            run.train.batch_size
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resuming_drops_records_past_the_checkpoint_and_partial_lines() {
        let dir = std::env::temp_dir().join(format!("edifice-trim-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("metrics.jsonl");
        let line = |step: usize| format!("{{\"step\":{step},\"split\":\"train\",\"loss\":1.0}}\n");
        let text = format!("{}{}{}{{\"step\":4,\"spl", line(1), line(2), line(3));
        std::fs::write(&path, text).unwrap();
        trim_metrics(&path, 2).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}{}", line(1), line(2))
        );
        trim_metrics(&dir.join("absent.jsonl"), 2).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
