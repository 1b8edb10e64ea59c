//! Every data format `edifice train --data` reads gives the same data set
//! from the sample files of `python/make_data_samples.py` (committed in
//! tests/data/), and a truncated or altered file is one error naming it.

use std::path::PathBuf;

use edifice::data::{Dataset, Targets};

fn sample(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data")
        .join(name)
}

fn labels(d: &Dataset) -> Vec<usize> {
    match &d.y {
        Targets::Classes { labels, .. } => labels.clone(),
        other => panic!("expected classes, got {other:?}"),
    }
}

const X: [f32; 24] = [
    0.5, -1.0, 1.5, 2.0, 2.5, 0.25, //
    -3.0, 4.0, 0.0, 1.0, 0.0, 0.0, //
    7.0, 8.0, 9.0, -9.5, 1.0, 1.0, //
    6.0, 5.0, 0.0, 0.0, 0.0, 0.0,
];

#[test]
fn every_format_reads_the_same_sequences() {
    for name in [
        "sample.ts",
        "sample.csv",
        "sample.npz",
        "sample_compressed.npz",
        "sample.safetensors",
    ] {
        let d = Dataset::read(&sample(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(d.dims, [4, 3, 2], "{name}");
        assert_eq!(d.x, X, "{name}");
        assert_eq!(d.lengths, vec![3, 2, 3, 1], "{name}");
        assert_eq!(labels(&d), vec![0, 1, 1, 0], "{name}");
    }
    // .npy holds whole sequences only: here each sample's first frame.
    let d = Dataset::read(&sample("sample.npy")).unwrap();
    assert_eq!(d.dims, [4, 1, 2]);
    assert_eq!(d.x, vec![0.5, -1.0, -3.0, 4.0, 7.0, 8.0, 6.0, 5.0]);
    assert_eq!(labels(&d), vec![0, 1, 1, 0]);
}

#[test]
fn truncated_binary_files_are_one_error_naming_the_file() {
    let dir = std::env::temp_dir().join(format!("edifice-data-formats-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["sample.npz", "sample.npy", "sample.safetensors"] {
        let bytes = std::fs::read(sample(name)).unwrap();
        for cut in [0, 9, bytes.len() / 2, bytes.len() - 1] {
            let path = dir.join(format!("cut{cut}-{name}"));
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let err = Dataset::read(&path).unwrap_err().to_string();
            assert!(err.contains(&format!("cut{cut}-{name}")), "{err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
