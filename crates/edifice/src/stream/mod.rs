//! Streams: one frame in, one output out, in microseconds, with rollback.
//!
//! A stream computes the model applied to the whole stream so far: after
//! frame `t` (counted from 0) its output equals the model's `forward_all`
//! over frames `0..=t`, at position `t`.
//!
//! - `sliding_window`: each layer keeps the keys and values of its last
//!   `window_size` positions; the query of position `t` reads them with
//!   Edifice's `window_mask` (`seq_len = t + 1`), and the positional
//!   encoding is that of absolute position `t`, exact at any position
//!   ([`positional_encoding`](crate::functional::positional_encoding)).
//! - `hybrid` / `hybrid_mlp`: the LSTM state is carried from frame to frame;
//!   the attention reads the LSTM outputs of the last `attention_window`
//!   positions, or of every position when the config has none (as Edifice),
//!   up to `max_len`.
//! - `dual_chunk` (with `strict_causal`): causal attention inside the current
//!   chunk plus attention to the mean keys and values of every completed
//!   chunk, up to `max_len`.
//! - `ring` and causal `shifted_sparse`: keys and values of every position,
//!   read through the model's pattern, up to `max_len`.
//!
//! [`Mode::Recompute`] is Edifice's own way instead: every frame reruns the
//! model over the last `seq_len` frames at positions `0..seq_len` (zero
//! frames before the first). It cannot be made incremental and is here as
//! the baseline; a model trained with `seq_len` = `window_size` is the one
//! it runs, while `Incremental` runs the model trained on long sequences
//! (`edifice train --seq-len 600` with `window_size 60`).
//!
//! A [`Streamer`] holds the weights (read-only, shared by any number of
//! streams and threads); a [`StreamState`] is one stream. A step allocates
//! nothing, takes no lock and runs on the calling thread; stepping `B`
//! streams together ([`Streamer::step_batch`]) reads each weight once for
//! every [`GROUP`](edifice_kernels::step::GROUP) of them and gives each
//! stream the bits it gets alone. Shapes: a frame is `[embed_dim]`, an
//! output `[output_size]`; a batch `[B, embed_dim]` → `[B, output_size]`. `rewind(k)`
//! undoes the last `k <= rollback` steps in O(1): the state keeps `window +
//! rollback` positions (and `rollback + 1` LSTM states).
//!
//! ```
//! use edifice::stream::{StreamOptions, Streamer};
//! use edifice::ModelConfig;
//!
//! let config = ModelConfig::from_json(
//!     r#"{"model": "sliding_window", "embed_dim": 6, "num_heads": 2, "head_dim": 4, "window_size": 3}"#,
//! )?;
//! let model = config.init(&Default::default())?;
//! let streamer = Streamer::new(&config, &model, StreamOptions::default().with_rollback(2))?;
//! let mut state = streamer.state();
//! let mut out = vec![0.0; streamer.output_size()];
//! streamer.step(&mut state, &[0.1; 6], &mut out)?;
//! let first = out.clone();
//! streamer.step(&mut state, &[0.2; 6], &mut out)?;
//! state.rewind(1)?;
//! assert_eq!(state.position(), 1);
//! let saved = state.snapshot();
//! streamer.step(&mut state, &[0.2; 6], &mut out)?;
//! state.restore(&saved)?;
//! assert_eq!(state.position(), 1);
//! # assert!(first.iter().all(|x| x.is_finite()));
//! # Ok::<(), edifice::Error>(())
//! ```

mod buffers;
mod hybrid;
mod net;
mod post_norm;
mod pre_norm;
mod recompute;
mod snapshot;

use edifice_kernels::step::{KvCache, Ring};

use crate::{Error, Model, ModelConfig};
use buffers::Buf;
use buffers::Scratch;
use net::{Layout, Net};

/// How a stream computes each output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The model over the whole stream so far, one new position per step.
    Incremental,
    /// Edifice's per-frame recompute of the last `seq_len` frames (the
    /// baseline; any model).
    Recompute,
}

/// Options of a [`Streamer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamOptions {
    /// How each output is computed.
    pub mode: Mode,
    /// Steps a stream can [`rewind`](StreamState::rewind).
    pub rollback: usize,
    /// Positions a stream whose state grows with its length may reach
    /// (`ring`, `shifted_sparse`, `dual_chunk`, `hybrid` without an
    /// `attention_window`); windowed models run forever.
    pub max_len: usize,
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self {
            mode: Mode::Incremental,
            rollback: 0,
            max_len: 4096,
        }
    }
}

impl StreamOptions {
    /// With `rollback` steps of rewind.
    pub fn with_rollback(self, rollback: usize) -> Self {
        Self { rollback, ..self }
    }

    /// With `max_len` positions for growing states.
    pub fn with_max_len(self, max_len: usize) -> Self {
        Self { max_len, ..self }
    }

    /// With `mode`.
    pub fn with_mode(self, mode: Mode) -> Self {
        Self { mode, ..self }
    }
}

/// A model made ready for streams: its weights, read-only.
pub struct Streamer {
    net: Box<dyn Net>,
    layout: Layout,
    options: StreamOptions,
    input: usize,
    output: usize,
    fingerprint: u64,
}

impl std::fmt::Debug for Streamer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streamer")
            .field("options", &self.options)
            .field("input", &self.input)
            .field("output", &self.output)
            .field("fingerprint", &format_args!("{:016x}", self.fingerprint))
            .finish()
    }
}

impl Streamer {
    /// Streams of `model`, built from `config`. Refuses a model whose
    /// outputs are not causal (`dual_chunk` without `strict_causal`,
    /// `shifted_sparse` without `causal`): a later frame would change an
    /// earlier output.
    pub fn new(config: &ModelConfig, model: &Model, options: StreamOptions) -> Result<Self, Error> {
        config.validate()?;
        if options.max_len == 0 {
            return Err(Error::Config("max_len must be positive".into()));
        }
        let net = match options.mode {
            Mode::Incremental => net::build(config, model)?,
            Mode::Recompute => recompute::build(config, model)?,
        };
        let layout = net.layout(&options);
        let fingerprint = net::fingerprint(config, model, &options);
        let (_, input) = config.input_dims();
        Ok(Self {
            net,
            layout,
            input,
            output: config.output_size(),
            options,
            fingerprint,
        })
    }

    /// Width of a frame.
    pub fn input_size(&self) -> usize {
        self.input
    }

    /// Width of an output.
    pub fn output_size(&self) -> usize {
        self.output
    }

    /// The options it was built with.
    pub fn options(&self) -> &StreamOptions {
        &self.options
    }

    /// A new stream at position 0. All its memory is allocated here.
    pub fn state(&self) -> StreamState {
        let kv: Vec<KvCache> = self
            .layout
            .kv
            .iter()
            .map(|&(slots, width)| KvCache::new(slots, width))
            .collect();
        StreamState {
            fingerprint: self.fingerprint,
            t: 0,
            rollback: self.options.rollback,
            scores: vec![
                0.0;
                kv.iter().map(KvCache::cap).max().unwrap_or(1) * self.layout.heads.max(1)
            ],
            kv,
            history: self
                .layout
                .history
                .iter()
                .map(|&(slots, width)| Ring::new(slots, width))
                .collect(),
            scratch: Scratch::new(self.layout.span),
        }
    }

    /// Feeds `frame [input_size]` to `state`, writes `out [output_size]`.
    pub fn step(
        &self,
        state: &mut StreamState,
        frame: &[f32],
        out: &mut [f32],
    ) -> Result<(), Error> {
        self.step_batch(std::slice::from_mut(state), frame, out)
    }

    /// Feeds frame `b` of `frames [B, input_size]` to `states[b]` and writes
    /// its output to row `b` of `out [B, output_size]`, each weight read
    /// once for the `B` streams. Each stream's output is bitwise what
    /// [`step`](Self::step) gives it alone. On error no state changes.
    pub fn step_batch(
        &self,
        states: &mut [StreamState],
        frames: &[f32],
        out: &mut [f32],
    ) -> Result<(), Error> {
        self.check(states, frames, out)?;
        for (state, frame) in states.iter_mut().zip(frames.chunks_exact(self.input)) {
            state.scratch.get_mut(Buf::In)[..self.input].copy_from_slice(frame);
        }
        let result = self.net.step(states)?;
        for (state, out) in states.iter_mut().zip(out.chunks_exact_mut(self.output)) {
            out.copy_from_slice(&state.scratch.get(result)[..self.output]);
            state.t += 1;
        }
        Ok(())
    }

    /// Everything a step checks before it changes anything.
    fn check(&self, states: &[StreamState], frames: &[f32], out: &[f32]) -> Result<(), Error> {
        let b = states.len();
        if frames.len() != b * self.input || out.len() != b * self.output {
            return Err(Error::Stream(format!(
                "{b} streams need frames [{b}, {}] and out [{b}, {}], got {} and {} values",
                self.input,
                self.output,
                frames.len(),
                out.len()
            )));
        }
        for (i, state) in states.iter().enumerate() {
            if state.fingerprint != self.fingerprint {
                return Err(Error::Stream(format!(
                    "stream {i} was made by another streamer (model, weights or options differ)"
                )));
            }
            if let Some(max) = self.layout.max_len {
                if state.t >= max {
                    return Err(Error::Stream(format!(
                        "stream {i} has reached max_len {max}: its state grows with every frame; \
                         raise max_len or give the model a window"
                    )));
                }
            }
        }
        if let Some(at) = frames.iter().position(|x| !x.is_finite()) {
            return Err(Error::Stream(format!(
                "frame {} has a non-finite value at feature {}: {}",
                at / self.input,
                at % self.input,
                frames[at]
            )));
        }
        Ok(())
    }
}

/// One stream: its position, cached keys and values, carried recurrent
/// state and scratch. `Clone` gives an independent copy.
#[derive(Clone, Debug)]
pub struct StreamState {
    fingerprint: u64,
    t: u64,
    rollback: usize,
    kv: Vec<KvCache>,
    /// Per-position rows (LSTM states, Recompute's frames).
    history: Vec<Ring>,
    scratch: Scratch,
    /// One attention score per head and slot of the largest cache.
    scores: Vec<f32>,
}

impl StreamState {
    /// Frames stepped so far (the position of the next frame).
    pub fn position(&self) -> u64 {
        self.t
    }

    /// Back to position 0, as new.
    pub fn reset(&mut self) {
        self.t = 0;
        self.kv
            .iter_mut()
            .flat_map(|c| c.data_mut())
            .for_each(|b| b.fill(0.0));
        self.history.iter_mut().for_each(|h| h.data_mut().fill(0.0));
    }

    /// Undoes the last `k` steps: the next step continues from position
    /// `position() − k`, exactly as if those steps had not run. `k` may be
    /// at most the streamer's `rollback` and the steps taken.
    pub fn rewind(&mut self, k: usize) -> Result<(), Error> {
        if k > self.rollback || k as u64 > self.t {
            return Err(Error::Stream(format!(
                "cannot rewind {k} steps: the stream keeps {} (rollback) and is at position {}",
                self.rollback, self.t
            )));
        }
        self.t -= k as u64;
        Ok(())
    }
}
