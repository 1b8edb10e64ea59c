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

/// How a matrix operand is stored, row-major.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// A logical `[rows, cols]` matrix stored `[rows, cols]`.
    AsIs,
    /// A logical `[rows, cols]` matrix stored as its transpose `[cols, rows]`,
    /// read in place through its strides.
    Transposed,
}

/// A matrix operand: its values and how they are stored.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mat<'a> {
    data: &'a [f32],
    layout: Layout,
}

impl<'a> Mat<'a> {
    /// `data` read as stored or transposed.
    pub(crate) fn new(data: &'a [f32], layout: Layout) -> Self {
        Self { data, layout }
    }

    /// `data` read as stored.
    pub(crate) fn as_is(data: &'a [f32]) -> Self {
        Self::new(data, Layout::AsIs)
    }

    /// The transpose of `data` (read in place).
    pub(crate) fn transposed(data: &'a [f32]) -> Self {
        Self::new(data, Layout::Transposed)
    }
}

/// The sizes of `out [m, n] = A [m, k] · B [k, n]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Dims {
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

/// What [`matmul`] does with the output's previous values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Write {
    /// `out = A·B`.
    Overwrite,
    /// `out += A·B`.
    Accumulate,
}

/// Whether a matmul may spread over the rayon threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Threads {
    /// On the calling thread (e.g. inside a task that already owns one).
    One,
    /// Over the rayon threads when the product is large enough.
    Pool,
}

/// `out [m, n] (+)= A · B`, row-major, as `write` says, on `threads`.
///
/// Panics if an operand or the output does not hold its `dims`.
pub(crate) fn matmul(out: &mut [f32], a: Mat, b: Mat, dims: Dims, write: Write, threads: Threads) {
    assert_eq!(out.len(), dims.m * dims.n, "matmul output size");
    let (a, b) = operands(a, b, dims);
    if dims.k == 0 {
        if write == Write::Overwrite {
            out.fill(0.0);
        }
        return;
    }
    // SAFETY: `out` holds the `[m, n]` output and `operands` checked `a`
    // and `b` against the sizes.
    unsafe { matmul_raw(out.as_mut_ptr(), a, b, dims, write, threads) };
}

/// `A · B` into a new `[m, n]` vector. The output is never zeroed: gemm
/// writes every element without reading it.
///
/// Panics if an operand does not hold its `dims`.
pub(crate) fn product(a: Mat, b: Mat, dims: Dims, threads: Threads) -> Vec<f32> {
    let (a, b) = operands(a, b, dims);
    let size = dims.m * dims.n;
    if dims.k == 0 {
        return vec![0.0; size];
    }
    let mut out = Vec::with_capacity(size);
    // SAFETY: the capacity holds the `[m, n]` output, `operands` checked `a`
    // and `b`, and overwriting, gemm writes every output element
    // without reading it, so all `m·n` are initialised afterwards.
    unsafe {
        matmul_raw(out.as_mut_ptr(), a, b, dims, Write::Overwrite, threads);
        out.set_len(size);
    }
    out
}

/// Checks the operands against the sizes and wraps them.
fn operands(a: Mat, b: Mat, Dims { m, n, k }: Dims) -> (Operand, Operand) {
    assert!(
        a.data.len() == m * k && b.data.len() == k * n,
        "matmul operand sizes"
    );
    (Operand::new(a, m, k), Operand::new(b, k, n))
}

/// The product on raw output memory, `k > 0`.
///
/// # Safety
/// `out` must be valid for writes (and reads, with [`Write::Accumulate`]) of
/// `m·n` values, and the operands must hold `[m, k]` and `[k, n]`.
unsafe fn matmul_raw(
    out: *mut f32,
    a: Operand,
    b: Operand,
    dims: Dims,
    write: Write,
    threads: Threads,
) {
    let Dims { m, n, k } = dims;
    if m == 0 || n == 0 {
        return;
    }
    let product = Product { a, b, write };
    let whole = Block {
        row: 0,
        col: 0,
        dims,
    };
    let pool = rayon::current_num_threads();
    if threads == Threads::One || pool == 1 || m * n * k < PARALLEL_WORK {
        product.block(out, n, whole, gemm::Parallelism::None);
        return;
    }
    // Slabs along the longer side of the output: rows when it is tall,
    // columns when it is wide (a weight gradient `[d_in, d_out]`).
    let split_rows = m > n;
    let side = if split_rows { m } else { n };
    let slab = side.div_ceil(pool).next_multiple_of(16);
    if slab < MIN_SLAB {
        product.block(out, n, whole, gemm::Parallelism::Rayon(pool));
        return;
    }
    let out = SharedOut(out);
    (0..side.div_ceil(slab)).into_par_iter().for_each(|s| {
        let (start, len) = (s * slab, slab.min(side - s * slab));
        let block = if split_rows {
            Block {
                row: start,
                col: 0,
                dims: Dims { m: len, n, k },
            }
        } else {
            Block {
                row: 0,
                col: start,
                dims: Dims { m, n: len, k },
            }
        };
        // SAFETY: slab `s` covers rows (or columns) `start..start + len`
        // of the `[m, n]` output, inside it and disjoint from every other
        // slab, so no two threads write one element.
        unsafe { product.block(out.get(), n, block, gemm::Parallelism::None) };
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
    /// The logical `[rows, cols]` matrix `mat`.
    fn new(mat: Mat, rows: usize, cols: usize) -> Self {
        let (row_stride, col_stride) = match mat.layout {
            Layout::Transposed => (1, rows as isize),
            Layout::AsIs => (cols as isize, 1),
        };
        Self {
            ptr: mat.data.as_ptr(),
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

/// The output block `dims` whose first element is at `(row, col)`.
#[derive(Clone, Copy)]
struct Block {
    row: usize,
    col: usize,
    dims: Dims,
}

/// Both operands and what to do with the output.
#[derive(Clone, Copy)]
struct Product {
    a: Operand,
    b: Operand,
    write: Write,
}

impl Product {
    /// The product's `block` of a row-major output with row length `ld`.
    ///
    /// # Safety
    /// `out`, `a` and `b` must hold every element the block reads or writes.
    unsafe fn block(
        &self,
        out: *mut f32,
        ld: usize,
        Block { row, col, dims }: Block,
        parallelism: gemm::Parallelism,
    ) {
        let Self { a, b, write } = *self;
        gemm::gemm(
            dims.m,
            dims.n,
            dims.k,
            out.add(row * ld + col),
            1,
            ld as isize,
            write == Write::Accumulate,
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
                    let layout = |t: bool| if t { Layout::Transposed } else { Layout::AsIs };
                    let (ma, mb) = (Mat::new(&a, layout(a_t)), Mat::new(&b, layout(b_t)));
                    let dims = Dims { m, n, k };
                    let write = if accumulate {
                        Write::Accumulate
                    } else {
                        Write::Overwrite
                    };
                    pool.install(|| match mode {
                        "product" => out = product(ma, mb, dims, Threads::Pool),
                        _ => matmul(&mut out, ma, mb, dims, write, Threads::Pool),
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
