//! A run's configuration: model, task and optimisation (the run config
//! file's `[model]`, `[task]` and `[train]` tables), and the learning-rate
//! schedule.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::data::run::Augment;
use crate::models::{model_info, overlay};
use crate::tasks::{TaskConfig, TaskKind};
use crate::{Error, ModelConfig};

/// Optimisation settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    /// Optimizer steps.
    pub steps: usize,
    /// Samples per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Steps of linear warm-up from 0 to `lr`.
    pub warmup_steps: usize,
    /// Learning rate at the end of the cosine decay.
    pub min_lr: f64,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f32,
    /// Clip the gradient's global L2 norm to this (0 = off).
    pub grad_clip: f32,
    /// Seed of the initial weights, the data and dropout.
    pub seed: u64,
    /// Evaluate (and checkpoint) every this many steps.
    pub eval_every: usize,
    /// Held-out batches per evaluation.
    pub eval_batches: usize,
    /// Weight of each class in the cross-entropy (None: all 1), e.g. the
    /// inverse class frequencies of an unbalanced data set
    /// (`edifice train --class-weights balanced`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_weights: Option<Vec<f32>>,
    /// Standard deviation of the Gaussian noise added to the real tokens of
    /// every training batch drawn from a data file, in standardised units
    /// (0 = off). Validation and test data never see it. A regulariser for
    /// small data sets (`configs/ucr.toml` uses σ 0.05). Left out of the
    /// recorded run config when 0, so checkpoints written before the option
    /// existed still resume.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub noise: f32,
    /// Largest random time shift of every training sequence drawn from a
    /// data file, as a fraction of its length, in `[0, 0.5)` (0 = off; see
    /// [`Augment::shift`]). Left out of the recorded run config when 0,
    /// like `noise`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub shift: f32,
}

impl TrainOptions {
    /// How training batches drawn from a data file are perturbed.
    pub fn augment(&self) -> Augment {
        Augment {
            noise: self.noise,
            shift: self.shift,
        }
    }
}

fn is_zero(x: &f32) -> bool {
    *x == 0.0
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            steps: 1000,
            batch_size: 32,
            lr: 3e-3,
            warmup_steps: 50,
            min_lr: 1e-5,
            weight_decay: 0.01,
            grad_clip: 1.0,
            seed: 0,
            eval_every: 100,
            eval_batches: 8,
            class_weights: None,
            noise: 0.0,
            shift: 0.0,
        }
    }
}

/// Model, task and optimisation of one run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The model.
    pub model: ModelConfig,
    /// The task.
    pub task: TaskConfig,
    /// Optimisation.
    pub train: TrainOptions,
}

/// The default model of a run without a `[model]` table: Edifice's
/// sliding-window transformer, window = the whole sequence.
fn default_model() -> serde_json::Map<String, Value> {
    let value = serde_json::json!({
        "model": "sliding_window", "num_heads": 2, "head_dim": 16, "num_layers": 2,
        "ffn_dim": 64, "dropout": 0.0,
    });
    value.as_object().expect("object").clone()
}

impl RunConfig {
    /// The built-in default run: `lookback` over 64 frames with a full-window
    /// sliding-window model.
    pub fn default_run() -> Self {
        Self::from_value(Value::Object(Default::default())).expect("the default run is valid")
    }

    /// Parses a TOML run config.
    pub fn from_toml(text: &str) -> Result<Self, Error> {
        let value: Value =
            toml::from_str(text).map_err(|e| Error::Config(format!("not valid TOML: {e}")))?;
        Self::from_value(value)
    }

    /// Builds a run from `{model: {...}, task: {...}, train: {...}}`; every
    /// table and option is optional.
    pub fn from_value(value: Value) -> Result<Self, Error> {
        let Value::Object(mut tables) = value else {
            return Err(Error::Config("a run config must be a table".into()));
        };
        let mut table = |name: &str| -> Result<serde_json::Map<String, Value>, Error> {
            match tables.remove(name) {
                None => Ok(Default::default()),
                Some(Value::Object(map)) => Ok(map),
                Some(other) => Err(Error::Config(format!(
                    "`{name}` must be a table, got {other}"
                ))),
            }
        };
        let (model, task, train) = (table("model")?, table("task")?, table("train")?);
        if let Some(name) = tables.keys().next() {
            return Err(Error::Config(format!(
                "unknown table `{name}` in the run config; expected model, task and train"
            )));
        }
        let task_defaults = serde_json::to_value(TaskConfig::new()).expect("serialisable");
        let mut task: TaskConfig = serde_json::from_value(overlay(
            object(task_defaults),
            task,
            "[task]",
            &["kind", "head", "readout"],
        )?)
        .map_err(|e| Error::Config(format!("bad [task] options: {e}")))?;
        task.validate()?;
        let mut train_defaults =
            object(serde_json::to_value(TrainOptions::default()).expect("serialisable"));
        train_defaults.insert("class_weights".into(), Value::Null);
        for augment in ["noise", "shift"] {
            train_defaults.insert(augment.into(), 0.0.into());
        }
        let train: TrainOptions =
            serde_json::from_value(overlay(train_defaults, train, "[train]", &[])?)
                .map_err(|e| Error::Config(format!("bad [train] options: {e}")))?;
        if train.steps == 0
            || train.batch_size == 0
            || train.eval_every == 0
            || train.eval_batches == 0
        {
            return Err(Error::Config(
                "steps, batch_size, eval_every and eval_batches must be at least 1".into(),
            ));
        }
        if !(train.lr > 0.0 && train.lr.is_finite())
            || train.min_lr < 0.0
            || train.min_lr > train.lr
        {
            return Err(Error::Config(format!(
                "need 0 <= min_lr <= lr and lr > 0, got lr {} and min_lr {}",
                train.lr, train.min_lr
            )));
        }
        if let Some(w) = &train.class_weights {
            if w.len() != task.classes || w.iter().any(|&x| !(x > 0.0 && x.is_finite())) {
                return Err(Error::Config(format!(
                    "class_weights must be {} positive numbers (one per class), got {w:?}",
                    task.classes
                )));
            }
        }
        let augment = train.augment();
        for (name, value, upto) in [
            ("noise", augment.noise, f32::INFINITY),
            ("shift", augment.shift, 0.5),
        ] {
            if !(value >= 0.0 && value < upto) {
                return Err(Error::Config(format!(
                    "{name} must be in [0, {upto}), got {value}"
                )));
            }
            if value > 0.0 && task.kind != TaskKind::Data {
                return Err(Error::Config(format!(
                    "{name} perturbs recorded data (train with --data); task kind `{}` draws its own",
                    task.kind.name()
                )));
            }
        }
        let model = Self::model_for(model, &mut task)?;
        Ok(Self { model, task, train })
    }

    /// The `[model]` table, with the task's width and length filled in (or
    /// checked when given). Recorded data is padded at the end, so a data
    /// task's length is rounded up to what the model takes.
    fn model_for(
        mut model: serde_json::Map<String, Value>,
        task: &mut TaskConfig,
    ) -> Result<ModelConfig, Error> {
        if !model.contains_key("model") {
            let defaults = default_model();
            for (k, v) in defaults {
                model.entry(k).or_insert(v);
            }
        }
        let len_key = model
            .get("model")
            .and_then(Value::as_str)
            .and_then(model_info)
            .map_or("seq_len", |info| info.length_key);
        model.entry("embed_dim").or_insert(task.embed_dim.into());
        let length_given = model.contains_key(len_key);
        model.entry(len_key).or_insert(task.seq_len.into());
        if model.get("model").and_then(Value::as_str) == Some("sliding_window") {
            model.entry("window_size").or_insert(task.seq_len.into());
        }
        let mut config = ModelConfig::parse(Value::Object(model))?;
        if task.kind == TaskKind::Data && !length_given {
            task.seq_len = task.seq_len.next_multiple_of(config.len_multiple());
            config = config.with_seq_len(task.seq_len);
        }
        config.validate()?;
        if config.input_dims() != (task.seq_len, task.embed_dim) {
            return Err(Error::Config(format!(
                "the model takes [seq_len, embed_dim] = {:?} but the task makes {:?}",
                config.input_dims(),
                (task.seq_len, task.embed_dim)
            )));
        }
        Ok(config)
    }

    /// The run as JSON (what checkpoints record).
    pub fn to_value(&self) -> Value {
        serde_json::json!({
            "model": self.model.to_value(),
            "task": self.task,
            "train": self.train,
        })
    }

    /// Learning rate at `step`: linear warm-up, then cosine down to `min_lr`.
    pub fn lr(&self, step: usize) -> f64 {
        let t = &self.train;
        if step < t.warmup_steps {
            return t.lr * (step + 1) as f64 / t.warmup_steps as f64;
        }
        let span = (t.steps - t.warmup_steps.min(t.steps)).max(1) as f64;
        let progress = ((step - t.warmup_steps) as f64 / span).min(1.0);
        t.min_lr + 0.5 * (t.lr - t.min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

fn object(value: Value) -> serde_json::Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => unreachable!("configs serialise to objects"),
    }
}
