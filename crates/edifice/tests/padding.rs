//! Padding never changes the outputs of real positions: for every model,
//! in every configuration that lets a position read later ones, a batch
//! padded at the end gives the same outputs at real positions whatever the
//! padding holds, and the same as the sequence alone, unpadded.

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use edifice::models::ModelConfig;
use serde_json::{json, Value};

const T: usize = 6;
const E: usize = 2;

/// Every model; the non-causal configurations last.
fn every_model() -> Vec<Value> {
    vec![
        json!({"model": "sliding_window", "num_heads": 1, "head_dim": 4, "num_layers": 1, "ffn_dim": 8}),
        json!({"model": "ring", "hidden_size": 8, "num_heads": 2, "num_layers": 1, "num_chunks": 2}),
        json!({"model": "hybrid", "lstm_hidden": 4, "num_heads": 1, "head_dim": 4}),
        json!({"model": "hybrid_mlp", "lstm_hidden": 4, "num_heads": 1, "head_dim": 4, "mlp_sizes": [6]}),
        json!({"model": "dual_chunk", "hidden_size": 8, "num_heads": 2, "num_layers": 2, "chunk_size": 2, "strict_causal": true}),
        json!({"model": "shifted_sparse", "hidden_size": 8, "num_heads": 2, "num_layers": 1, "local_window": 2, "causal": true}),
        json!({"model": "dual_chunk", "hidden_size": 8, "num_heads": 2, "num_layers": 2, "chunk_size": 2}),
        json!({"model": "shifted_sparse", "hidden_size": 8, "num_heads": 2, "num_layers": 2, "local_window": 2, "causal": false}),
        json!({"model": "shifted_sparse", "hidden_size": 8, "num_heads": 2, "num_layers": 2, "pattern": "shifted", "group_size": 2, "causal": false}),
    ]
}

fn config(model: &Value, seq_len: usize) -> ModelConfig {
    let mut value = model.clone();
    value["embed_dim"] = json!(E);
    ModelConfig::from_value(value)
        .unwrap()
        .with_seq_len(seq_len)
}

/// Deterministic frames in [-1, 1).
fn frames(n: usize, seed: u32) -> Vec<f32> {
    edifice_kernels::reference::uniform(n, seed)
}

fn values(t: Tensor<3>) -> Vec<f32> {
    t.into_data().try_to_vec().unwrap()
}

#[test]
fn padding_never_changes_real_positions() {
    let device = Device::flex();
    let x = frames(2 * T * E, 3);
    for model in every_model() {
        let cfg = config(&model, T);
        let (net, out) = (cfg.init(&device).unwrap(), cfg.output_size());
        // Sequence 0 is whole; sequence 1 has `n` real frames (one short of
        // a chunk or group boundary, and on one).
        for n in [3, 4] {
            let padded = |fill: f32| {
                let mut x = x.clone();
                x[(T + n) * E..].iter_mut().for_each(|v| *v = fill);
                let x = Tensor::<3>::from_data(TensorData::new(x, [2, T, E]), &device);
                values(net.forward_padded(x, &[T, n]).unwrap())
            };
            let (zeros, garbage) = (padded(0.0), padded(9.0));
            let real = |y: &[f32], b: usize| y[(b * T) * out..(b * T + n) * out].to_vec();
            assert_eq!(real(&zeros, 1), real(&garbage, 1), "{model} n {n}");
            assert_eq!(real(&zeros, 0), real(&garbage, 0), "{model} n {n}");
            // The same sequence alone at its own length, where the model
            // takes that length (dual_chunk needs a multiple of its chunk).
            let Ok(short) = config(&model, n).init(&device) else {
                continue;
            };
            let short = short.load_record(net.clone().into_record());
            let alone = Tensor::<3>::from_data(
                TensorData::new(x[T * E..(T + n) * E].to_vec(), [1, n, E]),
                &device,
            );
            let alone = values(short.forward_all(alone).unwrap());
            let diff = alone
                .iter()
                .zip(real(&zeros, 1))
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(diff < 1e-5, "{model} n {n}: {diff}");
        }
    }
}

#[test]
fn bad_lengths_are_errors() {
    let device = Device::flex();
    let net = config(&every_model()[0], T).init(&device).unwrap();
    let x = Tensor::<3>::from_data(TensorData::new(frames(2 * T * E, 1), [2, T, E]), &device);
    for lengths in [&[T][..], &[T, 0], &[T, T + 1], &[T, T, T]] {
        let err = net.forward_padded(x.clone(), lengths).unwrap_err();
        assert!(err.to_string().contains("lengths"), "{err}");
    }
}
