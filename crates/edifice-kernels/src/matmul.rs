//! The one matmul the kernels call: the `gemm` crate on row-major slices,
//! with either operand read transposed in place through its strides.

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
    assert!(
        out.len() == m * n && a.len() == m * k && b.len() == k * n,
        "matmul sizes"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            out.fill(0.0);
        }
        return;
    }
    let (a_rs, a_cs) = if a_t {
        (1, m as isize)
    } else {
        (k as isize, 1)
    };
    let (b_rs, b_cs) = if b_t {
        (1, k as isize)
    } else {
        (n as isize, 1)
    };
    let threads = rayon::current_num_threads();
    let parallelism = if parallel && m * n * k >= 1 << 18 && threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the assert above bounds every index gemm forms from these
    // sizes and strides; `out` does not alias `a` or `b` (borrow rules).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}
