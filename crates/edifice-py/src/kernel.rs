//! `Kernel`: one validated attention call (shape, pattern, scale) that runs
//! the fused forward and backward on buffers, with the GIL released.
//!
//! | buffer | shape | dtype |
//! |---|---|---|
//! | `q`, `o`, `do`, `dq` | `[B, Hq, Nq, D]` | f32, or bf16 bits |
//! | `k`, `v`, `dk`, `dv` | `[B, Hkv, Nk, D]` | as `q` |
//! | `lse` | `[B, Hq, Nq]` | f32 |

use edifice_kernels::{
    bf16, Attention, AttnShape, BlockRow, BlockSparse, Element, Pattern, PatternKind,
};
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::buffers::{check_call, Access, Arg, Dtype, Plain};
use crate::errors::kernel_error;

/// A validated attention: see the module docs.
#[pyclass(module = "edifice._edifice", frozen)]
pub struct Kernel {
    att: Attention,
}

type Shape = (usize, usize, usize, usize, usize, usize);

fn attention(shape: Shape, pattern: Pattern, scale: Option<f32>) -> PyResult<Attention> {
    let (batch, heads_q, heads_kv, len_q, len_k, head_dim) = shape;
    let shape = AttnShape {
        batch,
        heads_q,
        heads_kv,
        len_q,
        len_k,
        head_dim,
    };
    let mut att = Attention::new(shape, pattern).map_err(kernel_error)?;
    if let Some(scale) = scale {
        att = att.with_scale(scale).map_err(kernel_error)?;
    }
    Ok(att)
}

/// A block-sparse mask from a FlexAttention `BlockMask`'s lists: for each
/// (plane, query block) the count and indices of its partial blocks
/// (`num [P·Qb]`, `indices [P·Qb, width]`), the same for its full blocks,
/// and `bits [partial blocks, block_q · block_k]` (nonzero = allowed) for
/// the partial blocks in list order.
struct BlockLists<'a> {
    num: &'a [i32],
    indices: &'a [i32],
    full_num: &'a [i32],
    full_indices: &'a [i32],
    bits: &'a [u8],
}

fn listed(num: &[i32], indices: &[i32], row: usize) -> PyResult<Vec<usize>> {
    let width = indices.len() / num.len().max(1);
    let n = usize::try_from(num[row])
        .ok()
        .filter(|&n| n <= width)
        .ok_or_else(|| {
            PyValueError::new_err(format!(
                "block_mask: block row {row} lists {} blocks, outside 0..={width}",
                num[row]
            ))
        })?;
    indices[row * width..row * width + n]
        .iter()
        .map(|&i| {
            usize::try_from(i).map_err(|_| {
                PyValueError::new_err(format!(
                    "block_mask: negative key block index {i} in block row {row}"
                ))
            })
        })
        .collect()
}

fn block_rows(lists: &BlockLists, pairs: usize) -> PyResult<Vec<BlockRow>> {
    let bad = |m: String| PyValueError::new_err(format!("block_mask: {m}"));
    let rows = lists.num.len();
    if lists.full_num.len() != rows
        || (rows > 0
            && !(lists.indices.len().is_multiple_of(rows)
                && lists.full_indices.len().is_multiple_of(rows)))
    {
        return Err(bad(
            "the block lists disagree in their number of block rows".into(),
        ));
    }
    if !lists.bits.len().is_multiple_of(pairs) {
        return Err(bad(format!(
            "bits: {} values, not a multiple of block_q × block_k = {pairs}",
            lists.bits.len()
        )));
    }
    let mut bits = lists.bits.chunks_exact(pairs);
    let mut out = Vec::with_capacity(rows);
    for r in 0..rows {
        let full = listed(lists.full_num, lists.full_indices, r)?;
        let partial = listed(lists.num, lists.indices, r)?
            .into_iter()
            .map(|kb| {
                let b = bits.next().ok_or_else(|| {
                    bad("fewer partial-block bitmasks than partial blocks".into())
                })?;
                Ok((kb, b.iter().map(|&x| x != 0).collect()))
            })
            .collect::<PyResult<_>>()?;
        out.push(BlockRow { full, partial });
    }
    if bits.next().is_some() {
        return Err(bad("more partial-block bits than partial blocks".into()));
    }
    Ok(out)
}

fn vec_of<T: pyo3::buffer::Element + Copy>(
    py: Python<'_>,
    obj: &Bound<'_, PyAny>,
    name: &str,
) -> PyResult<Vec<T>> {
    PyBuffer::<T>::get(obj)
        .and_then(|b| b.to_vec(py))
        .map_err(|e| pyo3::exceptions::PyTypeError::new_err(format!("{name}: {e}")))
}

/// A block-sparse mask (a FlexAttention `BlockMask` made explicit), shared
/// by the kernels built from it.
#[pyclass(module = "edifice._edifice", frozen, weakref)]
pub struct Blocks {
    mask: BlockSparse,
}

#[pymethods]
impl Blocks {
    /// From the lists of [`BlockLists`]: `lens = (Nq, Nk)`, `blocks =
    /// (block_q, block_k)`, `planes = (B or 1, Hq or 1)`; int32 arrays
    /// `num`, `indices`, `full_num`, `full_indices`, uint8 `bits`.
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        lens: (usize, usize),
        blocks: (usize, usize),
        planes: (usize, usize),
        num: &Bound<'_, PyAny>,
        indices: &Bound<'_, PyAny>,
        full_num: &Bound<'_, PyAny>,
        full_indices: &Bound<'_, PyAny>,
        bits: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let (num, indices) = (
            vec_of::<i32>(py, num, "num")?,
            vec_of::<i32>(py, indices, "indices")?,
        );
        let full_num = vec_of::<i32>(py, full_num, "full_num")?;
        let full_indices = vec_of::<i32>(py, full_indices, "full_indices")?;
        let bits = vec_of::<u8>(py, bits, "bits")?;
        let pairs = blocks.0 * blocks.1;
        if pairs == 0 {
            return Err(PyValueError::new_err(
                "block_mask: block sizes must be at least 1",
            ));
        }
        let lists = BlockLists {
            num: &num,
            indices: &indices,
            full_num: &full_num,
            full_indices: &full_indices,
            bits: &bits,
        };
        let mask = py.detach(|| {
            let rows = block_rows(&lists, pairs)?;
            BlockSparse::new(lens, blocks, planes, &rows).map_err(kernel_error)
        })?;
        Ok(Self { mask })
    }

    /// Listed key blocks (full and partial) over every plane and query block.
    fn listed_blocks(&self) -> usize {
        self.mask.listed_blocks()
    }
}

#[pymethods]
impl Kernel {
    /// `Kernel(shape, pattern, causal, scale=None)`: `shape = (B, Hq, Hkv,
    /// Nq, Nk, D)`, `pattern` a pattern string (`window:256|global:4`).
    #[new]
    #[pyo3(signature = (shape, pattern, causal, scale=None))]
    fn new(shape: Shape, pattern: &str, causal: bool, scale: Option<f32>) -> PyResult<Self> {
        let kind: PatternKind = pattern.parse().map_err(kernel_error)?;
        Ok(Self {
            att: attention(shape, Pattern::new(kind, causal), scale)?,
        })
    }

    /// A kernel reading the block-sparse mask `blocks`; its lengths must
    /// be the call's `(Nq, Nk)`.
    #[staticmethod]
    #[pyo3(signature = (shape, blocks, scale=None))]
    fn with_blocks(shape: Shape, blocks: &Blocks, scale: Option<f32>) -> PyResult<Self> {
        let pattern = Pattern::new(PatternKind::Blocks(blocks.mask.clone()), false);
        Ok(Self {
            att: attention(shape, pattern, scale)?,
        })
    }

    /// `(B, Hq, Hkv, Nq, Nk, D)`.
    #[getter]
    fn shape(&self) -> Shape {
        let s = self.att.shape();
        (s.batch, s.heads_q, s.heads_kv, s.len_q, s.len_k, s.head_dim)
    }

    /// The score scale.
    #[getter]
    fn scale(&self) -> f32 {
        self.att.scale()
    }

    /// Allowed (query, key) pairs over every batch and head.
    fn allowed_pairs(&self) -> u64 {
        self.att.allowed_pairs()
    }

    /// `forward(q, k, v, o, lse)`: writes `o` and `lse` from `q`, `k`, `v`.
    #[pyo3(signature = (*buffers))]
    fn forward(&self, py: Python<'_>, buffers: &Bound<'_, PyTuple>) -> PyResult<()> {
        let [q, k, v, o, lse] = Arg::named(buffers, ["q", "k", "v", "o", "lse"])?;
        match check_call(&[&q, &k, &v], &[&o], (&lse, Access::Write))? {
            Dtype::F32 => self.forward_as::<f32>(py, [&q, &k, &v, &o, &lse]),
            Dtype::Bf16 => self.forward_as::<bf16>(py, [&q, &k, &v, &o, &lse]),
        }
    }

    /// `backward(q, k, v, o, lse, do, dq, dk, dv)`: writes `dq`, `dk`, `dv`
    /// from the forward's inputs, `o`, `lse` and the output gradient `do`.
    #[pyo3(signature = (*buffers))]
    fn backward(&self, py: Python<'_>, buffers: &Bound<'_, PyTuple>) -> PyResult<()> {
        let [q, k, v, o, lse, d_o, dq, dk, dv] =
            Arg::named(buffers, ["q", "k", "v", "o", "lse", "do", "dq", "dk", "dv"])?;
        let (reads, writes) = ([q, k, v, o, d_o], [dq, dk, dv]);
        match check_call(&reads.each_ref(), &writes.each_ref(), (&lse, Access::Read))? {
            Dtype::F32 => self.backward_as::<f32>(py, &reads, &lse, &writes),
            Dtype::Bf16 => self.backward_as::<bf16>(py, &reads, &lse, &writes),
        }
    }
}

impl Kernel {
    fn forward_as<E: Element + Plain>(
        &self,
        py: Python<'_>,
        [q, k, v, o, lse]: [&Arg; 5],
    ) -> PyResult<()> {
        let (q, k, v) = (q.read::<E>()?, k.read::<E>()?, v.read::<E>()?);
        let (o, lse) = (o.write::<E>()?, lse.write::<f32>()?);
        py.detach(|| self.att.forward(q, k, v, o, lse))
            .map_err(kernel_error)
    }

    fn backward_as<E: Element + Plain>(
        &self,
        py: Python<'_>,
        reads: &[Arg; 5],
        lse: &Arg,
        writes: &[Arg; 3],
    ) -> PyResult<()> {
        let [q, k, v, o, d_o] = [0, 1, 2, 3, 4].map(|i| reads[i].read::<E>());
        let (q, k, v, o, d_o) = (q?, k?, v?, o?, d_o?);
        let lse = lse.read::<f32>()?;
        let (dq, dk, dv) = (
            writes[0].write::<E>()?,
            writes[1].write::<E>()?,
            writes[2].write::<E>()?,
        );
        py.detach(|| self.att.backward(q, k, v, o, lse, d_o, dq, dk, dv))
            .map_err(kernel_error)
    }
}

/// Checks a pattern string: `ValueError` saying what is wrong, else `None`.
#[pyfunction]
pub fn check_pattern(pattern: &str) -> PyResult<()> {
    pattern.parse::<PatternKind>().map_err(kernel_error)?;
    Ok(())
}
