//! Helpers shared by the CLI's end-to-end tests: running the binary,
//! writing and reading safetensors files, temporary folders.
// Each test binary uses a different subset.
#![allow(dead_code)]

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn edifice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edifice"))
}

/// Owned arguments as the `&str`s `run_ok` and friends take.
pub fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

pub fn data(n: usize, seed: u32) -> Vec<f32> {
    edifice_kernels::reference::uniform(n, seed)
}

/// Writes raw tensors `(name, dtype, dims, bytes)`.
pub fn write(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, dt, dims, b)| {
            (
                n.to_string(),
                TensorView::new(*dt, dims.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, &None, path).unwrap();
}

pub fn f32_tensor(
    name: &'static str,
    dims: Vec<usize>,
    x: &[f32],
) -> (&'static str, Dtype, Vec<usize>, Vec<u8>) {
    (
        name,
        Dtype::F32,
        dims,
        x.iter().flat_map(|v| v.to_le_bytes()).collect(),
    )
}

pub fn read_f32(path: &Path, name: &str) -> (Vec<f32>, Vec<usize>) {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    let v = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (v, t.shape().to_vec())
}

pub struct Dir(PathBuf);

impl Dir {
    /// A fresh directory, unique across the tests running in parallel.
    pub fn new(tag: &str) -> Dir {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("edifice-cli-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    /// Weights, input and output files in the directory.
    pub fn wxy(&self) -> (PathBuf, PathBuf, PathBuf) {
        (
            self.path("w.safetensors"),
            self.path("x.safetensors"),
            self.path("y.safetensors"),
        )
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn golden(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../tests/golden/edifice/{case}.safetensors"))
}

pub fn run_ok(args: &[&str]) -> String {
    let out = edifice().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "edifice {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn run_err(args: &[&str]) -> String {
    let out = edifice().args(args).output().unwrap();
    assert!(!out.status.success(), "edifice {args:?} should fail");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!err.contains("panicked"), "{err}");
    err
}
