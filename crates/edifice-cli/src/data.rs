//! `edifice train --data`: recorded sequences from files (see
//! `edifice::data` for the formats), a validation split for early stopping,
//! and a test set scored with the best checkpoint (or the last).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use edifice::data::run::{split, DataRun};
use edifice::data::{Dataset, Targets};
use edifice::train::{Stats, Trainer};

#[derive(Args, Clone, Default)]
pub struct DataArgs {
    /// Train on sequences from this file (.safetensors, .npz, .npy, .csv or
    /// UCR/UEA .ts) instead of a built-in task.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Validation sequences (early stopping); default: --val-split of --data.
    #[arg(long, conflicts_with = "val_split")]
    pub val: Option<PathBuf>,
    /// Fraction of --data held out for validation, per class.
    #[arg(long)]
    pub val_split: Option<f64>,
    /// Test sequences, scored at the end with the checkpoint --test-with
    /// names.
    #[arg(long)]
    pub test: Option<PathBuf>,
    /// Which checkpoint scores --test.
    #[arg(long, value_enum, default_value_t = TestWith::Best, requires = "test")]
    pub test_with: TestWith,
    /// Weight the cross-entropy per class: `balanced` gives class c the
    /// weight N / (K · n_c) from the training split's counts.
    #[arg(long, value_parser = ["balanced"])]
    pub class_weights: Option<String>,
    /// Frames per token: every K consecutive frames become one frame of
    /// K·E features (patches, as in PatchTST), after standardisation.
    #[arg(long, default_value_t = 1)]
    pub patch: usize,
    /// Stop after this many evaluations without a better validation
    /// accuracy (0: never).
    #[arg(long, default_value_t = 0)]
    pub patience: usize,
}

/// Which checkpoint scores the test set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TestWith {
    /// best.safetensors: the best validation score (early stopping's
    /// choice).
    #[default]
    Best,
    /// checkpoint.safetensors: the end of training. For validation splits
    /// of a few sequences, whose best score is chance (the UCR recipe).
    Last,
}

/// The splits read from the files.
pub struct Loaded {
    pub train: Dataset,
    pub val: Dataset,
    pub test: Option<Dataset>,
    pub patch: usize,
}

fn read(path: &Path) -> Result<Dataset> {
    Ok(Dataset::read(path)?)
}

impl DataArgs {
    /// Reads the files, if `--data` was given.
    pub fn load(&self, seed: u64) -> Result<Option<Loaded>> {
        let Some(path) = &self.data else {
            if self.val.is_some() || self.val_split.is_some() || self.test.is_some() {
                bail!("--val, --val-split and --test go with --data");
            }
            return Ok(None);
        };
        let all = read(path)?;
        let (train, val) = match &self.val {
            Some(val) => (all, read(val)?),
            None => split(&all, self.val_split.unwrap_or(0.1), seed)?,
        };
        anyhow::ensure!(
            !val.is_empty(),
            "the validation split is empty: give --val or a larger --val-split"
        );
        let test = self.test.as_deref().map(read).transpose()?;
        anyhow::ensure!(self.patch >= 1, "--patch must be at least 1");
        Ok(Some(Loaded {
            train,
            val,
            test,
            patch: self.patch,
        }))
    }
}

impl Loaded {
    /// Inverse-frequency class weights of the training split, `N / (K · n_c)`.
    pub fn balanced_weights(&self) -> Result<Vec<f32>> {
        let Targets::Classes { labels, names } = &self.train.y else {
            bail!("--class-weights needs class labels");
        };
        let mut counts = vec![0usize; names.len()];
        labels.iter().for_each(|&l| counts[l] += 1);
        if let Some(c) = counts.iter().position(|&n| n == 0) {
            bail!(
                "--class-weights balanced: class `{}` has no training sequence",
                names[c]
            );
        }
        let (n, k) = (labels.len() as f32, names.len() as f32);
        Ok(counts.iter().map(|&c| n / (k * c as f32)).collect())
    }

    /// The run's `[task]` table: kind `data`, the length and width of the
    /// patched sequences, and the head (classes, or regression targets).
    pub fn task(&self) -> serde_json::Value {
        let [_, t, e] = self.train.dims;
        let head = match self.train.y {
            Targets::Classes { .. } => "classes",
            Targets::Values { .. } => "values",
        };
        serde_json::json!({"kind": "data", "seq_len": t.div_ceil(self.patch),
                           "embed_dim": e * self.patch, "classes": self.train.outputs(), "head": head})
    }

    /// Gives `trainer` the data, standardised with the checkpoint's
    /// statistics when it was resumed, else with the training split's.
    pub fn attach(self, mut trainer: Trainer) -> Result<(Trainer, Option<Dataset>)> {
        let restored = trainer.restored.take();
        if let Some(r) = &restored {
            anyhow::ensure!(
                r.patch == self.patch,
                "the checkpoint was trained with --patch {}",
                r.patch
            );
        }
        let run = DataRun::new(self.train, self.val, restored.as_ref(), self.patch)?;
        if let Some(r) = restored {
            anyhow::ensure!(
                r.classes == run.meta.classes,
                "the checkpoint was trained on classes {:?}, the data has {:?}",
                r.classes,
                run.meta.classes
            );
        }
        let trainer = trainer.with_data(run)?;
        let run = trainer.data().expect("the data was just attached");
        let test = self.test.map(|t| run.prepare(t)).transpose()?;
        Ok((trainer, test))
    }
}

/// Accuracy on `test` (prepared like the training split) of the checkpoint
/// at `best`.
pub fn score(best: &Path, test: &Dataset) -> Result<Stats> {
    let trainer = Trainer::load(best, None)
        .with_context(|| format!("the best checkpoint {}", best.display()))?;
    Ok(trainer.evaluate_on(test)?)
}
