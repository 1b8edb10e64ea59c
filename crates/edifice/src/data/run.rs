//! A training run's recorded data: the training and validation splits,
//! standardised with statistics fitted on the training split, padded to the
//! training length, and served as batches with each sequence's length.
//!
//! Training batch `step` holds positions `step·B .. step·B + B` of an
//! endless stream that visits the training set once per epoch in an order
//! drawn from `(seed, epoch)`, so a resumed run sees the batches an
//! uninterrupted one would. Training batches may be augmented
//! ([`Augment`]): every draw is a function of `(seed, step, row)` too.

use serde_json::{json, Value};

use super::{Dataset, Normalizer, Targets};
use crate::tasks::{Batch, Labels, Rng};
use crate::Error;

/// Normalised, padded splits of a data set, and what was fitted on them.
#[derive(Clone, Debug)]
pub struct DataRun {
    /// Training sequences.
    pub train: Dataset,
    /// Held-out sequences (early stopping).
    pub val: Dataset,
    /// The statistics both were standardised with, the classes, the patch.
    pub meta: DataMeta,
    /// Real frames of each training sequence (before patching: a patched
    /// sequence's last token may hold padding frames).
    frames: Vec<usize>,
}

/// How training batches drawn from a data file are perturbed: regularisers
/// for small data sets. Validation and test data never are.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Augment {
    /// Standard deviation of Gaussian noise added to every value of the
    /// real tokens, in standardised units (0: none).
    pub noise: f32,
    /// Largest time shift, as a fraction of each sequence's real length:
    /// a sequence of `n` frames moves by `s` frames, `s` uniform in
    /// `-⌊shift·n⌋ ..= ⌊shift·n⌋`, its first (or last) frame repeated into
    /// the gap: `x'[t] = x[clamp(t − s, 0, n − 1)]` (0: none).
    pub shift: f32,
}

impl DataRun {
    /// Standardises `train` and `val` (inputs, and regression targets) with
    /// the statistics of `fitted` (a resumed run's checkpoint; else fitted
    /// on `train`), pads `val` to `train`'s length and groups both into
    /// patches of `patch` frames.
    pub fn new(
        train: Dataset,
        val: Dataset,
        fitted: Option<&DataMeta>,
        patch: usize,
    ) -> Result<Self, Error> {
        let meta = DataMeta {
            normalizer: fitted.map_or_else(|| Normalizer::fit(&train), |f| f.normalizer.clone()),
            targets: fitted.map_or_else(|| Normalizer::fit_targets(&train), |f| f.targets.clone()),
            classes: class_names(&train),
            patch: patch.max(1),
        };
        let tokens = train.dims[1].div_ceil(meta.patch);
        Ok(Self {
            frames: train.lengths.clone(),
            train: meta.prepare(train, tokens)?,
            val: meta.prepare(val, tokens)?,
            meta,
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
        self.meta.prepare(data, self.train.dims[1])
    }

    /// Training batch `step` of `size` sequences and their lengths (in
    /// tokens), augmented by `augment`: each row shifted in time, then
    /// noise added to the values of its real tokens (padding stays 0).
    /// Both are drawn from `(seed, step, row)`, so a resumed run draws the
    /// same.
    pub fn train_batch(
        &self,
        seed: u64,
        step: usize,
        size: usize,
        augment: Augment,
    ) -> (Batch, Vec<usize>) {
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
        let (mut batch, lengths) = batch(&self.train.select(&rows));
        let [_, t, e] = batch.dims;
        let width = self.meta.normalizer.mean.len().max(1);
        for (i, x) in batch.x.chunks_mut(t * e).enumerate() {
            let row = i as u64;
            if augment.shift > 0.0 {
                // Bounded by the row, should `train` have been replaced.
                let frames = self
                    .frames
                    .get(rows[i])
                    .map_or(0, |&f| f.min(t * e / width));
                let most = (f64::from(augment.shift) * frames as f64) as usize;
                let mut rng = Rng::new(&[seed, 5, step as u64, row]);
                let s = rng.below(2 * most + 1) as isize - most as isize;
                shift_frames(&mut x[..frames * width], width, s);
            }
            if augment.noise > 0.0 {
                let mut rng = Rng::new(&[seed, 4, step as u64, row]);
                for v in x.iter_mut().take(lengths[i] * e) {
                    *v += augment.noise * rng.normal();
                }
            }
        }
        (batch, lengths)
    }

    /// `data` in batches of `size`, in order, with their lengths.
    pub fn batches(data: &Dataset, size: usize) -> impl Iterator<Item = (Batch, Vec<usize>)> + '_ {
        let n = data.len();
        (0..n.div_ceil(size.max(1))).map(move |i| {
            let rows: Vec<usize> = (i * size..((i + 1) * size).min(n)).collect();
            batch(&data.select(&rows))
        })
    }
}

/// What a run on data fitted and chose, and a checkpoint records besides
/// its weights: everything that prepares other data like its training split.
#[derive(Clone, Debug, PartialEq)]
pub struct DataMeta {
    /// The training split's per-feature statistics.
    pub normalizer: Normalizer,
    /// The training split's regression-target statistics (None: classes).
    pub targets: Option<Normalizer>,
    /// Class names, in label order (empty for regression targets).
    pub classes: Vec<String>,
    /// Frames per token.
    pub patch: usize,
}

impl DataMeta {
    /// `data` as the run's model takes it: standardised (inputs and
    /// regression targets), padded and patched into `tokens` tokens, its
    /// classes or target width checked.
    pub fn prepare(&self, mut data: Dataset, tokens: usize) -> Result<Dataset, Error> {
        let (frames, e) = (tokens * self.patch, self.normalizer.mean.len());
        if data.dims[2] != e {
            return Err(Error::Data(format!(
                "{} features, the training data has {e}",
                data.dims[2]
            )));
        }
        if data.dims[1] > frames {
            return Err(Error::Data(format!(
                "sequences of up to {} frames, longer than the training data's {frames}",
                data.dims[1]
            )));
        }
        match (&mut data.y, &self.targets) {
            (Targets::Values { values, width }, Some(targets)) if *width == targets.mean.len() => {
                targets.standardise(values)
            }
            (Targets::Classes { names, .. }, None) if *names != self.classes => {
                return Err(Error::Data(format!(
                    "classes {names:?} differ from the training data's {:?}",
                    self.classes
                )))
            }
            (Targets::Classes { .. }, None) => {}
            _ => {
                return Err(Error::Data(format!(
                    "{} where the training data has {}",
                    describe(&data.y),
                    self.targets
                        .as_ref()
                        .map_or("class labels".into(), |t| format!(
                            "{} regression targets",
                            t.mean.len()
                        ))
                )))
            }
        }
        self.normalizer.apply(&mut data)?;
        Ok(data.padded(frames).patched(self.patch))
    }

    /// What a checkpoint records.
    pub fn to_meta(&self) -> Value {
        let mut meta = json!({"mean": self.normalizer.mean, "std": self.normalizer.std,
                              "classes": self.classes, "patch": self.patch});
        if let Some(t) = &self.targets {
            meta["target_mean"] = json!(t.mean);
            meta["target_std"] = json!(t.std);
        }
        meta
    }

    /// What [`to_meta`](Self::to_meta) recorded.
    pub fn from_meta(meta: &Value) -> Result<Self, Error> {
        let floats = |k: &str| -> Option<Vec<f32>> {
            meta.get(k)?
                .as_array()?
                .iter()
                .map(|v| v.as_f64().map(|f| f as f32))
                .collect()
        };
        let stats = |mean: Option<Vec<f32>>, std: Option<Vec<f32>>| match (mean, std) {
            (Some(mean), Some(std)) if mean.len() == std.len() => Some(Normalizer { mean, std }),
            _ => None,
        };
        let classes: Option<Vec<String>> = meta
            .get("classes")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(|v| v.as_str().map(str::to_string)).collect());
        let patch = meta.get("patch").and_then(Value::as_u64).unwrap_or(1) as usize;
        let targets = stats(floats("target_mean"), floats("target_std"));
        let has_targets = meta.get("target_mean").is_some();
        match (stats(floats("mean"), floats("std")), classes) {
            (Some(normalizer), Some(classes)) if has_targets == targets.is_some() => Ok(Self {
                normalizer,
                targets,
                classes,
                patch: patch.max(1),
            }),
            _ => Err(Error::Checkpoint(format!(
                "bad data statistics in the checkpoint: {meta}"
            ))),
        }
    }
}

/// Class names of `data` in label order (none for regression targets).
fn class_names(data: &Dataset) -> Vec<String> {
    match &data.y {
        Targets::Classes { names, .. } => names.clone(),
        Targets::Values { .. } => Vec::new(),
    }
}

fn describe(y: &Targets) -> String {
    match y {
        Targets::Classes { .. } => "class labels".into(),
        Targets::Values { width, .. } => format!("{width} regression targets"),
    }
}

/// Moves the frames (of `width` values each) of `x` later by `s` frames
/// (earlier when negative), repeating the edge frame into the gap.
fn shift_frames(x: &mut [f32], width: usize, s: isize) {
    let n = (x.len() / width) as isize;
    if s == 0 || n == 0 {
        return;
    }
    let source = x.to_vec();
    for (t, frame) in x.chunks_mut(width).enumerate() {
        let from = (t as isize - s).clamp(0, n - 1) as usize;
        frame.copy_from_slice(&source[from * width..(from + 1) * width]);
    }
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
        Targets::Classes { labels, .. } => {
            Labels::Classes(labels.iter().map(|&l| l as i64).collect())
        }
        Targets::Values { values, .. } => Labels::Values(values.clone()),
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
    // Classes are split one by one (stratified); regression targets as one
    // group.
    let groups: Vec<usize> = match &data.y {
        Targets::Classes { labels, .. } => labels.clone(),
        Targets::Values { .. } => vec![0; data.len()],
    };
    let order = shuffled(data.len(), seed, u64::MAX);
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for group in 0..data.outputs().max(1) {
        let rows: Vec<usize> = order
            .iter()
            .copied()
            .filter(|&r| groups[r] == group)
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
