//! The backward pass: the key/value ring again, plus a second ring that
//! carries each block's `dK`, `dV` sums and brings them to the block's
//! owner after the last step (see the parent module's docs).

use std::time::Instant;

use edifice::kernel::AttnGrads;
use edifice_kernels::AttnShape;

use super::{
    check_lens, put_inflight, take_inflight, RingAttention, Timing, KEYS, KEY_GRADIENTS, VALUES,
    VALUE_GRADIENTS,
};
use crate::pairs::{backward_plane, PlaneInputs};
use crate::DistError;

impl RingAttention {
    /// `(dq, dk, dv)` of this rank's slice from its forward's inputs
    /// `[q, k, v, o]`, `lse` and the output's gradient `d_o`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        shape: &AttnShape,
        scale: f32,
        [q, k, v, o]: [&[f32]; 4],
        lse: &[f32],
        d_o: &[f32],
    ) -> Result<AttnGrads, DistError> {
        self.check_all(shape, scale)?;
        check_lens(shape, q, k, v)?;
        if o.len() != q.len() || d_o.len() != q.len() || lse.len() != shape.lse_len() {
            return Err(DistError::Shape(
                "o and dO must be shaped like q, lse [B, Hq, L]".into(),
            ));
        }
        let start = Instant::now();
        let (r, p, last) = self.ring();
        let x = self.slice(shape);
        let (d, local, m) = (x.d, x.local, x.m);
        let mut kv = [x.lane(k.to_vec(), KEYS), x.lane(v.to_vec(), VALUES)];
        let mut sums = [x.zeros(KEY_GRADIENTS), x.zeros(VALUE_GRADIENTS)];
        let mut dq = vec![0.0f32; q.len()];
        let mut timing = Timing {
            steps: last + 1,
            ..Timing::default()
        };
        // The sums of step s go to the next rank, the last step's straight
        // to the block's owner; the final sums come from the rank that
        // held this rank's block last.
        let sums_to = |s: usize| {
            if s < last {
                self.comm.next()
            } else {
                (r + p - last) % p
            }
        };
        let sums_from = |s: usize| {
            if s <= last {
                self.comm.prev()
            } else {
                (r + last) % p
            }
        };
        for s in 0..=last {
            let src = self.held_at(s);
            let kernels = self.steps[s]
                .iter()
                .map(|&pair| self.pair_kernel(shape, scale, s, pair))
                .collect::<Result<Vec<_>, _>>()?;
            for plane in 0..m {
                let g = s * m + plane;
                self.ready(&mut sums, g, &mut timing);
                self.advance(&mut kv, (s, g, m), d, &mut timing);
                if last > 0 {
                    let owner = if s < last { self.held_at(s + 1) } else { r };
                    let len_in = self.layout.local_len(owner) * d;
                    for lane in &mut sums {
                        lane.recv(&self.comm, g + m, len_in, sums_from(s + 1));
                    }
                }
                let heads = x.query_planes(plane);
                let rows = heads.start * local * d..heads.end * local * d;
                let inputs = PlaneInputs {
                    q: &q[rows.clone()],
                    o: &o[rows.clone()],
                    d_o: &d_o[rows.clone()],
                    lse: &lse[heads.start * local..heads.end * local],
                };
                let dq_planes = &mut dq[rows];
                // SAFETY: piece g of every lane has arrived and been released
                // by no one; nothing else touches these slots until the next
                // piece releases them.
                let mut inflight = take_inflight(kv.iter_mut().chain(&mut sums));
                let (k_piece, v_piece, dk_sum, dv_sum) = unsafe {
                    (
                        kv[0].piece(g),
                        kv[1].piece(g),
                        sums[0].piece_mut(g),
                        sums[1].piece_mut(g),
                    )
                };
                let result = self.overlap(&mut inflight, &mut timing, || {
                    backward_plane(
                        &kernels,
                        d,
                        local,
                        inputs,
                        (k_piece, v_piece),
                        dq_planes,
                        (dk_sum, dv_sum),
                    )
                });
                put_inflight(kv.iter_mut().chain(&mut sums), inflight);
                result?;
                if last > 0 {
                    let len = self.layout.local_len(src) * d;
                    for lane in &mut sums {
                        lane.send(&self.comm, g, len, sums_to(s));
                        timing.bytes_sent += len * 4;
                    }
                }
            }
        }
        let wait = Instant::now();
        kv.iter_mut()
            .chain(&mut sums)
            .for_each(|lane| lane.settle(&self.comm));
        let own = if last > 0 { (last + 1) * m } else { 0 };
        let [dk_lane, dv_lane] = sums;
        let (dk, dv) = (
            dk_lane.into_vec(&self.comm, own),
            dv_lane.into_vec(&self.comm, own),
        );
        timing.exposed += wait.elapsed();
        timing.total = start.elapsed();
        *self.timing.lock().unwrap_or_else(|e| e.into_inner()) = timing;
        Ok((dq, dk, dv))
    }
}
