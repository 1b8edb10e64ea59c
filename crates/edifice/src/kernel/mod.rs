//! The fused kernels of `edifice_kernels` as burn operations, each with its
//! own backward pass under `Autodiff`: attention ([`attention()`], and
//! [`attention_packed`] straight from a fused `qkv` projection), the LSTM
//! recurrence ([`lstm_recurrence`]), [`linear()`], [`layer_norm()`], [`gelu()`]
//! and [`dropout()`].
//!
//! One op, one file: each file holds the op's public function (which checks
//! its inputs and builds the op's plan once), its forward, what it saves for
//! the backward, and its backward, as one [`FusedOp`] implementation. This
//! module holds what every op shares: the burn backend extension (one
//! method per number of inputs), one generic autodiff node and one
//! tracked/untracked helper.
//!
//! # Adding a fused op
//! Write `my_op.rs` with a struct implementing [`FusedOp<N>`] (`N` inputs)
//! and a public function that validates its arguments, builds the struct
//! and calls `apply1`, `apply2` or `apply3`; add `mod my_op;` and its
//! re-export below. Nothing else changes: the same node records it under
//! `Autodiff` and calls its backward.
//!
//! The glue follows burn 0.22.1's backend-extension API: an extension trait
//! implemented for `Flex` (runs the op's forward on the tensors' memory) and
//! for `Autodiff<Flex>` (records a node whose backward calls the op's).

use std::fmt::Debug;
use std::marker::PhantomData;
use std::sync::Arc;

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Dispatch, Flex, TensorMetadata};
use burn::tensor::{Shape, Tensor, TensorData};

use crate::Error;

mod attention;
mod dropout;
mod gelu;
mod layer_norm;
mod linear;
mod lstm;
mod packed;

pub use attention::{attention, AttnGrads, AttnSpec, Schedule, SequenceParallel};
pub use dropout::dropout;
pub use edifice_kernels::linear::WeightLayout;
pub use gelu::gelu;
pub use layer_norm::layer_norm;
pub use linear::linear;
pub use lstm::lstm_recurrence;
pub use packed::{attention_packed, attention_packed_tail};

/// One fused operation of `N` input tensors and one output, on Flex
/// tensors: its forward, what the forward saves, and its backward.
///
/// The struct implementing it is the op's checked plan: built once by the
/// public function after validating the inputs, kept by the autodiff node,
/// and reused by the backward.
pub trait FusedOp<const N: usize>: Debug + Send + Sync + Sized + 'static {
    /// What the forward keeps for the backward.
    type Saved: Debug + Send + Sync + 'static;

    /// The op's name, for the message of an input the plan did not expect.
    const NAME: &'static str;

    /// The output and what the backward needs.
    fn forward(&self, inputs: [FlexTensor; N]) -> Result<(FlexTensor, Self::Saved), Error>;

    /// The gradients of the inputs for the output's gradient `d_out`; only
    /// those `wanted` marks are needed (the others may be `None`).
    fn backward(&self, saved: &Self::Saved, d_out: FlexTensor, wanted: [bool; N]) -> Grads<N>;
}

/// The input gradients an op's backward returns (`None` where not wanted).
pub type Grads<const N: usize> = Result<[Option<FlexTensor>; N], Error>;

/// Unwraps what a checked plan returned. The public functions validate
/// every input before building a plan, so an error here is a bug in the
/// op, reported with its name.
fn planned<T>(name: &str, result: Result<T, Error>) -> T {
    result.unwrap_or_else(|e| panic!("fused {name}: its checked plan refused its inputs: {e}"))
}

/// The extension: fused operations by number of inputs, dispatched to Flex
/// or `Autodiff<Flex>`.
#[backend_extension(Autodiff, Flex)]
pub trait KernelBackend: burn::backend::Backend {
    /// A one-input [`FusedOp`].
    fn fused1<O: FusedOp<1>>(op: O, a: FloatTensor<Self>) -> FloatTensor<Self>;

    /// A two-input [`FusedOp`].
    fn fused2<O: FusedOp<2>>(
        op: O,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// A three-input [`FusedOp`].
    fn fused3<O: FusedOp<3>>(
        op: O,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        c: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// Runs a one-input op on `a`.
fn apply1<O: FusedOp<1>, const D: usize, const E: usize>(op: O, a: Tensor<D>) -> Tensor<E> {
    Tensor::from_dispatch(Dispatch::fused1(op, a.into_dispatch()))
}

/// Runs a two-input op on `a`, `b`.
fn apply2<O: FusedOp<2>, const D: usize, const D2: usize, const E: usize>(
    op: O,
    a: Tensor<D>,
    b: Tensor<D2>,
) -> Tensor<E> {
    Tensor::from_dispatch(Dispatch::fused2(op, a.into_dispatch(), b.into_dispatch()))
}

/// Runs a three-input op on `a`, `b`, `c`.
fn apply3<O: FusedOp<3>, const D: usize, const D2: usize, const D3: usize, const E: usize>(
    op: O,
    a: Tensor<D>,
    b: Tensor<D2>,
    c: Tensor<D3>,
) -> Tensor<E> {
    Tensor::from_dispatch(Dispatch::fused3(
        op,
        a.into_dispatch(),
        b.into_dispatch(),
        c.into_dispatch(),
    ))
}

impl KernelBackend for Flex {
    fn fused1<O: FusedOp<1>>(op: O, a: FlexTensor) -> FlexTensor {
        planned(O::NAME, op.forward([a])).0
    }

    fn fused2<O: FusedOp<2>>(op: O, a: FlexTensor, b: FlexTensor) -> FlexTensor {
        planned(O::NAME, op.forward([a, b])).0
    }

    fn fused3<O: FusedOp<3>>(op: O, a: FlexTensor, b: FlexTensor, c: FlexTensor) -> FlexTensor {
        planned(O::NAME, op.forward([a, b, c])).0
    }
}

impl<C: CheckpointStrategy> KernelBackend for Autodiff<Flex, C> {
    fn fused1<O: FusedOp<1>>(op: O, a: FloatTensor<Self>) -> FloatTensor<Self> {
        recorded::<O, C, 1>(op, [a])
    }

    fn fused2<O: FusedOp<2>>(
        op: O,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        recorded::<O, C, 2>(op, [a, b])
    }

    fn fused3<O: FusedOp<3>>(
        op: O,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        c: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        recorded::<O, C, 3>(op, [a, b, c])
    }
}

type AutodiffFloat<C> = FloatTensor<Autodiff<Flex, C>>;

/// The one tracked/untracked helper: runs `op` on the inputs' values and,
/// when any input tracks gradients, records a [`Node`] that keeps the op
/// and what its forward saved.
fn recorded<O: FusedOp<N>, C: CheckpointStrategy, const N: usize>(
    op: O,
    inputs: [AutodiffFloat<C>; N],
) -> AutodiffFloat<C> {
    let (values, nodes): (Vec<_>, Vec<_>) = inputs.into_iter().map(|t| t.into_parts()).unzip();
    let (values, nodes) = (exactly::<_, N>(values), exactly::<_, N>(nodes));
    match Node::<O>(PhantomData)
        .prepare::<C>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (out, saved) = planned(O::NAME, op.forward(values));
            prep.finish(Arc::new((op, saved)), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(planned(O::NAME, op.forward(values)).0),
    }
}

/// A vector of `N` items as an array (it was built from one).
fn exactly<T, const N: usize>(items: Vec<T>) -> [T; N] {
    items
        .try_into()
        .unwrap_or_else(|v: Vec<T>| unreachable!("{} items for {N}", v.len()))
}

/// The one autodiff node: its state is the op (its plan) and what the
/// forward saved; its backward hands each tracked parent its gradient.
#[derive(Debug)]
struct Node<O>(PhantomData<fn() -> O>);

impl<O: FusedOp<N>, const N: usize> Backward<Flex, N> for Node<O> {
    type State = Arc<(O, O::Saved)>;

    fn backward(
        self,
        ops: Ops<Self::State, N>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let parents = ops.parents.map(|p| p.map(|node| node.id));
        let d_out = grads.consume::<Flex>(&ops.node);
        let (op, saved) = &*ops.state;
        let wanted = parents.map(|p| p.is_some());
        let inputs = planned(O::NAME, op.backward(saved, d_out, wanted));
        for (id, grad) in parents.into_iter().zip(inputs) {
            if let (Some(id), Some(grad)) = (id, grad) {
                grads.register::<Flex>(id, grad);
            }
        }
    }
}

/// The tensor's values as contiguous f32 (a view when they already are).
fn values(t: &FlexTensor) -> Result<std::borrow::Cow<'_, [f32]>, Error> {
    if let Some(s) = t.as_slice::<f32>() {
        return Ok(std::borrow::Cow::Borrowed(s));
    }
    t.to_contiguous()
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map(std::borrow::Cow::Owned)
        .map_err(|e| Error::Shape(format!("cannot read a tensor as f32: {e:?}")))
}

/// A tensor of `shape` holding `data`.
fn tensor(data: Vec<f32>, shape: impl Into<Shape>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, shape))
}

/// A tensor of `x`'s shape holding `data`.
fn like(x: &FlexTensor, data: Vec<f32>) -> FlexTensor {
    tensor(data, x.shape())
}

/// A tensor of `x`'s shape filled by `f(x's values, out)`, an elementwise
/// kernel.
fn elementwise(
    x: &FlexTensor,
    f: impl FnOnce(&[f32], &mut [f32]) -> Result<(), edifice_kernels::KernelError>,
) -> Result<FlexTensor, Error> {
    let xs = values(x)?;
    let mut out = vec![0.0; xs.len()];
    f(&xs, &mut out)?;
    Ok(like(x, out))
}
