//! Exact attention over a sequence spread across the ranks of a ring.
//!
//! Rank `r` holds its slice of `q`, `k`, `v` ([`Layout`]). At ring step
//! `s` it holds the key/value block of rank `r − s` (mod `P`) and computes
//! every allowed pair of its query chunks with that block's key chunks,
//! one fused-kernel call per pair and query plane: the kernel places the
//! queries `start_q − start_k` positions after the keys
//! ([`Pattern::with_query_offset`]), so one call serves a diagonal,
//! an earlier or a window-cut pair alike. Partial `(o, lse)` fold into
//! the running result by log-sum-exp in f32 ([`merge`](edifice_kernels::ring::merge)).
//!
//! While a rank works on one piece of its block (a `(batch, kv head)`
//! plane), it forwards that piece to the next rank and receives the
//! previous rank's matching piece into the slot the last piece left
//! (a lane, `lane.rs`): transfers overlap the kernel's work, a helper
//! thread computes while this one keeps MPI moving, and the ring needs
//! one extra piece of memory per lane.
//!
//! Steps whose blocks no rank reads are skipped: with a window of `W`
//! positions over slices of `L`, the ring stops after `ceil((W − 1) / L)`
//! steps. A ring that runs every step passes each block once more, so
//! every rank ends with its own keys and values back.
//!
//! The backward pass runs the same ring for `k`, `v`, plus a second ring
//! for the sums `dK`, `dV` of each block: a rank adds its queries'
//! contributions to the block it holds and passes the sums on, and after
//! the last step they reach the block's owner. `dQ` stays local. Every
//! sum is taken in one fixed order: results do not vary between runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use edifice_kernels::{Attention, AttnShape, Pattern, PatternKind};

use crate::comm::{Comm, Pending};
use crate::lane::{Lane, Wire};
use crate::layout::{Chunk, Layout, LayoutKind};
use crate::pairs::{forward_plane, PairKernel};
use crate::DistError;

mod backward;

const KEYS: Wire = Wire {
    tag: 1,
    what: "keys",
};
const VALUES: Wire = Wire {
    tag: 2,
    what: "values",
};
const KEY_GRADIENTS: Wire = Wire {
    tag: 3,
    what: "key gradients",
};
const VALUE_GRADIENTS: Wire = Wire {
    tag: 4,
    what: "value gradients",
};

/// One rank's slice as the ring sees it.
#[derive(Clone, Copy, Debug)]
struct Slice {
    /// Head dim.
    d: usize,
    /// This rank's positions.
    local: usize,
    /// Pieces per block: (batch, kv head) planes.
    m: usize,
    /// Query heads per kv head.
    group: usize,
    /// Floats per ring slot: the longest rank's rows.
    slot: usize,
    heads_q: usize,
    heads_kv: usize,
}

impl Slice {
    /// The query planes (`batch · Hq + head`) that read kv plane `plane`.
    fn query_planes(&self, plane: usize) -> std::ops::Range<usize> {
        let (batch, kv_head) = (plane / self.heads_kv, plane % self.heads_kv);
        let first = batch * self.heads_q + kv_head * self.group;
        first..first + self.group
    }

    /// A lane of `pieces` over this rank's `x` (`[B, Hkv, L, D]`).
    fn lane(&self, x: Vec<f32>, wire: Wire) -> Lane {
        Lane::adopt(x, self.m, self.local * self.d, self.slot, wire)
    }

    /// A lane of zeros.
    fn zeros(&self, wire: Wire) -> Lane {
        self.lane(vec![0.0; self.m * self.local * self.d], wire)
    }
}

/// One block pair a rank computes: its query chunk `a` against key chunk
/// `b` of the block it holds (indices into each rank's chunk list).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pair {
    /// This rank's query chunk.
    pub a: usize,
    /// The held block's key chunk.
    pub b: usize,
}

/// Where time went in the last call, on this rank.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Timing {
    /// Wall time of the whole call.
    pub total: Duration,
    /// Wall time of the kernels (the helper thread's work).
    pub compute: Duration,
    /// Time spent waiting for transfers that the kernels did not hide.
    pub exposed: Duration,
    /// Bytes sent by this rank.
    pub bytes_sent: usize,
    /// Ring steps computed (the last ones skipped when nothing reads them).
    pub steps: usize,
}

/// Sequence-parallel exact attention over the ranks of `comm` (see the
/// module docs). Built once per (sequence length, pattern); every rank
/// builds the same and calls it in the same order.
#[derive(Debug)]
pub struct RingAttention {
    comm: Arc<Comm>,
    layout: Layout,
    pattern: Pattern,
    /// Per ring step, the pairs this rank computes.
    steps: Vec<Vec<Pair>>,
    timing: std::sync::Mutex<Timing>,
}

/// The smallest and largest distance `i − j` a pattern allows.
fn distances(pattern: &Pattern) -> Result<(i64, i64), DistError> {
    let (lo, hi) = match pattern.kind {
        PatternKind::Full => (i64::MIN, i64::MAX),
        PatternKind::Window { window } if window > 0 => (1 - window as i64, window as i64 - 1),
        ref kind => {
            return Err(DistError::Pattern(format!(
            "the ring distributes patterns that depend only on i − j (full, window), not {kind:?}"
        )))
        }
    };
    Ok((if pattern.causal { lo.max(0) } else { lo }, hi))
}

/// Whether any pair of `q` × `k` has an allowed distance.
fn reads(q: Chunk, k: Chunk, (lo, hi): (i64, i64)) -> bool {
    if q.len == 0 || k.len == 0 {
        return false;
    }
    let d_min = q.start as i64 - (k.start + k.len - 1) as i64;
    let d_max = (q.start + q.len - 1) as i64 - k.start as i64;
    d_min.max(lo) <= d_max.min(hi)
}

impl RingAttention {
    /// Attention over `len` positions spread over `comm`'s ranks with
    /// `pattern` (full or window, causal or not). The layout is zig-zag
    /// for causal full attention and contiguous otherwise.
    pub fn new(comm: Arc<Comm>, len: usize, pattern: Pattern) -> Result<Self, DistError> {
        let kind = if pattern.causal && pattern.kind == PatternKind::Full {
            LayoutKind::Zigzag
        } else {
            LayoutKind::Contiguous
        };
        Self::with_layout(comm, len, pattern, kind)
    }

    /// [`new`](Self::new) with the layout chosen by the caller.
    pub fn with_layout(
        comm: Arc<Comm>,
        len: usize,
        pattern: Pattern,
        kind: LayoutKind,
    ) -> Result<Self, DistError> {
        let setup = format!("N {len}, {pattern:?}, {kind:?}");
        let (reach, local) = match distances(&pattern) {
            Ok(reach) => (reach, Ok(())),
            Err(e) => ((0, 0), Err(e)),
        };
        agree(&comm, "the sequence length or pattern", &setup, local)?;
        let (p, rank) = (comm.size(), comm.rank());
        let layout = Layout::new(kind, len, p);
        let pairs = |r: usize, s: usize| -> Vec<Pair> {
            let (mine, held) = (layout.chunks(r), layout.chunks((r + p - s) % p));
            let mut out = Vec::new();
            for (a, &qa) in mine.iter().enumerate() {
                for (b, &kb) in held.iter().enumerate() {
                    if reads(qa, kb, reach) {
                        out.push(Pair { a, b });
                    }
                }
            }
            out
        };
        // Every rank works out the same last step from the same layout.
        let last = (0..p)
            .filter(|&s| (0..p).any(|r| !pairs(r, s).is_empty()))
            .max()
            .unwrap_or(0);
        let steps = (0..=last).map(|s| pairs(rank, s)).collect();
        Ok(RingAttention {
            comm,
            layout,
            pattern,
            steps,
            timing: Default::default(),
        })
    }

    /// Which positions each rank holds.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The pattern over the whole sequence.
    pub fn pattern(&self) -> &Pattern {
        &self.pattern
    }

    /// The communicator.
    pub fn comm(&self) -> &Arc<Comm> {
        &self.comm
    }

    /// The pairs this rank computes at each ring step.
    pub fn steps(&self) -> &[Vec<Pair>] {
        &self.steps
    }

    /// Where the last call's time went on this rank.
    pub fn timing(&self) -> Timing {
        *self.timing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`check`](Self::check) on every rank, plus that every rank has the
    /// same batch, heads, head dim and scale: an error on every rank if
    /// any differs or fails.
    fn check_all(&self, shape: &AttnShape, scale: f32) -> Result<(), DistError> {
        let sizes = format!(
            "B {}, Hq {}, Hkv {}, D {}, scale {:08x}",
            shape.batch,
            shape.heads_q,
            shape.heads_kv,
            shape.head_dim,
            scale.to_bits()
        );
        agree(
            &self.comm,
            "the attention's sizes",
            &sizes,
            self.check(shape),
        )
    }

    /// Checks a local shape: `Nq = Nk =` this rank's positions, pieces
    /// that fit one MPI message.
    pub fn check(&self, shape: &AttnShape) -> Result<(), DistError> {
        shape.validate().map_err(DistError::Kernel)?;
        let local = self.layout.local_len(self.comm.rank());
        if shape.len_q != local || shape.len_k != local {
            return Err(DistError::Shape(format!(
                "rank {} holds {local} of {} positions, but its q has {} and its k {}",
                self.comm.rank(),
                self.layout.len(),
                shape.len_q,
                shape.len_k
            )));
        }
        if self.layout.max_local_len() * shape.head_dim >= i32::MAX as usize {
            return Err(DistError::Shape(format!(
                "a ring piece of {} positions × {} would exceed one MPI message (2^31 values): use more ranks",
                self.layout.max_local_len(),
                shape.head_dim
            )));
        }
        Ok(())
    }

    fn slice(&self, shape: &AttnShape) -> Slice {
        Slice {
            d: shape.head_dim,
            local: shape.len_q,
            m: shape.batch * shape.heads_kv,
            group: shape.heads_q / shape.heads_kv,
            slot: self.layout.max_local_len() * shape.head_dim,
            heads_q: shape.heads_q,
            heads_kv: shape.heads_kv,
        }
    }

    fn ring(&self) -> (usize, usize, usize) {
        (self.comm.rank(), self.comm.size(), self.steps.len() - 1)
    }

    /// The rank whose block this rank holds at ring step `s`.
    fn held_at(&self, s: usize) -> usize {
        let (r, p, _) = self.ring();
        (r + p - s % p) % p
    }

    /// Waits until piece `g` of every lane has arrived and piece `g − 1`
    /// has left (its slot is then free), counting the wait as exposed.
    fn ready(&self, lanes: &mut [Lane], g: usize, timing: &mut Timing) {
        let wait = Instant::now();
        for lane in lanes.iter_mut() {
            lane.arrive(&self.comm, g);
            if g > 0 {
                lane.release(&self.comm, g - 1);
            }
        }
        timing.exposed += wait.elapsed();
    }

    /// Transfers of the key/value ring: every step's block, plus the way
    /// home when the ring runs every step.
    fn kv_hops(&self) -> usize {
        let (_, p, last) = self.ring();
        if p > 1 && last + 1 == p {
            p
        } else {
            last
        }
    }

    /// Before the work on piece `g` (of `m` per block) at step `s`: waits
    /// until it has arrived and the piece before it has left, then sends it
    /// on and starts receiving the next block's piece into the slot just
    /// freed (while the ring has hops left).
    fn advance(
        &self,
        lanes: &mut [Lane],
        (s, g, m): (usize, usize, usize),
        d: usize,
        timing: &mut Timing,
    ) {
        self.ready(lanes, g, timing);
        if s < self.kv_hops() {
            let len = self.layout.local_len(self.held_at(s)) * d;
            let len_in = self.layout.local_len(self.held_at(s + 1)) * d;
            for lane in lanes.iter_mut() {
                lane.send(&self.comm, g, len, self.comm.next());
                timing.bytes_sent += len * 4;
                lane.recv(&self.comm, g + m, len_in, self.comm.prev());
            }
        }
    }

    /// Runs the kernels' `work` while the transfers in `inflight` move
    /// ([`Comm::overlap`]), adding its wall time to `timing.compute`.
    fn overlap<R: Send>(
        &self,
        inflight: &mut [Option<Pending>],
        timing: &mut Timing,
        work: impl FnOnce() -> R + Send,
    ) -> R {
        let busy = Instant::now();
        let out = self.comm.overlap(inflight, work);
        timing.compute += busy.elapsed();
        out
    }

    /// Wall time of the key/value ring of `shape` without any work: every
    /// transfer of a forward pass, each waited for at once. With the
    /// forward's [`Timing::exposed`] it gives the share of the transfers
    /// that the kernels hid.
    pub fn time_transfers(&self, shape: &AttnShape) -> Result<Duration, DistError> {
        self.check(shape)?;
        let last = self.steps.len() - 1;
        let x = self.slice(shape);
        let (d, m) = (x.d, x.m);
        let mut kv = [x.zeros(KEYS), x.zeros(VALUES)];
        let mut timing = Timing::default();
        let start = Instant::now();
        for s in 0..=last {
            for plane in 0..m {
                self.advance(&mut kv, (s, s * m + plane, m), d, &mut timing);
            }
        }
        kv.iter_mut().for_each(|lane| lane.settle(&self.comm));
        Ok(start.elapsed())
    }

    /// The kernel for pair `pair` of step `s` on one query plane.
    fn pair_kernel(
        &self,
        shape: &AttnShape,
        scale: f32,
        s: usize,
        pair: Pair,
    ) -> Result<PairKernel, DistError> {
        let mine = self.layout.chunks(self.comm.rank());
        let held = self.layout.chunks(self.held_at(s));
        let (qa, kb) = (mine[pair.a], held[pair.b]);
        let row = |chunks: &[Chunk], i: usize| chunks[..i].iter().map(|c| c.len).sum::<usize>();
        let one = AttnShape {
            batch: 1,
            heads_q: 1,
            heads_kv: 1,
            len_q: qa.len,
            len_k: kb.len,
            head_dim: shape.head_dim,
        };
        let pattern = self
            .pattern
            .clone()
            .with_query_offset(qa.start as i64 - kb.start as i64);
        let att = Attention::new(one, pattern)
            .and_then(|a| a.with_scale(scale))
            .map_err(DistError::Kernel)?;
        Ok((att, qa, row(&mine, pair.a), kb, row(&held, pair.b)))
    }

    /// `(o [B, Hq, L, D], lse [B, Hq, L])` of this rank's queries, from
    /// its `q [B, Hq, L, D]`, `k`, `v [B, Hkv, L, D]` (`shape` says so,
    /// with `Nq = Nk = L`).
    pub fn forward(
        &self,
        shape: &AttnShape,
        scale: f32,
        q: &[f32],
        k: &[f32],
        v: &[f32],
    ) -> Result<(Vec<f32>, Vec<f32>), DistError> {
        let out = self.forward_owned(shape, scale, q, k.to_vec(), v.to_vec())?;
        Ok((out.o, out.lse))
    }

    /// [`forward`](Self::forward) that takes `k` and `v` and gives them
    /// back: the ring runs in their memory, plus one piece per lane.
    pub fn forward_owned(
        &self,
        shape: &AttnShape,
        scale: f32,
        q: &[f32],
        k: Vec<f32>,
        v: Vec<f32>,
    ) -> Result<Forward, DistError> {
        self.check_all(shape, scale)?;
        check_lens(shape, q, &k, &v)?;
        let start = Instant::now();
        let (_, p, last) = self.ring();
        let x = self.slice(shape);
        let (d, local, m) = (x.d, x.local, x.m);
        let hops = self.kv_hops();
        let keep = (hops < p && last > 0).then(|| (k.clone(), v.clone()));
        let mut kv = [x.lane(k, KEYS), x.lane(v, VALUES)];
        let mut o = vec![0.0f32; q.len()];
        let mut lse = vec![f32::NEG_INFINITY; shape.lse_len()];
        let mut timing = Timing {
            steps: last + 1,
            ..Timing::default()
        };
        for s in 0..=last {
            let kernels = self.steps[s]
                .iter()
                .map(|&pair| self.pair_kernel(shape, scale, s, pair))
                .collect::<Result<Vec<_>, _>>()?;
            for plane in 0..m {
                let g = s * m + plane;
                self.advance(&mut kv, (s, g, m), d, &mut timing);
                let heads = x.query_planes(plane);
                let (o_planes, lse_planes) = (
                    &mut o[heads.start * local * d..heads.end * local * d],
                    &mut lse[heads.start * local..heads.end * local],
                );
                let q_planes = &q[heads.start * local * d..heads.end * local * d];
                // SAFETY: piece g has arrived and no receive targets its slot
                // until it is released at the next piece.
                let mut inflight = take_inflight(&mut kv);
                let (k_piece, v_piece) = unsafe { (kv[0].piece(g), kv[1].piece(g)) };
                let result = self.overlap(&mut inflight, &mut timing, || {
                    forward_plane(
                        &kernels,
                        d,
                        local,
                        q_planes,
                        (k_piece, v_piece),
                        o_planes,
                        lse_planes,
                    )
                });
                put_inflight(&mut kv, inflight);
                result?;
            }
        }
        let wait = Instant::now();
        kv.iter_mut().for_each(|lane| lane.settle(&self.comm));
        timing.exposed += wait.elapsed();
        let (k, v) = match keep {
            Some(kept) => kept,
            None => {
                let [k_lane, v_lane] = kv;
                let first = if hops == p { p * m } else { 0 };
                (
                    k_lane.into_vec(&self.comm, first),
                    v_lane.into_vec(&self.comm, first),
                )
            }
        };
        timing.total = start.elapsed();
        *self.timing.lock().unwrap_or_else(|e| e.into_inner()) = timing;
        Ok(Forward { o, lse, k, v })
    }
}

/// What [`RingAttention::forward_owned`] returns: the output and the
/// keys and values it was given.
#[derive(Debug)]
pub struct Forward {
    /// `[B, Hq, L, D]`.
    pub o: Vec<f32>,
    /// `[B, Hq, L]`.
    pub lse: Vec<f32>,
    /// The input `k`, unchanged.
    pub k: Vec<f32>,
    /// The input `v`, unchanged.
    pub v: Vec<f32>,
}

/// Every rank's `setup` must match rank 0's, and every rank's `local`
/// check pass: all ranks take part (a failing rank sends a fingerprint no
/// setup has), so all return an error together instead of waiting on the
/// rank that stopped.
fn agree(
    comm: &Comm,
    what: &str,
    setup: &str,
    local: Result<(), DistError>,
) -> Result<(), DistError> {
    let fingerprint = match local {
        Ok(()) => edifice::fingerprint::of_bytes(&[setup.as_bytes()]),
        Err(_) => u64::MAX,
    };
    let shared = comm.check_same(what, fingerprint);
    local?;
    shared
}

fn check_lens(shape: &AttnShape, q: &[f32], k: &[f32], v: &[f32]) -> Result<(), DistError> {
    if q.len() != shape.q_len() || k.len() != shape.kv_len() || v.len() != shape.kv_len() {
        return Err(DistError::Shape(format!(
            "q, k, v have {}, {}, {} values; {shape:?} needs {}, {}, {}",
            q.len(),
            k.len(),
            v.len(),
            shape.q_len(),
            shape.kv_len(),
            shape.kv_len()
        )));
    }
    Ok(())
}

/// Moves the lanes' requests out, so the main thread can test them while
/// the helper thread reads the lanes' slots.
fn take_inflight<'a>(lanes: impl IntoIterator<Item = &'a mut Lane>) -> Vec<Option<Pending>> {
    lanes
        .into_iter()
        .flat_map(|l| {
            std::mem::take(&mut l.sends)
                .into_iter()
                .chain(std::mem::take(&mut l.recvs))
        })
        .collect()
}

/// Gives the requests [`take_inflight`] took back to the same lanes, in
/// the same order.
fn put_inflight<'a>(lanes: impl IntoIterator<Item = &'a mut Lane>, inflight: Vec<Option<Pending>>) {
    let mut requests = inflight.into_iter();
    for lane in lanes {
        let n = lane.slot_count();
        lane.sends = requests.by_ref().take(n).collect();
        lane.recvs = requests.by_ref().take(n).collect();
    }
}
