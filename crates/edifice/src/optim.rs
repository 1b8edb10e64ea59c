//! AdamW whose update runs as one fused pass per parameter tensor
//! ([`edifice_kernels::adamw`]) instead of burn's composed tensor
//! operations (about fifteen passes and as many temporaries per tensor).
//!
//! Same update, hyper-parameters, defaults and optimizer state as burn's
//! `AdamWConfig` without its AMSGrad and cautious-decay options: the state
//! is burn's `AdamWState`, so a checkpoint written with either resumes with
//! the other. [`AdamWConfig::init`] returns burn's `ModuleOptimizer`, used
//! as any other (learning rate per step, gradient clipping).

use burn::config::Config;
use burn::grad_clipping::GradientClippingConfig;
use burn::optim::{AdamWState, AdaptiveMomentumState, LearningRate, ModuleOptimizer, Optimizer};
use burn::tensor::{Device, Tensor, TensorData};
use edifice_kernels::adamw;

/// AdamW's options, with burn's defaults.
#[derive(Config, Debug)]
pub struct AdamWConfig {
    /// First-moment decay.
    #[config(default = 0.9)]
    pub beta_1: f32,
    /// Second-moment decay.
    #[config(default = 0.999)]
    pub beta_2: f32,
    /// Added to the root of the second moment.
    #[config(default = 1e-5)]
    pub epsilon: f32,
    /// Decoupled weight decay.
    #[config(default = 1e-4)]
    pub weight_decay: f32,
    /// Gradient clipping before the update.
    pub grad_clipping: Option<GradientClippingConfig>,
}

impl AdamWConfig {
    /// The optimizer for a module.
    pub fn init(&self) -> ModuleOptimizer {
        let optim = ModuleOptimizer::from(AdamW {
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            epsilon: self.epsilon,
            weight_decay: self.weight_decay,
        });
        match &self.grad_clipping {
            Some(clip) => optim.with_grad_clipping(clip.init()),
            None => optim,
        }
    }
}

/// The per-tensor update burn's `ModuleOptimizer` drives.
#[derive(Clone, Debug)]
struct AdamW {
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    weight_decay: f32,
}

/// A tensor's values, shape and device.
fn parts<const D: usize>(t: Tensor<D>) -> (Vec<f32>, [usize; D], Device) {
    let (dims, device) = (t.dims(), t.device());
    let values = t
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("converted to f32");
    (values, dims, device)
}

fn from_parts<const D: usize>(values: Vec<f32>, dims: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values, dims), device)
}

impl Optimizer for AdamW {
    type State<const D: usize> = AdamWState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let (mut param, dims, device) = parts(tensor);
        let (grad, ..) = parts(grad);
        let (time, mut m, mut v) = match state {
            Some(s) => {
                let s = s.momentum;
                (s.time + 1, parts(s.moment_1).0, parts(s.moment_2).0)
            }
            None => (1, vec![0.0; param.len()], vec![0.0; param.len()]),
        };
        let hyper = adamw::AdamW {
            lr,
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            epsilon: self.epsilon,
            weight_decay: self.weight_decay,
            time: i32::try_from(time).unwrap_or(i32::MAX),
        };
        // Shapes come from burn's own parameter/gradient pairing, and a
        // state from this optimizer for this parameter: equal lengths.
        adamw::step(&hyper, &mut param, &grad, &mut m, &mut v)
            .unwrap_or_else(|e| panic!("adamw on a parameter of shape {dims:?}: {e}"));
        let momentum = AdaptiveMomentumState::new(
            time,
            from_parts(m, dims, &device),
            from_parts(v, dims, &device),
        );
        (
            from_parts(param, dims, &device),
            Some(AdamWState::new(momentum)),
        )
    }

    fn to_device<const D: usize>(mut state: Self::State<D>, device: &Device) -> Self::State<D> {
        state.momentum = state.momentum.to_device(device);
        state
    }
}
