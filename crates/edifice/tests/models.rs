//! Model-level properties: every parameter trains, strict causality,
//! equal attention paths, weights round trips, and clear errors.

use burn::tensor::{Device, Tensor, TensorData};
use edifice::layers::{SelfAttentionConfig, SlidingWindowAttentionConfig};
use edifice::models::{
    DualChunkConfig, HybridConfig, RingConfig, ShiftedSparseConfig, SlidingWindowConfig,
    SparsePattern,
};
use edifice::weights;
use edifice::{Model, ModelConfig};

fn random<const D: usize>(dims: [usize; D], seed: u32, device: &Device) -> Tensor<D> {
    let n = dims.iter().product();
    Tensor::from_data(
        TensorData::new(edifice_kernels::reference::uniform(n, seed), dims),
        device,
    )
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Small configs of every model, dropout on (so training-mode paths run).
fn small_models() -> Vec<ModelConfig> {
    vec![
        ModelConfig::DualChunk(
            DualChunkConfig::new(12)
                .with_hidden_size(16)
                .with_num_heads(2)
                .with_num_layers(2)
                .with_chunk_size(4)
                .with_seq_len(Some(8)),
        ),
        ModelConfig::DualChunk(
            DualChunkConfig::new(16)
                .with_hidden_size(16)
                .with_num_heads(4)
                .with_num_layers(1)
                .with_chunk_size(2)
                .with_seq_len(Some(8))
                .with_strict_causal(true),
        ),
        ModelConfig::SlidingWindow(
            SlidingWindowConfig::new(12)
                .with_window_size(4)
                .with_num_heads(2)
                .with_head_dim(4)
                .with_ffn_dim(16)
                .with_seq_len(Some(9)),
        ),
        ModelConfig::Hybrid(
            HybridConfig::new(12)
                .with_lstm_hidden(8)
                .with_lstm_layers(2)
                .with_num_heads(2)
                .with_head_dim(4)
                .with_window_size(6),
        ),
        ModelConfig::HybridMlp(
            HybridConfig::new_mlp(12)
                .with_lstm_hidden(8)
                .with_num_heads(2)
                .with_head_dim(4)
                .with_window_size(6)
                .with_mlp_sizes(vec![8, 5]),
        ),
        ModelConfig::Ring(
            RingConfig::new(12)
                .with_hidden_size(16)
                .with_num_heads(2)
                .with_num_layers(2)
                .with_window_size(8),
        ),
        ModelConfig::ShiftedSparse(
            ShiftedSparseConfig::new(12)
                .with_hidden_size(16)
                .with_num_heads(4)
                .with_num_layers(2)
                .with_seq_len(24)
                .with_local_window(3)
                .with_global_tokens(2),
        ),
        ModelConfig::ShiftedSparse(
            ShiftedSparseConfig::new(12)
                .with_hidden_size(16)
                .with_num_heads(4)
                .with_num_layers(1)
                .with_seq_len(16)
                .with_pattern(SparsePattern::Shifted),
        ),
    ]
}

#[test]
fn every_parameter_gets_a_finite_nonzero_gradient() {
    let device = Device::flex().autodiff();
    for config in small_models() {
        let mut model = config.init(&device).unwrap();
        let (t, e) = config.input_dims();
        let y = model.forward(random([3, t, e], 7, &device)).unwrap();
        assert_eq!(y.dims(), [3, config.output_size()], "{}", config.name());
        let r = random([3, config.output_size()], 9, &device);
        let grads = y.mul(r).sum().backward();
        for (name, grad) in weights::gradients(&mut model, &grads) {
            let grad =
                grad.unwrap_or_else(|| panic!("{}: `{name}` got no gradient", config.name()));
            assert!(
                grad.iter().all(|g| g.is_finite()),
                "{}: `{name}` has a non-finite gradient",
                config.name()
            );
            assert!(
                grad.iter().any(|&g| g != 0.0),
                "{}: `{name}` has an all-zero gradient",
                config.name()
            );
        }
    }
}

/// Output rows `0..=t` of `forward_all` before and after changing frames `> t`.
fn prefix_change(config: DualChunkConfig, t: usize) -> f32 {
    let device = Device::flex();
    let model = config.init(&device).unwrap();
    let (len, e) = (config.seq_len(), config.embed_dim);
    let x = random([2, len, e], 1, &device);
    let future = random([2, len - t - 1, e], 2, &device);
    let y = x.clone().slice_assign([0..2, t + 1..len, 0..e], future);
    let a = values(model.forward_all(x).unwrap().narrow(1, 0, t + 1));
    let b = values(model.forward_all(y).unwrap().narrow(1, 0, t + 1));
    max_diff(&a, &b)
}

#[test]
fn strict_causal_dual_chunk_ignores_the_future_and_edifice_mode_does_not() {
    let config = DualChunkConfig::new(8)
        .with_hidden_size(16)
        .with_num_heads(2)
        .with_num_layers(2)
        .with_chunk_size(4)
        .with_seq_len(Some(16));
    for t in [0, 2, 5, 9, 14] {
        assert_eq!(
            prefix_change(config.clone().with_strict_causal(true), t),
            0.0,
            "t = {t}"
        );
        assert_eq!(
            prefix_change(
                config
                    .clone()
                    .with_strict_causal(true)
                    .with_combine(edifice::layers::Combine::Sum),
                t
            ),
            0.0
        );
    }
    // Edifice's computation leaks the rest of a token's chunk (t = 5 sits mid-chunk).
    assert!(prefix_change(config, 5) > 1e-4);
}

#[test]
fn chunked_and_memory_efficient_attention_equal_plain() {
    let device = Device::flex();
    let x = random([2, 37, 12], 3, &device);
    for (causal, qk, rope) in [
        (true, false, false),
        (false, true, true),
        (true, true, true),
    ] {
        let plain = SelfAttentionConfig::new(12)
            .with_hidden_size(16)
            .with_num_heads(2)
            .with_causal(causal)
            .with_qk_layernorm(qk)
            .with_rope(rope);
        let layer = plain.init(&device).unwrap();
        let want = values(layer.forward(x.clone()).unwrap());
        for chunk in [1, 5, 16, 64] {
            let mut chunked = plain
                .clone()
                .with_chunked(true)
                .with_chunk_size(chunk)
                .init(&device)
                .unwrap();
            chunked.qkv = layer.qkv.clone();
            chunked.output = layer.output.clone();
            assert!(max_diff(&values(chunked.forward(x.clone()).unwrap()), &want) < 1e-5);
        }
        let mut memeff = plain
            .clone()
            .with_memory_efficient(true)
            .init(&device)
            .unwrap();
        memeff.qkv = layer.qkv.clone();
        memeff.output = layer.output.clone();
        assert!(max_diff(&values(memeff.forward(x.clone()).unwrap()), &want) < 1e-5);
    }
    let window = SlidingWindowAttentionConfig::new(12)
        .with_window_size(6)
        .with_num_heads(2)
        .with_head_dim(8);
    let layer = window.init(&device).unwrap();
    let want = values(layer.forward(x.clone()).unwrap());
    let mut chunked = window
        .clone()
        .with_chunked(true)
        .with_chunk_size(7)
        .init(&device)
        .unwrap();
    chunked.qkv = layer.qkv.clone();
    assert!(max_diff(&values(chunked.forward(x).unwrap()), &want) < 1e-5);
}

#[test]
fn weights_round_trip_through_safetensors() {
    let device = Device::flex();
    for config in small_models() {
        let mut model = config.init(&device).unwrap();
        let bytes = weights::to_safetensors(&weights::tensors(&mut model)).unwrap();
        let mut fresh = config.init(&device).unwrap();
        weights::load_tensors(&mut fresh, weights::from_safetensors(&bytes).unwrap()).unwrap();
        let (t, e) = config.input_dims();
        let x = random([2, t, e], 5, &device);
        let (a, b) = (
            values(model.forward(x.clone()).unwrap()),
            values(fresh.forward(x).unwrap()),
        );
        assert_eq!(a, b, "{}", config.name());
    }
}

#[test]
fn loading_reports_every_missing_extra_and_misshapen_tensor() {
    let device = Device::flex();
    let config = &small_models()[0];
    let mut model = config.init(&device).unwrap();
    let mut tensors = weights::tensors(&mut model);
    tensors.remove("final_norm.weight");
    tensors.insert("blocks.0.attn.gate".into(), (vec![3, 3], vec![0.0; 9]));
    tensors.insert("stray".into(), (vec![1], vec![0.0]));
    let err = weights::load_tensors(&mut model, tensors)
        .unwrap_err()
        .to_string();
    for needle in [
        "missing tensor `final_norm.weight`",
        "`blocks.0.attn.gate` has shape [3, 3], expected [2, 8]",
        "unexpected tensor `stray`",
    ] {
        assert!(err.contains(needle), "{err}");
    }
    assert!(weights::from_safetensors(b"not a safetensors file").is_err());
}

#[test]
fn bad_configs_and_inputs_are_errors() {
    let device = Device::flex();
    let config_err = |c: ModelConfig| c.validate().unwrap_err().to_string();
    // Edifice's own DualChunk defaults: length 60 with chunk 64.
    assert!(config_err(ModelConfig::DualChunk(
        DualChunkConfig::new(8).with_seq_len(Some(60))
    ))
    .contains("not a multiple of chunk_size"));
    assert!(config_err(ModelConfig::DualChunk(
        DualChunkConfig::new(8)
            .with_hidden_size(30)
            .with_num_heads(4)
    ))
    .contains("divisible"));
    assert!(
        config_err(ModelConfig::Ring(RingConfig::new(8).with_window_size(10)))
            .contains("num_chunks")
    );
    assert!(
        config_err(ModelConfig::Ring(RingConfig::new(8).with_dropout(1.0))).contains("dropout")
    );
    assert!(
        config_err(ModelConfig::SlidingWindow(SlidingWindowConfig::new(0))).contains("embed_dim")
    );
    assert!(config_err(ModelConfig::Hybrid(
        HybridConfig::new(8).with_lstm_layers(0)
    ))
    .contains("lstm_layers"));
    let err = config_err(ModelConfig::ShiftedSparse(
        ShiftedSparseConfig::new(8)
            .with_stride(Some(10))
            .with_local_window(4),
    ));
    assert!(
        err.contains("first uncovered offset 4") && err.contains("allow_uncovered"),
        "{err}"
    );
    assert!(ShiftedSparseConfig::new(8)
        .with_stride(Some(10))
        .with_allow_uncovered(true)
        .validate()
        .is_ok());
    let recommended = SlidingWindowConfig::recommended_defaults(16);
    assert_eq!(
        (
            recommended.window_size,
            recommended.num_heads,
            recommended.head_dim
        ),
        (60, 4, 64)
    );
    assert_eq!(
        (
            recommended.num_layers,
            recommended.dropout,
            recommended.output_size()
        ),
        (2, 0.1, 256)
    );
    // Defaults as Edifice documents them are valid.
    assert!(DualChunkConfig::new(287).validate().is_ok());

    let model: Model = ModelConfig::Ring(
        RingConfig::new(8)
            .with_hidden_size(16)
            .with_num_layers(1)
            .with_window_size(8),
    )
    .init(&device)
    .unwrap();
    let err = model
        .forward(random([1, 8, 9], 1, &device))
        .unwrap_err()
        .to_string();
    assert!(err.contains("[batch, time, 8]"), "{err}");
    let err = model
        .forward(random([1, 7, 8], 1, &device))
        .unwrap_err()
        .to_string();
    assert!(err.contains("seq_len 8"), "{err}");

    for (text, needle) in [
        (
            "model = \"dual_chunk\"\nembed_dim = 8\nchunk_sz = 4",
            "unknown option",
        ),
        ("model = \"dual\"\nembed_dim = 8", "unknown model"),
        ("embed_dim = 8", "needs a `model` key"),
        ("model = \"ring\"", "embed_dim"),
        (
            "model = \"ring\"\nembed_dim = 8\nnum_heads = \"four\"",
            "bad options",
        ),
        (
            "model = \"hybrid\"\nembed_dim = 8\nmlp_sizes = [4]",
            "hybrid_mlp",
        ),
        ("model = [", "not valid TOML"),
    ] {
        let err = ModelConfig::from_toml(text).unwrap_err().to_string();
        assert!(err.contains(needle), "{text:?}: {err}");
    }
    let sparse =
        ModelConfig::from_toml("model = \"shifted_sparse\"\nembed_dim = 8\npattern = \"shifted\"")
            .unwrap();
    assert!(matches!(sparse, ModelConfig::ShiftedSparse(c) if c.pattern == SparsePattern::Shifted));
    let err =
        ModelConfig::from_toml("model = \"shifted_sparse\"\nembed_dim = 8\npattern = \"diagonal\"")
            .unwrap_err();
    assert!(err.to_string().contains("bad options"), "{err}");
    let json = ModelConfig::from_json(r#"{"model": "hybrid_mlp", "embed_dim": 8}"#).unwrap();
    assert_eq!(json.output_size(), 256);
}

/// `forward` (the last timestep, computed for that position alone after the
/// last attention) equals the last row of `forward_all`, in value and in
/// every parameter's gradient. Dropout off, so both paths draw nothing.
#[test]
fn last_timestep_path_equals_the_last_row_of_every_timestep() {
    let device = Device::flex().autodiff();
    let configs = [
        r#"{"model": "dual_chunk", "embed_dim": 6, "hidden_size": 8, "num_heads": 2, "num_layers": 2, "chunk_size": 4, "seq_len": 12, "dropout": 0.0}"#,
        r#"{"model": "sliding_window", "embed_dim": 6, "num_heads": 2, "head_dim": 4, "num_layers": 2, "ffn_dim": 8, "window_size": 5, "seq_len": 12, "dropout": 0.0}"#,
        r#"{"model": "hybrid", "embed_dim": 6, "lstm_hidden": 8, "num_heads": 2, "head_dim": 4, "seq_len": 12, "dropout": 0.0}"#,
        r#"{"model": "hybrid_mlp", "embed_dim": 6, "lstm_hidden": 8, "num_heads": 2, "head_dim": 4, "seq_len": 12, "mlp_sizes": [8, 5], "dropout": 0.0}"#,
        r#"{"model": "ring", "embed_dim": 6, "hidden_size": 8, "num_heads": 2, "num_layers": 2, "num_chunks": 3, "window_size": 12, "dropout": 0.0}"#,
        r#"{"model": "shifted_sparse", "embed_dim": 6, "hidden_size": 8, "num_heads": 2, "num_layers": 2, "seq_len": 12, "dropout": 0.0}"#,
    ];
    for text in configs {
        let config = ModelConfig::from_json(text).unwrap();
        let mut model = config.init(&device).unwrap();
        let (t, e) = config.input_dims();
        let x = random([3, t, e], 21, &device);
        let r = random([3, config.output_size()], 22, &device);
        let run = |model: &mut Model, last_only: bool| {
            let y = if last_only {
                model.forward(x.clone()).unwrap()
            } else {
                let all = model.forward_all(x.clone()).unwrap();
                let [b, t, h] = all.dims();
                all.narrow(1, t - 1, 1).reshape([b, h])
            };
            let grads = y.clone().mul(r.clone()).sum().backward();
            let mut out = vec![values(y)];
            for (name, grad) in weights::gradients(model, &grads) {
                out.push(
                    grad.unwrap_or_else(|| panic!("{}: no gradient for {name}", config.name())),
                );
            }
            out
        };
        let (fast, full) = (run(&mut model, true), run(&mut model, false));
        assert_eq!(fast.len(), full.len());
        for (i, (a, b)) in fast.iter().zip(&full).enumerate() {
            let d = max_diff(a, b);
            assert!(
                d < 1e-5,
                "{}: tensor {i} (0 = output) differs by {d}",
                config.name()
            );
        }
    }
}

/// The registry is the one list of models: an unknown name's error and the
/// CLI's help name every registered model, and each model's example config
/// parses to a config of that model whose length key sets its length.
#[test]
fn the_registry_lists_every_model_once() {
    use edifice::models::{model_info, models_help, MODELS};
    let err = ModelConfig::from_toml("model = \"nope\"\nembed_dim = 4\n")
        .unwrap_err()
        .to_string();
    let help = models_help();
    for info in MODELS {
        assert!(err.contains(info.name), "{err}");
        assert!(help.contains(info.name), "{help}");
        assert_eq!(model_info(info.name), Some(info));
        let config = ModelConfig::from_json(info.example).unwrap();
        assert_eq!(config.info(), info);
        let longer = config.with_seq_len(24);
        assert_eq!(longer.input_dims().0, 24);
        assert_eq!(longer.to_value()[info.length_key], 24);
    }
    let names: std::collections::BTreeSet<_> = MODELS.iter().map(|m| m.name).collect();
    assert_eq!(names.len(), MODELS.len());
}
