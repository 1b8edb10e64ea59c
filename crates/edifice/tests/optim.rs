//! The fused AdamW against burn's composed AdamW: same parameters after
//! several steps, with weight decay and gradient clipping.

use burn::grad_clipping::GradientClippingConfig;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use edifice::layers::{dense, Linear};

fn device() -> Device {
    Device::flex().autodiff()
}

/// Five steps of `optim` on a dense layer from a fixed start, returning the
/// weights and bias.
fn train(mut optim: ModuleOptimizer, start: &Linear) -> Vec<f32> {
    let mut layer = start.clone();
    for step in 0..5u32 {
        let x = Tensor::<2>::from_data(
            TensorData::new(edifice_kernels::reference::uniform(6 * 5, step), [6, 5]),
            &device(),
        );
        let y = layer.forward(x);
        let loss = y.clone().mul(y).mean();
        let grads = GradientsParams::from_grads(loss.backward(), &layer);
        layer = optim.step(0.05, layer, grads);
    }
    let mut out: Vec<f32> = layer.weight.val().into_data().try_to_vec().unwrap();
    out.extend(layer.bias.val().into_data().try_to_vec::<f32>().unwrap());
    out
}

#[test]
fn fused_adamw_matches_burns() {
    let start = dense(5, 3, &device());
    for clip in [None, Some(GradientClippingConfig::Norm(0.1))] {
        let ours = edifice::optim::AdamWConfig::new()
            .with_weight_decay(0.3)
            .with_grad_clipping(clip.clone())
            .init();
        let burns = burn::optim::AdamWConfig::new()
            .with_weight_decay(0.3)
            .with_grad_clipping(clip.clone())
            .init();
        let (a, b) = (train(ours, &start), train(burns, &start));
        let before: Vec<f32> = start.weight.val().into_data().try_to_vec().unwrap();
        assert!(
            a.iter().zip(&before).any(|(x, y)| (x - y).abs() > 1e-3),
            "the steps moved the weights"
        );
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                (x - y).abs() < 1e-6,
                "clip {clip:?}: [{i}] {x} vs burn's {y}"
            );
        }
    }
}
