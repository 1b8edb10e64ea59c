//! `edifice attn` against the naive reference (f32 and bf16, with
//! gradients), its error messages, and `bench kernel --json`.

mod common;

use common::*;
use edifice_kernels::{bf16, reference, Attention, AttnShape, BoolMask, Pattern, PatternKind};
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use std::path::{Path, PathBuf};

const SHAPE: AttnShape = AttnShape {
    batch: 2,
    heads_q: 4,
    heads_kv: 2,
    len_q: 37,
    len_k: 50,
    head_dim: 16,
};

fn qkv_tensors() -> Vec<(&'static str, Dtype, Vec<usize>, Vec<u8>)> {
    let s = SHAPE;
    vec![
        f32_tensor(
            "q",
            vec![s.batch, s.heads_q, s.len_q, s.head_dim],
            &data(s.q_len(), 1),
        ),
        f32_tensor(
            "k",
            vec![s.batch, s.heads_kv, s.len_k, s.head_dim],
            &data(s.kv_len(), 2),
        ),
        f32_tensor(
            "v",
            vec![s.batch, s.heads_kv, s.len_k, s.head_dim],
            &data(s.kv_len(), 3),
        ),
    ]
}

/// Runs `edifice attn` from `dir/in.safetensors` to `dir/out.safetensors`
/// and asserts success.
fn run_attn(dir: &Dir, args: &[&str]) -> PathBuf {
    let out = dir.path("out.safetensors");
    let status = edifice()
        .args([
            "attn",
            "--input",
            dir.path("in.safetensors").to_str().unwrap(),
        ])
        .args(["--output", out.to_str().unwrap()])
        .args(args)
        .status()
        .unwrap();
    assert!(status.success());
    out
}

fn check_against_reference(dir: &Dir, args: &[&str], pattern: Pattern, scale: Option<f32>) {
    let out = run_attn(dir, args);
    let (o, o_dims) = read_f32(&out, "o");
    let (lse, lse_dims) = read_f32(&out, "lse");
    assert_eq!(o_dims, vec![2, 4, 37, 16]);
    assert_eq!(lse_dims, vec![2, 4, 37]);
    let mut att = Attention::new(SHAPE, pattern).unwrap();
    if let Some(scale) = scale {
        att = att.with_scale(scale).unwrap();
    }
    let (o_ref, lse_ref) = reference::forward(
        &att,
        &data(SHAPE.q_len(), 1),
        &data(SHAPE.kv_len(), 2),
        &data(SHAPE.kv_len(), 3),
    );
    for (a, b) in o.iter().zip(&o_ref) {
        assert!((a - b).abs() <= 1e-4, "o {a} vs {b}");
    }
    for (a, b) in lse.iter().zip(&lse_ref) {
        assert!(a == b || (a - b).abs() <= 1e-4, "lse {a} vs {b}");
    }
}

#[test]
fn attn_matches_the_reference() {
    let dir = Dir::new("ok");
    write(&dir.path("in.safetensors"), &qkv_tensors());
    check_against_reference(
        &dir,
        &["--pattern", "window:7", "--causal"],
        Pattern::new(PatternKind::Window { window: 7 }, true),
        None,
    );
    check_against_reference(
        &dir,
        &["--pattern", "strided:3:4", "--scale", "0.3"],
        Pattern::new(
            PatternKind::Strided {
                stride: 3,
                local: 4,
            },
            false,
        ),
        Some(0.3),
    );

    let bits: Vec<bool> = data(37 * 50, 9).iter().map(|&x| x > 0.2).collect();
    let mut tensors = qkv_tensors();
    tensors.push((
        "mask",
        Dtype::BOOL,
        vec![37, 50],
        bits.iter().map(|&b| b as u8).collect(),
    ));
    write(&dir.path("in.safetensors"), &tensors);
    let mask = BoolMask::new(bits, &[37, 50]).unwrap();
    check_against_reference(
        &dir,
        &["--pattern", "mask", "--causal"],
        Pattern::new(PatternKind::Mask(mask), true),
        None,
    );
}

/// Runs `attn` on `tensors` and returns stderr, asserting a clean failure.
fn attn_error(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)], extra: &[&str]) -> String {
    let dir = Dir::new("err");
    let (input, output) = (dir.path("in.safetensors"), dir.path("out.safetensors"));
    write(&input, tensors);
    let mut args = vec![
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    attn_fails(&args)
}

/// Runs `edifice attn ARGS`; asserts it fails with one `error: ` line and no
/// panic, and returns that line.
fn attn_fails(args: &[&str]) -> String {
    let out = edifice().arg("attn").args(args).output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success(), "expected failure, stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr
}

#[test]
fn attn_errors_are_one_clear_line() {
    let good = qkv_tensors();
    let err = attn_error(&good[..2], &[]);
    assert!(err.contains("no tensor `v`"), "{err}");

    let mut t = qkv_tensors();
    t[0] = (
        "q",
        Dtype::F64,
        vec![2, 4, 37, 8],
        vec![0; 2 * 4 * 37 * 8 * 8],
    );
    assert!(attn_error(&t, &[]).contains("dtype F64"));

    let mut t = qkv_tensors();
    t[0] = f32_tensor("q", vec![8, 37, 16], &data(8 * 37 * 16, 1));
    assert!(attn_error(&t, &[]).contains("rank 3"));

    let mut t = qkv_tensors();
    t[2] = f32_tensor("v", vec![2, 2, 49, 16], &data(2 * 2 * 49 * 16, 1));
    assert!(attn_error(&t, &[]).contains("must match"));

    let mut t = qkv_tensors();
    t[1] = f32_tensor("k", vec![2, 3, 50, 16], &data(2 * 3 * 50 * 16, 1));
    t[2] = f32_tensor("v", vec![2, 3, 50, 16], &data(2 * 3 * 50 * 16, 1));
    assert!(attn_error(&t, &[]).contains("multiple of key/value heads"));

    assert!(attn_error(&good, &["--pattern", "diagonal:3"]).contains("unknown pattern"));
    assert!(attn_error(&good, &["--pattern", "window:0"]).contains("at least 1"));
    assert!(attn_error(&good, &["--pattern", "mask"]).contains("no tensor `mask`"));

    let mut t = qkv_tensors();
    t.push(("mask", Dtype::BOOL, vec![36, 50], vec![1; 36 * 50]));
    assert!(attn_error(&t, &["--pattern", "mask"]).contains("mask has dims [36, 50]"));

    let dir = Dir::new("corrupt");
    let bad = dir.path("bad.safetensors");
    std::fs::write(&bad, b"definitely not safetensors").unwrap();
    let err = attn_fails(&["--input", bad.to_str().unwrap(), "--output", "/dev/null"]);
    assert!(err.contains("not a valid safetensors file"), "{err}");
    let err = attn_fails(&["--input", "/nonexistent/x", "--output", "/dev/null"]);
    assert!(err.contains("cannot read /nonexistent/x"), "{err}");
}

#[test]
fn bench_kernel_json() {
    let out = edifice()
        .args([
            "bench",
            "kernel",
            "--json",
            "--sizes",
            "64,100",
            "--patterns",
            "full,chunk:16+causal",
            "--min-time",
            "0.01",
        ])
        .args(["--threads", "2"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let records = records.as_array().unwrap();
    assert_eq!(records.len(), 4);
    // 8 heads × 64² pairs for full at N = 64.
    assert_eq!(records[0]["allowed_pairs"], 8 * 64 * 64);
    // chunk 16 + causal at N = 100: six full chunks and one of 4.
    assert_eq!(
        records[3]["allowed_pairs"],
        8 * (6 * 16 * 17 / 2 + 4 * 5 / 2)
    );
    assert!(records.iter().all(|r| r["gflops"].as_f64().unwrap() > 0.0));
}

#[test]
fn attn_with_do_writes_gradients() {
    let dir = Dir::new("grad");
    let s = SHAPE;
    let d_o = data(s.q_len(), 4);
    let mut tensors = qkv_tensors();
    tensors.push(f32_tensor(
        "do",
        vec![s.batch, s.heads_q, s.len_q, s.head_dim],
        &d_o,
    ));
    write(&dir.path("in.safetensors"), &tensors);
    let out = run_attn(&dir, &["--pattern", "chunk:9", "--causal"]);
    let att = Attention::new(SHAPE, Pattern::new(PatternKind::Chunk { chunk: 9 }, true)).unwrap();
    let (q, k, v) = (data(s.q_len(), 1), data(s.kv_len(), 2), data(s.kv_len(), 3));
    let want = reference::backward(&att, &q, &k, &v, &d_o);
    for (name, w, dims) in [
        ("dq", &want.0, vec![2, 4, 37, 16]),
        ("dk", &want.1, vec![2, 2, 50, 16]),
        ("dv", &want.2, vec![2, 2, 50, 16]),
    ] {
        let (g, g_dims) = read_f32(&out, name);
        assert_eq!(g_dims, dims, "{name}");
        let tol = 1e-4 * w.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        for (a, b) in g.iter().zip(w) {
            assert!((a - b).abs() <= tol, "{name}: {a} vs {b}");
        }
    }

    let mut bad = qkv_tensors();
    bad.push(f32_tensor(
        "do",
        vec![2, 4, 36, 16],
        &data(2 * 4 * 36 * 16, 4),
    ));
    assert!(attn_error(&bad, &[]).contains("do has dims [2, 4, 36, 16]"));
}

// ---- models: init, inspect, convert, forward ----

/// Reads a BF16 tensor widened to f32, asserting its dtype.
fn read_bf16(path: &Path, name: &str) -> (Vec<f32>, Vec<usize>) {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), Dtype::BF16, "{name}");
    let v = t
        .data()
        .chunks_exact(2)
        .map(|b| bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
        .collect();
    (v, t.shape().to_vec())
}

fn bf16_tensor(
    name: &'static str,
    dims: Vec<usize>,
    x: &[f32],
) -> (&'static str, Dtype, Vec<usize>, Vec<u8>) {
    let bytes = x
        .iter()
        .flat_map(|&v| bf16::from_f32(v).to_bits().to_le_bytes())
        .collect();
    (name, Dtype::BF16, dims, bytes)
}

/// BF16 q, k, v and do give BF16 o, dq, dk, dv (and f32 lse) that match the
/// reference on the rounded inputs within the kernel's bf16 tolerances.
#[test]
fn attn_accepts_bf16() {
    let dir = Dir::new("bf16");
    let s = SHAPE;
    let round =
        |x: Vec<f32>| -> Vec<f32> { x.into_iter().map(|v| bf16::from_f32(v).to_f32()).collect() };
    let (q, k, v, d_o) = (
        round(data(s.q_len(), 1)),
        round(data(s.kv_len(), 2)),
        round(data(s.kv_len(), 3)),
        round(data(s.q_len(), 4)),
    );
    let (q_dims, kv_dims) = (vec![2, 4, 37, 16], vec![2, 2, 50, 16]);
    let tensors = vec![
        bf16_tensor("q", q_dims.clone(), &q),
        bf16_tensor("k", kv_dims.clone(), &k),
        bf16_tensor("v", kv_dims.clone(), &v),
        bf16_tensor("do", q_dims.clone(), &d_o),
    ];
    write(&dir.path("in.safetensors"), &tensors);
    let out = run_attn(&dir, &["--pattern", "window:11", "--causal"]);
    let pattern = Pattern::new(PatternKind::Window { window: 11 }, true);
    let att = Attention::new(SHAPE, pattern).unwrap();
    let (o_ref, lse_ref) = reference::forward(&att, &q, &k, &v);
    let (o, o_dims) = read_bf16(&out, "o");
    assert_eq!(o_dims, q_dims);
    for (a, b) in o.iter().zip(&o_ref) {
        assert!((a - b).abs() <= 1.0 / 256.0, "o {a} vs {b}");
    }
    let (lse, _) = read_f32(&out, "lse");
    for (a, b) in lse.iter().zip(&lse_ref) {
        assert!((a - b).abs() <= 1e-4, "lse {a} vs {b}");
    }
    let want = reference::backward(&att, &q, &k, &v, &d_o);
    for (name, w, dims) in [
        ("dq", &want.0, &q_dims),
        ("dk", &want.1, &kv_dims),
        ("dv", &want.2, &kv_dims),
    ] {
        let (g, g_dims) = read_bf16(&out, name);
        assert_eq!(&g_dims, dims, "{name}");
        let scale = w.iter().fold(1e-2f32, |m, x| m.max(x.abs()));
        for (a, b) in g.iter().zip(w) {
            assert!((a - b).abs() <= scale / 256.0, "{name} {a} vs {b}");
        }
    }

    let mut mixed = tensors;
    mixed[1] = f32_tensor("k", kv_dims, &k);
    let err = attn_error(&mixed, &[]);
    assert!(
        err.contains("`k`") && err.contains("expected BF16"),
        "{err}"
    );
}
