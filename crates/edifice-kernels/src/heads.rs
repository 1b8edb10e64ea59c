//! Heads between the packed layout of a fused projection and the kernel's.
//!
//! A fused projection writes its outputs side by side per position: `P`
//! parts (`q, k, v`: `P = 3`; one output: `P = 1`) of `H` heads of width `D`,
//!
//! ```text
//! packed [B, T, P·H·D]      feature p·H·D + h·D + d
//! parts  P × [B, H, T, D]   the attention kernel's layout
//! ```
//!
//! [`split`] and [`merge`] move data between the two in one pass, a batch
//! element per task, so a layer calls the kernel on its projection without
//! transposing copies of its own and their gradients.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::KernelError;

/// Sizes of a packed tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packing {
    /// Batch `B`.
    pub batch: usize,
    /// Positions `T`.
    pub len: usize,
    /// Heads `H` of each part.
    pub heads: usize,
    /// Head width `D`.
    pub head_dim: usize,
    /// Parts `P` side by side.
    pub parts: usize,
}

impl Packing {
    /// Elements of one part, `B·H·T·D`.
    pub fn part_len(&self) -> usize {
        self.batch * self.heads * self.len * self.head_dim
    }

    /// Elements of the packed tensor, `P·B·H·T·D`.
    pub fn packed_len(&self) -> usize {
        self.parts * self.part_len()
    }

    fn check(&self, what: &str, got: usize, want: usize) -> Result<(), KernelError> {
        if got != want {
            return Err(KernelError::Shape(format!(
                "heads {what} has {got} elements, {self:?} needs {want}"
            )));
        }
        Ok(())
    }
}

/// `packed [B, T, P·H·D]` → `P` parts `[B, H, T, D]`.
pub fn split(p: Packing, packed: &[f32]) -> Result<Vec<Vec<f32>>, KernelError> {
    p.check("packed", packed.len(), p.packed_len())?;
    let mut parts: Vec<Vec<f32>> = (0..p.parts)
        .map(|_| Vec::with_capacity(p.part_len()))
        .collect();
    let (t, h, d) = (p.len, p.heads, p.head_dim);
    let (width, per_batch) = (p.parts * h * d, h * t * d);
    if per_batch > 0 {
        // Each batch element's slab of every part, handed to one task. The
        // outputs start uninitialised: they are large and each element is
        // written once below, so zeroing them first would be a wasted pass.
        let mut slabs: Vec<Vec<&mut [MaybeUninit<f32>]>> =
            (0..p.batch).map(|_| Vec::new()).collect();
        for part in &mut parts {
            let spare = &mut part.spare_capacity_mut()[..p.part_len()];
            for (b, slab) in spare.chunks_exact_mut(per_batch).enumerate() {
                slabs[b].push(slab);
            }
        }
        slabs
            .into_par_iter()
            .zip(packed.par_chunks_exact(t * width))
            .for_each(|(mut slabs, rows)| {
                for (pos, row) in rows.chunks_exact(width).enumerate() {
                    for (slab, row) in slabs.iter_mut().zip(row.chunks_exact(h * d)) {
                        for (head, x) in row.chunks_exact(d).enumerate() {
                            let to = (head * t + pos) * d;
                            slab[to..to + d].write_copy_of_slice(x);
                        }
                    }
                }
            });
    }
    for part in &mut parts {
        // SAFETY: the loop above wrote every (b, head, pos, d) element of
        // each part: `P·B·T` packed rows of `H` heads of `D` values, each to
        // its own place (or the parts are empty).
        unsafe { part.set_len(p.part_len()) };
    }
    Ok(parts)
}

/// `P` parts `[B, H, T, D]` → `packed [B, T, P·H·D]`.
pub fn merge(p: Packing, parts: &[&[f32]]) -> Result<Vec<f32>, KernelError> {
    p.check("part list", parts.len(), p.parts)?;
    for part in parts {
        p.check("part", part.len(), p.part_len())?;
    }
    let mut packed = Vec::with_capacity(p.packed_len());
    let (t, h, d) = (p.len, p.heads, p.head_dim);
    let (width, per_batch) = (p.parts * h * d, h * t * d);
    if per_batch > 0 {
        packed.spare_capacity_mut()[..p.packed_len()]
            .par_chunks_exact_mut(t * width)
            .enumerate()
            .for_each(|(b, rows)| {
                for (pos, row) in rows.chunks_exact_mut(width).enumerate() {
                    for (part, row) in parts.iter().zip(row.chunks_exact_mut(h * d)) {
                        let slab = &part[b * per_batch..(b + 1) * per_batch];
                        for (head, x) in row.chunks_exact_mut(d).enumerate() {
                            let from = (head * t + pos) * d;
                            x.write_copy_of_slice(&slab[from..from + d]);
                        }
                    }
                }
            });
    }
    // SAFETY: every packed row is split into `P·H` pieces of `D` values and
    // each piece was written above (or the tensor is empty).
    unsafe { packed.set_len(p.packed_len()) };
    Ok(packed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Split then merge is the identity, and each element lands where the
    /// layouts in the module docs say.
    #[test]
    fn split_follows_the_layout_and_merge_inverts_it() {
        let p = Packing {
            batch: 2,
            len: 5,
            heads: 3,
            head_dim: 4,
            parts: 3,
        };
        let packed: Vec<f32> = (0..p.packed_len()).map(|i| i as f32).collect();
        let parts = split(p, &packed).unwrap();
        for (part, values) in parts.iter().enumerate() {
            for b in 0..p.batch {
                for h in 0..p.heads {
                    for t in 0..p.len {
                        for d in 0..p.head_dim {
                            let feature = part * p.heads * p.head_dim + h * p.head_dim + d;
                            let want =
                                packed[(b * p.len + t) * p.parts * p.heads * p.head_dim + feature];
                            let got = values[((b * p.heads + h) * p.len + t) * p.head_dim + d];
                            assert_eq!(got, want, "part {part} b {b} h {h} t {t} d {d}");
                        }
                    }
                }
            }
        }
        let refs: Vec<&[f32]> = parts.iter().map(Vec::as_slice).collect();
        assert_eq!(merge(p, &refs).unwrap(), packed);
    }

    #[test]
    fn wrong_sizes_are_errors() {
        let p = Packing {
            batch: 1,
            len: 2,
            heads: 2,
            head_dim: 2,
            parts: 3,
        };
        assert!(split(p, &[0.0; 23]).is_err());
        let part = [0.0; 8];
        assert!(merge(p, &[&part, &part]).is_err());
        assert!(merge(p, &[&part, &part, &part[..7]]).is_err());
    }
}
