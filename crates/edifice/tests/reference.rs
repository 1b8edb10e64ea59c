//! Parity with `python/reference.py`, a PyTorch port written from the spec,
//! for what Edifice itself cannot produce: strict_causal and `sum` DualChunk,
//! sequences long enough for windows and chunks to matter, two LSTM layers.
//! The golden files hold the config, the weights under our names (so they
//! also prove that PyTorch state_dicts load as they are), `x`, `y`, `y_all`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::tensor::{Device, Tensor, TensorData};
use edifice::weights::{self, Values};
use edifice::ModelConfig;

fn max_diff(got: Vec<f32>, want: &Values) -> f32 {
    got.iter()
        .zip(&want.1)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

#[test]
fn models_match_the_pytorch_reference() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/reference");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 6,
        "missing golden files in {}",
        dir.display()
    );
    let device = Device::flex();
    for path in cases {
        let bytes = std::fs::read(&path).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let config = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("config"))
            .expect("config metadata");
        let config = ModelConfig::from_json(config).unwrap();
        let mut tensors: BTreeMap<String, Values> = weights::from_safetensors(&bytes).unwrap();
        let [x, y, y_all] = ["x", "y", "y_all"].map(|k| tensors.remove(k).unwrap());
        let mut model = config.init(&device).unwrap();
        weights::load_tensors(&mut model, tensors)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let x = Tensor::<3>::from_data(TensorData::new(x.1, x.0), &device);
        let last = model.forward(x.clone()).unwrap();
        let all = model.forward_all(x).unwrap();
        assert_eq!(last.dims().to_vec(), y.0);
        assert_eq!(all.dims().to_vec(), y_all.0);
        let (d_last, d_all) = (
            max_diff(last.into_data().try_to_vec().unwrap(), &y),
            max_diff(all.into_data().try_to_vec().unwrap(), &y_all),
        );
        assert!(
            d_last < 1e-4 && d_all < 1e-4,
            "{}: max |diff| last {d_last}, all {d_all}",
            path.display()
        );
    }
}
