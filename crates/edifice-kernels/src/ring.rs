//! Ring attention on one process: exact causal attention computed chunk by
//! chunk in ring order and merged by log-sum-exp.
//!
//! The sequence is cut into `C` chunks of `N / C` positions. Query chunk `i`
//! visits kv chunks `i, i+1, ..., i-1 (mod C)` (the order in which a ring of
//! `C` workers would pass kv blocks round); each visit is one call of the
//! fused kernel on a `[B, H, N/C, D]` block, returning a partial `(o, lse)`,
//! and partials are folded together with [`merge`]:
//!
//! ```text
//! lse = log(exp(lse_a) + exp(lse_b))
//! o   = exp(lse_a - lse) · o_a + exp(lse_b - lse) · o_b
//! ```
//!
//! A kv chunk after the query chunk is entirely in the future and contributes
//! nothing, so it is skipped; the diagonal chunk uses the causal pattern and
//! earlier chunks the full one. The result equals
//! `Pattern::new(PatternKind::Full, true)` up to summation order, so the
//! backward pass is the fused kernel's own, given this `(o, lse)`.
//!
//! The same [`merge`] is what a multi-process ring uses to combine blocks
//! received from its neighbours.

use crate::{Attention, AttnShape, KernelError, Pattern, PatternKind};

/// Folds a partial result `(o_b, lse_b)` into the running `(o_a, lse_a)`.
///
/// `o_*` are rows of `head_dim` values, `lse_*` one value per row. Rows whose
/// partial is empty (`lse_b = -inf`) leave the running result unchanged; a
/// running result that is still empty takes the partial as it is.
pub fn merge(o_a: &mut [f32], lse_a: &mut [f32], o_b: &[f32], lse_b: &[f32], head_dim: usize) {
    debug_assert_eq!(o_a.len(), lse_a.len() * head_dim);
    debug_assert_eq!(o_b.len(), lse_b.len() * head_dim);
    let rows = o_a
        .chunks_exact_mut(head_dim)
        .zip(lse_a.iter_mut())
        .zip(o_b.chunks_exact(head_dim).zip(lse_b));
    for ((row_a, la), (row_b, &lb)) in rows {
        if lb == f32::NEG_INFINITY {
            continue;
        }
        if *la == f32::NEG_INFINITY {
            row_a.copy_from_slice(row_b);
            *la = lb;
            continue;
        }
        let m = la.max(lb);
        let (wa, wb) = ((*la - m).exp(), (lb - m).exp());
        let sum = wa + wb;
        let (wa, wb) = (wa / sum, wb / sum);
        for (a, &b) in row_a.iter_mut().zip(row_b) {
            *a = wa * *a + wb * b;
        }
        *la = m + sum.ln();
    }
}

/// Causal self-attention in `chunks` ring steps (see the module docs).
///
/// Shapes as for [`Attention`] with `Nq = Nk = N`; `N` must be a multiple of
/// `chunks`. Returns `(o [B, Hq, N, D], lse [B, Hq, N])`.
pub fn forward(
    shape: AttnShape,
    chunks: usize,
    scale: f32,
    q: &[f32],
    k: &[f32],
    v: &[f32],
) -> Result<(Vec<f32>, Vec<f32>), KernelError> {
    shape.validate()?;
    if shape.len_q != shape.len_k {
        return Err(KernelError::Shape(format!(
            "ring attention is self-attention: Nq ({}) must equal Nk ({})",
            shape.len_q, shape.len_k
        )));
    }
    let n = shape.len_q;
    if chunks == 0 || !n.is_multiple_of(chunks) {
        return Err(KernelError::Shape(format!(
            "ring attention needs a sequence length divisible by the number of chunks, got {n} and {chunks}"
        )));
    }
    let cs = n / chunks;
    let block = AttnShape {
        len_q: cs,
        len_k: cs,
        ..shape
    };
    let diagonal =
        Attention::new(block, Pattern::new(PatternKind::Full, true))?.with_scale(scale)?;
    let earlier =
        Attention::new(block, Pattern::new(PatternKind::Full, false))?.with_scale(scale)?;
    let kv_chunks: Vec<(Vec<f32>, Vec<f32>)> = (0..chunks)
        .map(|j| {
            (
                take_chunk(k, &shape, shape.heads_kv, j, cs),
                take_chunk(v, &shape, shape.heads_kv, j, cs),
            )
        })
        .collect();

    let d = shape.head_dim;
    let mut o = vec![0.0; shape.q_len()];
    let mut lse = vec![f32::NEG_INFINITY; shape.lse_len()];
    for i in 0..chunks {
        let qc = take_chunk(q, &shape, shape.heads_q, i, cs);
        let mut acc_o = vec![0.0; qc.len()];
        let mut acc_lse = vec![f32::NEG_INFINITY; qc.len() / d];
        for step in 0..chunks {
            let j = (i + step) % chunks;
            let attn = match j.cmp(&i) {
                std::cmp::Ordering::Equal => &diagonal,
                std::cmp::Ordering::Less => &earlier,
                std::cmp::Ordering::Greater => continue,
            };
            let (kc, vc) = &kv_chunks[j];
            let (po, plse) = attn.forward_vec(&qc, kc, vc)?;
            merge(&mut acc_o, &mut acc_lse, &po, &plse, d);
        }
        put_chunk(&mut o, &mut lse, &acc_o, &acc_lse, &shape, i, cs);
    }
    Ok((o, lse))
}

/// Rows `[c·cs, (c+1)·cs)` of every (batch, head) plane of `x`, contiguous.
fn take_chunk(x: &[f32], shape: &AttnShape, heads: usize, c: usize, cs: usize) -> Vec<f32> {
    let (n, d) = (shape.len_q, shape.head_dim);
    let mut out = Vec::with_capacity(shape.batch * heads * cs * d);
    for plane in x.chunks_exact(n * d) {
        out.extend_from_slice(&plane[c * cs * d..(c + 1) * cs * d]);
    }
    out
}

/// Writes a chunk's `(o, lse)` back into the full `[B, Hq, N, ·]` buffers.
fn put_chunk(
    o: &mut [f32],
    lse: &mut [f32],
    co: &[f32],
    clse: &[f32],
    shape: &AttnShape,
    c: usize,
    cs: usize,
) {
    let (n, d) = (shape.len_q, shape.head_dim);
    let planes = o.chunks_exact_mut(n * d).zip(lse.chunks_exact_mut(n));
    for ((po, pl), (so, sl)) in planes.zip(co.chunks_exact(cs * d).zip(clse.chunks_exact(cs))) {
        po[c * cs * d..(c + 1) * cs * d].copy_from_slice(so);
        pl[c * cs..(c + 1) * cs].copy_from_slice(sl);
    }
}
