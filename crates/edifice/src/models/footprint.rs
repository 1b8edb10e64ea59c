//! How much memory a model will need, known before any of it is allocated.
//!
//! burn initialises parameters lazily, so a freshly built model holds only
//! their shapes. From those we estimate, per model:
//!
//! ```text
//! weights      = 4 bytes · Σ_params numel(p)
//! activations  = 4 bytes · batch · T · Σ_params max_dim(p)
//! ```
//!
//! Every layer's output is at most `batch · T · (its widest dimension)`
//! values and a backward keeps about one such tensor per weight, so the
//! second line is an order-of-magnitude bound, not an exact count. A run
//! whose estimate exceeds the machine's memory is refused with the size
//! named, instead of aborting in the allocator.

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;

use crate::Error;

/// The memory a model needs, from its parameter shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footprint {
    /// Parameters (f32 values).
    pub params: u128,
    /// Activation values per position of one sequence.
    pub per_position: u128,
    /// Positions per sequence.
    pub seq_len: u128,
}

/// What the model will be used for: training also keeps gradients and two
/// AdamW moments per parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// Forward passes only.
    Inference,
    /// Forward, backward and optimizer steps.
    Training,
}

impl Footprint {
    /// The footprint of `model` for sequences of `seq_len` positions.
    pub fn of<M: Module>(model: &M, seq_len: usize) -> Self {
        let mut shapes = Shapes::default();
        model.visit(&mut shapes);
        Self {
            params: shapes.params,
            per_position: shapes.widest,
            seq_len: seq_len as u128,
        }
    }

    /// Estimated bytes for batches of `batch` sequences.
    pub fn bytes(&self, batch: usize, usage: Use) -> u128 {
        let copies = match usage {
            Use::Inference => 1,
            Use::Training => 4,
        };
        4 * (copies * self.params + batch as u128 * self.seq_len * self.per_position)
    }

    /// An error naming the size when the estimate for `batch` sequences
    /// exceeds the machine's memory (see [`machine_memory`]).
    pub fn check(&self, batch: usize, usage: Use, what: &str) -> Result<(), Error> {
        let (need, have) = (self.bytes(batch, usage), machine_memory());
        if need > have as u128 {
            return Err(Error::Config(format!(
                "{what} would need about {} ({} parameters, {} per position of each of {batch} \
                 sequence(s) of {}), more than this machine's {} of memory",
                human(need),
                self.params,
                human(4 * self.per_position),
                self.seq_len,
                human(have as u128)
            )));
        }
        Ok(())
    }
}

/// Sums parameter sizes and widest dimensions without touching any values.
#[derive(Default)]
struct Shapes {
    params: u128,
    widest: u128,
}

impl ModuleVisitor for Shapes {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let shape = param.lazy_shape();
        self.params += shape.num_elements() as u128;
        self.widest += shape.iter().copied().max().unwrap_or(1) as u128;
    }
}

/// Bytes of physical memory (`MemTotal` in `/proc/meminfo`), or 16 GiB
/// where that cannot be read.
pub fn machine_memory() -> u64 {
    let from_proc = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        });
    from_proc.unwrap_or(16 << 30)
}

/// `bytes` in the largest binary unit that keeps it at least 1.
fn human(bytes: u128) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", units[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_in_binary_units() {
        assert_eq!(human(512), "512.0 B");
        assert_eq!(human(3 << 30), "3.0 GiB");
        assert_eq!(human(1148 * (1 << 30)), "1.1 TiB");
    }
}
