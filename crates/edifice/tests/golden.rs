//! Parity with the real Edifice library: every case of
//! `tests/golden/edifice` (outputs of Edifice itself, see its README) goes
//! through the Axon import and our forward pass and must match within 1e-4.

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::tensor::{Bool, Device, Tensor, TensorData};
use edifice::functional::{self, Mask};
use edifice::layers::{
    DualChunkAttention, DualChunkAttentionConfig, SelfAttention, SelfAttentionConfig,
};
use edifice::models::dual_chunk::walk_dual_chunk_attention;
use edifice::weights::{self, Walk, Walker};
use edifice::ModelConfig;

const TOL: f32 = 1e-4;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/edifice")
}

/// Every tensor of a golden file as (shape, f32 values); u8 masks become 0/1.
fn read(case: &str) -> BTreeMap<String, weights::Values> {
    let bytes = std::fs::read(golden_dir().join(format!("{case}.safetensors"))).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = match view.dtype() {
                safetensors::Dtype::F32 => view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                safetensors::Dtype::U8 => view.data().iter().map(|&b| b as f32).collect(),
                other => panic!("{case}: {name} has dtype {other:?}"),
            };
            (name, (view.shape().to_vec(), values))
        })
        .collect()
}

fn device() -> Device {
    Device::flex()
}

fn tensor<const D: usize>(t: &weights::Values) -> Tensor<D> {
    Tensor::from_data(TensorData::new(t.1.clone(), t.0.clone()), &device())
}

fn assert_close<const D: usize>(case: &str, got: Tensor<D>, want: &weights::Values) {
    assert_eq!(got.dims().to_vec(), want.0, "{case}: shape");
    let got: Vec<f32> = got.into_data().try_to_vec().unwrap();
    let worst = got
        .iter()
        .zip(&want.1)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst <= TOL, "{case}: max |ours - edifice| = {worst}");
}

/// Imports the case's Axon parameters into `model`.
fn import(case: &str, golden: &BTreeMap<String, weights::Values>, model: &mut impl Walk) {
    let ours = weights::from_axon(&weights::entries(model), golden)
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    weights::load_tensors(model, ours).unwrap_or_else(|e| panic!("{case}: {e}"));
}

fn model_case(case: &str, config: serde_json::Value) {
    let golden = read(case);
    let config = ModelConfig::from_value(config).unwrap();
    let mut model = config.init(&device()).unwrap();
    import(case, &golden, &mut model);
    let out = model.forward(tensor(&golden["input"])).unwrap();
    assert_close(case, out, &golden["output"]);
}

#[test]
fn dual_chunk_models() {
    let config = serde_json::json!({"model": "dual_chunk", "embed_dim": 32, "hidden_size": 32, "num_heads": 4,
        "num_layers": 2, "chunk_size": 4, "dropout": 0.0, "window_size": 8});
    model_case("dual_chunk_e32_h32_t8_c4", config.clone());
    model_case("dual_chunk_e32_h32_t8_c4_perturbed", config);
}

#[test]
fn sliding_window_model() {
    model_case(
        "sliding_window_e64_t12_w12",
        serde_json::json!({"model": "sliding_window", "embed_dim": 64, "window_size": 12, "num_heads": 4,
            "head_dim": 8, "num_layers": 2, "ffn_dim": 32, "dropout": 0.0}),
    );
}

#[test]
fn ring_model() {
    model_case(
        "ring_e32_h32_t16_nc4",
        serde_json::json!({"model": "ring", "embed_dim": 32, "hidden_size": 32, "num_heads": 4, "num_chunks": 4,
            "num_layers": 2, "dropout": 0.0, "window_size": 16}),
    );
}

#[test]
fn hybrid_models() {
    let base = serde_json::json!({"model": "hybrid", "embed_dim": 16, "lstm_hidden": 16, "lstm_layers": 1,
        "num_heads": 2, "head_dim": 8, "dropout": 0.0, "window_size": 8, "recurrent_initializer": "zeros"});
    model_case("hybrid_zero_h0", base.clone());
    let mut mlp = base;
    mlp["model"] = "hybrid_mlp".into();
    mlp["mlp_sizes"] = serde_json::json!([16, 8]);
    model_case("hybrid_mlp_zero_h0", mlp);
}

struct DualChunkLayer(DualChunkAttention);

impl Walk for DualChunkLayer {
    fn walk(&mut self, w: &mut Walker) {
        walk_dual_chunk_attention(&mut self.0, w, "dual_chunk_attn");
    }
}

#[test]
fn dual_chunk_attention_layer() {
    let case = "dual_chunk_attn_t16";
    let golden = read(case);
    let mut layer = DualChunkLayer(
        DualChunkAttentionConfig::new(32, 32, 4, 8, 4)
            .init(&device())
            .unwrap(),
    );
    import(case, &golden, &mut layer);
    assert_close(
        case,
        layer.0.forward(tensor(&golden["input"])).unwrap(),
        &golden["output"],
    );
}

struct SelfAttentionLayer(SelfAttention);

impl Walk for SelfAttentionLayer {
    fn walk(&mut self, w: &mut Walker) {
        w.linear("qkv", "self_attn_qkv", &mut self.0.qkv);
        w.linear("output", "self_attn_output", &mut self.0.output);
    }
}

#[test]
fn self_attention_layers() {
    for (case, causal, qk_layernorm, rope) in [
        ("fn_self_attention_plain_causal", true, false, false),
        ("fn_self_attention_qkln_noncausal", false, true, false),
        ("fn_self_attention_rope_causal", true, false, true),
    ] {
        let golden = read(case);
        let config = SelfAttentionConfig::new(16)
            .with_hidden_size(16)
            .with_num_heads(2)
            .with_dropout(0.0)
            .with_causal(causal)
            .with_qk_layernorm(qk_layernorm)
            .with_rope(rope);
        let mut layer = SelfAttentionLayer(config.init(&device()).unwrap());
        import(case, &golden, &mut layer);
        assert_close(
            case,
            layer.0.forward(tensor(&golden["input"])).unwrap(),
            &golden["output"],
        );
        // Chunked and memory-efficient paths give the same numbers.
        for (chunked, memory_efficient) in [(true, false), (false, true)] {
            let mut other = SelfAttentionLayer(
                config
                    .clone()
                    .with_chunked(chunked)
                    .with_memory_efficient(memory_efficient)
                    .with_chunk_size(4)
                    .init(&device())
                    .unwrap(),
            );
            import(case, &golden, &mut other);
            assert_close(
                case,
                other.0.forward(tensor(&golden["input"])).unwrap(),
                &golden["output"],
            );
        }
    }
}

fn qkv(golden: &BTreeMap<String, weights::Values>) -> [Tensor<3>; 3] {
    ["q", "k", "v"].map(|n| tensor(&golden[n]))
}

fn bool_mask(t: &weights::Values) -> Tensor<2, Bool> {
    let data: Vec<bool> = t.1.iter().map(|&x| x != 0.0).collect();
    Tensor::from_data(TensorData::new(data, t.0.clone()), &device())
}

fn mask_values(m: Tensor<2, Bool>) -> weights::Values {
    let dims = m.dims().to_vec();
    let data: Vec<bool> = m.into_data().try_to_vec().unwrap();
    (dims, data.into_iter().map(|b| b as u8 as f32).collect())
}

#[test]
fn attention_functions() {
    let g = read("fn_sdpa_nomask");
    let [q, k, v] = qkv(&g);
    assert_close(
        "fn_sdpa_nomask",
        functional::scaled_dot_product_attention(q, k, v, None).unwrap(),
        &g["output"],
    );

    let g = read("fn_sdpa_causal");
    let [q, k, v] = qkv(&g);
    let mask = Mask::Shared(bool_mask(&g["mask"]));
    assert_close(
        "fn_sdpa_causal",
        functional::scaled_dot_product_attention(q, k, v, Some(&mask)).unwrap(),
        &g["output"],
    );

    let g = read("fn_chunked_c4_nomask");
    let [q, k, v] = qkv(&g);
    assert_close(
        "fn_chunked_c4_nomask",
        functional::chunked_attention(q, k, v, 4, None).unwrap(),
        &g["output"],
    );

    let g = read("fn_chunked_c4_causal");
    let [q, k, v] = qkv(&g);
    let mask = Mask::Shared(bool_mask(&g["mask"]));
    assert_close(
        "fn_chunked_c4_causal",
        functional::chunked_attention(q, k, v, 4, Some(&mask)).unwrap(),
        &g["output"],
    );

    for (case, causal) in [
        ("fn_memeff_c4_causal_false", false),
        ("fn_memeff_c4_causal_true", true),
    ] {
        let g = read(case);
        let [q, k, v] = qkv(&g);
        assert_close(
            case,
            functional::memory_efficient_attention(q, k, v, 4, causal).unwrap(),
            &g["output"],
        );
    }
}

#[test]
fn masks_norms_and_positions() {
    let g = read("fn_causal_mask_5");
    assert_eq!(
        mask_values(functional::causal_mask(5, &device())),
        g["output"]
    );
    let g = read("fn_window_mask_8_3");
    assert_eq!(
        mask_values(functional::window_mask(8, 3, &device())),
        g["output"]
    );

    let g = read("fn_qk_layer_norm");
    assert_close(
        "fn_qk_layer_norm",
        functional::qk_layer_norm::<4>(tensor(&g["input"])),
        &g["output"],
    );

    let g = read("fn_add_positional_encoding");
    assert_close(
        "fn_add_positional_encoding",
        functional::add_positional_encoding(tensor(&g["input"]), 0.01),
        &g["output"],
    );

    let g = read("fn_rope_apply_rotary_4d");
    assert_close(
        "rope q",
        functional::rotary(tensor(&g["q"])).unwrap(),
        &g["q_out"],
    );
    assert_close(
        "rope k",
        functional::rotary(tensor(&g["k"])).unwrap(),
        &g["k_out"],
    );
}
