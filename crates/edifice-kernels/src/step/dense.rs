//! A dense layer applied to a few rows at a time, weights read once.
//!
//! ```text
//! y[r, j] = b[j] + Σ_{i in order} x[r, i]·W[i, j]        W [d_in, d_out]
//! ```
//!
//! Each output element is one chain of fused multiply-adds over `i` in
//! order, starting from the bias: a register block of `R` rows × `C` vectors
//! walks the rows of `W` once, so `R` streams share every weight load, and
//! the block shape (chosen by how many rows there are) never changes a
//! result's bits. Memory: none beyond the weights.
//!
//! A one-row step is bound by reading `W` (a model's weights exceed L2), so
//! `W` is stored in panels of [`PANEL`] columns, each `[d_in, PANEL]`
//! contiguous: a block of columns reads one or two sequential streams
//! instead of a short run from every row `d_out` apart.

use crate::linear::WeightLayout;
use crate::simd::{Isa, Simd, WithSimd};
use crate::{same_len, KernelError};

/// The most rows one [`Dense::rows`] call takes.
pub const GROUP: usize = 4;

/// Columns per stored panel of `W` (a multiple of every vector width).
pub const PANEL: usize = 64;

/// `y = x·W + b` with its own copy of the weights, in panels.
#[derive(Clone, Debug)]
pub struct Dense {
    d_in: usize,
    d_out: usize,
    /// `W` in panels of [`PANEL`] columns (the last one narrower), each
    /// `[d_in, width]`: element `(i, j)` at [`Dense::at`].
    w: Vec<f32>,
    /// `[d_out]`.
    b: Vec<f32>,
    isa: Isa,
}

impl Dense {
    /// A layer from `w` stored as `layout` says and bias `b [d_out]`.
    pub fn new(
        w: &[f32],
        layout: WeightLayout,
        d_in: usize,
        b: &[f32],
    ) -> Result<Self, KernelError> {
        let d_out = b.len();
        if d_in == 0 || d_out == 0 {
            return Err(KernelError::Shape(format!(
                "dense layer needs positive widths, got {d_in} → {d_out}"
            )));
        }
        same_len("dense", "weight", w.len(), d_in * d_out)?;
        let logical = |i: usize, j: usize| match layout {
            WeightLayout::InOut => w[i * d_out + j],
            WeightLayout::OutIn => w[j * d_in + i],
        };
        let mut layer = Self {
            d_in,
            d_out,
            w: vec![0.0; d_in * d_out],
            b: b.to_vec(),
            isa: Isa::widest(),
        };
        for i in 0..d_in {
            for j in 0..d_out {
                let at = layer.at(i, j);
                layer.w[at] = logical(i, j);
            }
        }
        Ok(layer)
    }

    /// Where `W[i, j]` is stored.
    #[inline(always)]
    fn at(&self, i: usize, j: usize) -> usize {
        let start = j / PANEL * PANEL;
        start * self.d_in + i * self.panel_width(start) + (j - start)
    }

    /// Width of the panel starting at column `start`.
    #[inline(always)]
    fn panel_width(&self, start: usize) -> usize {
        PANEL.min(self.d_out - start)
    }

    /// Input width.
    pub fn d_in(&self) -> usize {
        self.d_in
    }

    /// Output width.
    pub fn d_out(&self) -> usize {
        self.d_out
    }

    /// `ys[r] = xs[r]·W + b` for up to [`GROUP`] rows: `xs[r]` holds at
    /// least `d_in` values (the first `d_in` are read), `ys[r]` at least
    /// `d_out` (the first `d_out` are written).
    pub fn rows(&self, xs: &[&[f32]], ys: &mut [&mut [f32]]) -> Result<(), KernelError> {
        let n = xs.len();
        if n != ys.len() || n > GROUP {
            return Err(KernelError::Shape(format!(
                "dense rows: {n} inputs and {} outputs (at most {GROUP}, as many of each)",
                ys.len()
            )));
        }
        let mut x_ptr = [std::ptr::null::<f32>(); GROUP];
        let mut y_ptr = [std::ptr::null_mut::<f32>(); GROUP];
        for r in 0..n {
            if xs[r].len() < self.d_in || ys[r].len() < self.d_out {
                return Err(KernelError::Shape(format!(
                    "dense rows: row {r} has {} inputs and {} outputs, the layer {} → {}",
                    xs[r].len(),
                    ys[r].len(),
                    self.d_in,
                    self.d_out
                )));
            }
            x_ptr[r] = xs[r].as_ptr();
            y_ptr[r] = ys[r].as_mut_ptr();
        }
        self.isa.run(Rows {
            layer: self,
            xs: x_ptr,
            ys: y_ptr,
            n,
        });
        Ok(())
    }

    /// `y = x·W + b` for one row.
    pub fn row(&self, x: &[f32], y: &mut [f32]) -> Result<(), KernelError> {
        self.rows(&[x], &mut [y])
    }
}

/// One call: `n` rows, pointers checked by [`Dense::rows`] (each `x` valid
/// for `d_in` reads, each `y` for `d_out` writes).
struct Rows<'a> {
    layer: &'a Dense,
    xs: [*const f32; GROUP],
    ys: [*mut f32; GROUP],
    n: usize,
}

impl WithSimd for Rows<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        // Accumulators: 8 vectors for one row (enough independent chains to
        // hide the FMA latency), else up to 16 on AVX-512's 32 registers, 8
        // on AVX2's 16.
        let wide = S::LANES >= 16;
        // SAFETY: Dense::rows checked every pointer against the layer's
        // widths; `columns` keeps every block within `d_out`.
        unsafe {
            match (self.n, wide) {
                (1, _) => self.columns::<S, 1, 8>(s),
                (2, _) => self.columns::<S, 2, 4>(s),
                (3, true) => self.columns::<S, 3, 4>(s),
                (4, true) => self.columns::<S, 4, 4>(s),
                (3, false) => self.columns::<S, 3, 2>(s),
                _ => self.columns::<S, 4, 2>(s),
            }
        }
    }
}

impl Rows<'_> {
    /// Every column: blocks of `C` vectors, then single vectors, then scalars.
    ///
    /// # Safety
    /// The row pointers must be valid as [`Dense::rows`] checks.
    #[inline(always)]
    unsafe fn columns<S: Simd, const R: usize, const C: usize>(&self, s: S) {
        let d_out = self.layer.d_out;
        let mut col = 0;
        while col + C * S::LANES <= d_out {
            self.block::<S, R, C>(s, col);
            col += C * S::LANES;
        }
        while col + S::LANES <= d_out {
            self.block::<S, R, 1>(s, col);
            col += S::LANES;
        }
        let layer = self.layer;
        for j in col..d_out {
            for r in 0..R {
                let mut acc = layer.b[j];
                for i in 0..layer.d_in {
                    acc += *self.xs[r].add(i) * layer.w[layer.at(i, j)];
                }
                *self.ys[r].add(j) = acc;
            }
        }
    }

    /// Columns `col..col + C·LANES` of `R` rows.
    ///
    /// # Safety
    /// As [`columns`](Self::columns), with `col + C·LANES <= d_out`.
    #[inline(always)]
    unsafe fn block<S: Simd, const R: usize, const C: usize>(&self, s: S, col: usize) {
        let layer = self.layer;
        // Each vector lies inside one panel (PANEL is a multiple of LANES):
        // its row-0 address and its panel's row stride.
        let mut base = [layer.w.as_ptr(); C];
        let mut stride = [0; C];
        for c in 0..C {
            let j = col + c * S::LANES;
            base[c] = layer.w.as_ptr().add(layer.at(0, j));
            stride[c] = layer.panel_width(j / PANEL * PANEL);
        }
        let b = layer.b.as_ptr().add(col);
        let mut acc = [[s.splat(0.0); C]; R];
        for c in 0..C {
            let bias = s.load(b.add(c * S::LANES));
            for row in acc.iter_mut() {
                row[c] = bias;
            }
        }
        for i in 0..layer.d_in {
            let mut wv = [s.splat(0.0); C];
            for (c, v) in wv.iter_mut().enumerate() {
                *v = s.load(base[c].add(i * stride[c]));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let x = s.splat(*self.xs[r].add(i));
                for c in 0..C {
                    row[c] = s.fma(x, wv[c], row[c]);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (c, v) in row.iter().enumerate() {
                s.store(self.ys[r].add(col + c * S::LANES), *v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        crate::reference::uniform(n, seed)
    }

    #[test]
    fn rows_match_the_definition_and_each_other_bitwise() {
        for (d_in, d_out) in [(1, 1), (7, 5), (287, 256), (33, 200), (16, 130)] {
            let (w, b) = (data(d_in * d_out, 1), data(d_out, 2));
            let layer = Dense::new(&w, WeightLayout::InOut, d_in, &b).unwrap();
            let xs: Vec<Vec<f32>> = (0..GROUP).map(|r| data(d_in, 10 + r as u32)).collect();
            let alone: Vec<Vec<f32>> = xs
                .iter()
                .map(|x| {
                    let mut y = vec![0.0; d_out];
                    layer.row(x, &mut y).unwrap();
                    y
                })
                .collect();
            for (x, y) in xs.iter().zip(&alone) {
                for j in 0..d_out {
                    let want: f64 = b[j] as f64
                        + (0..d_in)
                            .map(|i| x[i] as f64 * w[i * d_out + j] as f64)
                            .sum::<f64>();
                    assert!((y[j] as f64 - want).abs() < 1e-4, "{d_in}x{d_out} col {j}");
                }
            }
            for n in 2..=GROUP {
                let mut ys = vec![vec![0.0; d_out]; n];
                let x_refs: Vec<&[f32]> = xs[..n].iter().map(|x| x.as_slice()).collect();
                let mut y_refs: Vec<&mut [f32]> = ys.iter_mut().map(|y| y.as_mut_slice()).collect();
                layer.rows(&x_refs, &mut y_refs).unwrap();
                for r in 0..n {
                    let same = ys[r]
                        .iter()
                        .zip(&alone[r])
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same,
                        "{d_in}x{d_out}: row {r} of {n} differs from the row alone"
                    );
                }
            }
        }
    }

    #[test]
    fn pytorch_layout_is_transposed_and_bad_rows_are_refused() {
        let w_out_in = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // [d_out 2, d_in 3]
        let layer = Dense::new(&w_out_in, WeightLayout::OutIn, 3, &[0.5, -0.5]).unwrap();
        let mut y = [0.0; 2];
        layer.row(&[1.0, 1.0, 1.0], &mut y).unwrap();
        assert_eq!(y, [6.5, 14.5]);
        assert!(layer.row(&[1.0, 1.0], &mut y).is_err());
        assert!(layer.row(&[1.0; 3], &mut [0.0; 1]).is_err());
        let x = [1.0f32; 3];
        let mut ys = [[0.0f32; 2]; 5];
        let mut refs: Vec<&mut [f32]> = ys.iter_mut().map(|y| y.as_mut_slice()).collect();
        assert!(layer.rows(&[&x[..]; 5], &mut refs).is_err());
        assert!(Dense::new(&[1.0; 5], WeightLayout::InOut, 3, &[0.0; 2]).is_err());
    }
}
