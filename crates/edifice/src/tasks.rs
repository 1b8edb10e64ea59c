//! Built-in long-range tasks: deterministic, generated from a seed, no
//! download. Each sample is `x [seq_len, embed_dim]` and a class label; a
//! batch is `x [B, seq_len, embed_dim]`, `y [B]`.
//!
//! - `lookback`: every frame carries a random class (one-hot in the first
//!   `classes` features) over noise; the last frame also names an offset `k`
//!   (one-hot among `offsets` evenly spread over `1..seq_len`). The label is
//!   the class of the frame `k` steps back: "what happened exactly k steps
//!   ago". A model whose window is shorter than `k` cannot see it.
//! - `recall`: `pairs` key-value pairs spread over the sequence (key one-hot
//!   in the first `classes` features, value in the next `classes`); the last
//!   frame asks for a key (in the third block). The label is its value.
//! - `frames`: a 60-fps control-like stream (slowly drifting random walks in
//!   every feature); once, in the first half of the sequence, one of
//!   `classes` event channels spikes. The label is which one: the event is
//!   far outside any short window.
//!
//! Sample `i` of batch `index` of a split depends only on
//! `(seed, split, index, i)`, so data order is reproducible and a resumed
//! run sees exactly the batches an uninterrupted one would.

use burn::prelude::*;

use crate::Error;

/// Which task.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum TaskKind {
    /// Class of the frame k steps back.
    Lookback,
    /// Associative recall of a value by its key.
    Recall,
    /// Which event happened long ago in a control stream.
    Frames,
    /// Recorded sequences from a file (`edifice train --data`): batches
    /// come from a [`Dataset`](crate::data::Dataset) given to
    /// [`Trainer::with_data`](crate::train::Trainer::with_data); this
    /// generator has nothing to make and gives zero frames.
    Data,
}

impl TaskKind {
    /// The task's name in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Lookback => "lookback",
            TaskKind::Recall => "recall",
            TaskKind::Frames => "frames",
            TaskKind::Data => "data",
        }
    }
}

/// What a run's head predicts.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum Head {
    /// One of `classes` labels: logits, cross-entropy, accuracy.
    Classes,
    /// `classes` real numbers (standardised on the training split): mean
    /// squared error.
    Values,
}

/// Which of the model's outputs the head reads.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum Readout {
    /// Each sequence's last real position (what a causal model has seen
    /// everything by).
    Last,
    /// The mean over each sequence's real positions (global average
    /// pooling, as FCN-style classifiers read their features).
    Mean,
}

/// What a batch's samples should give.
#[derive(Clone, Debug, PartialEq)]
pub enum Labels {
    /// A class in `0..classes` per sample, `[B]`.
    Classes(Vec<i64>),
    /// Regression targets, `[B, K]` row-major.
    Values(Vec<f32>),
}

/// Training or held-out data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// Training batches.
    Train,
    /// Held-out batches (a disjoint random stream).
    Eval,
}

/// A task and its sizes.
#[derive(Config, Debug)]
pub struct TaskConfig {
    /// `lookback`, `recall` or `frames`.
    #[config(default = "TaskKind::Lookback")]
    pub kind: TaskKind,
    /// Frames per sample (64 up to 16384).
    #[config(default = 64)]
    pub seq_len: usize,
    /// Features per frame.
    #[config(default = 16)]
    pub embed_dim: usize,
    /// Number of labels (with `head = values`: of regression targets).
    #[config(default = 8)]
    pub classes: usize,
    /// What the head predicts (built-in tasks: classes).
    #[config(default = "Head::Classes")]
    pub head: Head,
    /// Which outputs the head reads.
    #[config(default = "Readout::Last")]
    pub readout: Readout,
    /// Lookback: number of distinct offsets.
    #[config(default = 4)]
    pub offsets: usize,
    /// Recall: key-value pairs per sample.
    #[config(default = 4)]
    pub pairs: usize,
}

/// A batch: `x [B, T, E]` row-major and what each sample should give.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Inputs.
    pub x: Vec<f32>,
    /// Labels or targets.
    pub y: Labels,
    /// `[B, T, E]`.
    pub dims: [usize; 3],
}

/// SplitMix64: a tiny, well-mixed generator for reproducible data.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(parts: &[u64]) -> Self {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for &p in parts {
            state = Rng(state ^ p).next();
        }
        Rng(state)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in `[-1, 1)`.
    fn signed(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// Uniform in `(0, 1]` (never 0, so its logarithm is finite).
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub(crate) fn normal(&mut self) -> f32 {
        let (u, v) = (self.unit(), self.unit());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }
}

impl TaskConfig {
    /// Checks that the features can hold what the task writes.
    pub fn validate(&self) -> Result<(), Error> {
        let need = match self.kind {
            TaskKind::Lookback => self.classes + self.offsets,
            TaskKind::Recall => 3 * self.classes,
            TaskKind::Frames => self.classes + 1,
            TaskKind::Data => 1,
        };
        match self.head {
            Head::Classes if self.classes < 2 => {
                return Err(Error::Config("a task needs at least 2 classes".into()))
            }
            Head::Values if self.classes < 1 || self.kind != TaskKind::Data => {
                return Err(Error::Config(
                    "a regression head needs task kind `data` and at least 1 target".into(),
                ))
            }
            _ => {}
        }
        if self.embed_dim < need {
            return Err(Error::Config(format!(
                "task {:?} with {} classes needs embed_dim >= {need}, got {}",
                self.kind, self.classes, self.embed_dim
            )));
        }
        let min_len = match self.kind {
            TaskKind::Lookback => self.offsets + 1,
            TaskKind::Recall => self.pairs + 1,
            TaskKind::Frames => 4,
            TaskKind::Data => 1,
        };
        if self.seq_len < min_len {
            return Err(Error::Config(format!(
                "task {:?} needs seq_len >= {min_len}, got {}",
                self.kind, self.seq_len
            )));
        }
        if self.kind == TaskKind::Lookback && self.offsets == 0 {
            return Err(Error::Config("lookback needs at least one offset".into()));
        }
        if self.kind == TaskKind::Recall && (self.pairs == 0 || self.pairs > self.classes) {
            return Err(Error::Config(format!(
                "recall needs 1..={} pairs (distinct keys), got {}",
                self.classes, self.pairs
            )));
        }
        Ok(())
    }

    /// The lookback offsets, evenly spread over `1..seq_len`, largest last.
    pub fn lookback_offsets(&self) -> Vec<usize> {
        let span = self.seq_len - 1;
        (1..=self.offsets)
            .map(|m| (m * span / self.offsets).max(m))
            .collect()
    }

    /// Batch `index` of `split`: `batch` samples.
    pub fn batch(&self, seed: u64, split: Split, index: u64, batch: usize) -> Batch {
        let (t, e) = (self.seq_len, self.embed_dim);
        let mut x = vec![0.0f32; batch * t * e];
        let mut y = Vec::with_capacity(batch);
        let split_tag = match split {
            Split::Train => 1,
            Split::Eval => 2,
        };
        for (i, sample) in x.chunks_exact_mut(t * e).enumerate() {
            let mut rng = Rng::new(&[seed, split_tag, index, i as u64]);
            y.push(self.sample(&mut rng, sample) as i64);
        }
        Batch {
            x,
            y: Labels::Classes(y),
            dims: [batch, t, e],
        }
    }

    /// Fills one sample `[T, E]` and returns its label.
    fn sample(&self, rng: &mut Rng, x: &mut [f32]) -> usize {
        let (t, e, c) = (self.seq_len, self.embed_dim, self.classes);
        let frame = |at: usize| at * e..(at + 1) * e;
        match self.kind {
            TaskKind::Lookback => {
                let mut classes = Vec::with_capacity(t);
                for at in 0..t {
                    let f = &mut x[frame(at)];
                    f.iter_mut().for_each(|v| *v = 0.25 * rng.signed());
                    let class = rng.below(c);
                    f[class] = 1.0;
                    classes.push(class);
                }
                let offsets = self.lookback_offsets();
                let pick = rng.below(offsets.len());
                let last = t - 1;
                x[last * e + c + pick] = 1.0;
                classes[last - offsets[pick]]
            }
            TaskKind::Recall => {
                x.iter_mut().for_each(|v| *v = 0.25 * rng.signed());
                // Distinct keys at distinct positions before the last frame.
                let mut keys: Vec<usize> = (0..c).collect();
                let mut positions: Vec<usize> = (0..t - 1).collect();
                let mut values = Vec::with_capacity(self.pairs);
                for p in 0..self.pairs {
                    keys.swap(p, p + rng.below(c - p));
                    positions.swap(p, p + rng.below(t - 1 - p));
                    let value = rng.below(c);
                    let at = positions[p];
                    x[at * e + keys[p]] = 1.0;
                    x[at * e + c + value] = 1.0;
                    values.push(value);
                }
                let asked = rng.below(self.pairs);
                x[(t - 1) * e + 2 * c + keys[asked]] = 1.0;
                values[asked]
            }
            TaskKind::Data => 0,
            TaskKind::Frames => {
                // Random walks with a slow drift, like analog stick positions.
                let mut state: Vec<f32> = (0..e).map(|_| 0.5 * rng.signed()).collect();
                let event_at = rng.below(t / 2);
                let class = rng.below(c);
                for at in 0..t {
                    for (s, v) in state.iter_mut().zip(&mut x[frame(at)]) {
                        *s = (0.95 * *s + 0.1 * rng.signed()).clamp(-1.0, 1.0);
                        *v = *s;
                    }
                    if at == event_at {
                        x[at * e + 1 + class] = 4.0;
                    }
                }
                class
            }
        }
    }
}
