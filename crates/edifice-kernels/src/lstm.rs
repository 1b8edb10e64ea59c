//! The LSTM recurrence, fused: forward over time and backpropagation through
//! time, for a batch of sequences with a zero initial state.
//!
//! The input half of the gates, `xp = x·W_ihᵀ + b_ih + b_hh` `[B, T, 4U]`, is
//! one large matmul the caller does (and differentiates) itself; this module
//! does the part that is sequential in time. With gates in PyTorch's order
//! `i, f, g, o` and `W_hh` `[4U, U]`:
//!
//! ```text
//! [i f g o] = xp[:, t] + h_{t-1}·W_hhᵀ
//! c_t = σ(f)·c_{t-1} + σ(i)·tanh(g)        h_t = σ(o)·tanh(c_t)        h_{-1} = c_{-1} = 0
//! ```
//!
//! Each step is one `[B, U] × [U, 4U]` matmul (the `gemm` crate) and one
//! vectorised pass over the gates (sigmoid and tanh from the kernels' `exp2`).
//! The backward pass walks time in reverse with the activations saved by the
//! forward ([`LstmTrace`]) and returns `∂L/∂xp` and `∂L/∂W_hh`, the latter as
//! one matmul over all steps at the end.

use rayon::prelude::*;

use crate::matmul::{matmul, product, Dims, Layout, Mat, Threads, Write};
use crate::simd::{Isa, Simd, WithSimd};
use crate::KernelError;

/// Sizes of one recurrence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LstmShape {
    /// Sequences `B`.
    pub batch: usize,
    /// Steps `T`.
    pub len: usize,
    /// Hidden width `U`.
    pub hidden: usize,
}

impl LstmShape {
    fn check(&self, what: &str, got: usize, want: usize) -> Result<(), KernelError> {
        if got != want {
            return Err(KernelError::Shape(format!(
                "lstm {what} has {got} elements, {self:?} needs {want}"
            )));
        }
        Ok(())
    }
}

/// What the forward pass keeps for the backward pass.
#[derive(Clone, Debug)]
pub struct LstmTrace {
    /// Hidden states `h [B, T, U]` (the output).
    pub h: Vec<f32>,
    /// Activated gates `σ(i), σ(f), tanh(g), σ(o)` `[B, T, 4U]`.
    gates: Vec<f32>,
    /// Cell states `c [B, T, U]`.
    c: Vec<f32>,
}

/// Runs the recurrence. `xp [B, T, 4U]`, `w_hh [4U, U]` → hidden states and
/// the trace for [`backward`].
///
/// Sequences are independent, so the batch is split into one group of rows
/// per thread and each group runs all its steps alone (single-threaded
/// matmuls): no synchronisation per step.
pub fn forward(shape: LstmShape, xp: &[f32], w_hh: &[f32]) -> Result<LstmTrace, KernelError> {
    let LstmShape {
        batch: b,
        len: t,
        hidden: u,
    } = shape;
    shape.check("xp", xp.len(), b * t * 4 * u)?;
    shape.check("w_hh", w_hh.len(), 4 * u * u)?;
    let mut trace = LstmTrace {
        h: vec![0.0; b * t * u],
        gates: vec![0.0; b * t * 4 * u],
        c: vec![0.0; b * t * u],
    };
    if b == 0 || t == 0 || u == 0 {
        return Ok(trace);
    }
    let rows = group_rows(b);
    // With one row per group, each gate is a dot product of `h` with a row
    // of `W_hh` as stored. With more, the step matmul reads `W_hhᵀ`
    // `[U, 4U]` row-major: gemm packs a transposed right operand with a
    // strided gather on every call, which cost more than the product itself
    // (a 4x slower step at 16 rows).
    let stored_t;
    let w_t = if rows >= TRANSPOSE_ROWS {
        let mut t = vec![0.0; 4 * u * u];
        for (r, row) in w_hh.chunks_exact(u).enumerate() {
            for (c, &w) in row.iter().enumerate() {
                t[c * 4 * u + r] = w;
            }
        }
        stored_t = t;
        Mat::new(&stored_t, Layout::AsIs)
    } else {
        Mat::new(w_hh, Layout::Transposed)
    };
    trace
        .h
        .par_chunks_mut(rows * t * u)
        .zip(trace.c.par_chunks_mut(rows * t * u))
        .zip(trace.gates.par_chunks_mut(rows * t * 4 * u))
        .zip(xp.par_chunks(rows * t * 4 * u))
        .for_each(|(((h, c), gates), xp)| {
            forward_rows(xp.len() / (t * 4 * u), t, u, xp, w_t, h, c, gates)
        });
    Ok(trace)
}

/// Rows per group from which the forward steps read a transposed `W_hh`.
const TRANSPOSE_ROWS: usize = 2;

/// Rows per group: the batch over the threads, rounded up.
fn group_rows(batch: usize) -> usize {
    batch.div_ceil(rayon::current_num_threads().max(1)).max(1)
}

/// The forward recurrence of `b` sequences, into their slices of the trace;
/// `w_t` is the logical `W_hhᵀ` `[U, 4U]` (stored transposed or not).
#[allow(clippy::too_many_arguments)]
fn forward_rows(
    b: usize,
    t: usize,
    u: usize,
    xp: &[f32],
    w_t: Mat,
    trace_h: &mut [f32],
    trace_c: &mut [f32],
    trace_gates: &mut [f32],
) {
    let mut h_prev = vec![0.0; b * u];
    let mut c_prev = vec![0.0; b * u];
    let mut gates = vec![0.0; b * 4 * u];
    let isa = Isa::widest();
    for step in 0..t {
        for row in 0..b {
            let at = (row * t + step) * 4 * u;
            gates[row * 4 * u..(row + 1) * 4 * u].copy_from_slice(&xp[at..at + 4 * u]);
        }
        // gates += h_prev · W_hhᵀ
        let dims = Dims {
            m: b,
            n: 4 * u,
            k: u,
        };
        matmul(
            &mut gates,
            Mat::as_is(&h_prev),
            w_t,
            dims,
            Write::Accumulate,
            Threads::One,
        );
        isa.run(CellForward {
            gates: &mut gates,
            c_prev: &mut c_prev,
            h: &mut h_prev,
            hidden: u,
        });
        for row in 0..b {
            let (at, at4) = ((row * t + step) * u, (row * t + step) * 4 * u);
            trace_h[at..at + u].copy_from_slice(&h_prev[row * u..(row + 1) * u]);
            trace_c[at..at + u].copy_from_slice(&c_prev[row * u..(row + 1) * u]);
            trace_gates[at4..at4 + 4 * u].copy_from_slice(&gates[row * 4 * u..(row + 1) * 4 * u]);
        }
    }
}

/// Backpropagation through time. `d_h [B, T, U]` is `∂L/∂h` for every step;
/// returns `(∂L/∂xp [B, T, 4U], ∂L/∂W_hh [4U, U])`. Groups of sequences run
/// in parallel as in [`forward`]; `∂L/∂W_hh` is one matmul at the end.
pub fn backward(
    shape: LstmShape,
    w_hh: &[f32],
    trace: &LstmTrace,
    d_h: &[f32],
) -> Result<(Vec<f32>, Vec<f32>), KernelError> {
    let LstmShape {
        batch: b,
        len: t,
        hidden: u,
    } = shape;
    shape.check("w_hh", w_hh.len(), 4 * u * u)?;
    shape.check("d_h", d_h.len(), b * t * u)?;
    shape.check("trace", trace.h.len(), b * t * u)?;
    let mut d_xp = vec![0.0; b * t * 4 * u];
    if b == 0 || t == 0 || u == 0 {
        return Ok((d_xp, vec![0.0; 4 * u * u]));
    }
    let rows = group_rows(b);
    d_xp.par_chunks_mut(rows * t * 4 * u)
        .zip(d_h.par_chunks(rows * t * u))
        .zip(trace.c.par_chunks(rows * t * u))
        .zip(trace.gates.par_chunks(rows * t * 4 * u))
        .for_each(|(((d_xp, d_h), c), gates)| {
            backward_rows(d_h.len() / (t * u), t, u, w_hh, c, gates, d_h, d_xp)
        });
    // ∂W_hh = Σ_t d_gates_tᵀ · h_{t-1}: one matmul over every (row, step).
    let mut h_shift = vec![0.0; b * t * u];
    for row in 0..b {
        let base = row * t * u;
        h_shift[base + u..base + t * u].copy_from_slice(&trace.h[base..base + (t - 1) * u]);
    }
    let dims = Dims {
        m: 4 * u,
        n: u,
        k: b * t,
    };
    let d_w_hh = product(
        Mat::transposed(&d_xp),
        Mat::as_is(&h_shift),
        dims,
        Threads::Pool,
    );
    Ok((d_xp, d_w_hh))
}

/// BPTT for `b` sequences: their cell states `c` and activated `gates` from
/// the trace, upstream `d_h`, gate gradients into `d_xp`.
#[allow(clippy::too_many_arguments)]
fn backward_rows(
    b: usize,
    t: usize,
    u: usize,
    w_hh: &[f32],
    c: &[f32],
    gates: &[f32],
    d_h: &[f32],
    d_xp: &mut [f32],
) {
    let mut dh_next = vec![0.0; b * u];
    let mut dc_next = vec![0.0; b * u];
    let mut d_gates = vec![0.0; b * 4 * u];
    let mut tanh_c = vec![0.0; u];
    let isa = Isa::widest();
    for step in (0..t).rev() {
        for row in 0..b {
            let at = (row * t + step) * u;
            let at4 = at * 4;
            isa.run(Tanh {
                x: &c[at..at + u],
                out: &mut tanh_c,
            });
            let c_prev = (step > 0).then(|| &c[at - u..at]);
            let act = &gates[at4..at4 + 4 * u];
            let (ai, af, ag, ao) = (&act[..u], &act[u..2 * u], &act[2 * u..3 * u], &act[3 * u..]);
            let dg = &mut d_gates[row * 4 * u..(row + 1) * 4 * u];
            let (dgi, rest) = dg.split_at_mut(u);
            let (dgf, rest) = rest.split_at_mut(u);
            let (dgg, dgo) = rest.split_at_mut(u);
            let dh_row = &mut dh_next[row * u..(row + 1) * u];
            let dc_row = &mut dc_next[row * u..(row + 1) * u];
            for j in 0..u {
                let dh = d_h[at + j] + dh_row[j];
                let tc = tanh_c[j];
                let (i, f, g, o) = (ai[j], af[j], ag[j], ao[j]);
                let dc = dc_row[j] + dh * o * (1.0 - tc * tc);
                dgo[j] = dh * tc * o * (1.0 - o);
                dgi[j] = dc * g * i * (1.0 - i);
                dgg[j] = dc * i * (1.0 - g * g);
                dgf[j] = c_prev.map_or(0.0, |cp| dc * cp[j] * f * (1.0 - f));
                dc_row[j] = dc * f;
            }
            d_xp[at4..at4 + 4 * u].copy_from_slice(dg);
        }
        // dh_next = d_gates · W_hh
        let dims = Dims {
            m: b,
            n: u,
            k: 4 * u,
        };
        let (d_gates, w_hh) = (Mat::as_is(&d_gates), Mat::as_is(w_hh));
        matmul(
            &mut dh_next,
            d_gates,
            w_hh,
            dims,
            Write::Overwrite,
            Threads::One,
        );
    }
}

/// One step of one sequence on the calling thread, in place (a stream's
/// step): `gates [4U]` holds `xp + h_{t-1}·W_hhᵀ` and is left activated,
/// `c [U]` goes from `c_{t-1}` to `c_t`, `h [U]` receives `h_t`.
pub fn cell(gates: &mut [f32], c: &mut [f32], h: &mut [f32]) -> Result<(), KernelError> {
    let hidden = c.len();
    let shape = LstmShape {
        batch: 1,
        len: 1,
        hidden,
    };
    shape.check("gates", gates.len(), 4 * hidden)?;
    shape.check("h", h.len(), hidden)?;
    Isa::widest().run(CellForward {
        gates,
        c_prev: c,
        h,
        hidden,
    });
    Ok(())
}

/// One step's gate activations and state update, in place: `gates` (pre-
/// activation in, activated out), `c_prev` → `c_t`, `h` → `h_t`.
struct CellForward<'a> {
    gates: &'a mut [f32],
    c_prev: &'a mut [f32],
    h: &'a mut [f32],
    hidden: usize,
}

const LOG2_E: f32 = std::f32::consts::LOG2_E;

/// `1 / (1 + e^-x)`, from `exp2` (whose input is clamped, so no overflow).
#[inline(always)]
fn sigmoid<S: Simd>(s: S, x: S::V) -> S::V {
    let e = s.exp2(s.mul(x, s.splat(-LOG2_E)));
    s.div(s.splat(1.0), s.add(s.splat(1.0), e))
}

/// `tanh x = 2σ(2x) − 1`.
#[inline(always)]
fn tanh<S: Simd>(s: S, x: S::V) -> S::V {
    let two = s.splat(2.0);
    s.sub(s.mul(two, sigmoid(s, s.mul(two, x))), s.splat(1.0))
}

/// `out = tanh(x)` elementwise, with the forward pass's vector `tanh`.
struct Tanh<'a> {
    x: &'a [f32],
    out: &'a mut [f32],
}

impl WithSimd for Tanh<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let n = self.x.len().min(self.out.len());
        let body = n / S::LANES * S::LANES;
        for j in (0..body).step_by(S::LANES) {
            // SAFETY: j + LANES ≤ n, within both slices.
            unsafe {
                let y = tanh(s, s.load(self.x.as_ptr().add(j)));
                s.store(self.out.as_mut_ptr().add(j), y);
            }
        }
        for j in body..n {
            self.out[j] = self.x[j].tanh();
        }
    }
}

impl WithSimd for CellForward<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let u = self.hidden;
        let lanes = S::LANES;
        let rows = self.gates.chunks_exact_mut(4 * u).zip(
            self.c_prev
                .chunks_exact_mut(u)
                .zip(self.h.chunks_exact_mut(u)),
        );
        for (g, (c, h)) in rows {
            let vec_end = u / lanes * lanes;
            let mut j = 0;
            while j < vec_end {
                // SAFETY: j + lanes <= u, and every slice below holds u
                // (or 4u) values.
                unsafe {
                    let p = g.as_mut_ptr();
                    let i = sigmoid(s, s.load(p.add(j)));
                    let f = sigmoid(s, s.load(p.add(u + j)));
                    let gg = tanh(s, s.load(p.add(2 * u + j)));
                    let o = sigmoid(s, s.load(p.add(3 * u + j)));
                    let c_new = s.fma(f, s.load(c.as_ptr().add(j)), s.mul(i, gg));
                    s.store(p.add(j), i);
                    s.store(p.add(u + j), f);
                    s.store(p.add(2 * u + j), gg);
                    s.store(p.add(3 * u + j), o);
                    s.store(c.as_mut_ptr().add(j), c_new);
                    s.store(h.as_mut_ptr().add(j), s.mul(o, tanh(s, c_new)));
                }
                j += lanes;
            }
            for j in vec_end..u {
                let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
                let (i, f, gg, o) = (
                    sig(g[j]),
                    sig(g[u + j]),
                    g[2 * u + j].tanh(),
                    sig(g[3 * u + j]),
                );
                let c_new = f * c[j] + i * gg;
                g[j] = i;
                g[u + j] = f;
                g[2 * u + j] = gg;
                g[3 * u + j] = o;
                c[j] = c_new;
                h[j] = o * c_new.tanh();
            }
        }
    }
}
