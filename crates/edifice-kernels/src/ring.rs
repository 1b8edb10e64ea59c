//! Ring attention on one process: exact causal attention computed chunk by
//! chunk in ring order and merged by log-sum-exp.
//!
//! The sequence is cut into `C` chunks of `N / C` positions. Query chunk `i`
//! visits kv chunks `i, i+1, ..., i-1 (mod C)` (the order in which a ring of
//! `C` workers would pass kv blocks round): at ring step `s` every query
//! chunk `i` meets kv chunk `(i + s) mod C`, all of a step's visits in one
//! call of the fused kernel (the chunks as an extra batch dimension), each
//! returning a partial `(o, lse)`, and partials are folded together with
//! [`merge`]:
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

use rayon::prelude::*;

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
    let (cs, d) = (n / chunks, shape.head_dim);
    if cs == 0 || shape.q_len() == 0 {
        return Ok((
            vec![0.0; shape.q_len()],
            vec![f32::NEG_INFINITY; shape.lse_len()],
        ));
    }
    // Chunk-major copies `[C, B, H, cs, D]`: chunk `c` of every plane is one
    // contiguous run, so each ring step below is one kernel call over all
    // the query chunks that step serves, the way the workers of a ring all
    // compute at once.
    let run = cs * d;
    let (q_planes, kv_planes) = (shape.batch * shape.heads_q, shape.batch * shape.heads_kv);
    let (qc, kc, vc) = (
        swap_runs(q, q_planes, chunks, run),
        swap_runs(k, kv_planes, chunks, run),
        swap_runs(v, kv_planes, chunks, run),
    );
    let (q_chunk, kv_chunk) = (qc.len() / chunks, kc.len() / chunks);
    let lse_chunk = shape.lse_len() / chunks;
    // Step 0: every query chunk against its own kv chunk (causal); this
    // starts the running sums.
    let block = |served: usize| AttnShape {
        batch: served * shape.batch,
        len_q: cs,
        len_k: cs,
        ..shape
    };
    let diagonal =
        Attention::new(block(chunks), Pattern::new(PatternKind::Full, true))?.with_scale(scale)?;
    let mut acc_o = vec![0.0; qc.len()];
    let mut acc_lse = vec![0.0; shape.lse_len()];
    diagonal.forward(&qc, &kc, &vc, &mut acc_o, &mut acc_lse)?;
    // Step s ≥ 1: query chunk i receives kv chunk (i + s) mod C. It is in
    // the future (skipped) unless i ≥ C − s, when it is chunk i + s − C <
    // i: the served query chunks are the last s, the kv chunks the first s,
    // each a contiguous range.
    for step in 1..chunks {
        let earlier = Attention::new(block(step), Pattern::new(PatternKind::Full, false))?
            .with_scale(scale)?;
        let first = chunks - step;
        let (part_o, part_lse) = earlier.forward_vec(
            &qc[first * q_chunk..],
            &kc[..step * kv_chunk],
            &vc[..step * kv_chunk],
        )?;
        acc_o[first * q_chunk..]
            .par_chunks_mut(cs * d)
            .zip(acc_lse[first * lse_chunk..].par_chunks_mut(cs))
            .zip(part_o.par_chunks(cs * d).zip(part_lse.par_chunks(cs)))
            .for_each(|((o_a, l_a), (o_b, l_b))| merge(o_a, l_a, o_b, l_b, d));
    }
    Ok((
        swap_runs(&acc_o, chunks, q_planes, run),
        swap_runs(&acc_lse, chunks, q_planes, cs),
    ))
}

/// `x [outer, inner, run]` → `[inner, outer, run]`: planes to chunk-major
/// (`outer` = planes, `inner` = chunks) and back.
fn swap_runs(x: &[f32], outer: usize, inner: usize, run: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    out.par_chunks_mut(run).enumerate().for_each(|(r, out)| {
        let (i, o) = (r / outer, r % outer);
        out.copy_from_slice(&x[(o * inner + i) * run..][..run]);
    });
    out
}
