//! Training a model on a built-in task or on recorded sequences
//! ([`crate::data`]): a linear classification head on the model's
//! `[B, output_size]` output (at each sequence's last real frame), cross-entropy, AdamW with weight decay
//! and gradient-norm clipping, linear warm-up then cosine decay, dropout in
//! training steps only, held-out evaluation, and checkpoints that resume
//! bit for bit.
//!
//! A run config (TOML) has three tables, each optional:
//!
//! ```toml
//! [model]            # a model config; embed_dim and seq_len default to the task's
//! model = "sliding_window"
//! [task]             # see crate::tasks
//! kind = "lookback"
//! seq_len = 64
//! [train]            # see TrainOptions
//! steps = 400
//! ```
//!
//! Determinism: batch `s` of the training split is a function of
//! `(seed, s)` and the dropout RNG is reseeded from `(seed, s)` before step
//! `s`, so a run resumed from a checkpoint at step `s` continues exactly as
//! the uninterrupted run would.

use std::sync::Arc;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::{Int, TensorData};
use serde::Serialize;

use crate::data::run::{DataMeta, DataRun};
use crate::data::Dataset;
use crate::layers::dense;
use crate::layers::Linear;
use crate::models::{Footprint, Use};
use crate::optim::AdamWConfig;
use crate::tasks::{Batch, Head, Labels, Readout, Split, TaskKind};
use crate::weights::{self, Walk, Walker};
use crate::{Error, Model};

mod checkpoint;
mod config;

pub use config::{RunConfig, TrainOptions};

/// A model with a linear head: `[B, T, E]` → outputs `[B, classes]`
/// (logits, or regression targets).
#[derive(Module, Debug)]
pub struct Classifier {
    /// The sequence model.
    pub model: Model,
    /// `output_size → classes`.
    pub head: Linear,
    /// Which of the model's outputs the head reads.
    #[module(skip)]
    pub readout: Readout,
}

impl Classifier {
    /// Outputs for `x [B, T, E]`.
    pub fn forward(&self, x: Tensor<3>) -> Result<Tensor<2>, Error> {
        let features = match self.readout {
            Readout::Last => self.model.forward(x)?,
            Readout::Mean => self.model.forward_all(x)?.mean_dim(1).squeeze_dim(1),
        };
        Ok(self.head.forward(features))
    }

    /// Outputs from each sequence's real frames: `lengths[b]` frames of
    /// `x [B, T, E]` are real, the rest padding (None: all `T`).
    pub fn forward_lengths(
        &self,
        x: Tensor<3>,
        lengths: Option<&[usize]>,
    ) -> Result<Tensor<2>, Error> {
        let [b, t, _] = x.dims();
        let Some(lengths) = lengths.filter(|l| l.iter().any(|&n| n != t)) else {
            return self.forward(x);
        };
        let device = x.device();
        let all = self.model.forward_padded(x, lengths)?;
        let o = all.dims()[2];
        let features = match self.readout {
            Readout::Last => {
                let last: Vec<i64> = lengths.iter().map(|&n| n as i64 - 1).collect();
                let index = Tensor::<1, Int>::from_data(TensorData::new(last, [b]), &device)
                    .reshape([b, 1, 1])
                    .expand([b, 1, o]);
                all.gather(1, index).reshape([b, o])
            }
            Readout::Mean => {
                // Weights 1/len[b] on real positions, 0 on padding.
                let weights: Vec<f32> = lengths
                    .iter()
                    .flat_map(|&n| (0..t).map(move |i| if i < n { 1.0 / n as f32 } else { 0.0 }))
                    .collect();
                let weights = Tensor::<3>::from_data(TensorData::new(weights, [b, t, 1]), &device);
                all.mul(weights).sum_dim(1).reshape([b, o])
            }
        };
        Ok(self.head.forward(features))
    }
}

impl Walk for Classifier {
    fn walk(&mut self, w: &mut Walker) {
        w.scope("model", |w| self.model.walk(w));
        w.linear("head", "head", &mut self.head);
    }
}

/// Loss and accuracy over some batches.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Stats {
    /// Mean cross-entropy, or mean squared error of standardised targets.
    pub loss: f64,
    /// Fraction of correct argmax predictions (None: a regression head).
    pub accuracy: Option<f64>,
}

impl Stats {
    /// Whether these stats beat `other`: a higher accuracy (ties: a lower
    /// loss), or for a regression head a lower loss.
    pub fn better_than(&self, other: &Stats) -> bool {
        match (self.accuracy, other.accuracy) {
            (Some(a), Some(b)) if a != b => a > b,
            _ => self.loss < other.loss,
        }
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.accuracy {
            Some(a) => write!(f, "accuracy {a:.4}, loss {:.4}", self.loss),
            None => write!(f, "loss (mean squared error) {:.4}", self.loss),
        }
    }
}

/// What a batch's outputs are scored against, on the device.
pub enum Target {
    /// Labels `[B]`.
    Classes(Tensor<1, Int>),
    /// Standardised regression targets `[B, K]`.
    Values(Tensor<2>),
}

/// How a run computes a batch's loss and combines gradients: [`Local`]
/// on one process, or with the sequence spread over several
/// (`edifice-dist`).
pub trait Parallelism: Send + Sync {
    /// The loss of `model` on `x [B, T, E]` (of which `lengths[b]` frames
    /// are real, None: all) against `y`: the tensor to differentiate and
    /// the stats to report, the same on every process.
    fn loss(
        &self,
        model: &Classifier,
        x: Tensor<3>,
        lengths: Option<&[usize]>,
        y: Target,
        device: &Device,
    ) -> Result<(Tensor<1>, Stats), Error>;

    /// Combines this process's gradients with the others' before the
    /// update (nothing to do on one process).
    fn reduce(&self, _model: &mut Classifier, _grads: &mut GradientsParams) -> Result<(), Error> {
        Ok(())
    }
}

/// One process: the whole batch, the whole sequence; the cross-entropy
/// weighted by `class_weights` when given.
#[derive(Clone, Debug, Default)]
pub struct Local {
    /// Weight of each class (None: all 1).
    pub class_weights: Option<Vec<f32>>,
}

impl Parallelism for Local {
    fn loss(
        &self,
        model: &Classifier,
        x: Tensor<3>,
        lengths: Option<&[usize]>,
        y: Target,
        device: &Device,
    ) -> Result<(Tensor<1>, Stats), Error> {
        let out = model.forward_lengths(x, lengths)?;
        Ok(Trainer::score(
            out,
            y,
            self.class_weights.as_deref(),
            device,
        ))
    }
}

/// A training run in progress.
pub struct Trainer {
    /// What is being trained.
    pub run: RunConfig,
    /// The model and head.
    pub model: Classifier,
    optim: ModuleOptimizer,
    /// Steps done.
    pub step: usize,
    device: Device,
    parallelism: Arc<dyn Parallelism>,
    data: Option<Arc<DataRun>>,
    /// A loaded checkpoint's data statistics and classes (runs on data).
    pub restored: Option<DataMeta>,
}

impl Trainer {
    /// A fresh run: weights initialised from the seed.
    pub fn new(run: RunConfig) -> Result<Self, Error> {
        let device = Device::flex().autodiff();
        device.seed(run.train.seed);
        let model = run.model.init(&device)?;
        let head = dense(run.model.output_size(), run.task.classes, &device);
        let footprint = Footprint::of(&model, run.task.seq_len);
        footprint.check(run.train.batch_size, Use::Training, "training")?;
        let optim = Self::optimizer(&run);
        let mut model = Classifier {
            model,
            head,
            readout: run.task.readout,
        };
        // burn draws a parameter's initial values at its first use: draw
        // them all now, from the seed, so they do not depend on what runs
        // first (a training step re-seeds the device for its dropout; a
        // distributed run reads the weights to check its ranks agree).
        weights::entries(&mut model);
        let local = Local {
            class_weights: run.train.class_weights.clone(),
        };
        Ok(Self {
            run,
            model,
            optim,
            step: 0,
            device,
            parallelism: Arc::new(local),
            data: None,
            restored: None,
        })
    }

    /// Trains on `data` (a run whose task kind is `data`, as wide as it and
    /// at least as long: shorter sequences are padded to the run's length).
    pub fn with_data(mut self, data: DataRun) -> Result<Self, Error> {
        let [_, t, e] = data.train.dims;
        let task = &self.run.task;
        let head = match data.meta.targets {
            Some(_) => Head::Values,
            None => Head::Classes,
        };
        let outputs = data.train.outputs();
        if task.kind != TaskKind::Data
            || task.seq_len < t
            || (task.embed_dim, task.classes, task.head) != (e, outputs, head)
        {
            return Err(Error::Config(format!(
                "the run's task ({:?}, seq_len {}, embed_dim {}, {} outputs, head {:?}) does not fit the data ({t} frames, {e} features, {outputs} outputs, head {head:?})",
                task.kind, task.seq_len, task.embed_dim, task.classes, task.head
            )));
        }
        self.data = Some(Arc::new(data.padded(task.seq_len)));
        Ok(self)
    }

    /// The run's data, if it trains on a file.
    pub fn data(&self) -> Option<&DataRun> {
        self.data.as_deref()
    }

    /// Computes losses and combines gradients through `parallelism` from
    /// now on (it may also change the model, e.g. schedule its attention
    /// across processes).
    pub fn set_parallelism(&mut self, parallelism: Arc<dyn Parallelism>) {
        self.parallelism = parallelism;
    }

    fn optimizer(run: &RunConfig) -> ModuleOptimizer {
        let clip = (run.train.grad_clip > 0.0).then_some(
            burn::grad_clipping::GradientClippingConfig::Norm(run.train.grad_clip),
        );
        AdamWConfig::new()
            .with_weight_decay(run.train.weight_decay)
            .with_grad_clipping(clip)
            .init()
    }

    /// A batch as `x [B, T, E]` and its labels or targets on `device`.
    fn tensors(batch: &Batch, device: &Device) -> (Tensor<3>, Target) {
        let x = Tensor::<3>::from_data(TensorData::new(batch.x.clone(), batch.dims), device);
        let b = batch.dims[0];
        let y = match &batch.y {
            Labels::Classes(y) => {
                Target::Classes(Tensor::from_data(TensorData::new(y.clone(), [b]), device))
            }
            Labels::Values(v) => Target::Values(Tensor::from_data(
                TensorData::new(v.clone(), [b, v.len() / b.max(1)]),
                device,
            )),
        };
        (x, y)
    }

    /// The loss of head outputs `out [B, K]` against `y` (cross-entropy
    /// weighted by `class_weights`, or mean squared error) and its stats.
    pub fn score(
        out: Tensor<2>,
        y: Target,
        class_weights: Option<&[f32]>,
        device: &Device,
    ) -> (Tensor<1>, Stats) {
        let (loss, accuracy) = match y {
            Target::Classes(y) => {
                let (loss, accuracy) = Self::weighted_stats(out, y, class_weights, device);
                (loss, Some(accuracy))
            }
            Target::Values(v) => (out.sub(v).square().mean(), None),
        };
        let value = loss.clone().into_scalar::<f32>() as f64;
        (
            loss,
            Stats {
                loss: value,
                accuracy,
            },
        )
    }

    /// Mean cross-entropy of `logits [B, classes]` against labels `y [B]`,
    /// and the fraction of correct argmax predictions.
    pub fn stats(logits: Tensor<2>, y: Tensor<1, Int>, device: &Device) -> (Tensor<1>, f64) {
        Self::weighted_stats(logits, y, None, device)
    }

    /// [`Trainer::stats`] with the cross-entropy weighted per class (the
    /// weighted mean, as PyTorch's `CrossEntropyLoss(weight=...)`).
    pub fn weighted_stats(
        logits: Tensor<2>,
        y: Tensor<1, Int>,
        weights: Option<&[f32]>,
        device: &Device,
    ) -> (Tensor<1>, f64) {
        let n = y.dims()[0];
        let correct: i64 = logits
            .clone()
            .argmax(1)
            .reshape([n])
            .equal(y.clone())
            .int()
            .sum()
            .into_scalar::<i64>();
        let loss = CrossEntropyLossConfig::new()
            .with_weights(weights.map(<[f32]>::to_vec))
            .init(device)
            .forward(logits, y);
        (loss, correct as f64 / n as f64)
    }

    /// One optimizer step on training batch `self.step`.
    ///
    /// A loss that is not finite is an [`Error::Diverged`] naming the step;
    /// the model and the step count are left as they were.
    pub fn train_step(&mut self) -> Result<Stats, Error> {
        let t = &self.run.train;
        self.device.seed(mix(t.seed, self.step as u64));
        let (batch, lengths) = match &self.data {
            Some(data) => {
                let (batch, lengths) =
                    data.train_batch(t.seed, self.step, t.batch_size, t.augment());
                (batch, Some(lengths))
            }
            None if self.run.task.kind == TaskKind::Data => {
                return Err(Error::Config(
                    "task kind `data` trains on a file: give --data".into(),
                ))
            }
            None => (
                self.run
                    .task
                    .batch(t.seed, Split::Train, self.step as u64, t.batch_size),
                None,
            ),
        };
        let (x, y) = Self::tensors(&batch, &self.device);
        let (loss, stats) =
            self.parallelism
                .loss(&self.model, x, lengths.as_deref(), y, &self.device)?;
        let loss_value = stats.loss;
        if !loss_value.is_finite() {
            return Err(Error::Diverged(format!(
                "the training loss of step {} is {loss_value} (try a lower learning rate; \
                 the last checkpoint is left as it was)",
                self.step + 1
            )));
        }
        let mut grads = GradientsParams::from_grads(loss.backward(), &self.model);
        self.parallelism.reduce(&mut self.model, &mut grads)?;
        let lr = self.run.lr(self.step);
        let model = self.model.clone();
        self.model = self.optim.step(lr, model, grads);
        self.step += 1;
        Ok(stats)
    }

    /// Loss and accuracy on the held-out batches, or the data's validation
    /// split (dropout off, no gradients). A loss that is not finite is an
    /// [`Error::Diverged`].
    pub fn evaluate(&self) -> Result<Stats, Error> {
        let t = &self.run.train;
        if let Some(data) = &self.data {
            return self.evaluate_on(&data.val);
        }
        let batches = (0..t.eval_batches).map(|index| {
            (
                self.run
                    .task
                    .batch(t.seed, Split::Eval, index as u64, t.batch_size),
                None,
            )
        });
        self.evaluate_batches(batches)
    }

    /// Loss and accuracy on `data` (prepared like the training split: see
    /// [`DataRun::prepare`]).
    pub fn evaluate_on(&self, data: &Dataset) -> Result<Stats, Error> {
        let batches = DataRun::batches(data, self.run.train.batch_size).map(|(b, l)| (b, Some(l)));
        self.evaluate_batches(batches)
    }

    /// For the sequences of `data` (prepared like the training split):
    /// class probabilities `[N, classes]` (softmax of the logits), or the
    /// regression targets `[N, K]` in the data's units.
    pub fn predict(&self, data: &Dataset) -> Result<Vec<f32>, Error> {
        let model = self.model.valid();
        let device = Device::flex();
        let mut out = Vec::with_capacity(data.len() * self.run.task.classes);
        for (batch, lengths) in DataRun::batches(data, self.run.train.batch_size) {
            let x = Tensor::<3>::from_data(TensorData::new(batch.x, batch.dims), &device);
            let mut y = model.forward_lengths(x, Some(&lengths))?;
            if self.run.task.head == Head::Classes {
                y = burn::tensor::activation::softmax(y, 1);
            }
            out.extend(
                y.into_data()
                    .try_to_vec::<f32>()
                    .map_err(|e| Error::Shape(format!("{e:?}")))?,
            );
        }
        if let Some(targets) = self.data_meta().and_then(|m| m.targets.as_ref()) {
            targets.restore(&mut out);
        }
        Ok(out)
    }

    /// What the run knows of its data: from the data it trains on, else
    /// from the checkpoint it was loaded from.
    pub fn data_meta(&self) -> Option<&DataMeta> {
        match &self.data {
            Some(data) => Some(&data.meta),
            None => self.restored.as_ref(),
        }
    }

    /// Means over sequences of the loss and accuracy of `batches`.
    fn evaluate_batches(
        &self,
        batches: impl Iterator<Item = (Batch, Option<Vec<usize>>)>,
    ) -> Result<Stats, Error> {
        let model = self.model.valid();
        let device = Device::flex();
        let (mut loss, mut correct, mut count) = (0.0, Some(0.0), 0usize);
        for (batch, lengths) in batches {
            let n = batch.dims[0];
            let (x, y) = Self::tensors(&batch, &device);
            let (_, stats) = self
                .parallelism
                .loss(&model, x, lengths.as_deref(), y, &device)?;
            loss += stats.loss * n as f64;
            correct = correct.zip(stats.accuracy).map(|(c, a)| c + a * n as f64);
            count += n;
        }
        let n = count.max(1) as f64;
        if !loss.is_finite() {
            return Err(Error::Diverged(format!(
                "the held-out loss after step {} is {}",
                self.step,
                loss / n
            )));
        }
        Ok(Stats {
            loss: loss / n,
            accuracy: correct.map(|c| c / n),
        })
    }
}

/// Mixes a seed and a step into the dropout seed of that step.
fn mix(seed: u64, step: u64) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ step.wrapping_add(1).wrapping_mul(0xBF58_476D_1CE4_E5B9)
}
