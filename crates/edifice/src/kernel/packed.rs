//! Self-attention straight from a fused `qkv` projection: the heads move
//! between the projection's packed layout and the kernel's `[B, H, T, D]`
//! in one pass each way (see [`edifice_kernels::heads`]), and the backward
//! writes `∂qkv` in one pass.

use burn::backend::flex::FlexTensor;
use burn::tensor::Tensor;
use edifice_kernels::heads::{self, Packing};
use edifice_kernels::AttnShape;

use super::attention::Plan;
use super::{apply1, tensor, values, AttnSpec, FusedOp, Grads};
use crate::Error;

/// Self-attention straight from a fused projection: `qkv [B, T, 3·H·D]`
/// (q, k and v side by side, each head-major: feature `p·H·D + h·D + d`,
/// see [`edifice_kernels::heads`]) → `o [B, T, H·D]` with the heads merged.
///
/// The same as splitting `qkv` into `[B, H, T, D]` heads, calling
/// [`attention`](super::attention()) and merging the heads back, without the
/// transposing copies around the kernel or their gradients.
///
/// Errors: `heads` of zero or not dividing the width into three equal
/// parts, or a `spec` that does not fit the sizes (see
/// [`attention`](super::attention())).
pub fn attention_packed(qkv: Tensor<3>, heads: usize, spec: &AttnSpec) -> Result<Tensor<3>, Error> {
    let len = qkv.dims()[1];
    attention_packed_tail(qkv, heads, len, spec)
}

/// [`attention_packed`] for the last `queries` positions only:
/// `qkv [B, T, 3·H·D]` → `o [B, queries, H·D]`, the queries reading keys
/// and values at every position their pattern allows (query `i` sits at
/// position `T − queries + i`): the way to the last timestep's output
/// without computing the others. Not with the ring schedule, which needs
/// as many queries as keys.
pub fn attention_packed_tail(
    qkv: Tensor<3>,
    heads: usize,
    queries: usize,
    spec: &AttnSpec,
) -> Result<Tensor<3>, Error> {
    let packing = qkv_packing(&qkv.dims(), heads)?;
    if queries > packing.len {
        return Err(Error::Shape(format!(
            "packed attention: {queries} trailing queries of a sequence of {}",
            packing.len
        )));
    }
    let shape = AttnShape {
        batch: packing.batch,
        heads_q: packing.heads,
        heads_kv: packing.heads,
        len_q: queries,
        len_k: packing.len,
        head_dim: packing.head_dim,
    };
    let plan = spec.plan(shape)?;
    Ok(apply1(
        PackedOp {
            plan,
            packing,
            queries,
        },
        qkv,
    ))
}

/// The packing of `qkv [B, T, 3·H·D]` with `heads` heads.
fn qkv_packing(dims: &[usize; 3], heads: usize) -> Result<Packing, Error> {
    let [batch, len, width] = *dims;
    if heads == 0 || width == 0 || width % (3 * heads) != 0 {
        return Err(Error::Shape(format!(
            "packed attention needs qkv [B, T, 3·heads·head_dim] with heads > 0 and head_dim > 0, got {dims:?} with {heads} heads"
        )));
    }
    Ok(Packing {
        batch,
        len,
        heads,
        head_dim: width / (3 * heads),
        parts: 3,
    })
}

/// Packed self-attention over the last `queries` positions of `qkv`.
#[derive(Debug)]
struct PackedOp {
    plan: Plan,
    packing: Packing,
    queries: usize,
}

/// What packed attention saves: the heads in the kernel's layout (`q`, `o`
/// `[B, H, queries, D]`, `k`, `v` `[B, H, T, D]`) and the row log-sum-exp.
#[derive(Debug)]
struct Saved {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    o: Vec<f32>,
    lse: Vec<f32>,
}

impl PackedOp {
    /// The packing of the output `o [B, queries, H·D]`.
    fn output_packing(&self) -> Packing {
        Packing {
            parts: 1,
            len: self.queries,
            ..self.packing
        }
    }

    /// The last `queries` rows of every `[T, D]` plane of `x [B, H, T, D]`.
    fn tail_rows(&self, x: Vec<f32>) -> Vec<f32> {
        let (p, queries) = (self.packing, self.queries);
        if queries == p.len {
            return x;
        }
        let (t, d) = (p.len, p.head_dim);
        x.chunks_exact(t * d)
            .flat_map(|plane| &plane[(t - queries) * d..])
            .copied()
            .collect()
    }

    /// The inverse of [`PackedOp::tail_rows`] for gradients: zero rows
    /// before the tail.
    fn padded_rows(&self, x: Vec<f32>) -> Vec<f32> {
        let (p, queries) = (self.packing, self.queries);
        if queries == p.len {
            return x;
        }
        let (t, d) = (p.len, p.head_dim);
        let mut out = vec![0.0; p.part_len()];
        if queries > 0 {
            for (plane, tail) in out.chunks_exact_mut(t * d).zip(x.chunks_exact(queries * d)) {
                plane[(t - queries) * d..].copy_from_slice(tail);
            }
        }
        out
    }
}

impl FusedOp<1> for PackedOp {
    type Saved = Saved;
    const NAME: &'static str = "packed attention";

    fn forward(&self, [qkv]: [FlexTensor; 1]) -> Result<(FlexTensor, Saved), Error> {
        let p = self.packing;
        let [q, k, v]: [Vec<f32>; 3] = heads::split(p, &values(&qkv)?)?
            .try_into()
            .map_err(|parts: Vec<_>| Error::Shape(format!("{} parts for q, k, v", parts.len())))?;
        let q = self.tail_rows(q);
        let (o, lse) = self.plan.forward(&q, &k, &v)?;
        let merged = heads::merge(self.output_packing(), &[&o])?;
        let out = tensor(merged, [p.batch, self.queries, p.heads * p.head_dim]);
        Ok((out, Saved { q, k, v, o, lse }))
    }

    fn backward(&self, saved: &Saved, d_o: FlexTensor, _wanted: [bool; 1]) -> Grads<1> {
        let p = self.packing;
        let d_o = heads::split(self.output_packing(), &values(&d_o)?)?.remove(0);
        let Saved { q, k, v, o, lse } = saved;
        let (dq, dk, dv) = self.plan.backward([q, k, v, o], lse, &d_o)?;
        let dq = self.padded_rows(dq);
        let d_qkv = heads::merge(p, &[&dq, &dk, &dv])?;
        let dims = [p.batch, p.len, 3 * p.heads * p.head_dim];
        Ok([Some(tensor(d_qkv, dims))])
    }
}
