//! Reading and writing named tensors in safetensors files, with errors that
//! name the file, the tensor and what is wrong.

use std::path::Path;

use anyhow::{bail, Context, Result};
use edifice::weights::Encoded;
use edifice_kernels::{bf16, Element};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

/// A float type as safetensors stores it (little-endian).
pub trait Stored: Element {
    const DTYPE: Dtype;
    fn decode(bytes: &[u8]) -> Vec<Self>;
    fn encode(x: &[Self]) -> Vec<u8>;
}

impl Stored for f32 {
    const DTYPE: Dtype = Dtype::F32;
    fn decode(bytes: &[u8]) -> Vec<f32> {
        edifice::weights::decode_f32(bytes)
    }
    fn encode(x: &[f32]) -> Vec<u8> {
        x.iter().flat_map(|v| v.to_le_bytes()).collect()
    }
}

impl Stored for bf16 {
    const DTYPE: Dtype = Dtype::BF16;
    fn decode(bytes: &[u8]) -> Vec<bf16> {
        bytes
            .chunks_exact(2)
            .map(|b| bf16::from_bits(u16::from_le_bytes([b[0], b[1]])))
            .collect()
    }
    fn encode(x: &[bf16]) -> Vec<u8> {
        x.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect()
    }
}

/// Tensor `name` of `dims` encoded for [`write`].
pub fn encode<E: Stored>(name: &str, dims: &[usize], data: &[E]) -> Encoded<'static> {
    (
        name.to_string(),
        E::DTYPE,
        dims.to_vec(),
        E::encode(data).into(),
    )
}

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

    /// The dtype of tensor `name`.
    pub fn dtype(&self, name: &str) -> Result<Dtype> {
        Ok(self.view(name)?.dtype())
    }

    /// Tensor `name` as f32 with its dims; must have `rank` dims.
    pub fn f32(&self, name: &str, rank: usize) -> Result<(Vec<f32>, Vec<usize>)> {
        self.floats(name, rank)
    }

    /// Tensor `name` as `E` with its dims; must have dtype `E::DTYPE` and
    /// `rank` dims.
    pub fn floats<E: Stored>(&self, name: &str, rank: usize) -> Result<(Vec<E>, Vec<usize>)> {
        let view = self.view(name)?;
        let dims = view.shape().to_vec();
        if view.dtype() != E::DTYPE {
            bail!(
                "tensor `{name}` in {} has dtype {:?}; expected {:?}",
                self.path,
                view.dtype(),
                E::DTYPE
            );
        }
        if dims.len() != rank {
            bail!(
                "tensor `{name}` in {} has rank {} (dims {dims:?}); expected rank {rank}",
                self.path,
                dims.len()
            );
        }
        Ok((E::decode(view.data()), dims))
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

/// Writes `tensors` to `path`.
pub fn write(path: &Path, tensors: &[Encoded]) -> Result<()> {
    let bytes = edifice::weights::serialize(tensors, None)?;
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}
