//! Reading and writing named tensors in safetensors files, with errors that
//! name the file, the tensor and what is wrong.

use std::path::Path;

use anyhow::{bail, Context, Result};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

/// A safetensors file read into memory.
pub struct TensorFile {
    path: String,
    bytes: Vec<u8>,
}

impl TensorFile {
    /// Reads `path`; the content is checked by [`TensorFile::tensors`].
    pub fn read(path: &Path) -> Result<Self> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let file = TensorFile {
            path: path.display().to_string(),
            bytes,
        };
        file.tensors()?;
        Ok(file)
    }

    fn tensors(&self) -> Result<SafeTensors<'_>> {
        SafeTensors::deserialize(&self.bytes)
            .map_err(|e| anyhow::anyhow!("{} is not a valid safetensors file: {e}", self.path))
    }

    /// Whether the file holds a tensor called `name`.
    pub fn has(&self, name: &str) -> bool {
        self.tensors()
            .is_ok_and(|t| t.names().iter().any(|n| *n == name))
    }

    fn view(&self, name: &str) -> Result<TensorView<'_>> {
        let tensors = self.tensors()?;
        let mut names: Vec<String> = tensors.names().into_iter().cloned().collect();
        names.sort();
        tensors.tensor(name).map_err(|_| {
            anyhow::anyhow!(
                "{} has no tensor `{name}` (it has: {})",
                self.path,
                names.join(", ")
            )
        })
    }

    /// Tensor `name` as f32 with its dims; must have `rank` dims.
    pub fn f32(&self, name: &str, rank: usize) -> Result<(Vec<f32>, Vec<usize>)> {
        let view = self.view(name)?;
        let dims = view.shape().to_vec();
        if view.dtype() != Dtype::F32 {
            bail!(
                "tensor `{name}` in {} has dtype {:?}; expected F32",
                self.path,
                view.dtype()
            );
        }
        if dims.len() != rank {
            bail!(
                "tensor `{name}` in {} has rank {} (dims {dims:?}); expected rank {rank}",
                self.path,
                dims.len()
            );
        }
        Ok((edifice::weights::decode_f32(view.data()), dims))
    }

    /// Tensor `name` as booleans (dtype BOOL or U8, non-zero = true) with
    /// its dims.
    pub fn bool(&self, name: &str) -> Result<(Vec<bool>, Vec<usize>)> {
        let view = self.view(name)?;
        match view.dtype() {
            Dtype::BOOL | Dtype::U8 => {}
            other => bail!(
                "tensor `{name}` in {} has dtype {other:?}; expected BOOL or U8",
                self.path
            ),
        }
        Ok((
            view.data().iter().map(|&b| b != 0).collect(),
            view.shape().to_vec(),
        ))
    }
}

/// Writes f32 tensors `(name, dims, data)` to `path`.
pub fn write_f32(path: &Path, tensors: &[(&str, Vec<usize>, &[f32])]) -> Result<()> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, data)| data.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, dims, _), b)| {
            Ok((
                name.to_string(),
                TensorView::new(Dtype::F32, dims.clone(), b)?,
            ))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    safetensors::serialize_to_file(views, &None, path)
        .with_context(|| format!("cannot write {}", path.display()))
}
