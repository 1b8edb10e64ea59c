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
//! One ring step on a rank computes its pairs against one block while the
//! next block moves. With `L` positions per rank, head dim `D`, `H` heads
//! and causal zig-zag balance, a step is about `2·L²·D·H` useful
//! multiply-adds in the forward (two chunk pairs of `L/2 × L/2`... per
//! chunk side, `4·(L/2)²·2` flops per head dim), i.e. `F = 4·L²·D·H`
//! flops, against `T = 2·L·D·H·4` bytes of keys and values sent. At a
//! kernel rate of `R` flop/s and a link of `W` bytes/s the transfer hides
//! when `F / R ≥ T / W`, i.e. `L ≥ 2·R / W`: independent of `D` and `H`.
//! See the README for figures.

pub mod comm;
mod lane;
pub mod launch;
pub mod layout;
pub mod model;
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
