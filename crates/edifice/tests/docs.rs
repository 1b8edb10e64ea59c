//! `docs/weights.md` lists the parameters of every model as the code names
//! them; this test fails when they drift apart. `EDIFICE_BLESS=1 cargo test
//! --test docs` rewrites the file.

use burn::tensor::Device;
use edifice::weights;
use edifice::ModelConfig;

const HEADER: &str = "# Weight names\n\n\
Weights are safetensors files of f32 tensors named as below (PyTorch conventions: `Linear` weight \
`[out, in]` and bias `[out]`; LayerNorm `weight` and `bias`; LSTM `weight_ih_l{n}` `[4U, in]`, \
`weight_hh_l{n}` `[4U, U]`, `bias_ih_l{n}`, `bias_hh_l{n}` with gates in PyTorch's order i, f, g, o). \
`blocks.{i}` / `layers.{i}` / `lstm_norms.{l}` / `mlp.{i}` repeat per block, layer or LSTM layer, counted \
from 0; Edifice counts its layers from 1. The last column says where `edifice convert --from edifice` \
finds each tensor in an Edifice/Axon dump (names under `param/`; ᵀ = transposed from Axon's `[in, out]`); \
`shifted_sparse` has no Edifice counterpart, so its column only shows the names `convert` would look for.\n\n\
Generated from the code by `EDIFICE_BLESS=1 cargo test --release -p edifice --test docs`, for the configs shown.\n";

fn configs() -> Vec<(&'static str, &'static str)> {
    vec![
        (
            "dual_chunk",
            r#"{"model": "dual_chunk", "embed_dim": 32, "hidden_size": 16, "num_heads": 2, "num_layers": 2, "chunk_size": 4, "seq_len": 8}"#,
        ),
        (
            "sliding_window",
            r#"{"model": "sliding_window", "embed_dim": 32, "num_heads": 2, "head_dim": 8, "num_layers": 2, "ffn_dim": 32}"#,
        ),
        (
            "hybrid",
            r#"{"model": "hybrid", "embed_dim": 32, "lstm_hidden": 16, "lstm_layers": 2, "num_heads": 2, "head_dim": 8}"#,
        ),
        (
            "hybrid_mlp",
            r#"{"model": "hybrid_mlp", "embed_dim": 32, "lstm_hidden": 16, "num_heads": 2, "head_dim": 8, "mlp_sizes": [16, 8]}"#,
        ),
        (
            "ring",
            r#"{"model": "ring", "embed_dim": 32, "hidden_size": 16, "num_heads": 2, "num_layers": 2, "window_size": 8}"#,
        ),
        (
            "shifted_sparse",
            r#"{"model": "shifted_sparse", "embed_dim": 32, "hidden_size": 16, "num_heads": 2, "num_layers": 2}"#,
        ),
    ]
}

fn render() -> String {
    let mut out = String::from(HEADER);
    for (name, json) in configs() {
        let config = ModelConfig::from_json(json).unwrap();
        let mut model = config.init(&Device::flex()).unwrap();
        out.push_str(&format!("\n## `{name}`\n\nConfig: `{json}`\n\n"));
        out.push_str(&weights::markdown_table(&weights::entries(&mut model)));
    }
    out
}

#[test]
fn weights_doc_matches_the_code() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/weights.md");
    let want = render();
    if std::env::var_os("EDIFICE_BLESS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "docs/weights.md is out of date; rerun with EDIFICE_BLESS=1"
    );
}
