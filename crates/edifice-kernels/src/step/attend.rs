//! One query against cached keys and values: the attention of a single new
//! position.
//!
//! ```text
//! per head h, for the allowed positions p of the key range:
//! s_p = scale · q_h·k_{p,h}        o_h = Σ_p softmax(s)_p · v_{p,h}
//! ```
//!
//! Positions are visited in increasing order, whatever slot of the ring
//! holds them, so the result depends only on the cached values. A query
//! with no allowed key gets `o_h = 0`, as in the block kernel. The softmax
//! is the block kernel's: scores in base 2, the vector `exp2`, f32 sums.
//! Memory: one score per key in the caller's buffer.

use super::Ring;
use crate::simd::{Isa, Scalar, Simd, WithSimd};
use crate::{same_len, KernelError};

/// Keys and values of earlier positions, two [`Ring`]s of the same shape:
/// a step writes one row of each and a query streams through consecutive
/// rows.
#[derive(Clone, Debug, PartialEq)]
pub struct KvCache {
    keys: Ring,
    values: Ring,
}

impl KvCache {
    /// A zeroed cache of `slots` slots of `width` keys and values.
    pub fn new(slots: usize, width: usize) -> Self {
        Self {
            keys: Ring::new(slots, width),
            values: Ring::new(slots, width),
        }
    }

    /// Slots.
    pub fn cap(&self) -> usize {
        self.keys.cap()
    }

    /// Width of one key (all heads).
    pub fn width(&self) -> usize {
        self.keys.width()
    }

    /// Stores the key and value of position `pos` (each `[width]`).
    pub fn write(&mut self, pos: u64, key: &[f32], value: &[f32]) -> Result<(), KernelError> {
        same_len("kv cache", "key", key.len(), self.width())?;
        same_len("kv cache", "value", value.len(), self.width())?;
        self.keys.row_mut(pos).copy_from_slice(key);
        self.values.row_mut(pos).copy_from_slice(value);
        Ok(())
    }

    /// The key of position `pos` (the slot's current content).
    pub fn key(&self, pos: u64) -> &[f32] {
        self.keys.row(pos)
    }

    /// The value of position `pos`.
    pub fn value(&self, pos: u64) -> &[f32] {
        self.values.row(pos)
    }

    /// Keys and values, for snapshots.
    pub fn data(&self) -> [&[f32]; 2] {
        [self.keys.data(), self.values.data()]
    }

    /// Keys and values, to restore a snapshot.
    pub fn data_mut(&mut self) -> [&mut [f32]; 2] {
        [self.keys.data_mut(), self.values.data_mut()]
    }
}

/// The keys a query reads: positions `first..=last` (none when
/// `first > last`), those `allow(head, position)` admits when given.
#[derive(Clone, Copy)]
pub struct KeyRange<'a> {
    /// First position.
    pub first: u64,
    /// Last position.
    pub last: u64,
    /// A per-head filter (a sparse pattern's rule); `None` admits all.
    pub allow: Option<&'a dyn Fn(usize, u64) -> bool>,
}

impl KeyRange<'_> {
    /// Positions in the range.
    pub fn len(&self) -> usize {
        if self.first > self.last {
            0
        } else {
            (self.last - self.first + 1) as usize
        }
    }

    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `out [width] = attention(q [width], cache, keys)` with `heads` heads of
/// `width / heads`, and `scale` on the scores; `scores` holds at least
/// `heads · cache.cap()` values of scratch (one per head and slot). The
/// range must lie in the cache.
pub fn attend(
    cache: &KvCache,
    q: &[f32],
    heads: usize,
    scale: f32,
    keys: KeyRange,
    scores: &mut [f32],
    out: &mut [f32],
) -> Result<(), KernelError> {
    let width = cache.width();
    if heads == 0 || !width.is_multiple_of(heads) {
        return Err(KernelError::Shape(format!(
            "attend: {heads} heads do not divide the cache width {width}"
        )));
    }
    same_len("attend", "q", q.len(), width)?;
    same_len("attend", "out", out.len(), width)?;
    let cap = cache.cap();
    if keys.len() > cap || scores.len() < heads * cap {
        return Err(KernelError::Shape(format!(
            "attend: {} keys and {} scores, for a cache of {} slots",
            keys.len(),
            scores.len(),
            cap
        )));
    }
    Isa::widest().run(Attend {
        cache,
        q,
        head_dim: width / heads,
        scale: scale * std::f32::consts::LOG2_E,
        keys,
        scores: &mut scores[..heads * cap],
        out,
    });
    Ok(())
}

/// One call, every length checked by [`attend`].
struct Attend<'a> {
    cache: &'a KvCache,
    q: &'a [f32],
    head_dim: usize,
    /// `scale · log2 e`: scores in base 2.
    scale: f32,
    keys: KeyRange<'a>,
    /// One per head and slot.
    scores: &'a mut [f32],
    out: &'a mut [f32],
}

impl WithSimd for Attend<'_> {
    type Output = ();

    /// Keys and values are read once each, row by row (every head of a
    /// position together), so the walk through the cache is sequential.
    #[inline(always)]
    fn with_simd<S: Simd>(mut self, s: S) {
        let (d, cap) = (self.head_dim, self.cache.cap());
        let runs = slot_runs(self.keys, cap);
        let out = std::mem::take(&mut self.out);
        out.fill(0.0);
        if self.keys.is_empty() {
            return;
        }
        for (start, len) in runs {
            self.score_slots(s, start, len);
        }
        for h in 0..out.len() / d {
            let scores = &mut self.scores[h * cap..(h + 1) * cap];
            let mut max = f32::NEG_INFINITY;
            for (p, at) in positions(self.keys, cap) {
                if let Some(allow) = self.keys.allow {
                    if !allow(h, p) {
                        scores[at] = f32::NEG_INFINITY;
                    }
                }
                max = max.max(scores[at]);
            }
            if max == f32::NEG_INFINITY {
                runs.iter().for_each(|&(a, n)| scores[a..a + n].fill(0.0));
                continue;
            }
            for (start, len) in runs {
                exp2_shifted(s, &mut scores[start..start + len], max);
            }
            let inv = 1.0
                / positions(self.keys, cap)
                    .map(|(_, at)| scores[at])
                    .sum::<f32>();
            runs.iter()
                .for_each(|&(a, n)| scores[a..a + n].iter_mut().for_each(|w| *w *= inv));
        }
        self.weigh_values(s, out);
    }
}

impl Attend<'_> {
    /// Scores (base 2) of every head for slots `start..start + len`, at
    /// `scores[head · cap + slot]`: a vector dot product per key and head,
    /// summed across lanes.
    #[inline(always)]
    fn score_slots<S: Simd>(&mut self, s: S, start: usize, len: usize) {
        let (d, cap, lanes) = (self.head_dim, self.cache.cap(), S::LANES);
        let body = d / lanes * lanes;
        for slot in start..start + len {
            let row = self.cache.keys.at_slot(slot);
            for (h, (q, k)) in self.q.chunks_exact(d).zip(row.chunks_exact(d)).enumerate() {
                let mut acc = s.splat(0.0);
                for c in (0..body).step_by(lanes) {
                    // SAFETY: c + LANES <= d, within q and k.
                    acc =
                        unsafe { s.fma(s.load(q.as_ptr().add(c)), s.load(k.as_ptr().add(c)), acc) };
                }
                let tail: f32 = (body..d).map(|c| q[c] * k[c]).sum();
                self.scores[h * cap + slot] = (s.sum(acc) + tail) * self.scale;
            }
        }
    }

    /// `o_h = Σ_p w_{h,p} · v_{p,h}` over the range in position order, with
    /// the normalised weights in the score slots.
    #[inline(always)]
    fn weigh_values<S: Simd>(&self, s: S, o: &mut [f32]) {
        let (d, lanes, cache) = (self.head_dim, S::LANES, self.cache);
        let cap = cache.cap();
        let body = d / lanes * lanes;
        for (_, at) in positions(self.keys, cap) {
            let row = cache.values.at_slot(at);
            for (h, (o, v)) in o.chunks_exact_mut(d).zip(row.chunks_exact(d)).enumerate() {
                let w = self.scores[h * cap + at];
                if w == 0.0 {
                    continue;
                }
                let wv = s.splat(w);
                for c in (0..body).step_by(lanes) {
                    // SAFETY: c + LANES <= d, within o and v.
                    unsafe {
                        let p = o.as_mut_ptr().add(c);
                        s.store(p, s.fma(wv, s.load(v.as_ptr().add(c)), s.load(p)));
                    }
                }
                for c in body..d {
                    o[c] += w * v[c];
                }
            }
        }
    }
}

/// `(position, slot)` over the range in position order: one division for
/// the first slot, then a wrapping counter.
fn positions(keys: KeyRange, cap: usize) -> impl Iterator<Item = (u64, usize)> {
    let mut slot = (keys.first % cap as u64) as usize;
    (keys.first..=keys.last).take(keys.len()).map(move |p| {
        let at = slot;
        slot = if slot + 1 == cap { 0 } else { slot + 1 };
        (p, at)
    })
}

/// The slots of the range as two contiguous runs `(start, len)`, the
/// second empty unless the range wraps round the ring.
fn slot_runs(keys: KeyRange, cap: usize) -> [(usize, usize); 2] {
    let n = keys.len();
    let start = (keys.first % cap as u64) as usize;
    if start + n <= cap {
        [(start, n), (0, 0)]
    } else {
        [(start, cap - start), (0, n - (cap - start))]
    }
}

/// `x_i = 2^(x_i − max)` in place.
#[inline(always)]
fn exp2_shifted<S: Simd>(s: S, x: &mut [f32], max: f32) {
    let body = x.len() / S::LANES * S::LANES;
    let m = s.splat(max);
    for i in (0..body).step_by(S::LANES) {
        // SAFETY: i + LANES <= len.
        unsafe {
            let p = x.as_mut_ptr().add(i);
            s.store(p, s.exp2(s.sub(s.load(p), m)));
        }
    }
    for v in &mut x[body..] {
        *v = Scalar.exp2(*v - max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition in f64.
    fn naive(cache: &KvCache, q: &[f32], heads: usize, scale: f32, keys: KeyRange) -> Vec<f64> {
        let d = cache.width() / heads;
        let mut out = vec![0.0; cache.width()];
        for h in 0..heads {
            let allowed: Vec<u64> = (keys.first..=keys.last)
                .filter(|&p| keys.allow.is_none_or(|a| a(h, p)))
                .collect();
            let s: Vec<f64> = allowed
                .iter()
                .map(|&p| {
                    let k = |i| cache.key(p)[h * d + i] as f64;
                    scale as f64 * (0..d).map(|i| q[h * d + i] as f64 * k(i)).sum::<f64>()
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
            for (&p, &sp) in allowed.iter().zip(&s) {
                let v = &cache.value(p)[h * d..(h + 1) * d];
                for i in 0..d {
                    out[h * d + i] += (sp - m).exp() / z * v[i] as f64;
                }
            }
        }
        out
    }

    fn filled(cap: usize, width: usize, upto: u64) -> KvCache {
        let mut cache = KvCache::new(cap, width);
        for p in 0..=upto {
            let k: Vec<f32> = (0..width)
                .map(|i| ((p as usize * 31 + i * 7) % 17) as f32 / 8.0 - 1.0)
                .collect();
            let v: Vec<f32> = (0..width)
                .map(|i| ((p as usize * 13 + i * 5) % 11) as f32 / 5.0 - 1.0)
                .collect();
            cache.write(p, &k, &v).unwrap();
        }
        cache
    }

    #[test]
    fn matches_the_definition_with_and_without_a_filter() {
        let even = |h: usize, p: u64| (p + h as u64).is_multiple_of(2);
        for (cap, heads, d, first, last) in [
            (8, 2, 16, 3, 10),
            (70, 4, 64, 40, 100),
            (5, 1, 3, 0, 4),
            (32, 2, 8, 25, 50),
            (16, 3, 20, 40, 45),
        ] {
            let cache = filled(cap, heads * d, last);
            let q: Vec<f32> = (0..heads * d).map(|i| (i % 9) as f32 / 4.0 - 1.0).collect();
            for allow in [None, Some(&even as &dyn Fn(usize, u64) -> bool)] {
                let keys = KeyRange { first, last, allow };
                let (mut scores, mut out) = (vec![0.0; heads * cache.cap()], vec![0.0; heads * d]);
                attend(&cache, &q, heads, 0.3, keys, &mut scores, &mut out).unwrap();
                let want = naive(&cache, &q, heads, 0.3, keys);
                for (a, b) in out.iter().zip(&want) {
                    assert!((*a as f64 - b).abs() < 1e-5, "{a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn no_key_gives_zero_and_bad_ranges_are_refused() {
        let cache = filled(4, 8, 3);
        let (mut scores, mut out) = (vec![0.0; 8], vec![1.0; 8]);
        let none = KeyRange {
            first: 3,
            last: 2,
            allow: None,
        };
        attend(&cache, &[1.0; 8], 2, 1.0, none, &mut scores, &mut out).unwrap();
        assert!(out.iter().all(|&x| x == 0.0));
        let deny = |_: usize, _: u64| false;
        let denied = KeyRange {
            first: 0,
            last: 3,
            allow: Some(&deny),
        };
        attend(&cache, &[1.0; 8], 2, 1.0, denied, &mut scores, &mut out).unwrap();
        assert!(out.iter().all(|&x| x == 0.0));
        let too_many = KeyRange {
            first: 0,
            last: 4,
            allow: None,
        };
        assert!(attend(&cache, &[1.0; 8], 2, 1.0, too_many, &mut scores, &mut out).is_err());
        let all = KeyRange {
            first: 0,
            last: 3,
            allow: None,
        };
        assert!(attend(&cache, &[1.0; 8], 3, 1.0, all, &mut scores, &mut out).is_err());
        assert!(attend(&cache, &[1.0; 7], 2, 1.0, all, &mut scores, &mut out).is_err());
        assert!(attend(&cache, &[1.0; 8], 2, 1.0, all, &mut scores[..7], &mut out).is_err());
        assert!(KvCache::new(4, 8).write(0, &[0.0; 7], &[0.0; 8]).is_err());
    }
}
