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

/// `match` over the [`Model`] variants, binding the model as `$m`.
macro_rules! each_model {
    ($self:expr, $m:ident => $body:expr) => {
        match $self {
            Model::DualChunk($m) => $body,
            Model::SlidingWindow($m) => $body,
            Model::Hybrid($m) => $body,
            Model::Ring($m) => $body,
            Model::ShiftedSparse($m) => $body,
        }
    };
}
use crate::Error;

/// One model as the registry knows it: everything said about it once.
/// Parsing, error messages, the CLI's help and `docs/weights.md` read these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelInfo {
    /// Name in config files (`model = "..."`).
    pub name: &'static str,
    /// The Edifice function it ports (or "ours").
    pub edifice: &'static str,
    /// The option that sets the sequence length.
    pub length_key: &'static str,
    /// What it maps its input to.
    pub shapes: &'static str,
    /// Options whose values name enum variants (they may be written in
    /// lowercase; burn's Config names the variants).
    pub enum_options: &'static [&'static str],
    /// Options of another model sharing this one's config that this one
    /// refuses: `(option, the model that has it)`.
    pub refused_options: &'static [(&'static str, &'static str)],
    /// A small config of the model, as JSON (docs and tests).
    pub example: &'static str,
}

/// What each model's config provides to the registry beyond burn's
/// `validate` and `output_size` (implemented beside each config).
pub trait ModelOptions: Sized {
    /// `(seq_len, embed_dim)`: the input each sample must have.
    fn input_dims(&self) -> (usize, usize);
    /// The same config for sequences of `len` frames.
    fn with_len(&self, len: usize) -> Self;
    /// What the sequence length must be a multiple of (a chunk size, a
    /// ring's chunk count): data padded at the end is padded up to it.
    fn len_multiple(&self) -> usize {
        1
    }
    /// The model, parameters not yet allocated (burn initialises them at
    /// first use).
    fn model(&self, device: &Device) -> Result<Model, Error>;
}

/// Declares the models once: the [`ModelConfig`] variants, [`MODELS`], and
/// every dispatch over them.
macro_rules! registry {
    ($(
        $(#[$doc:meta])*
        $variant:ident($config:ty) = $defaults:expr, $info:expr;
    )*) => {
        /// The config of one of the models.
        #[derive(Clone, Debug)]
        pub enum ModelConfig {
            $( $(#[$doc])* $variant($config), )*
        }

        /// Every model, in the order of the docs.
        pub const MODELS: &[ModelInfo] = &[$($info),*];

        impl ModelConfig {
            /// The registry entry of this config's model.
            pub fn info(&self) -> &'static ModelInfo {
                match self {
                    $( Self::$variant(_) => &$info, )*
                }
            }

            /// Edifice's defaults for model `name` with frames of `embed_dim`.
            fn defaults(name: &str, embed_dim: usize) -> Option<Self> {
                $(
                    if name == $info.name {
                        return Some(Self::$variant($defaults(embed_dim)));
                    }
                )*
                None
            }

            /// A config of the same model from `options` (JSON).
            fn reparse(&self, options: Value) -> Result<Self, Error> {
                let what = |e: serde_json::Error| {
                    Error::Config(format!("bad options for model `{}`: {e}", self.name()))
                };
                Ok(match self {
                    $( Self::$variant(_) => Self::$variant(serde_json::from_value(options).map_err(what)?), )*
                })
            }

            /// The options alone, as JSON.
            fn options(&self) -> Result<Value, serde_json::Error> {
                match self {
                    $( Self::$variant(c) => serde_json::to_value(c), )*
                }
            }

            /// Checks the options.
            pub fn validate(&self) -> Result<(), Error> {
                match self {
                    $( Self::$variant(c) => c.validate(), )*
                }
            }

            /// Width of the model's output.
            pub fn output_size(&self) -> usize {
                match self {
                    $( Self::$variant(c) => c.output_size(), )*
                }
            }

            /// `(seq_len, embed_dim)`: the input each sample must have.
            pub fn input_dims(&self) -> (usize, usize) {
                match self {
                    $( Self::$variant(c) => c.input_dims(), )*
                }
            }

            /// What the sequence length must be a multiple of.
            pub fn len_multiple(&self) -> usize {
                match self {
                    $( Self::$variant(c) => c.len_multiple(), )*
                }
            }

            /// The same config for sequences of `len` frames (the model's
            /// [`ModelInfo::length_key`]).
            pub fn with_seq_len(&self, len: usize) -> Self {
                match self {
                    $( Self::$variant(c) => Self::$variant(c.with_len(len)), )*
                }
            }

            /// The model with its parameters not yet allocated.
            fn init_lazy(&self, device: &Device) -> Result<Model, Error> {
                match self {
                    $( Self::$variant(c) => c.model(device), )*
                }
            }
        }
    };
}

registry! {
    /// `dual_chunk`: `Edifice.Attention.DualChunk.build`.
    DualChunk(DualChunkConfig) = DualChunkConfig::new, dual_chunk::INFO;
    /// `sliding_window`: `MultiHead.build_sliding_window` (and `MultiHead.build`).
    SlidingWindow(SlidingWindowConfig) = SlidingWindowConfig::new, sliding_window::INFO;
    /// `hybrid`: `MultiHead.build_hybrid`.
    Hybrid(HybridConfig) = HybridConfig::new, hybrid::INFO;
    /// `hybrid_mlp`: `MultiHead.build_hybrid_mlp`.
    HybridMlp(HybridConfig) = HybridConfig::new_mlp, hybrid::INFO_MLP;
    /// `ring`: `RingAttention.build`.
    Ring(RingConfig) = RingConfig::new, ring::INFO;
    /// `shifted_sparse`: ours (no Edifice counterpart).
    ShiftedSparse(ShiftedSparseConfig) = ShiftedSparseConfig::new, shifted_sparse::INFO;
}

/// The registry entry of model `name`.
pub fn model_info(name: &str) -> Option<&'static ModelInfo> {
    MODELS.iter().find(|m| m.name == name)
}

/// The model names, comma-separated (for messages and help).
pub fn model_names() -> String {
    MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
}

/// A table of the models for `--help`: name, Edifice function, shapes.
pub fn models_help() -> String {
    let rows: Vec<String> = MODELS
        .iter()
        .map(|m| format!("  {:<15} {} ({})", m.name, m.shapes, m.edifice))
        .collect();
    format!("Models (`model = ...` in a config):\n{}", rows.join("\n"))
}

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
        let config = Self::parse(value)?;
        config.validate()?;
        Ok(config)
    }

    /// [`from_value`](Self::from_value) without the final `validate`.
    pub(crate) fn parse(value: Value) -> Result<Self, Error> {
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
                    model_names()
                )))
            }
        };
        let info = model_info(&model).ok_or_else(|| {
            Error::Config(format!(
                "unknown model `{model}`; expected one of {}",
                model_names()
            ))
        })?;
        if let Some((key, owner)) = info
            .refused_options
            .iter()
            .find(|(k, _)| options.contains_key(*k))
        {
            return Err(Error::Config(format!(
                "`{key}` is an option of {owner}, not {model}"
            )));
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
        let defaults =
            Self::defaults(&model, embed_dim).expect("every registered name has defaults");
        let Ok(Value::Object(defaults_map)) = defaults.options() else {
            unreachable!("configs serialise to objects")
        };
        let merged = overlay(
            defaults_map,
            options,
            &format!("model `{model}`"),
            info.enum_options,
        )?;
        defaults.reparse(merged)
    }

    /// The config as a JSON object, `model` key included, that
    /// [`from_value`](Self::from_value) reads back (without the options of
    /// a sibling model sharing this config, which it refuses).
    pub fn to_value(&self) -> serde_json::Map<String, Value> {
        let Ok(Value::Object(mut map)) = self.options() else {
            unreachable!("configs serialise to objects")
        };
        for (key, _) in self.info().refused_options {
            map.remove(*key);
        }
        map.insert("model".into(), Value::String(self.name().into()));
        map
    }

    /// The model's name in config files.
    pub fn name(&self) -> &'static str {
        self.info().name
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
}

/// `defaults` (a config serialised to JSON) with the file's `options` laid
/// over it. An option the defaults do not have is an error naming every
/// known one (`what` says whose options they are), so a typo never falls
/// back silently. `enum_options` name enum variants and may be written in
/// lowercase; burn's Config names its variants.
pub(crate) fn overlay(
    mut defaults: serde_json::Map<String, Value>,
    mut options: serde_json::Map<String, Value>,
    what: &str,
    enum_options: &[&str],
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
        if let (true, Value::String(name)) = (enum_options.contains(&key.as_str()), &*value) {
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
        each_model!(self, m => m.forward(x))
    }

    /// `[B, seq_len, embed_dim]` → `[B, seq_len, output_size]`.
    pub fn forward_all(&self, x: Tensor<3>) -> Result<Tensor<3>, Error> {
        each_model!(self, m => m.forward_all(x))
    }

    /// `[B, seq_len, embed_dim]` of which the first `lengths[b]` frames are
    /// real, the rest padding → `[B, seq_len, output_size]`; the outputs at
    /// real positions do not depend on the padding. sliding_window, hybrid
    /// and hybrid_mlp are causal by construction, and ring, dual_chunk with
    /// `strict_causal` and shifted_sparse with `causal` by configuration:
    /// no real position reads a later one. Non-causal shifted_sparse cuts
    /// its attention at each sequence's end; dual_chunk's chunk summaries
    /// average real positions only.
    pub fn forward_padded(&self, x: Tensor<3>, lengths: &[usize]) -> Result<Tensor<3>, Error> {
        let [b, t, _] = x.dims();
        if lengths.len() != b || lengths.iter().any(|&n| n == 0 || n > t) {
            return Err(Error::Shape(format!(
                "lengths {lengths:?} for a batch of {b} sequences of {t} frames (each needs 1..={t})"
            )));
        }
        match self {
            Model::DualChunk(m) => m.forward_padded(x, lengths),
            Model::ShiftedSparse(m) | Model::Ring(m) => m.forward_padded(x, lengths),
            Model::SlidingWindow(m) => m.forward_all(x),
            Model::Hybrid(m) => m.forward_all(x),
        }
    }
}

impl Walk for Model {
    fn walk(&mut self, w: &mut Walker) {
        each_model!(self, m => m.walk(w))
    }
}
