//! Rows kept per position: position `p` in slot `p mod cap`, so a ring
//! holds the last `cap` positions written. A stream's keys, values and
//! carried states are rings.

/// `cap` slots of `width` values, zeroed at first.
#[derive(Clone, Debug, PartialEq)]
pub struct Ring {
    cap: usize,
    width: usize,
    data: Vec<f32>,
}

impl Ring {
    /// A zeroed ring of `slots` (at least one) slots of `width` values.
    pub fn new(slots: usize, width: usize) -> Self {
        let cap = slots.max(1);
        Self {
            cap,
            width,
            data: vec![0.0; cap * width],
        }
    }

    /// Slots.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Values per slot.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The slot of position `pos`.
    #[inline]
    pub fn slot(&self, pos: u64) -> usize {
        (pos % self.cap as u64) as usize
    }

    /// The row of slot `slot` (not a position).
    #[inline]
    pub fn at_slot(&self, slot: usize) -> &[f32] {
        &self.data[slot * self.width..(slot + 1) * self.width]
    }

    /// The row of position `pos` (the slot's current content).
    pub fn row(&self, pos: u64) -> &[f32] {
        self.at_slot(self.slot(pos))
    }

    /// The row of position `pos`, to write.
    pub fn row_mut(&mut self, pos: u64) -> &mut [f32] {
        let slot = self.slot(pos);
        &mut self.data[slot * self.width..(slot + 1) * self.width]
    }

    /// Copies the row of position `from` into that of `to` (the same slot:
    /// nothing to do).
    pub fn copy(&mut self, from: u64, to: u64) {
        let (src, dst) = (self.slot(from) * self.width, self.slot(to) * self.width);
        if src != dst {
            self.data.copy_within(src..src + self.width, dst);
        }
    }

    /// Every slot, for snapshots.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// Every slot, to restore a snapshot or clear the ring.
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }
}
