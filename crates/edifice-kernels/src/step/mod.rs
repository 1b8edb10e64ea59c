//! One position at a time: the kernels a stream steps a model with.
//!
//! A stream feeds one frame per step and wants one output back in
//! microseconds, so nothing here allocates, spawns a task or takes a lock:
//! buffers are the caller's, made once per stream, and every kernel runs on
//! the calling thread. Weights are read once per step for a whole group of
//! streams ([`Dense::rows`]), and every output element is summed in the same
//! order whatever the group, so a stream's results do not depend on which
//! streams it was stepped with.
//!
//! - [`Dense`]: `y = x·W + b` for up to [`GROUP`] rows at once.
//! - [`Ring`]: rows kept per position, the last `cap` of them; [`KvCache`]
//!   (two rings) and [`attend`]: one query against the keys and values of
//!   earlier positions.
//! - Row forms of the layer kernels: [`crate::layer_norm::row`],
//!   [`crate::gelu::forward_serial`], [`crate::lstm::cell`].

mod attend;
mod dense;
mod ring;

pub use attend::{attend, KeyRange, KvCache};
pub use dense::{Dense, GROUP, PANEL};
pub use ring::Ring;
