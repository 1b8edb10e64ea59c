//! A stream's scratch activations, and the one loop that runs a dense layer
//! over a batch of streams.

use edifice_kernels::step::{Dense, GROUP};

use super::StreamState;
use crate::Error;

/// A scratch activation buffer of a stream (all `span` wide).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Buf {
    /// The frame.
    In,
    /// The residual stream.
    X,
    /// q, k, v (or LSTM gates).
    Qkv,
    /// An attention output or sublayer result.
    A,
    /// FFN inner activations (or a second attention output).
    F,
    /// GELU of `F`, or another temporary.
    G,
}

const BUFS: usize = 6;

/// Scratch activations.
#[derive(Clone, Debug)]
pub(super) struct Scratch {
    bufs: [Vec<f32>; BUFS],
}

impl Scratch {
    pub fn new(span: usize) -> Self {
        Self {
            bufs: std::array::from_fn(|_| vec![0.0; span]),
        }
    }

    pub fn get(&self, b: Buf) -> &[f32] {
        &self.bufs[b as usize]
    }

    pub fn get_mut(&mut self, b: Buf) -> &mut [f32] {
        &mut self.bufs[b as usize]
    }

    /// `from` to read and `to` to write (distinct buffers).
    pub fn pair(&mut self, from: Buf, to: Buf) -> (&[f32], &mut [f32]) {
        assert_ne!(from, to, "a layer reads and writes distinct buffers");
        let (from, to) = (from as usize, to as usize);
        if from < to {
            let (lo, hi) = self.bufs.split_at_mut(to);
            (&lo[from], &mut hi[0])
        } else {
            let (lo, hi) = self.bufs.split_at_mut(from);
            (&hi[0], &mut lo[to])
        }
    }
}

/// `to = layer(from)` in every stream, [`GROUP`] streams per weight pass.
pub(super) fn dense(
    layer: &Dense,
    states: &mut [StreamState],
    from: Buf,
    to: Buf,
) -> Result<(), Error> {
    for group in states.chunks_mut(GROUP) {
        let n = group.len();
        let mut xs: [&[f32]; GROUP] = [&[]; GROUP];
        let mut ys: [&mut [f32]; GROUP] = Default::default();
        for ((s, x), y) in group.iter_mut().zip(&mut xs).zip(&mut ys) {
            (*x, *y) = s.scratch.pair(from, to);
        }
        layer.rows(&xs[..n], &mut ys[..n])?;
    }
    Ok(())
}
