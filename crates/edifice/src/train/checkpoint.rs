//! Checkpoints: weights, optimizer state, step and run config (and, for
//! runs on data, the data's statistics) in one safetensors file, written
//! atomically.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use serde_json::Value;

use super::{RunConfig, Trainer};
use crate::data::run::DataMeta;
use crate::weights;
use crate::Error;

/// A checkpoint's header key for the format marker.
const FORMAT: &str = "edifice-checkpoint-1";
/// The U8 tensor that holds the optimizer state.
const OPTIMIZER: &str = "__optimizer__";

impl Trainer {
    /// Writes a checkpoint (weights, optimizer state, step, run config) to
    /// `path` atomically: a temporary file beside it, fsync, rename. Weights
    /// that are not finite are an [`Error::Diverged`] and leave `path` as it
    /// was.
    pub fn save(&mut self, path: &Path) -> Result<(), Error> {
        let io =
            |e: std::io::Error| Error::Checkpoint(format!("cannot write {}: {e}", path.display()));
        let tensors = weights::tensors(&mut self.model);
        if let Some((name, _)) = tensors
            .iter()
            .find(|(_, (_, values))| values.iter().any(|x| !x.is_finite()))
        {
            return Err(Error::Diverged(format!(
                "weight `{name}` is not finite after step {}; {} was not overwritten",
                self.step,
                path.display()
            )));
        }
        let ids = weights::param_ids(&mut self.model);
        let optimizer = self.optim.into_bytes().map_err(|e| {
            Error::Checkpoint(format!("cannot serialise the optimizer state: {e:?}"))
        })?;
        let blobs = BTreeMap::from([(OPTIMIZER.to_string(), optimizer.to_vec())]);
        let mut metadata = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("step".to_string(), self.step.to_string()),
            ("run".to_string(), self.run.to_value().to_string()),
            (
                "param_ids".to_string(),
                serde_json::to_string(&ids).expect("serialisable"),
            ),
        ]);
        if let Some(data) = &self.data {
            metadata.insert("data".to_string(), data.meta.to_meta().to_string());
        }
        let bytes = weights::to_safetensors_with(&tensors, &blobs, Some(metadata))?;
        let tmp = path.with_extension("tmp");
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        file.write_all(&bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(io)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        Ok(())
    }

    /// Resumes from a checkpoint written by [`Trainer::save`]. With
    /// `expected`, the checkpoint's run config must equal it except for
    /// `steps`, which is taken from `expected`.
    pub fn load(path: &Path, expected: Option<&RunConfig>) -> Result<Self, Error> {
        let bad = |what: String| Error::Checkpoint(format!("{}: {what}", path.display()));
        let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read: {e}")))?;
        let (tensors, mut blobs, meta) =
            weights::from_safetensors_with(&bytes).map_err(|e| bad(e.to_string()))?;
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(bad(format!(
                "not an edifice checkpoint (no `format = {FORMAT}` in its header)"
            )));
        }
        let field = |key: &str| {
            meta.get(key)
                .ok_or_else(|| bad(format!("header lacks `{key}`")))
        };
        let step: usize = field("step")?
            .parse()
            .map_err(|_| bad("bad `step`".into()))?;
        let run_value: Value =
            serde_json::from_str(field("run")?).map_err(|e| bad(format!("bad `run`: {e}")))?;
        let ids: BTreeMap<String, u64> = serde_json::from_str(field("param_ids")?)
            .map_err(|e| bad(format!("bad `param_ids`: {e}")))?;
        let run = RunConfig::from_value(run_value.clone())
            .map_err(|e| bad(format!("its run config: {e}")))?;
        if let Some(expected) = expected {
            // `steps` may grow on resume (the schedule then follows the new
            // total); everything else must match.
            let without_steps = |mut v: Value| {
                if let Some(train) = v.get_mut("train").and_then(Value::as_object_mut) {
                    train.remove("steps");
                }
                v
            };
            if without_steps(expected.to_value()) != without_steps(run_value.clone()) {
                return Err(bad(format!(
                    "it was written by a different run config ({run_value}), not {}",
                    expected.to_value()
                )));
            }
        }
        let mut trainer = Self::new(run)?;
        weights::load_tensors_with_ids(&mut trainer.model, tensors, Some(&ids))
            .map_err(|e| bad(e.to_string()))?;
        let optimizer = blobs
            .remove(OPTIMIZER)
            .ok_or_else(|| bad("no optimizer state".into()))?;
        let optim = std::mem::replace(&mut trainer.optim, Self::optimizer(&trainer.run));
        trainer.optim = optim
            .from_bytes(burn::tensor::Bytes::from_bytes_vec(optimizer))
            .map_err(|e| bad(format!("bad optimizer state: {e:?}")))?;
        trainer.step = step;
        if let Some(data) = meta.get("data") {
            let value: Value =
                serde_json::from_str(data).map_err(|e| bad(format!("bad `data`: {e}")))?;
            trainer.restored = Some(DataMeta::from_meta(&value).map_err(|e| bad(e.to_string()))?);
        }
        if let Some(expected) = expected {
            trainer.run.train.steps = expected.train.steps;
        }
        Ok(trainer)
    }
}
