//! A training run's recorded data: the training and validation splits,
//! standardised with statistics fitted on the training split, padded to the
//! training length, and served as batches with each sequence's length.
//!
//! Training batch `step` holds positions `step·B .. step·B + B` of an
//! endless stream that visits the training set once per epoch in an order
//! drawn from `(seed, epoch)`, so a resumed run sees the batches an
//! uninterrupted one would.

use serde_json::{json, Value};

use super::{Dataset, Normalizer, Targets};
use crate::tasks::{Batch, Rng};
use crate::Error;

/// Normalised, padded splits of a classification data set.
#[derive(Clone, Debug)]
pub struct DataRun {
    /// Training sequences.
    pub train: Dataset,
    /// Held-out sequences (early stopping).
    pub val: Dataset,
    /// The statistics both were standardised with.
    pub normalizer: Normalizer,
    /// Class names, in label order.
    pub classes: Vec<String>,
    /// Frames per token ([`Dataset::patched`]), applied after
    /// standardisation.
    pub patch: usize,
}

impl DataRun {
    /// Standardises `train` and `val` with `normalizer` (fitted on `train`
    /// when None), pads `val` to `train`'s length and groups both into
    /// patches of `patch` frames.
    pub fn new(
        mut train: Dataset,
        val: Dataset,
        normalizer: Option<Normalizer>,
        patch: usize,
    ) -> Result<Self, Error> {
        let classes = class_names(&train)?;
        let normalizer = normalizer.unwrap_or_else(|| Normalizer::fit(&train));
        normalizer.apply(&mut train)?;
        let frames = train.dims[1];
        let val = prepare(val, &normalizer, frames, &classes)?.patched(patch);
        Ok(Self {
            train: train.patched(patch),
            val,
            normalizer,
            classes,
            patch,
        })
    }

    /// The same run with both splits padded to `tokens` tokens (what the
    /// model takes, when that is longer than the data).
    pub fn padded(mut self, tokens: usize) -> Self {
        self.train = self.train.padded(tokens);
        self.val = self.val.padded(tokens);
        self
    }

    /// `data` standardised, padded and patched like the training split,
    /// its classes checked against the run's (a test set).
    pub fn prepare(&self, data: Dataset) -> Result<Dataset, Error> {
        self.restored().prepare(data, self.train.dims[1])
    }

    /// What a checkpoint of this run records.
    pub fn restored(&self) -> Restored {
        Restored {
            normalizer: self.normalizer.clone(),
            classes: self.classes.clone(),
            patch: self.patch,
        }
    }

    /// Training batch `step` of `size` sequences and their lengths.
    pub fn train_batch(&self, seed: u64, step: usize, size: usize) -> (Batch, Vec<usize>) {
        let n = self.train.len();
        let mut order: Option<(usize, Vec<usize>)> = None;
        let rows: Vec<usize> = (step * size..(step + 1) * size)
            .map(|p| {
                let epoch = p / n;
                if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
                    order = Some((epoch, shuffled(n, seed, epoch as u64)));
                }
                order.as_ref().map_or(0, |(_, o)| o[p % n])
            })
            .collect();
        batch(&self.train.select(&rows))
    }

    /// `data` in batches of `size`, in order, with their lengths.
    pub fn batches(data: &Dataset, size: usize) -> impl Iterator<Item = (Batch, Vec<usize>)> + '_ {
        let n = data.len();
        (0..n.div_ceil(size.max(1))).map(move |i| {
            let rows: Vec<usize> = (i * size..((i + 1) * size).min(n)).collect();
            batch(&data.select(&rows))
        })
    }

    /// What a checkpoint records: the statistics and the classes.
    pub fn to_meta(&self) -> Value {
        json!({"mean": self.normalizer.mean, "std": self.normalizer.std, "classes": self.classes, "patch": self.patch})
    }

    /// The statistics, classes and patch of [`to_meta`](Self::to_meta).
    pub fn from_meta(meta: &Value) -> Result<Restored, Error> {
        let floats = |k: &str| -> Option<Vec<f32>> {
            meta.get(k)?
                .as_array()?
                .iter()
                .map(|v| v.as_f64().map(|f| f as f32))
                .collect()
        };
        let classes: Option<Vec<String>> = meta
            .get("classes")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(|v| v.as_str().map(str::to_string)).collect());
        let patch = meta.get("patch").and_then(Value::as_u64).unwrap_or(1) as usize;
        match (floats("mean"), floats("std"), classes) {
            (Some(mean), Some(std), Some(classes)) if mean.len() == std.len() => Ok(Restored {
                normalizer: Normalizer { mean, std },
                classes,
                patch,
            }),
            _ => Err(Error::Checkpoint(format!(
                "bad data statistics in the checkpoint: {meta}"
            ))),
        }
    }
}

/// What a checkpoint of a run on data records besides its weights.
#[derive(Clone, Debug, PartialEq)]
pub struct Restored {
    /// The training split's statistics.
    pub normalizer: Normalizer,
    /// Class names, in label order.
    pub classes: Vec<String>,
    /// Frames per token.
    pub patch: usize,
}

impl Restored {
    /// `data` as the run's model takes it: standardised, padded and
    /// patched into `tokens` frames, its classes checked.
    pub fn prepare(&self, data: Dataset, tokens: usize) -> Result<Dataset, Error> {
        let frames = tokens * self.patch;
        Ok(prepare(data, &self.normalizer, frames, &self.classes)?.patched(self.patch))
    }
}

fn class_names(data: &Dataset) -> Result<Vec<String>, Error> {
    match &data.y {
        Targets::Classes { names, .. } => Ok(names.clone()),
        Targets::Values { .. } => Err(Error::Data(
            "regression targets (real-valued y) are not trained yet: give class labels".into(),
        )),
    }
}

/// `data` standardised and padded to `t` frames.
fn prepare(
    mut data: Dataset,
    norm: &Normalizer,
    t: usize,
    classes: &[String],
) -> Result<Dataset, Error> {
    let e = norm.mean.len();
    if data.dims[2] != e {
        return Err(Error::Data(format!(
            "{} features, the training data has {e}",
            data.dims[2]
        )));
    }
    if data.dims[1] > t {
        return Err(Error::Data(format!(
            "sequences of up to {} frames, longer than the training data's {t}",
            data.dims[1]
        )));
    }
    if class_names(&data)? != classes {
        return Err(Error::Data(format!(
            "classes {:?} differ from the training data's {classes:?}",
            class_names(&data)?
        )));
    }
    norm.apply(&mut data)?;
    Ok(data.padded(t))
}

/// `0..n` in the order of `(seed, epoch)`.
fn shuffled(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = Rng::new(&[seed, 3, epoch]);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.below(i + 1));
    }
    order
}

fn batch(data: &Dataset) -> (Batch, Vec<usize>) {
    let y = match &data.y {
        Targets::Classes { labels, .. } => labels.iter().map(|&l| l as i64).collect(),
        Targets::Values { .. } => Vec::new(),
    };
    (
        Batch {
            x: data.x.clone(),
            y,
            dims: data.dims,
        },
        data.lengths.clone(),
    )
}

/// Splits off a validation set: `fraction` of the sequences of each class
/// (at least one per class that has two or more), drawn from `seed`.
pub fn split(data: &Dataset, fraction: f64, seed: u64) -> Result<(Dataset, Dataset), Error> {
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(Error::Config(format!(
            "--val-split must be in (0, 1), got {fraction}"
        )));
    }
    let Targets::Classes { labels, names } = &data.y else {
        return Err(Error::Data("regression targets are not trained yet".into()));
    };
    let order = shuffled(data.len(), seed, u64::MAX);
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for class in 0..names.len() {
        let rows: Vec<usize> = order
            .iter()
            .copied()
            .filter(|&r| labels[r] == class)
            .collect();
        let take = if rows.len() >= 2 {
            ((rows.len() as f64 * fraction).round() as usize).max(1)
        } else {
            0
        };
        val.extend_from_slice(&rows[..take]);
        train.extend_from_slice(&rows[take..]);
    }
    train.sort_unstable();
    val.sort_unstable();
    Ok((data.select(&train), data.select(&val)))
}
