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

/// Every registered model with its example config.
fn configs() -> Vec<(&'static str, &'static str)> {
    edifice::models::MODELS
        .iter()
        .map(|m| (m.name, m.example))
        .collect()
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

/// The README's model table has a row for every registered model.
#[test]
fn readme_lists_every_model() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let readme = std::fs::read_to_string(path).unwrap();
    for info in edifice::models::MODELS {
        assert!(
            readme.contains(&format!("| `{}` |", info.name)),
            "README.md has no row for `{}`",
            info.name
        );
    }
}
