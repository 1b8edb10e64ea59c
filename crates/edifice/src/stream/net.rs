//! What every model's step is made of: the [`Net`] a streamer runs, the
//! memory it asks each stream for ([`Layout`]), and the pieces the models
//! share (weights copied out of burn, norms, one attention sublayer).

use burn::module::Param;
use burn::prelude::*;
use edifice_kernels::linear::WeightLayout;
use edifice_kernels::step::{attend, Dense, KeyRange};
use edifice_kernels::{gelu, layer_norm, AttnShape, Pattern, PatternKind};

use super::buffers::{dense, Buf};
use super::{hybrid, post_norm, pre_norm, StreamOptions, StreamState};
use crate::layers::{LayerNorm, Linear};
use crate::{Error, Model, ModelConfig};

/// What each stream of a net keeps, sized once.
#[derive(Clone, Debug, Default)]
pub(super) struct Layout {
    /// `(slots, width)` of each key/value cache.
    pub kv: Vec<(usize, usize)>,
    /// `(slots, width)` of each per-position history.
    pub history: Vec<(usize, usize)>,
    /// Width of every scratch buffer (the widest activation).
    pub span: usize,
    /// Most heads of any attention (scores are kept per head and slot).
    pub heads: usize,
    /// Positions a stream may reach, when its state grows.
    pub max_len: Option<u64>,
}

/// A model's step over a batch of streams.
pub(super) trait Net: Send + Sync {
    /// The memory each stream needs.
    fn layout(&self, options: &StreamOptions) -> Layout;
    /// Advances every stream one position (its frame is in [`Buf::In`],
    /// its position `t` not yet incremented); returns the buffer that holds
    /// each stream's output.
    fn step(&self, states: &mut [StreamState]) -> Result<Buf, Error>;
}

/// The incremental net of `model`.
pub(super) fn build(config: &ModelConfig, model: &Model) -> Result<Box<dyn Net>, Error> {
    Ok(match (config, model) {
        (ModelConfig::SlidingWindow(c), Model::SlidingWindow(m)) => {
            Box::new(post_norm::PostNorm::new(c, m)?)
        }
        (ModelConfig::Hybrid(c) | ModelConfig::HybridMlp(c), Model::Hybrid(m)) => {
            Box::new(hybrid::HybridNet::new(c, m)?)
        }
        (ModelConfig::DualChunk(c), Model::DualChunk(m)) => Box::new(pre_norm::dual_chunk(c, m)?),
        (ModelConfig::Ring(c), Model::Ring(m)) => Box::new(pre_norm::ring(c, m)?),
        (ModelConfig::ShiftedSparse(c), Model::ShiftedSparse(m)) => {
            Box::new(pre_norm::shifted_sparse(c, m)?)
        }
        _ => return Err(mismatch(config)),
    })
}

/// The error for a model that is not the config's.
fn mismatch(config: &ModelConfig) -> Error {
    Error::Config(format!(
        "the model given to the streamer is not a `{}`",
        config.name()
    ))
}

/// The fingerprint of the config, the options and every weight: what a
/// snapshot is checked against.
pub(super) fn fingerprint(config: &ModelConfig, model: &Model, options: &StreamOptions) -> u64 {
    let config = serde_json::Value::Object(config.to_value()).to_string();
    let options = format!("{options:?}");
    crate::fingerprint::fingerprint(&[config.as_bytes(), options.as_bytes()], &mut model.clone())
}

/// A parameter's values, row-major.
pub(super) fn values<const D: usize>(p: &Param<Tensor<D>>) -> Result<Vec<f32>, Error> {
    p.val()
        .into_data()
        .convert::<f32>()
        .try_to_vec()
        .map_err(|e| Error::Weights(format!("cannot read a parameter: {e:?}")))
}

/// A model's dense layer as a step kernel.
pub(super) fn from_linear(linear: &Linear) -> Result<Dense, Error> {
    let d_in = linear.weight.dims()[0];
    Ok(Dense::new(
        &values(&linear.weight)?,
        WeightLayout::InOut,
        d_in,
        &values(&linear.bias)?,
    )?)
}

/// A LayerNorm's parameters.
pub(super) struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    epsilon: f32,
}

impl Norm {
    pub fn of(norm: &LayerNorm) -> Result<Self, Error> {
        Ok(Self {
            gamma: values(&norm.gamma)?,
            beta: values(&norm.beta)?,
            epsilon: norm.epsilon() as f32,
        })
    }

    /// `to = LayerNorm(from)` over the norm's width.
    pub fn apply(&self, s: &mut StreamState, from: Buf, to: Buf) -> Result<(), Error> {
        let (x, y) = s.scratch.pair(from, to);
        self.row(x, y)
    }

    /// `y = LayerNorm(x)` over the first `width` values of each.
    pub fn row(&self, x: &[f32], y: &mut [f32]) -> Result<(), Error> {
        let n = self.gamma.len();
        layer_norm::row(&x[..n], &self.gamma, &self.beta, self.epsilon, &mut y[..n])?;
        Ok(())
    }
}

/// `x[..n] += y[..n]`.
pub(super) fn add(s: &mut StreamState, x: Buf, y: Buf, n: usize) {
    let (y, x) = s.scratch.pair(y, x);
    x[..n].iter_mut().zip(&y[..n]).for_each(|(x, y)| *x += y);
}

/// Which earlier positions a query reads.
#[derive(Clone, Debug)]
pub(super) enum Reach {
    /// The last `W` positions, itself included.
    Window(usize),
    /// Every position.
    All,
    /// Every position the pattern allows (causal).
    Pattern(Pattern),
}

impl Reach {
    /// The reach of a causal pattern.
    pub fn of(pattern: &Pattern) -> Self {
        match pattern.kind {
            PatternKind::Window { window } => Reach::Window(window),
            PatternKind::Full => Reach::All,
            _ => Reach::Pattern(pattern.clone()),
        }
    }

    /// Cache slots for `rollback` steps of rewind: the window and the
    /// rollback, or (`None`) every position up to `max_len`.
    pub fn slots(&self, rollback: usize) -> Option<usize> {
        match self {
            Reach::Window(w) => Some(w + rollback),
            Reach::All | Reach::Pattern(_) => None,
        }
    }
}

/// Self-attention of one new position over a cache: `qkv [3·width]` (the
/// fused projection's packed layout, heads of `width / heads`) → `[width]`.
pub(super) struct SelfAttn {
    pub heads: usize,
    pub width: usize,
    pub reach: Reach,
}

impl SelfAttn {
    /// The cache's `(slots, width)` and the growth limit it implies.
    pub fn cache(&self, options: &StreamOptions) -> ((usize, usize), Option<u64>) {
        match self.reach.slots(options.rollback) {
            Some(slots) => ((slots, self.width), None),
            None => ((options.max_len, self.width), Some(options.max_len as u64)),
        }
    }

    /// Writes position `s.t`'s key and value from `qkv` into cache `layer`,
    /// then `out = attention(q)`.
    pub fn step(&self, s: &mut StreamState, layer: usize, qkv: Buf, out: Buf) -> Result<(), Error> {
        let (t, w) = (s.t, self.width);
        remember(s, layer, qkv, w)?;
        let first = match self.reach {
            Reach::Window(window) => (t + 1).saturating_sub(window as u64),
            Reach::All | Reach::Pattern(_) => 0,
        };
        let shape = AttnShape {
            batch: 1,
            heads_q: self.heads,
            heads_kv: self.heads,
            len_q: t as usize + 1,
            len_k: t as usize + 1,
            head_dim: w / self.heads,
        };
        let rule = |h: usize, j: u64| match &self.reach {
            Reach::Pattern(p) => p.allowed(&shape, 0, h, t as usize, j as usize),
            _ => true,
        };
        let allow: Option<&dyn Fn(usize, u64) -> bool> = match self.reach {
            Reach::Pattern(_) => Some(&rule),
            _ => None,
        };
        let keys = KeyRange {
            first,
            last: t,
            allow,
        };
        look(s, layer, self.heads, w, keys, qkv, out)?;
        Ok(())
    }
}

/// Writes position `s.t`'s key and value, from the packed `qkv` buffer
/// (`[q | k | v]`, each `width`), into cache `cache`.
pub(super) fn remember(
    s: &mut StreamState,
    cache: usize,
    qkv: Buf,
    width: usize,
) -> Result<(), Error> {
    let q = s.scratch.get(qkv);
    s.kv[cache].write(s.t, &q[width..2 * width], &q[2 * width..3 * width])?;
    Ok(())
}

/// `out = attention(q)` of the packed `qkv` buffer's query over cache
/// `cache` at `keys`: `heads` heads of `width / heads`, scale
/// `1/√(width / heads)` (the kernel's default).
pub(super) fn look(
    s: &mut StreamState,
    cache: usize,
    heads: usize,
    width: usize,
    keys: KeyRange,
    qkv: Buf,
    out: Buf,
) -> Result<(), Error> {
    let (q, o) = s.scratch.pair(qkv, out);
    let scale = 1.0 / ((width / heads) as f32).sqrt();
    attend(
        &s.kv[cache],
        &q[..width],
        heads,
        scale,
        keys,
        &mut s.scores,
        &mut o[..width],
    )?;
    Ok(())
}

/// `to = down(gelu(up(from)))` in every stream (through [`Buf::F`] and
/// [`Buf::G`]).
pub(super) fn ffn(
    up: &Dense,
    down: &Dense,
    states: &mut [StreamState],
    from: Buf,
    to: Buf,
) -> Result<(), Error> {
    dense(up, states, from, Buf::F)?;
    let inner = up.d_out();
    for s in states.iter_mut() {
        let (f, g) = s.scratch.pair(Buf::F, Buf::G);
        gelu::forward_serial(&f[..inner], &mut g[..inner])?;
    }
    dense(down, states, Buf::G, to)
}

/// The cache layouts of `attns` with their common growth limit.
pub(super) fn caches<'a>(
    attns: impl Iterator<Item = &'a SelfAttn>,
    options: &StreamOptions,
) -> (Vec<(usize, usize)>, Option<u64>) {
    let mut limit = None;
    let kv = attns
        .map(|a| {
            let (kv, max) = a.cache(options);
            limit = limit.or(max);
            kv
        })
        .collect();
    (kv, limit)
}
