//! A lane of the ring: one kind of block (keys, values or their gradient
//! sums) passing from rank to rank in pieces.
//!
//! A block is `M` pieces (one per `(batch, kv head)` plane) kept in
//! `M + 1` slots: piece `g` (counted over the whole ring, `g = step·M +
//! plane`) lives in slot `g mod (M + 1)`. While a rank works on piece `g`,
//! the next block's piece `g + M` arrives in the slot piece `g − 1` has
//! just left, so the ring needs one extra piece of memory per lane instead
//! of a second block. The lane starts as the rank's own tensor
//! (`[B, Hkv, L, D]`, re-strided in place to slots of the longest rank's
//! rows) and gives it back in its original layout.
//!
//! MPI writes into a slot while the kernels read others, so slots are
//! made from the buffer's pointer, never through the `Vec` while a
//! request is in flight; whoever starts a request finishes it before the
//! slot is touched again (the driver in `ring.rs` keeps that order).

use crate::comm::{Comm, Pending};

/// What travels on a lane: its MPI tag and its name in error messages.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Wire {
    pub tag: i32,
    pub what: &'static str,
}

pub(crate) struct Lane {
    /// Slots `0..pieces`: the rank's own tensor, re-strided in place.
    data: Vec<f32>,
    /// Slot `pieces`, apart, so that adopting a tensor whose rows fill the
    /// slots exactly neither reallocates nor copies it. Only reached
    /// through `extra_ptr`; kept for the memory it owns.
    #[allow(dead_code)]
    extra: Vec<f32>,
    ptr: *mut f32,
    extra_ptr: *mut f32,
    pieces: usize,
    /// Floats per slot: the longest rank's rows.
    slot: usize,
    /// Floats of this rank's own piece.
    own: usize,
    wire: Wire,
    pub(crate) sends: Vec<Option<Pending>>,
    pub(crate) recvs: Vec<Option<Pending>>,
}

// SAFETY: the pointers are into `data` and `extra`, owned by the lane;
// requests are only started and finished on the MPI thread (Comm checks).
unsafe impl Send for Lane {}
unsafe impl Sync for Lane {}

impl Lane {
    /// A lane over `own`, the rank's `pieces` pieces of `own_len` floats
    /// each, in slots of `slot` floats.
    pub(crate) fn adopt(
        mut own: Vec<f32>,
        pieces: usize,
        own_len: usize,
        slot: usize,
        wire: Wire,
    ) -> Lane {
        assert_eq!(
            own.len(),
            pieces * own_len,
            "a lane's tensor is [pieces, own_len]"
        );
        assert!(own_len <= slot);
        if own_len < slot {
            own.resize(pieces * slot, 0.0);
            for p in (0..pieces).rev() {
                own.copy_within(p * own_len..(p + 1) * own_len, p * slot);
            }
        }
        let mut extra = vec![0.0; slot];
        let (ptr, extra_ptr) = (own.as_mut_ptr(), extra.as_mut_ptr());
        Lane {
            data: own,
            extra,
            ptr,
            extra_ptr,
            pieces,
            slot,
            own: own_len,
            wire,
            sends: (0..=pieces).map(|_| None).collect(),
            recvs: (0..=pieces).map(|_| None).collect(),
        }
    }

    /// Slots: pieces + 1.
    pub(crate) fn slot_count(&self) -> usize {
        self.pieces + 1
    }

    fn index(&self, g: usize) -> usize {
        g % (self.pieces + 1)
    }

    /// The first float of slot `i`.
    fn base(&self, i: usize) -> *mut f32 {
        if i < self.pieces {
            // SAFETY: `data` holds `pieces` slots.
            unsafe { self.ptr.add(i * self.slot) }
        } else {
            self.extra_ptr
        }
    }

    /// Piece `g`'s slot.
    ///
    /// # Safety
    /// No receive into that slot may be in flight.
    pub(crate) unsafe fn piece(&self, g: usize) -> &[f32] {
        std::slice::from_raw_parts(self.base(self.index(g)), self.slot)
    }

    /// Piece `g`'s slot, to add into.
    ///
    /// # Safety
    /// No request on that slot may be in flight, and no other reference to
    /// it may live.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn piece_mut(&self, g: usize) -> &mut [f32] {
        std::slice::from_raw_parts_mut(self.base(self.index(g)), self.slot)
    }

    /// Starts sending the first `len` floats of piece `g` to `to`.
    pub(crate) fn send(&mut self, comm: &Comm, g: usize, len: usize, to: usize) {
        let i = self.index(g);
        debug_assert!(self.recvs[i].is_none() && self.sends[i].is_none());
        // SAFETY: the slot stays alive (owned here) and unwritten until
        // `release(g)` finishes the send: the driver writes a slot only
        // after releasing it.
        let buf = unsafe { std::slice::from_raw_parts(self.base(i), len) };
        self.sends[i] = Some(unsafe { comm.isend(buf, to, self.wire.tag, self.wire.what) });
    }

    /// Starts receiving piece `g` (`len` floats) from `from`.
    pub(crate) fn recv(&mut self, comm: &Comm, g: usize, len: usize, from: usize) {
        let i = self.index(g);
        assert!(
            self.recvs[i].is_none() && self.sends[i].is_none(),
            "slot of piece {g} still busy"
        );
        // SAFETY: nothing reads or writes the slot until `arrive(g)`.
        let buf = unsafe { std::slice::from_raw_parts_mut(self.base(i), len) };
        self.recvs[i] = Some(unsafe { comm.irecv(buf, from, self.wire.tag, self.wire.what) });
    }

    /// Waits until piece `g` has arrived.
    pub(crate) fn arrive(&mut self, comm: &Comm, g: usize) {
        let i = self.index(g);
        comm.finish(std::slice::from_mut(&mut self.recvs[i]));
    }

    /// Waits until piece `g` has left (its slot may then be reused).
    pub(crate) fn release(&mut self, comm: &Comm, g: usize) {
        let i = self.index(g);
        comm.finish(std::slice::from_mut(&mut self.sends[i]));
    }

    /// Waits for every request of the lane.
    pub(crate) fn settle(&mut self, comm: &Comm) {
        comm.finish(&mut self.sends);
        comm.finish(&mut self.recvs);
    }

    /// The rank's own pieces back as `[pieces, own_len]`, piece 0 being
    /// piece `first` of the ring.
    pub(crate) fn into_vec(mut self, comm: &Comm, first: usize) -> Vec<f32> {
        self.settle(comm);
        let (pieces, slot, own) = (self.pieces, self.slot, self.own);
        // The pieces sit rotated round the slots, one slot empty. First the
        // cycle through the empty slot: move each piece into place through
        // it until the extra slot is the empty one; then every other cycle
        // of the rotation through the extra slot.
        let at = |p: usize| (first + p) % (pieces + 1);
        // SAFETY (both closures): distinct slots of this lane, nothing in flight.
        let copy = |from: usize, to: usize| unsafe {
            std::ptr::copy_nonoverlapping(self.base(from), self.base(to), slot)
        };
        let mut placed = vec![false; pieces + 1];
        let mut hole = at(pieces);
        while hole != pieces {
            let from = at(hole);
            copy(from, hole);
            placed[hole] = true;
            hole = from;
        }
        for start in 0..pieces {
            if placed[start] {
                continue;
            }
            copy(start, pieces);
            let mut hole = start;
            loop {
                let from = at(hole);
                placed[hole] = true;
                if from == start {
                    copy(pieces, hole);
                    break;
                }
                copy(from, hole);
                hole = from;
            }
        }
        let mut data = std::mem::take(&mut self.data);
        if own < slot {
            for p in 1..pieces {
                data.copy_within(p * slot..p * slot + own, p * own);
            }
        }
        data.truncate(pieces * own);
        data
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        // A panic between starting and finishing a request would leave MPI
        // writing into freed memory: end the job instead.
        if self.sends.iter().chain(&self.recvs).any(Option::is_some) {
            eprintln!(
                "error: a ring lane ({}) was dropped with transfers in flight",
                self.wire.what
            );
            std::process::abort();
        }
    }
}
