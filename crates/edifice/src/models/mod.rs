//! The models (five from Edifice, plus shifted sparse), their configs, and config files.
//!
//! Every model maps `[batch, seq_len, embed_dim]` to `[batch, output_size]`
//! (`forward`) or, for every timestep, `[batch, seq_len, output_size]`
//! (`forward_all`).
//!
//! A config file (TOML or JSON) names the model with a `model` key and gives
//! that model's Edifice options by their Edifice names:
//!
//! ```toml
//! model = "dual_chunk"
//! embed_dim = 287
//! seq_len = 64
//! ```

pub mod backbone;
pub mod dual_chunk;
pub mod footprint;
pub mod hybrid;
pub mod ring;
pub mod shifted_sparse;
pub mod sliding_window;

use burn::prelude::*;
use serde_json::Value;

pub use dual_chunk::{DualChunk, DualChunkConfig};
pub use hybrid::{Hybrid, HybridConfig};
pub use ring::{Ring, RingConfig};
pub use shifted_sparse::{ShiftedSparse, ShiftedSparseConfig, SparsePattern};
pub use sliding_window::{SlidingWindow, SlidingWindowConfig};

pub use footprint::{Footprint, Use};

use crate::weights::{Walk, Walker};
use crate::Error;

/// The config of one of the models.
#[derive(Clone, Debug)]
pub enum ModelConfig {
    /// `dual_chunk`: `Edifice.Attention.DualChunk.build`.
    DualChunk(DualChunkConfig),
    /// `sliding_window`: `MultiHead.build_sliding_window` (and `MultiHead.build`).
    SlidingWindow(SlidingWindowConfig),
    /// `hybrid`: `MultiHead.build_hybrid`.
    Hybrid(HybridConfig),
    /// `hybrid_mlp`: `MultiHead.build_hybrid_mlp`.
    HybridMlp(HybridConfig),
    /// `ring`: `RingAttention.build`.
    Ring(RingConfig),
    /// `shifted_sparse`: ours (no Edifice counterpart).
    ShiftedSparse(ShiftedSparseConfig),
}

/// The model names a config file may use.
pub const MODEL_NAMES: &[&str] = &[
    "dual_chunk",
    "sliding_window",
    "hybrid",
    "hybrid_mlp",
    "ring",
];

impl ModelConfig {
    /// Parses a TOML config file's text.
    pub fn from_toml(text: &str) -> Result<Self, Error> {
        let value: Value =
            toml::from_str(text).map_err(|e| Error::Config(format!("not valid TOML: {e}")))?;
        Self::from_value(value)
    }

    /// Parses a JSON config file's text.
    pub fn from_json(text: &str) -> Result<Self, Error> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::Config(format!("not valid JSON: {e}")))?;
        Self::from_value(value)
    }

    /// Reads a config from `path`: JSON when it ends in `.json`, else TOML.
    pub fn from_path(path: &std::path::Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read config {}: {e}", path.display())))?;
        if path.extension().is_some_and(|e| e == "json") {
            Self::from_json(&text)
        } else {
            Self::from_toml(&text)
        }
    }

    /// Builds a config from a JSON object with a `model` key. Unknown option
    /// names are errors, so a typo never silently falls back to a default.
    pub fn from_value(value: Value) -> Result<Self, Error> {
        let Value::Object(mut options) = value else {
            return Err(Error::Config("a config must be a table of options".into()));
        };
        let model = match options.remove("model") {
            Some(Value::String(name)) => name,
            Some(other) => {
                return Err(Error::Config(format!(
                    "`model` must be a string, got {other}"
                )))
            }
            None => {
                return Err(Error::Config(format!(
                    "the config needs a `model` key, one of {}",
                    MODEL_NAMES.join(", ")
                )))
            }
        };
        if model == "hybrid" && options.contains_key("mlp_sizes") {
            return Err(Error::Config(
                "`mlp_sizes` is an option of hybrid_mlp, not hybrid".into(),
            ));
        }
        let embed_dim = match options.get("embed_dim") {
            Some(v) => v.as_u64().ok_or_else(|| {
                Error::Config(format!(
                    "`embed_dim` must be a non-negative integer, got {v}"
                ))
            })? as usize,
            None => {
                return Err(Error::Config(format!(
                    "model `{model}` needs `embed_dim` (required)"
                )))
            }
        };
        // Edifice's defaults, overlaid with the file's options.
        let defaults = match model.as_str() {
            "dual_chunk" => Self::DualChunk(DualChunkConfig::new(embed_dim)),
            "sliding_window" => Self::SlidingWindow(SlidingWindowConfig::new(embed_dim)),
            "hybrid" => Self::Hybrid(HybridConfig::new(embed_dim)),
            "hybrid_mlp" => Self::HybridMlp(HybridConfig::new_mlp(embed_dim)),
            "ring" => Self::Ring(RingConfig::new(embed_dim)),
            "shifted_sparse" => Self::ShiftedSparse(ShiftedSparseConfig::new(embed_dim)),
            other => {
                return Err(Error::Config(format!(
                    "unknown model `{other}`; expected one of {}",
                    MODEL_NAMES.join(", ")
                )))
            }
        };
        let mut defaults_map = defaults.to_value();
        defaults_map.remove("model");
        let merged = overlay(defaults_map, options, &format!("model `{model}`"))?;
        let config = match defaults {
            Self::DualChunk(_) => Self::DualChunk(parse(&model, merged)?),
            Self::SlidingWindow(_) => Self::SlidingWindow(parse(&model, merged)?),
            Self::Hybrid(_) => Self::Hybrid(parse(&model, merged)?),
            Self::HybridMlp(_) => Self::HybridMlp(parse(&model, merged)?),
            Self::Ring(_) => Self::Ring(parse(&model, merged)?),
            Self::ShiftedSparse(_) => Self::ShiftedSparse(parse(&model, merged)?),
        };
        config.validate()?;
        Ok(config)
    }

    /// The config as a JSON object, `model` key included.
    pub fn to_value(&self) -> serde_json::Map<String, Value> {
        let value = match self {
            Self::DualChunk(c) => serde_json::to_value(c),
            Self::SlidingWindow(c) => serde_json::to_value(c),
            Self::Hybrid(c) | Self::HybridMlp(c) => serde_json::to_value(c),
            Self::Ring(c) => serde_json::to_value(c),
            Self::ShiftedSparse(c) => serde_json::to_value(c),
        };
        let Ok(Value::Object(mut map)) = value else {
            unreachable!("configs serialise to objects")
        };
        map.insert("model".into(), Value::String(self.name().into()));
        map
    }

    /// The model's name in config files.
    pub fn name(&self) -> &'static str {
        match self {
            Self::DualChunk(_) => "dual_chunk",
            Self::SlidingWindow(_) => "sliding_window",
            Self::Hybrid(_) => "hybrid",
            Self::HybridMlp(_) => "hybrid_mlp",
            Self::Ring(_) => "ring",
            Self::ShiftedSparse(_) => "shifted_sparse",
        }
    }

    /// Checks the options.
    pub fn validate(&self) -> Result<(), Error> {
        match self {
            Self::DualChunk(c) => c.validate(),
            Self::SlidingWindow(c) => c.validate(),
            Self::Hybrid(c) | Self::HybridMlp(c) => c.validate(),
            Self::Ring(c) => c.validate(),
            Self::ShiftedSparse(c) => c.validate(),
        }
    }

    /// Width of the model's output.
    pub fn output_size(&self) -> usize {
        match self {
            Self::DualChunk(c) => c.output_size(),
            Self::SlidingWindow(c) => c.output_size(),
            Self::Hybrid(c) | Self::HybridMlp(c) => c.output_size(),
            Self::Ring(c) => c.output_size(),
            Self::ShiftedSparse(c) => c.output_size(),
        }
    }

    /// `(seq_len, embed_dim)`: the input each sample must have.
    pub fn input_dims(&self) -> (usize, usize) {
        match self {
            Self::DualChunk(c) => (c.seq_len(), c.embed_dim),
            Self::SlidingWindow(c) => (c.seq_len(), c.embed_dim),
            Self::Hybrid(c) | Self::HybridMlp(c) => (c.seq_len(), c.embed_dim),
            Self::Ring(c) => (c.window_size, c.embed_dim),
            Self::ShiftedSparse(c) => (c.seq_len, c.embed_dim),
        }
    }

    /// The same config for sequences of `len` frames (`window_size` for ring).
    pub fn with_seq_len(&self, len: usize) -> Self {
        match self.clone() {
            Self::DualChunk(c) => Self::DualChunk(c.with_seq_len(Some(len))),
            Self::SlidingWindow(c) => Self::SlidingWindow(c.with_seq_len(Some(len))),
            Self::Hybrid(c) => Self::Hybrid(c.with_seq_len(Some(len))),
            Self::HybridMlp(c) => Self::HybridMlp(c.with_seq_len(Some(len))),
            Self::Ring(c) => Self::Ring(c.with_window_size(len)),
            Self::ShiftedSparse(c) => Self::ShiftedSparse(c.with_seq_len(len)),
        }
    }

    /// Builds the model with fresh parameters. A model whose parameters and
    /// one sequence's activations would not fit in the machine's memory is
    /// refused before any of it is allocated (see [`footprint`]).
    pub fn init(&self, device: &Device) -> Result<Model, Error> {
        let model = self.init_lazy(device)?;
        let what = format!("model `{}`", self.name());
        Footprint::of(&model, self.input_dims().0).check(1, Use::Inference, &what)?;
        Ok(model)
    }

    /// The model with its parameters not yet allocated (burn initialises
    /// them at first use).
    fn init_lazy(&self, device: &Device) -> Result<Model, Error> {
        Ok(match self {
            Self::DualChunk(c) => Model::DualChunk(c.init(device)?),
            Self::SlidingWindow(c) => Model::SlidingWindow(c.init(device)?),
            Self::Hybrid(c) | Self::HybridMlp(c) => Model::Hybrid(c.init(device)?),
            Self::Ring(c) => Model::Ring(c.init(device)?),
            Self::ShiftedSparse(c) => Model::ShiftedSparse(c.init(device)?),
        })
    }
}

/// `defaults` (a config serialised to JSON) with the file's `options` laid
/// over it. An option the defaults do not have is an error naming every
/// known one (`what` says whose options they are), so a typo never falls
/// back silently. Enum options (`combine`, `pattern`, `kind`) may be written
/// in lowercase; burn's Config names its variants.
pub(crate) fn overlay(
    mut defaults: serde_json::Map<String, Value>,
    mut options: serde_json::Map<String, Value>,
    what: &str,
) -> Result<Value, Error> {
    let unknown: Vec<&String> = options
        .keys()
        .filter(|k| !defaults.contains_key(*k))
        .collect();
    if !unknown.is_empty() {
        let names: Vec<&String> = defaults.keys().collect();
        return Err(Error::Config(format!(
            "unknown option(s) {unknown:?} for {what}; its options are {names:?}"
        )));
    }
    for (key, value) in options.iter_mut() {
        if let (true, Value::String(name)) = (ENUM_OPTIONS.contains(&key.as_str()), &*value) {
            let mut chars = name.chars();
            let capitalised = chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str());
            *value = Value::String(capitalised.unwrap_or_default());
        }
    }
    defaults.extend(options);
    Ok(Value::Object(defaults))
}

fn parse<T: serde::de::DeserializeOwned>(model: &str, value: Value) -> Result<T, Error> {
    serde_json::from_value(value)
        .map_err(|e| Error::Config(format!("bad options for model `{model}`: {e}")))
}

/// Options whose values name enum variants.
const ENUM_OPTIONS: &[&str] = &["combine", "pattern", "kind"];

/// One of the models. (Variants differ in size; there is one per run, so
/// boxing would buy nothing.)
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Model {
    /// See [`DualChunk`].
    DualChunk(DualChunk),
    /// See [`SlidingWindow`].
    SlidingWindow(SlidingWindow),
    /// See [`Hybrid`] (also `hybrid_mlp`).
    Hybrid(Hybrid),
    /// See [`Ring`].
    Ring(Ring),
    /// See [`ShiftedSparse`].
    ShiftedSparse(ShiftedSparse),
}

impl Model {
    /// `[B, seq_len, embed_dim]` → `[B, output_size]`.
    pub fn forward(&self, x: Tensor<3>) -> Result<Tensor<2>, Error> {
        match self {
            Self::DualChunk(m) => m.forward(x),
            Self::SlidingWindow(m) => m.forward(x),
            Self::Hybrid(m) => m.forward(x),
            Self::Ring(m) => m.forward(x),
            Self::ShiftedSparse(m) => m.forward(x),
        }
    }

    /// `[B, seq_len, embed_dim]` → `[B, seq_len, output_size]`.
    pub fn forward_all(&self, x: Tensor<3>) -> Result<Tensor<3>, Error> {
        match self {
            Self::DualChunk(m) => m.forward_all(x),
            Self::SlidingWindow(m) => m.forward_all(x),
            Self::Hybrid(m) => m.forward_all(x),
            Self::Ring(m) => m.forward_all(x),
            Self::ShiftedSparse(m) => m.forward_all(x),
        }
    }
}

impl Walk for Model {
    fn walk(&mut self, w: &mut Walker) {
        match self {
            Self::DualChunk(m) => m.walk(w),
            Self::SlidingWindow(m) => m.walk(w),
            Self::Hybrid(m) => m.walk(w),
            Self::Ring(m) => m.walk(w),
            Self::ShiftedSparse(m) => m.walk(w),
        }
    }
}
