//! Arrays by name (safetensors, `.npz`) into a [`Dataset`]: `x [N, T, E]`,
//! `y [N]` or `[N, K]`, optional `lengths [N]`.

use std::collections::BTreeMap;

use safetensors::{Dtype, SafeTensors};

use super::{Dataset, Label, Sequence};
use crate::Error;

/// An array read from a file: its shape, and its values as f64 with
/// whether they were integers.
pub(crate) struct Array {
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
    pub integer: bool,
}

/// Element types of the arrays a data file may hold, little-endian.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    F32,
    F64,
    I32,
    I64,
}

impl Kind {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Kind::F32 | Kind::I32 => 4,
            Kind::F64 | Kind::I64 => 8,
        }
    }
}

impl Array {
    /// The whole elements of `bytes` as values of `kind`.
    pub fn new(shape: Vec<usize>, kind: Kind, bytes: &[u8]) -> Self {
        let word = |b: &[u8]| -> [u8; 8] {
            let mut w = [0; 8];
            w[..b.len()].copy_from_slice(b);
            w
        };
        let values = bytes
            .chunks_exact(kind.size())
            .map(|b| match kind {
                Kind::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
                Kind::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
                Kind::F64 => f64::from_le_bytes(word(b)),
                Kind::I64 => i64::from_le_bytes(word(b)) as f64,
            })
            .collect();
        let integer = matches!(kind, Kind::I32 | Kind::I64);
        Self {
            shape,
            values,
            integer,
        }
    }
}

/// Reads a safetensors file's `x`, `y` and `lengths`.
pub fn read(bytes: &[u8], file: &str) -> Result<Dataset, Error> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::Data(format!("{file}: not a valid safetensors file: {e}")))?;
    let mut arrays = BTreeMap::new();
    for (name, view) in st.tensors() {
        let kind = match view.dtype() {
            Dtype::F32 => Kind::F32,
            Dtype::F64 => Kind::F64,
            Dtype::I32 => Kind::I32,
            Dtype::I64 => Kind::I64,
            other => {
                return Err(Error::Data(format!(
                    "{file}: tensor `{name}` has dtype {other:?}; expected F32, F64, I64 or I32"
                )))
            }
        };
        arrays.insert(name, Array::new(view.shape().to_vec(), kind, view.data()));
    }
    from_arrays(arrays, file)
}

/// `x`, `y` and optional `lengths` into a dataset.
pub(crate) fn from_arrays(
    mut arrays: BTreeMap<String, Array>,
    file: &str,
) -> Result<Dataset, Error> {
    let bad = |m: String| Err(Error::Data(format!("{file}: {m}")));
    let (Some(x), Some(y)) = (arrays.remove("x"), arrays.remove("y")) else {
        return bad(format!(
            "needs arrays `x` and `y`; found {:?}",
            arrays.keys().collect::<Vec<_>>()
        ));
    };
    let [n, t, e] = x.shape[..] else {
        return bad(format!("`x` must be [N, T, E], got {:?}", x.shape));
    };
    let lengths = match arrays.remove("lengths") {
        None => vec![t; n],
        Some(l) if l.shape == [n] && l.integer => l.values.iter().map(|&v| v as usize).collect(),
        Some(l) => {
            return bad(format!(
                "`lengths` must be integers [{n}], got {:?}",
                l.shape
            ))
        }
    };
    if let Some(i) = lengths.iter().position(|&l| l == 0 || l > t) {
        return bad(format!("lengths[{i}] = {} is outside 1..={t}", lengths[i]));
    }
    let sequences = (0..n)
        .map(|s| Sequence {
            frames: x.values[s * t * e..(s * t + lengths[s]) * e]
                .iter()
                .map(|&v| v as f32)
                .collect(),
            len: lengths[s],
        })
        .collect();
    let labels = match (&y.shape[..], y.integer) {
        ([m], true) if *m == n => y
            .values
            .iter()
            .map(|&v| Label::Name((v as i64).to_string()))
            .collect(),
        ([m], false) if *m == n => y
            .values
            .iter()
            .map(|&v| Label::Values(vec![v as f32]))
            .collect(),
        ([m, k], _) if *m == n && *k > 0 => y
            .values
            .chunks_exact(*k)
            .map(|r| Label::Values(r.iter().map(|&v| v as f32).collect()))
            .collect(),
        _ => return bad(format!("`y` must be [{n}] or [{n}, K], got {:?}", y.shape)),
    };
    Dataset::build(file, e, sequences, labels, None)
}
