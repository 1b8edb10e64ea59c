//! The `ring` model with its sequence spread over the ranks.
//!
//! Every rank holds the whole model and its slice of every sequence
//! ([`Layout`]). The per-position layers (input projection, norms, qkv
//! and output projections, FFN) run on the slice as they are; each
//! attention layer runs as [`RingAttention`] through burn's
//! [`Schedule::Parallel`], forward and backward. The loss lives on the
//! rank that holds the last position (rank 0 in the zig-zag layout); the
//! other ranks differentiate zero times their outputs, so every rank runs
//! every attention layer's backward, in the same order, and the weight
//! gradients are summed across ranks before the update: the same step as
//! one process, up to float summation order.
//!
//! Dropout masks are drawn per local element, so with dropout the ranks
//! train with different (equally random) masks than one process would;
//! without dropout the runs agree.

use std::sync::Arc;

use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::{Int, TensorData};
use edifice::kernel::{AttnGrads, Schedule, SequenceParallel};
use edifice::train::{Classifier, Parallelism, Stats, Target, Trainer};
use edifice::{weights, Error, Model, ModelConfig};
use edifice_kernels::{Attention, Pattern, PatternKind};

use crate::{Comm, DistError, Layout, RingAttention};

/// [`RingAttention`] as burn's sequence-parallel attention.
#[derive(Debug)]
pub struct Parallel(pub RingAttention);

fn dist(e: DistError) -> Error {
    match e {
        DistError::Model(e) => e,
        e => Error::Distributed(e.to_string()),
    }
}

impl SequenceParallel for Parallel {
    fn check(&self, att: &Attention) -> Result<(), Error> {
        if att.pattern() != self.0.pattern() {
            return Err(Error::Distributed(format!(
                "the ring was built for {:?}, not {:?}",
                self.0.pattern(),
                att.pattern()
            )));
        }
        self.0.check(att.shape()).map_err(dist)
    }

    fn forward(
        &self,
        att: &Attention,
        q: &[f32],
        k: &[f32],
        v: &[f32],
    ) -> Result<(Vec<f32>, Vec<f32>), Error> {
        self.0
            .forward(att.shape(), att.scale(), q, k, v)
            .map_err(dist)
    }

    fn backward(
        &self,
        att: &Attention,
        inputs: [&[f32]; 4],
        lse: &[f32],
        d_o: &[f32],
    ) -> Result<AttnGrads, Error> {
        self.0
            .backward(att.shape(), att.scale(), inputs, lse, d_o)
            .map_err(dist)
    }
}

/// A tensor gathered on rank 0: its values, row-major, and its shape.
pub type Gathered<const D: usize> = (Vec<f32>, [usize; D]);

/// The ring model's sequence spread over the ranks of a communicator.
#[derive(Clone, Debug)]
pub struct Spread {
    comm: Arc<Comm>,
    layout: Layout,
    schedule: Schedule,
}

impl Spread {
    /// Spreads `config` (a `ring` model) over `comm`'s ranks.
    pub fn new(comm: Arc<Comm>, config: &ModelConfig) -> Result<Self, DistError> {
        let ModelConfig::Ring(ring) = config else {
            return Err(DistError::Model(Error::Config(format!(
                "a distributed run spreads the `ring` model's sequence over processes, not a `{}`",
                config.name()
            ))));
        };
        let attention = RingAttention::new(
            comm.clone(),
            ring.window_size,
            Pattern::new(PatternKind::Full, true),
        )?;
        Ok(Spread {
            comm,
            layout: attention.layout().clone(),
            schedule: Schedule::Parallel(Arc::new(Parallel(attention))),
        })
    }

    /// The communicator.
    pub fn comm(&self) -> &Arc<Comm> {
        &self.comm
    }

    /// Which positions each rank holds.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The rank that holds the last position, and its local row there.
    pub fn last(&self) -> (usize, usize) {
        self.layout
            .owner(self.layout.len() - 1)
            .expect("sequences are not empty")
    }

    /// `model` with its attention spread over the ranks.
    pub fn model(&self, model: Model) -> Result<Model, DistError> {
        match model {
            Model::Ring(ring) => Ok(Model::Ring(ring.with_schedule(self.schedule.clone()))),
            _ => Err(DistError::Model(Error::Config(
                "only the ring model can be spread".into(),
            ))),
        }
    }

    /// Checks every rank has the same `what` (config, weights, input...)
    /// by its fingerprint.
    pub fn check_same(
        &self,
        what: &str,
        parts: &[&[u8]],
        model: &mut impl weights::Walk,
    ) -> Result<(), DistError> {
        let fingerprint = edifice::fingerprint::fingerprint(parts, model);
        self.comm.check_same(what, fingerprint)
    }

    /// This rank's outputs at every one of its positions, `[B, L, H]`,
    /// from the whole input `x [B, N, E]` (which every rank holds).
    pub fn forward_local(&self, model: &Model, x: Tensor<3>) -> Result<Tensor<3>, DistError> {
        let Model::Ring(ring) = model else {
            return Err(DistError::Model(Error::Config(
                "only the ring model can be spread".into(),
            )));
        };
        let [_, n, _] = x.dims();
        if n != self.layout.len() {
            return Err(DistError::Shape(format!(
                "the model was spread for sequences of {} positions, the input has {n}",
                self.layout.len()
            )));
        }
        let positions: Vec<i64> = self
            .layout
            .positions(self.comm.rank())
            .iter()
            .map(|&p| p as i64)
            .collect();
        let device = x.device();
        let index = Tensor::<1, Int>::from_data(
            TensorData::new(positions.clone(), [positions.len()]),
            &device,
        );
        Ok(ring.backbone.forward(x.select(1, index))?)
    }

    /// The model's output at every position, `[B, N, H]`, on rank 0
    /// (`None` on the others).
    pub fn forward_all(
        &self,
        model: &Model,
        x: Tensor<3>,
    ) -> Result<Option<Gathered<3>>, DistError> {
        let [b, n, _] = x.dims();
        let local = self.forward_local(model, x)?;
        let h = local.dims()[2];
        let parts = self.comm.gather(&values(local)?, "the outputs");
        Ok(parts.map(|parts| (self.layout.gather(&parts, b, h), [b, n, h])))
    }

    /// The model's output at the last position, `[B, H]`, on rank 0.
    pub fn forward_last(
        &self,
        model: &Model,
        x: Tensor<3>,
    ) -> Result<Option<Gathered<2>>, DistError> {
        let b = x.dims()[0];
        let (owner, row) = self.last();
        let local = self.forward_local(model, x)?;
        let h = local.dims()[2];
        let mut last = vec![0.0f32; b * h];
        if self.comm.rank() == owner {
            last = values(local.narrow(1, row, 1))?;
        }
        self.comm.broadcast(&mut last, owner, "the last position");
        Ok((self.comm.rank() == 0).then_some((last, [b, h])))
    }
}

fn values<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, DistError> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| DistError::Shape(format!("cannot read a tensor: {e:?}")))
}

/// Training with the ring model's sequence spread over the ranks: the
/// [`Parallelism`] of a [`Trainer`].
#[derive(Debug)]
pub struct SpreadTraining(pub Spread);

impl SpreadTraining {
    /// Spreads `trainer`'s model over `comm` and checks that every rank
    /// starts from the same run config and weights.
    pub fn install(comm: Arc<Comm>, trainer: &mut Trainer) -> Result<(), DistError> {
        if trainer.run.task.readout != edifice::tasks::Readout::Last {
            return Err(Error::Distributed(
                "spread over ranks, the head reads the last position only (readout = \"last\")"
                    .into(),
            )
            .into());
        }
        if trainer.run.train.class_weights.is_some() {
            return Err(Error::Distributed(
                "class_weights are not supported spread over ranks yet".into(),
            )
            .into());
        }
        let spread = Spread::new(comm, &trainer.run.model)?;
        trainer.model.model = spread.model(trainer.model.model.clone())?;
        let run = trainer.run.to_value().to_string();
        let step = trainer.step.to_le_bytes();
        spread.check_same(
            "the run config, step or weights",
            &[run.as_bytes(), &step],
            &mut trainer.model,
        )?;
        trainer.set_parallelism(Arc::new(SpreadTraining(spread)));
        Ok(())
    }
}

impl Parallelism for SpreadTraining {
    fn loss(
        &self,
        model: &Classifier,
        x: Tensor<3>,
        lengths: Option<&[usize]>,
        y: Target,
        device: &Device,
    ) -> Result<(Tensor<1>, Stats), Error> {
        let t = x.dims()[1];
        if lengths.is_some_and(|l| l.iter().any(|&n| n != t)) {
            return Err(Error::Distributed(
                "sequences of different lengths cannot be spread over ranks yet".into(),
            ));
        }
        let spread = &self.0;
        let (owner, row) = spread.last();
        let local = spread.forward_local(&model.model, x).map_err(dist)?;
        let [b, _, h] = local.dims();
        // The loss, and the accuracy or NaN for a regression head.
        let mut stats = [0.0f64; 2];
        let loss = if spread.comm.rank() == owner {
            let last = local.narrow(1, row, 1).reshape([b, h]);
            let (loss, s) = Trainer::score(model.head.forward(last), y, None, device);
            stats = [s.loss, s.accuracy.unwrap_or(f64::NAN)];
            loss
        } else {
            // Zero times the outputs: no loss here, but every attention
            // layer's backward runs, as the ring needs.
            local.sum().mul_scalar(0.0)
        };
        spread.comm.broadcast(&mut stats, owner, "the loss");
        Ok((
            loss,
            Stats {
                loss: stats[0],
                accuracy: Some(stats[1]).filter(|a| !a.is_nan()),
            },
        ))
    }

    fn reduce(&self, model: &mut Classifier, grads: &mut GradientsParams) -> Result<(), Error> {
        weights::reduce_gradients(model, grads, |flat| {
            self.0.comm.all_reduce_sum(flat, "the weight gradients");
            Ok(())
        })
    }
}
