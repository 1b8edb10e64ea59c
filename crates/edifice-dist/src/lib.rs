//! Sequence-parallel exact attention over MPI: each rank holds a slice of
//! the sequence, keys and values travel round a ring (Liu et al., 2023,
//! "Ring Attention with Blockwise Transformers"), and the ring model
//! trains with its sequence spread over processes and machines.
//!
//! * [`layout`]: which positions each rank holds (zig-zag for causal
//!   balance, contiguous for windows), any sequence length.
//! * [`ring`]: [`RingAttention`], the forward and backward passes on
//!   slices, overlapped with the transfers, steps nobody reads skipped.
//! * [`comm`]: the MPI world with a deadline on every exchange.
//! * [`launch`]: starting `mpirun` jobs with a deadline (tests, benchmarks).
//! * [`model`]: the `ring` model run and trained sequence-parallel.
//!
//! # Cost model
//! With `L` positions per rank, `H` heads of dim `D` (`Hkv` key/value
//! heads), batch `B`, a causal zig-zag ring step computes two chunk pairs,
//! `L²/2` (query, key) pairs per head, at `4·D` flops each, while the next
//! block's keys and values move:
//!
//! ```text
//! compute per step  F = 2·B·H·D·L²        flops      at R flop/s per rank
//! transfer per step T = 8·B·Hkv·D·L       bytes (f32 k and v) at W bytes/s
//! hidden when F/R ≥ T/W  ⇔  L ≥ 4·(Hkv/H)·R/W
//! ```
//!
//! independent of `B` and `D`. The README has the figures for 25 Gb/s
//! Ethernet and InfiniBand.

pub mod comm;
mod lane;
pub mod launch;
pub mod layout;
pub mod model;
mod pairs;
pub mod ring;

pub use comm::Comm;
pub use layout::{Layout, LayoutKind};
pub use ring::RingAttention;

/// What can go wrong in a distributed run (a timeout ends the job
/// instead: see [`comm`]).
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// MPI could not start.
    #[error("MPI: {0}")]
    Init(String),
    /// Ranks started with different configurations.
    #[error("ranks disagree: {0}")]
    Mismatch(String),
    /// A pattern the ring cannot spread.
    #[error("pattern: {0}")]
    Pattern(String),
    /// Slices of the wrong size.
    #[error("shape: {0}")]
    Shape(String),
    /// The kernel refused a block pair.
    #[error(transparent)]
    Kernel(edifice_kernels::KernelError),
    /// The model refused its configuration or input.
    #[error(transparent)]
    Model(#[from] edifice::Error),
}
