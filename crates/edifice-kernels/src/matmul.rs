//! The one matmul the kernels call: the `gemm` crate on row-major slices,
//! with either operand read transposed in place through its strides.
//!
//! Across threads we split the output ourselves, one slab of rows or columns
//! per thread with a single-threaded gemm each, instead of handing gemm a
//! thread count: at the dense layers' shapes (a few thousand rows, widths of
//! 256 to 1024) gemm's own split measured 200-250 GFLOP/s on two cores where
//! slabs reach 260-320, most of all for the weight gradient `xᵀ·∂y`, whose
//! transposed `x` gemm packs slowly when every thread shares it.

use rayon::prelude::*;

/// Smallest `m·n·k` worth waking other threads for.
const PARALLEL_WORK: usize = 1 << 18;

/// Narrowest slab a thread gets; narrower slabs fall back to gemm's own
/// 2-D split.
const MIN_SLAB: usize = 64;

/// `out [m, n] (+)= A · B` with `A` `[m, k]` (or stored `[k, m]` when
/// `a_t`) and `B` `[k, n]` (or stored `[n, k]` when `b_t`), row-major; over
/// the rayon threads when `parallel` and large enough.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    out: &mut [f32],
    a: &[f32],
    a_t: bool,
    b: &[f32],
    b_t: bool,
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
    parallel: bool,
) {
    assert_eq!(out.len(), m * n, "matmul output size");
    let (a, b) = operands(a, a_t, b, b_t, (m, n, k));
    if k == 0 {
        if !accumulate {
            out.fill(0.0);
        }
        return;
    }
    // SAFETY: `out` holds the `[m, n]` output and `operands` checked `a`
    // and `b` against the sizes.
    unsafe { matmul_raw(out.as_mut_ptr(), a, b, (m, n, k), accumulate, parallel) };
}

/// `A · B` into a new `[m, n]` vector, operands as for [`matmul`]. The
/// output is never zeroed: gemm writes every element without reading it.
pub(crate) fn product(
    a: &[f32],
    a_t: bool,
    b: &[f32],
    b_t: bool,
    (m, n, k): (usize, usize, usize),
    parallel: bool,
) -> Vec<f32> {
    let (a, b) = operands(a, a_t, b, b_t, (m, n, k));
    if k == 0 {
        return vec![0.0; m * n];
    }
    let mut out = Vec::with_capacity(m * n);
    // SAFETY: the capacity holds the `[m, n]` output, `operands` checked `a`
    // and `b`, and without `accumulate` gemm writes every output element
    // without reading it, so all `m·n` are initialised afterwards.
    unsafe {
        matmul_raw(out.as_mut_ptr(), a, b, (m, n, k), false, parallel);
        out.set_len(m * n);
    }
    out
}

/// Checks the operands against the sizes and wraps them.
fn operands(
    a: &[f32],
    a_t: bool,
    b: &[f32],
    b_t: bool,
    (m, n, k): (usize, usize, usize),
) -> (Operand, Operand) {
    assert!(a.len() == m * k && b.len() == k * n, "matmul operand sizes");
    (Operand::new(a, a_t, m, k), Operand::new(b, b_t, k, n))
}

/// The product on raw output memory, `k > 0`.
///
/// # Safety
/// `out` must be valid for writes (and reads, with `accumulate`) of `m·n`
/// values, and the operands must hold `[m, k]` and `[k, n]`.
unsafe fn matmul_raw(
    out: *mut f32,
    a: Operand,
    b: Operand,
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    let threads = rayon::current_num_threads();
    if !parallel || threads == 1 || m * n * k < PARALLEL_WORK {
        gemm_at(out, n, (0, 0), (m, n, k), a, b, accumulate, None);
        return;
    }
    // Slabs along the longer side of the output: rows when it is tall,
    // columns when it is wide (a weight gradient `[d_in, d_out]`).
    let split_rows = m > n;
    let side = if split_rows { m } else { n };
    let slab = side.div_ceil(threads).next_multiple_of(16);
    if slab < MIN_SLAB {
        gemm_at(out, n, (0, 0), (m, n, k), a, b, accumulate, Some(threads));
        return;
    }
    let out = SharedOut(out);
    (0..side.div_ceil(slab)).into_par_iter().for_each(|s| {
        let (start, len) = (s * slab, slab.min(side - s * slab));
        let (at, size) = if split_rows {
            ((start, 0), (len, n, k))
        } else {
            ((0, start), (m, len, k))
        };
        // SAFETY: slab `s` covers rows (or columns) `start..start + len`
        // of the `[m, n]` output, inside it and disjoint from every other
        // slab, so no two threads write one element.
        unsafe { gemm_at(out.get(), n, at, size, a, b, accumulate, None) };
    });
}

/// A row-major matrix operand read in place, possibly transposed.
#[derive(Clone, Copy)]
struct Operand {
    ptr: *const f32,
    /// Strides of the logical (untransposed) operand.
    row_stride: isize,
    col_stride: isize,
}

// SAFETY: a read-only view of a slice that outlives every use (the borrow in
// `matmul`); sharing it across the rayon scope is sharing `&[f32]`.
unsafe impl Send for Operand {}
unsafe impl Sync for Operand {}

impl Operand {
    /// Logical `[rows, cols]`, stored `[cols, rows]` when `transposed`.
    fn new(data: &[f32], transposed: bool, rows: usize, cols: usize) -> Self {
        let (row_stride, col_stride) = if transposed {
            (1, rows as isize)
        } else {
            (cols as isize, 1)
        };
        Self {
            ptr: data.as_ptr(),
            row_stride,
            col_stride,
        }
    }

    /// The element at logical `(row, col)`, as a pointer.
    fn at(&self, row: usize, col: usize) -> *const f32 {
        self.ptr
            .wrapping_offset(row as isize * self.row_stride + col as isize * self.col_stride)
    }
}

/// The output pointer, shared by slabs that write disjoint elements.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);

// SAFETY: every slab writes only its own rows or columns (see `matmul`).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// The block `(m, n, k)` of the product whose output starts at row, column
/// `at` of a row-major output with row length `ld`.
///
/// # Safety
/// `out`, `a` and `b` must hold every element the block reads or writes.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_at(
    out: *mut f32,
    ld: usize,
    (row, col): (usize, usize),
    (m, n, k): (usize, usize, usize),
    a: Operand,
    b: Operand,
    accumulate: bool,
    threads: Option<usize>,
) {
    let parallelism = match threads {
        Some(t) => gemm::Parallelism::Rayon(t),
        None => gemm::Parallelism::None,
    };
    gemm::gemm(
        m,
        n,
        k,
        out.add(row * ld + col),
        1,
        ld as isize,
        accumulate,
        a.at(row, 0),
        a.col_stride,
        a.row_stride,
        b.at(0, col),
        b.col_stride,
        b.row_stride,
        1.0,
        1.0,
        false,
        false,
        false,
        parallelism,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::uniform;

    /// `A·B` in f64 by the definition, operands stored as `matmul` reads them.
    fn naive(
        a: &[f32],
        a_t: bool,
        b: &[f32],
        b_t: bool,
        (m, n, k): (usize, usize, usize),
    ) -> Vec<f32> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0f64;
                for p in 0..k {
                    let x = if a_t { a[p * m + i] } else { a[i * k + p] };
                    let y = if b_t { b[j * k + p] } else { b[p * n + j] };
                    acc += f64::from(x) * f64::from(y);
                }
                out[i * n + j] = acc as f32;
            }
        }
        out
    }

    /// Every path: one thread's gemm (small), row slabs (tall), column slabs
    /// (wide), gemm's own split (slabs under `MIN_SLAB`), each with both
    /// operands in both layouts, overwriting, accumulating and into a new
    /// vector ([`product`]); three
    /// threads, so the last slab is short.
    #[test]
    fn slabs_match_the_definition() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let sizes = [(5, 7, 3), (300, 70, 40), (70, 300, 40), (100, 90, 50)];
        for (m, n, k) in sizes {
            for (a_t, b_t) in [(false, false), (true, false), (false, true), (true, true)] {
                for mode in ["overwrite", "accumulate", "product"] {
                    let accumulate = mode == "accumulate";
                    let (a, b) = (uniform(m * k, 1), uniform(k * n, 2));
                    let start = uniform(m * n, 3);
                    let mut out = start.clone();
                    pool.install(|| match mode {
                        "product" => out = product(&a, a_t, &b, b_t, (m, n, k), true),
                        _ => matmul(&mut out, &a, a_t, &b, b_t, (m, n, k), accumulate, true),
                    });
                    let mut want = naive(&a, a_t, &b, b_t, (m, n, k));
                    if accumulate {
                        want.iter_mut().zip(&start).for_each(|(w, s)| *w += s);
                    }
                    for (i, (o, w)) in out.iter().zip(&want).enumerate() {
                        assert!(
                            (o - w).abs() <= 1e-4 * (1.0 + w.abs()),
                            "{m}x{n}x{k} a_t {a_t} b_t {b_t} {mode}: [{i}] {o} vs {w}"
                        );
                    }
                }
            }
        }
    }
}
