//! The work of one held piece: every allowed block pair of this rank's
//! query chunks with the piece's key chunks, one fused-kernel call per pair
//! and query plane, folded into the running results in one fixed order.

use edifice_kernels::ring::merge;
use edifice_kernels::Attention;

use crate::layout::Chunk;
use crate::DistError;

/// One query plane group's inputs to the backward.
pub(crate) struct PlaneInputs<'a> {
    pub q: &'a [f32],
    pub o: &'a [f32],
    pub d_o: &'a [f32],
    pub lse: &'a [f32],
}

/// A pair's kernel, its query chunk and first local row, its key chunk
/// and first row in the held block.
pub(crate) type PairKernel = (Attention, Chunk, usize, Chunk, usize);

/// Folds every pair of one held piece into the running `(o, lse)` of the
/// query planes that read it (`[group, L, D]` and `[group, L]`).
pub(crate) fn forward_plane(
    kernels: &[PairKernel],
    d: usize,
    local: usize,
    q: &[f32],
    (k, v): (&[f32], &[f32]),
    o: &mut [f32],
    lse: &mut [f32],
) -> Result<(), DistError> {
    if local == 0 {
        return Ok(());
    }
    let planes = q
        .chunks_exact(local * d)
        .zip(o.chunks_exact_mut(local * d))
        .zip(lse.chunks_exact_mut(local));
    for ((q, o), lse) in planes {
        for (att, qa, ra, kb, rb) in kernels {
            let rows = *ra * d..(ra + qa.len) * d;
            let keys = *rb * d..(rb + kb.len) * d;
            let (part_o, part_lse) = att
                .forward_vec(&q[rows.clone()], &k[keys.clone()], &v[keys])
                .map_err(DistError::Kernel)?;
            merge(
                &mut o[rows],
                &mut lse[*ra..ra + qa.len],
                &part_o,
                &part_lse,
                d,
            );
        }
    }
    Ok(())
}

/// Adds every pair of one held piece to `dq` of the query planes that
/// read it and to the piece's gradient sums, in one fixed order.
pub(crate) fn backward_plane(
    kernels: &[PairKernel],
    d: usize,
    local: usize,
    x: PlaneInputs,
    (k, v): (&[f32], &[f32]),
    dq: &mut [f32],
    (dk, dv): (&mut [f32], &mut [f32]),
) -> Result<(), DistError> {
    if local == 0 {
        return Ok(());
    }
    let n = local * d;
    for (h, dq) in dq.chunks_exact_mut(n).enumerate() {
        let plane = h * n..(h + 1) * n;
        let (q, o, d_o) = (&x.q[plane.clone()], &x.o[plane.clone()], &x.d_o[plane]);
        let lse = &x.lse[h * local..(h + 1) * local];
        for (att, qa, ra, kb, rb) in kernels {
            let rows = *ra * d..(ra + qa.len) * d;
            let keys = *rb * d..(rb + kb.len) * d;
            let (dq_p, dk_p, dv_p) = att
                .backward_vec(
                    &q[rows.clone()],
                    &k[keys.clone()],
                    &v[keys.clone()],
                    &o[rows.clone()],
                    &lse[*ra..ra + qa.len],
                    &d_o[rows.clone()],
                )
                .map_err(DistError::Kernel)?;
            add(&mut dq[rows], &dq_p);
            add(&mut dk[keys.clone()], &dk_p);
            add(&mut dv[keys], &dv_p);
        }
    }
    Ok(())
}

fn add(acc: &mut [f32], x: &[f32]) {
    for (a, &b) in acc.iter_mut().zip(x) {
        *a += b;
    }
}
