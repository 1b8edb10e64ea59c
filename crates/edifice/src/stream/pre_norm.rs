//! The step of the pre-norm backbone (`dual_chunk`, `ring`,
//! `shifted_sparse`).
//!
//! ```text
//! x = input_projection(frame)              (when embed_dim != hidden_size)
//! per block: x = x + attn(LN(x));  x = x + down(gelu(up(LN(x))))
//! out = final_norm(x)
//! ```
//!
//! DualChunk's attention (`strict_causal`) at position `t` in chunk `c`:
//! causal attention over positions `c·C..=t`, attention over the mean keys
//! and values of chunks `0..c` (zero when `c = 0`), mixed by the gate
//! `σ(g)·inter + (1 − σ(g))·intra` or summed. A chunk's means are taken
//! when its last position is stepped.

use edifice_kernels::step::{Dense, KeyRange};

use super::buffers::{dense, Buf};
use super::net::{self, add, ffn, Layout, Net, Norm, Reach, SelfAttn};
use super::{StreamOptions, StreamState};
use crate::layers::{Combine, PatternAttention};
use crate::models::backbone::{Backbone, BlockAttention};
use crate::models::{
    DualChunk, DualChunkConfig, Ring, RingConfig, ShiftedSparse, ShiftedSparseConfig,
};
use crate::Error;
use edifice_kernels::{Pattern, PatternKind};

/// How a DualChunk layer combines its two attentions.
enum Mix {
    /// `σ(gate) [width]`.
    Gate(Vec<f32>),
    Sum,
}

/// DualChunk's attention, one position at a time.
struct Chunked {
    heads: usize,
    width: usize,
    chunk: usize,
    mix: Mix,
}

enum Attn {
    Pattern(SelfAttn),
    Chunked(Chunked),
}

struct Block {
    attn_norm: Norm,
    qkv: Dense,
    attn: Attn,
    out: Dense,
    ffn_norm: Norm,
    up: Dense,
    down: Dense,
}

/// The backbone, one position at a time.
pub(super) struct PreNorm {
    input_projection: Option<Dense>,
    blocks: Vec<Block>,
    final_norm: Norm,
    embed: usize,
    hidden: usize,
}

/// `dual_chunk` (strict_causal only).
pub(super) fn dual_chunk(config: &DualChunkConfig, model: &DualChunk) -> Result<PreNorm, Error> {
    if !config.strict_causal {
        return Err(Error::Config(
            "dual_chunk streams need strict_causal = true: without it a chunk's summary \
             includes later frames of the chunk, so an output would change after it was given"
                .into(),
        ));
    }
    let (heads, hidden) = (config.num_heads, config.hidden_size);
    PreNorm::new(&model.backbone, |a| {
        let mix = match config.combine {
            Combine::Gate => Mix::Gate(
                net::values(&a.gate)?
                    .iter()
                    .map(|g| 1.0 / (1.0 + (-g).exp()))
                    .collect(),
            ),
            Combine::Sum => Mix::Sum,
        };
        let attn = Attn::Chunked(Chunked {
            heads,
            width: hidden,
            chunk: config.chunk_size,
            mix,
        });
        Ok((net::from_linear(&a.qkv)?, attn, net::from_linear(&a.out)?))
    })
}

/// `ring`: exact causal attention (the ring order changes nothing for one
/// position).
pub(super) fn ring(config: &RingConfig, model: &Ring) -> Result<PreNorm, Error> {
    patterned(
        &Pattern::new(PatternKind::Full, true),
        config.num_heads,
        &model.backbone,
    )
}

/// `shifted_sparse` (causal only).
pub(super) fn shifted_sparse(
    config: &ShiftedSparseConfig,
    model: &ShiftedSparse,
) -> Result<PreNorm, Error> {
    if !config.causal {
        return Err(Error::Config(
            "shifted_sparse streams need causal = true: a bidirectional pattern lets later \
             frames change earlier outputs"
                .into(),
        ));
    }
    patterned(
        &config.attention_pattern(),
        config.num_heads,
        &model.backbone,
    )
}

fn patterned(
    pattern: &Pattern,
    heads: usize,
    backbone: &Backbone<PatternAttention>,
) -> Result<PreNorm, Error> {
    PreNorm::new(backbone, |a| {
        let attn = SelfAttn {
            heads,
            width: a.qkv.weight.dims()[1] / 3,
            reach: Reach::of(pattern),
        };
        Ok((
            net::from_linear(&a.qkv)?,
            Attn::Pattern(attn),
            net::from_linear(&a.out_proj)?,
        ))
    })
}

impl PreNorm {
    fn new<A: BlockAttention>(
        backbone: &Backbone<A>,
        attn: impl Fn(&A) -> Result<(Dense, Attn, Dense), Error>,
    ) -> Result<Self, Error> {
        let hidden = backbone.final_norm.gamma.dims()[0];
        let embed = backbone
            .input_projection
            .as_ref()
            .map_or(hidden, |p| p.weight.dims()[0]);
        let blocks = backbone
            .blocks
            .iter()
            .map(|b| {
                let (qkv, attn, out) = attn(&b.attn)?;
                Ok(Block {
                    attn_norm: Norm::of(&b.attn_norm)?,
                    qkv,
                    attn,
                    out,
                    ffn_norm: Norm::of(&b.ffn_norm)?,
                    up: net::from_linear(&b.ffn.up)?,
                    down: net::from_linear(&b.ffn.down)?,
                })
            })
            .collect::<Result<_, Error>>()?;
        Ok(Self {
            input_projection: backbone
                .input_projection
                .as_ref()
                .map(net::from_linear)
                .transpose()?,
            blocks,
            final_norm: Norm::of(&backbone.final_norm)?,
            embed,
            hidden,
        })
    }
}

impl Attn {
    /// The `(slots, width)` of this attention's caches and the growth
    /// limit they imply: a pattern's one, or DualChunk's two (the chunk's
    /// positions, then the completed chunks' means, up to `max_len`).
    fn caches(&self, options: &StreamOptions) -> (Vec<(usize, usize)>, Option<u64>) {
        match self {
            Attn::Pattern(a) => {
                let (kv, limit) = a.cache(options);
                (vec![kv], limit)
            }
            Attn::Chunked(c) => {
                let chunks = options.max_len / c.chunk + 1;
                let kv = vec![(c.chunk + options.rollback, c.width), (chunks, c.width)];
                (kv, Some(options.max_len as u64))
            }
        }
    }

    /// How many caches [`caches`](Self::caches) lists.
    fn cache_count(&self) -> usize {
        match self {
            Attn::Pattern(_) => 1,
            Attn::Chunked(_) => 2,
        }
    }

    fn heads(&self) -> usize {
        match self {
            Attn::Pattern(a) => a.heads,
            Attn::Chunked(c) => c.heads,
        }
    }
}

impl Net for PreNorm {
    fn layout(&self, options: &StreamOptions) -> Layout {
        let (mut kv, mut max_len) = (Vec::new(), None);
        for block in &self.blocks {
            let (caches, limit) = block.attn.caches(options);
            kv.extend(caches);
            max_len = max_len.or(limit);
        }
        let inner = self.blocks.first().map_or(0, |b| b.up.d_out());
        Layout {
            kv,
            history: Vec::new(),
            heads: self.blocks.first().map_or(1, |b| b.attn.heads()),
            span: self.embed.max(3 * self.hidden).max(inner),
            max_len,
        }
    }

    fn step(&self, states: &mut [StreamState]) -> Result<Buf, Error> {
        let h = self.hidden;
        match &self.input_projection {
            Some(p) => dense(p, states, Buf::In, Buf::X)?,
            None => states.iter_mut().for_each(|s| {
                let (x, y) = s.scratch.pair(Buf::In, Buf::X);
                y[..h].copy_from_slice(&x[..h]);
            }),
        }
        // The blocks' caches, in order: each block's first one.
        let mut cache = 0;
        for block in &self.blocks {
            for s in states.iter_mut() {
                block.attn_norm.apply(s, Buf::X, Buf::A)?;
            }
            dense(&block.qkv, states, Buf::A, Buf::Qkv)?;
            for s in states.iter_mut() {
                match &block.attn {
                    Attn::Pattern(a) => a.step(s, cache, Buf::Qkv, Buf::G)?,
                    Attn::Chunked(c) => c.step(s, cache)?,
                }
            }
            cache += block.attn.cache_count();
            dense(&block.out, states, Buf::G, Buf::A)?;
            for s in states.iter_mut() {
                add(s, Buf::X, Buf::A, h);
                block.ffn_norm.apply(s, Buf::X, Buf::A)?;
            }
            ffn(&block.up, &block.down, states, Buf::A, Buf::A)?;
            for s in states.iter_mut() {
                add(s, Buf::X, Buf::A, h);
            }
        }
        for s in states.iter_mut() {
            self.final_norm.apply(s, Buf::X, Buf::A)?;
        }
        Ok(Buf::A)
    }
}

impl Chunked {
    /// Position `s.t` with its `qkv` in [`Buf::Qkv`]: the mixed attention
    /// into [`Buf::G`]; caches `cache` (chunk) and `cache + 1` (means).
    fn step(&self, s: &mut StreamState, cache: usize) -> Result<(), Error> {
        let (t, w, c) = (s.t, self.width, self.chunk as u64);
        let start = t - t % c;
        net::remember(s, cache, Buf::Qkv, w)?;
        let chunk = KeyRange {
            first: start,
            last: t,
            allow: None,
        };
        net::look(s, cache, self.heads, w, chunk, Buf::Qkv, Buf::G)?;
        match (t / c).checked_sub(1) {
            None => s.scratch.get_mut(Buf::F)[..w].fill(0.0),
            Some(last) => {
                let done = KeyRange {
                    first: 0,
                    last,
                    allow: None,
                };
                net::look(s, cache + 1, self.heads, w, done, Buf::Qkv, Buf::F)?;
            }
        }
        if t % c == c - 1 {
            self.summarise(s, cache, start, t)?;
        }
        let (inter, intra) = s.scratch.pair(Buf::F, Buf::G);
        match &self.mix {
            Mix::Gate(g) => {
                for ((a, &e), &g) in intra[..w].iter_mut().zip(&inter[..w]).zip(g) {
                    *a = e * g + *a * (1.0 - g);
                }
            }
            Mix::Sum => intra[..w]
                .iter_mut()
                .zip(&inter[..w])
                .for_each(|(a, e)| *a += e),
        }
        Ok(())
    }

    /// The mean key and value of the chunk `start..=last` into the means
    /// cache, at the chunk's index (through [`Buf::Qkv`], free by now).
    fn summarise(
        &self,
        s: &mut StreamState,
        cache: usize,
        start: u64,
        last: u64,
    ) -> Result<(), Error> {
        let w = self.width;
        let n = (last - start + 1) as f32;
        let means = &mut s.scratch.get_mut(Buf::Qkv)[..2 * w];
        means.fill(0.0);
        let chunk = &s.kv[cache];
        for p in start..=last {
            let (km, vm) = means.split_at_mut(w);
            km.iter_mut().zip(chunk.key(p)).for_each(|(m, k)| *m += k);
            vm.iter_mut().zip(chunk.value(p)).for_each(|(m, v)| *m += v);
        }
        means.iter_mut().for_each(|m| *m /= n);
        let (km, vm) = means.split_at(w);
        s.kv[cache + 1].write(start / self.chunk as u64, km, vm)?;
        Ok(())
    }
}
