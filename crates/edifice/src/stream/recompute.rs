//! [`Mode::Recompute`](super::Mode::Recompute): Edifice's per-frame
//! recompute, the baseline. Each step runs the model's `forward` over the
//! last `seq_len` frames at positions `0..seq_len` (zero frames before the
//! first), through burn, allocating as any forward does.

use burn::prelude::*;

use super::buffers::Buf;
use super::net::{Layout, Net};
use super::{StreamOptions, StreamState};
use crate::{Error, Model, ModelConfig};

/// The model itself and its window.
pub(super) struct Recompute {
    model: Model,
    window: usize,
    embed: usize,
    output: usize,
}

/// The recompute net of any model.
pub(super) fn build(config: &ModelConfig, model: &Model) -> Result<Box<dyn Net>, Error> {
    let (window, embed) = config.input_dims();
    Ok(Box::new(Recompute {
        model: model.clone(),
        window,
        embed,
        output: config.output_size(),
    }))
}

impl Net for Recompute {
    fn layout(&self, options: &StreamOptions) -> Layout {
        Layout {
            kv: Vec::new(),
            history: vec![(self.window + options.rollback, self.embed)],
            heads: 1,
            span: self.embed.max(self.output),
            max_len: None,
        }
    }

    fn step(&self, states: &mut [StreamState]) -> Result<Buf, Error> {
        let (w, e) = (self.window as u64, self.embed);
        for s in states.iter_mut() {
            let t = s.t;
            s.history[0]
                .row_mut(t)
                .copy_from_slice(&s.scratch.get(Buf::In)[..e]);
            // The window ends at frame t; zero frames fill it before frame 0.
            let first = (t + 1).saturating_sub(w);
            let mut frames = vec![0.0f32; self.window * e];
            let rows = frames
                .chunks_exact_mut(e)
                .skip(self.window - (t + 1 - first) as usize);
            for (p, row) in (first..=t).zip(rows) {
                row.copy_from_slice(s.history[0].row(p));
            }
            let device = Default::default();
            let x = Tensor::<3>::from_data(TensorData::new(frames, [1, self.window, e]), &device);
            let y = self
                .model
                .forward(x)?
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .map_err(|e| Error::Shape(format!("model output: {e:?}")))?;
            s.scratch.get_mut(Buf::X)[..self.output].copy_from_slice(&y);
        }
        Ok(Buf::X)
    }
}
