//! `Model` (any model of the registry, from a config, with weights from
//! safetensors) and `Stream` (one real-time stream of a model, with
//! rollback and snapshots).
//!
//! | call | input | output |
//! |---|---|---|
//! | `Model.forward` | `x [B, T, E]` f32 | `[B, output_size]` |
//! | `Model.forward_all` | `x [B, T, E]` f32 | `[B, T, output_size]` |
//! | `Stream.step` | `frame [E]` f32 | `[output_size]` |

use burn::tensor::{Device, Tensor, TensorData};
use edifice::stream::{StreamOptions, StreamState, Streamer};
use edifice::{weights, Error, ModelConfig};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::buffers::{disjoint, same_dtype, Access, Arg, Dtype};
use crate::errors::{io_error, model_error};

/// A model with its config.
#[pyclass(module = "edifice._edifice", unsendable)]
pub struct Model {
    config: ModelConfig,
    model: edifice::Model,
}

/// Which outputs a forward returns.
#[derive(Clone, Copy)]
enum Positions {
    Last,
    All,
}

#[pymethods]
impl Model {
    /// A model from a config's JSON text, its weights drawn from `seed`.
    #[staticmethod]
    #[pyo3(signature = (text, seed=0))]
    fn from_json(text: &str, seed: u64) -> PyResult<Self> {
        Self::build(ModelConfig::from_json(text).map_err(model_error)?, seed)
    }

    /// A model from a config file (JSON when it ends in `.json`, else TOML).
    #[staticmethod]
    #[pyo3(signature = (path, seed=0))]
    fn from_path(path: &str, seed: u64) -> PyResult<Self> {
        Self::build(
            ModelConfig::from_path(path.as_ref()).map_err(model_error)?,
            seed,
        )
    }

    /// Loads weights from a safetensors file (PyTorch names or Edifice's).
    /// On error the weights are unchanged.
    fn load_weights(&mut self, path: &str) -> PyResult<()> {
        let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
        let tensors = weights::from_safetensors(&bytes)
            .map_err(|e| PyValueError::new_err(format!("{path}: {e}")))?;
        let mut model = self.model.clone();
        weights::load_tensors(&mut model, tensors).map_err(|e| {
            PyValueError::new_err(format!(
                "{path} does not fit the `{}` config: {e}",
                self.config.name()
            ))
        })?;
        self.model = model;
        Ok(())
    }

    /// Writes the weights to a safetensors file.
    fn save_weights(&mut self, path: &str) -> PyResult<()> {
        let bytes =
            weights::to_safetensors(&weights::tensors(&mut self.model)).map_err(model_error)?;
        std::fs::write(path, bytes)
            .map_err(|e| pyo3::exceptions::PyOSError::new_err(format!("cannot write {path}: {e}")))
    }

    /// The model's name in the registry.
    #[getter]
    fn name(&self) -> &'static str {
        self.config.name()
    }

    /// The config as JSON text.
    fn config_json(&self) -> String {
        serde_json::Value::Object(self.config.to_value()).to_string()
    }

    /// `(seq_len, embed_dim)` the config expects.
    #[getter]
    fn input_dims(&self) -> (usize, usize) {
        self.config.input_dims()
    }

    /// Width of each output.
    #[getter]
    fn output_size(&self) -> usize {
        self.config.output_size()
    }

    /// Writes the last position's outputs of `x` (`dims = (B, T, E)`) to `out`.
    fn forward(
        &self,
        x: &Bound<'_, PyAny>,
        dims: (usize, usize, usize),
        out: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.run(x, dims, out, Positions::Last)
    }

    /// Writes every position's outputs of `x` (`dims = (B, T, E)`) to `out`.
    fn forward_all(
        &self,
        x: &Bound<'_, PyAny>,
        dims: (usize, usize, usize),
        out: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.run(x, dims, out, Positions::All)
    }
}

impl Model {
    fn build(config: ModelConfig, seed: u64) -> PyResult<Self> {
        let device = Device::flex();
        device.seed(seed);
        let model = config.init(&device).map_err(model_error)?;
        Ok(Self { config, model })
    }

    fn run(
        &self,
        x: &Bound<'_, PyAny>,
        (b, t, e): (usize, usize, usize),
        out: &Bound<'_, PyAny>,
        positions: Positions,
    ) -> PyResult<()> {
        let (x, out) = (Arg::get(x, "x")?, Arg::get(out, "out")?);
        same_dtype(&[&x, &out], Dtype::F32)?;
        disjoint(&[(&x, Access::Read), (&out, Access::Write)])?;
        let values = x.read::<f32>()?;
        if values.len() != b * t * e {
            return Err(PyValueError::new_err(format!(
                "x: {} elements for dims ({b}, {t}, {e})",
                values.len()
            )));
        }
        if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
            return Err(PyValueError::new_err(format!(
                "x holds a non-finite value ({bad})"
            )));
        }
        let input =
            Tensor::<3>::from_data(TensorData::new(values.to_vec(), [b, t, e]), &Device::flex());
        let data = match positions {
            Positions::Last => self.model.forward(input).map(Tensor::into_data),
            Positions::All => self.model.forward_all(input).map(Tensor::into_data),
        }
        .map_err(model_error)?;
        let y: Vec<f32> = data
            .try_to_vec()
            .map_err(|e| model_error(Error::Shape(format!("{e:?}"))))?;
        let out = out.write::<f32>()?;
        if out.len() != y.len() {
            return Err(PyValueError::new_err(format!(
                "out: {} elements, the model gives {}",
                out.len(),
                y.len()
            )));
        }
        out.copy_from_slice(&y);
        Ok(())
    }
}

/// One stream of a model: frames in, one output per frame, rewind and
/// snapshots.
#[pyclass(module = "edifice._edifice", unsendable)]
pub struct Stream {
    streamer: Streamer,
    state: StreamState,
}

#[pymethods]
impl Stream {
    /// A stream of `model` that can rewind `rollback` steps; a model whose
    /// state grows with its length holds up to `max_len` positions.
    #[new]
    #[pyo3(signature = (model, rollback=0, max_len=4096))]
    fn new(model: &Model, rollback: usize, max_len: usize) -> PyResult<Self> {
        let options = StreamOptions::default()
            .with_rollback(rollback)
            .with_max_len(max_len);
        let streamer = Streamer::new(&model.config, &model.model, options).map_err(model_error)?;
        let state = streamer.state();
        Ok(Self { streamer, state })
    }

    /// Feeds `frame [E]`, writes `out [output_size]`. On error the stream
    /// is unchanged.
    fn step(&mut self, frame: &Bound<'_, PyAny>, out: &Bound<'_, PyAny>) -> PyResult<()> {
        let (frame, out) = (Arg::get(frame, "frame")?, Arg::get(out, "out")?);
        same_dtype(&[&frame, &out], Dtype::F32)?;
        disjoint(&[(&frame, Access::Read), (&out, Access::Write)])?;
        let (frame, out) = (frame.read::<f32>()?, out.write::<f32>()?);
        self.streamer
            .step(&mut self.state, frame, out)
            .map_err(model_error)
    }

    /// Undoes the last `k` steps (at most `rollback`).
    fn rewind(&mut self, k: usize) -> PyResult<()> {
        self.state.rewind(k).map_err(model_error)
    }

    /// Back to position 0.
    fn reset(&mut self) {
        self.state.reset();
    }

    /// Frames seen (less those rewound).
    #[getter]
    fn position(&self) -> u64 {
        self.state.position()
    }

    /// Frame width.
    #[getter]
    fn input_size(&self) -> usize {
        self.streamer.input_size()
    }

    /// Output width.
    #[getter]
    fn output_size(&self) -> usize {
        self.streamer.output_size()
    }

    /// The whole state as bytes (model fingerprint included).
    fn snapshot<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.state.snapshot())
    }

    /// Restores a snapshot of a stream of the same model and options; on
    /// error the stream is unchanged.
    fn restore(&mut self, bytes: &[u8]) -> PyResult<()> {
        self.state.restore(bytes).map_err(model_error)
    }
}
