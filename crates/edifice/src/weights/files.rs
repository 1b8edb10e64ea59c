//! Weights files: our tensors as safetensors bytes (f32, little-endian)
//! and back, with the extra (non-f32) tensors and metadata a checkpoint
//! carries.

use std::collections::BTreeMap;

use safetensors::{Dtype, SafeTensors};

use super::Values;
use crate::Error;

/// Serialises tensors to safetensors bytes (f32, little-endian).
pub fn to_safetensors(tensors: &BTreeMap<String, Values>) -> Result<Vec<u8>, Error> {
    to_safetensors_with(tensors, &BTreeMap::new(), None)
}

/// Raw byte tensors (U8) stored beside the f32 ones, e.g. optimizer state.
pub type Blobs = BTreeMap<String, Vec<u8>>;

/// A safetensors header's free-form metadata.
pub type Metadata = std::collections::HashMap<String, String>;

/// One tensor on its way to a file: name, dtype, shape, little-endian bytes.
pub type Encoded<'a> = (String, Dtype, Vec<usize>, std::borrow::Cow<'a, [u8]>);

/// [`to_safetensors`] plus U8 `blobs` and header `metadata`.
pub fn to_safetensors_with(
    tensors: &BTreeMap<String, Values>,
    blobs: &Blobs,
    metadata: Option<Metadata>,
) -> Result<Vec<u8>, Error> {
    let bytes: Vec<Encoded> = tensors
        .iter()
        .map(|(name, (shape, values))| {
            let raw: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
            (name.clone(), Dtype::F32, shape.clone(), raw.into())
        })
        .chain(
            blobs
                .iter()
                .map(|(name, b)| (name.clone(), Dtype::U8, vec![b.len()], b.as_slice().into())),
        )
        .collect();
    serialize(&bytes, metadata)
}

/// A safetensors file of already encoded tensors, with header `metadata`.
pub fn serialize(tensors: &[Encoded], metadata: Option<Metadata>) -> Result<Vec<u8>, Error> {
    let views = tensors
        .iter()
        .map(|(name, dtype, shape, raw)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), raw)
                .map(|view| (name.clone(), view))
                .map_err(|e| Error::Weights(format!("tensor `{name}`: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::serialize(views, &metadata).map_err(|e| Error::Weights(e.to_string()))
}

/// Reads every f32 tensor of a safetensors file. Any other dtype is an error
/// naming the tensor.
pub fn from_safetensors(bytes: &[u8]) -> Result<BTreeMap<String, Values>, Error> {
    let (tensors, blobs, _) = from_safetensors_with(bytes)?;
    if let Some(name) = blobs.keys().next() {
        return Err(Error::Weights(format!(
            "tensor `{name}` has dtype U8, expected F32"
        )));
    }
    Ok(tensors)
}

/// Every tensor of a safetensors file: f32 ones, U8 blobs, and the header
/// metadata. Any other dtype is an error naming the tensor.
pub fn from_safetensors_with(
    bytes: &[u8],
) -> Result<(BTreeMap<String, Values>, Blobs, Metadata), Error> {
    let file = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::Weights(format!("not a valid safetensors file: {e}")))?;
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::Weights(format!("not a valid safetensors file: {e}")))?;
    let mut tensors = BTreeMap::new();
    let mut blobs = BTreeMap::new();
    for (name, view) in file.tensors() {
        match view.dtype() {
            Dtype::F32 => {
                tensors.insert(name, (view.shape().to_vec(), decode_f32(view.data())));
            }
            Dtype::U8 => {
                blobs.insert(name, view.data().to_vec());
            }
            other => {
                return Err(Error::Weights(format!(
                    "tensor `{name}` has dtype {other:?}, expected F32"
                )))
            }
        }
    }
    Ok((
        tensors,
        blobs,
        header.metadata().clone().unwrap_or_default(),
    ))
}

/// Little-endian f32 bytes to values.
pub fn decode_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}
