//! Edifice's attention models on burn (Flex CPU backend).
#![warn(missing_docs)]

pub mod data;
pub mod fingerprint;
pub mod functional;
pub mod kernel;
pub mod layers;
pub mod models;
pub mod optim;
pub mod stream;
pub mod tasks;
pub mod train;
pub mod weights;

pub use models::{Model, ModelConfig};

/// Everything that can go wrong with user input.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An invalid model or layer configuration.
    #[error("invalid config: {0}")]
    Config(String),
    /// A tensor of the wrong shape.
    #[error("shape error: {0}")]
    Shape(String),
    /// The attention kernel refused its inputs.
    #[error(transparent)]
    Kernel(#[from] edifice_kernels::KernelError),
    /// Missing, extra or misshapen weights.
    #[error("weights: {0}")]
    Weights(String),
    /// A checkpoint that cannot be written, read or resumed.
    #[error("checkpoint {0}")]
    Checkpoint(String),
    /// Training diverged: a loss or a weight is NaN or infinite.
    #[error("training diverged: {0}")]
    Diverged(String),
    /// A stream refused a frame, a rewind or a snapshot (its state is
    /// unchanged).
    #[error("stream: {0}")]
    Stream(String),
    /// A sequence-parallel run failed (`edifice-dist`).
    #[error("distributed: {0}")]
    Distributed(String),
    /// A data file that cannot be read or makes no data set: the message
    /// names the file and, for text formats, the line.
    #[error("data: {0}")]
    Data(String),
}
