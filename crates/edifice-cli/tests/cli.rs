//! The `edifice` binary end to end: `attn` against the naive reference, its
//! error messages, and `bench kernel --json`.

use std::path::{Path, PathBuf};
use std::process::Command;

use edifice_kernels::{bf16, reference, Attention, AttnShape, BoolMask, Pattern, PatternKind};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

fn edifice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edifice"))
}

fn data(n: usize, seed: u32) -> Vec<f32> {
    edifice_kernels::reference::uniform(n, seed)
}

/// Writes raw tensors `(name, dtype, dims, bytes)`.
fn write(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
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

fn f32_tensor(
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

fn read_f32(path: &Path, name: &str) -> (Vec<f32>, Vec<usize>) {
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

struct Dir(PathBuf);

impl Dir {
    /// A fresh directory, unique across the tests running in parallel.
    fn new(tag: &str) -> Dir {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("edifice-cli-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    /// Weights, input and output files in the directory.
    fn wxy(&self) -> (PathBuf, PathBuf, PathBuf) {
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

fn golden(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../tests/golden/edifice/{case}.safetensors"))
}

/// `edifice train` arguments for a small quiet run of `steps` steps into
/// `out` (sequences of 24 frames, batches of 8).
fn small_train(out: &Path, steps: usize) -> Vec<String> {
    let steps = steps.to_string();
    [
        "train",
        "--quiet",
        "--seq-len",
        "24",
        "--batch-size",
        "8",
        "--steps",
        &steps,
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([out.to_str().unwrap().to_string()])
    .collect()
}

/// Waits (up to a minute) until a training run in `out` has written its
/// first checkpoint.
fn wait_for_checkpoint(out: &Path) {
    let ckpt = out.join("checkpoint.safetensors");
    let start = std::time::Instant::now();
    while !ckpt.exists() && start.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn run_ok(args: &[&str]) -> String {
    let out = edifice().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "edifice {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn run_err(args: &[&str]) -> String {
    let out = edifice().args(args).output().unwrap();
    assert!(!out.status.success(), "edifice {args:?} should fail");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// Every Edifice model case: `convert --from edifice` then `forward`, within 1e-4.
#[test]
fn edifice_golden_models_through_convert_and_forward() {
    let cases = [
        ("dual_chunk_e32_h32_t8_c4", "model = \"dual_chunk\"\nembed_dim = 32\nhidden_size = 32\nnum_heads = 4\nnum_layers = 2\nchunk_size = 4\ndropout = 0.0\nwindow_size = 8\n"),
        ("dual_chunk_e32_h32_t8_c4_perturbed", "model = \"dual_chunk\"\nembed_dim = 32\nhidden_size = 32\nnum_heads = 4\nnum_layers = 2\nchunk_size = 4\ndropout = 0.0\nwindow_size = 8\n"),
        ("sliding_window_e64_t12_w12", "model = \"sliding_window\"\nembed_dim = 64\nwindow_size = 12\nnum_heads = 4\nhead_dim = 8\nnum_layers = 2\nffn_dim = 32\ndropout = 0.0\n"),
        ("ring_e32_h32_t16_nc4", "model = \"ring\"\nembed_dim = 32\nhidden_size = 32\nnum_heads = 4\nnum_chunks = 4\nnum_layers = 2\ndropout = 0.0\nwindow_size = 16\n"),
        ("hybrid_zero_h0", "model = \"hybrid\"\nembed_dim = 16\nlstm_hidden = 16\nlstm_layers = 1\nnum_heads = 2\nhead_dim = 8\ndropout = 0.0\nwindow_size = 8\nrecurrent_initializer = \"zeros\"\n"),
        ("hybrid_mlp_zero_h0", "model = \"hybrid_mlp\"\nembed_dim = 16\nlstm_hidden = 16\nlstm_layers = 1\nnum_heads = 2\nhead_dim = 8\ndropout = 0.0\nwindow_size = 8\nmlp_sizes = [16, 8]\n"),
    ];
    for (case, config) in cases {
        let dir = Dir::new(case);
        let cfg = dir.path("model.toml");
        std::fs::write(&cfg, config).unwrap();
        let (w, x, y) = dir.wxy();
        let g = golden(case);
        run_ok(&[
            "convert",
            "--from",
            "edifice",
            g.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            w.to_str().unwrap(),
        ]);
        let (input, dims) = read_f32(&g, "input");
        write(&x, &[f32_tensor("x", dims, &input)]);
        run_ok(&[
            "forward",
            "--config",
            cfg.to_str().unwrap(),
            "--weights",
            w.to_str().unwrap(),
            "--input",
            x.to_str().unwrap(),
            "--output",
            y.to_str().unwrap(),
        ]);
        let (want, want_dims) = read_f32(&g, "output");
        let (got, got_dims) = read_f32(&y, "y");
        assert_eq!(got_dims, want_dims, "{case}");
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst <= 1e-4, "{case}: max |ours - edifice| = {worst}");
    }
}

#[test]
fn init_inspect_forward_all_timesteps_and_errors() {
    let dir = Dir::new("models");
    let cfg = dir.path("ring.json");
    std::fs::write(&cfg, r#"{"model": "ring", "embed_dim": 6, "hidden_size": 8, "num_heads": 2, "num_layers": 1, "window_size": 4, "num_chunks": 2}"#).unwrap();
    let (w, x, y) = dir.wxy();
    let (cfg, w_s, x_s, y_s) = (
        cfg.to_str().unwrap(),
        w.to_str().unwrap(),
        x.to_str().unwrap(),
        y.to_str().unwrap(),
    );
    run_ok(&["init", "--config", cfg, "--seed", "3", "--out", w_s]);
    // Projection 6·8+8 = 56; block 16 + 216 + 72 + 16 + 288 + 264 = 872; final norm 16.
    let listing = run_ok(&["inspect", w_s]);
    assert!(
        listing.contains("blocks.0.attn.qkv.weight") && listing.contains("[24, 8]"),
        "{listing}"
    );
    assert!(listing.contains("16 tensors, 944 parameters"), "{listing}");

    write(&x, &[f32_tensor("x", vec![3, 4, 6], &data(72, 4))]);
    let forward = [
        "forward",
        "--config",
        cfg,
        "--weights",
        w_s,
        "--input",
        x_s,
        "--output",
        y_s,
    ];
    run_ok(&[&forward[..], &["--all-timesteps"]].concat());
    assert_eq!(read_f32(&y, "y").1, vec![3, 4, 8]);
    run_ok(&forward);
    let last = read_f32(&y, "y");
    assert_eq!(last.1, vec![3, 8]);

    // Same seed, same weights.
    let w2 = dir.path("w2.safetensors");
    run_ok(&[
        "init",
        "--config",
        cfg,
        "--seed",
        "3",
        "--out",
        w2.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&w).unwrap(), std::fs::read(&w2).unwrap());

    write(&x, &[f32_tensor("x", vec![3, 5, 6], &data(90, 4))]);
    let err = run_err(&[
        "forward",
        "--config",
        cfg,
        "--weights",
        w_s,
        "--input",
        x_s,
        "--output",
        y_s,
    ]);
    assert!(err.contains("[batch, 4, 6]"), "{err}");
    let g = golden("ring_e32_h32_t16_nc4");
    let err = run_err(&[
        "convert",
        "--from",
        "edifice",
        g.to_str().unwrap(),
        "--config",
        cfg,
        "--out",
        w_s,
    ]);
    assert!(
        err.contains("has shape") && err.contains("ring_1_qkv"),
        "{err}"
    );
    let err = run_err(&[
        "forward",
        "--config",
        cfg,
        "--weights",
        x_s,
        "--input",
        x_s,
        "--output",
        y_s,
    ]);
    assert!(
        err.contains("missing tensor") && err.contains("unexpected tensor `x`"),
        "{err}"
    );
    std::fs::write(&w, b"garbage").unwrap();
    let err = run_err(&["inspect", w_s]);
    assert!(err.contains("not a valid safetensors"), "{err}");
}

#[test]
fn patterns_draws_one_png_per_head_and_coverage() {
    let dir = Dir::new("patterns");
    let out = dir.path("pics");
    let listing = run_ok(&[
        "patterns",
        "--out",
        out.to_str().unwrap(),
        "--patterns",
        "strided:4:2|global:1+causal,strided:6:2+causal",
        "--heads",
        "4",
        "--n",
        "20",
        "--scale",
        "2",
    ]);
    assert!(listing.contains("(0 uncovered pairs)"), "{listing}");
    assert!(
        !listing.contains("strided:6:2+causal: 4 heads + coverage.png (0 "),
        "{listing}"
    );
    for h in 0..4 {
        let png =
            std::fs::read(out.join(format!("strided_4_2+global_1+causal/head{h}.png"))).unwrap();
        assert_eq!(&png[1..4], b"PNG");
    }
    assert!(out.join("strided_6_2+causal/coverage.png").exists());
    let err = run_err(&[
        "patterns",
        "--out",
        out.to_str().unwrap(),
        "--patterns",
        "stripes:3",
    ]);
    assert!(err.contains("unknown pattern"), "{err}");
}

#[test]
fn shifted_sparse_through_the_cli() {
    let dir = Dir::new("sparse");
    let cfg = dir.path("sparse.toml");
    std::fs::write(&cfg, "model = \"shifted_sparse\"\nembed_dim = 6\nhidden_size = 8\nnum_heads = 2\nnum_layers = 1\nseq_len = 12\nglobal_tokens = 2\n").unwrap();
    let (w, x, y) = dir.wxy();
    let (cfg, w, x_s, y_s) = (
        cfg.to_str().unwrap(),
        w.to_str().unwrap(),
        x.to_str().unwrap(),
        y.to_str().unwrap(),
    );
    run_ok(&["init", "--config", cfg, "--out", w]);
    write(&x, &[f32_tensor("x", vec![2, 12, 6], &data(144, 9))]);
    run_ok(&[
        "forward",
        "--config",
        cfg,
        "--weights",
        w,
        "--input",
        x_s,
        "--output",
        y_s,
    ]);
    assert_eq!(read_f32(&y, "y").1, vec![2, 8]);
    let bad = dir.path("bad.toml");
    std::fs::write(
        &bad,
        "model = \"shifted_sparse\"\nembed_dim = 6\nnum_heads = 2\nhidden_size = 8\nstride = 3\n",
    )
    .unwrap();
    let err = run_err(&["init", "--config", bad.to_str().unwrap(), "--out", w]);
    assert!(
        err.contains("first uncovered offset") && err.contains("allow_uncovered"),
        "{err}"
    );
}

#[test]
fn train_writes_metrics_and_checkpoints_and_resumes() {
    let dir = Dir::new("train");
    let out = dir.path("run");
    let out_s = out.to_str().unwrap();
    let common = [
        "train",
        "--quiet",
        "--out",
        out_s,
        "--seq-len",
        "16",
        "--batch-size",
        "4",
    ];
    let log = run_ok(&[&common[..], &["--steps", "6"]].concat());
    assert!(
        log.contains("done: 6 steps of sliding_window on lookback (seq_len 16)"),
        "{log}"
    );
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(
        metrics.lines().filter(|l| l.contains("\"train\"")).count(),
        6
    );
    assert!(out.join("checkpoint.safetensors").exists());
    assert_eq!(
        &std::fs::read(out.join("curves.png")).unwrap()[1..4],
        b"PNG"
    );
    let ckpt = out.join("checkpoint.safetensors");
    let eval = run_ok(&["eval", ckpt.to_str().unwrap(), "--json", "--batches", "2"]);
    let eval: serde_json::Value = serde_json::from_str(&eval).unwrap();
    assert_eq!(eval["step"], 6);
    assert!((0.0..=1.0).contains(&eval["accuracy"].as_f64().unwrap()));
    // Resuming with more steps continues from step 6; the log is appended.
    let log = run_ok(&[&common[..], &["--steps", "8", "--resume"]].concat());
    assert!(log.contains("done: 8 steps"), "{log}");
    let err = run_err(&[&common[..], &["--steps", "8", "--resume", "--lr", "0.5"]].concat());
    assert!(err.contains("different run config"), "{err}");
    std::fs::write(out.join("checkpoint.safetensors"), b"broken").unwrap();
    let err = run_err(&[&common[..], &["--steps", "8", "--resume"]].concat());
    assert!(err.contains("not a valid safetensors"), "{err}");
    let err = run_err(&["eval", ckpt.to_str().unwrap()]);
    assert!(err.contains("not a valid safetensors"), "{err}");
    let err = run_err(&["train", "--out", out_s, "--task", "guess"]);
    assert!(err.contains("bad [task]"), "{err}");
}

/// Models and runs that cannot fit in memory are refused before anything is
/// allocated, with the size named (a 10^9-wide layer used to abort in the
/// allocator with a backtrace).
#[test]
fn models_too_big_for_the_machine_are_refused_before_allocating() {
    let dir = Dir::new("huge");
    let huge = dir.path("huge.toml");
    std::fs::write(
        &huge,
        "model = \"dual_chunk\"\nembed_dim = 32\nhidden_size = 1000000000\n",
    )
    .unwrap();
    let long = dir.path("long.toml");
    std::fs::write(
        &long,
        "model = \"sliding_window\"\nembed_dim = 32\nwindow_size = 100000000\n",
    )
    .unwrap();
    let out = dir.path("w.safetensors");
    for config in [&huge, &long] {
        let err = run_err(&[
            "init",
            "--config",
            config.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(
            err.contains("would need about") && err.contains("more than this machine"),
            "{err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(!out.exists());
    }
    let run = dir.path("run");
    let err = run_err(&[
        "train",
        "--quiet",
        "--batch-size",
        "100000000",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert!(err.contains("training would need about"), "{err}");
}

/// A learning rate that makes the loss NaN stops the run with an error
/// naming the step and a non-zero exit; the checkpoint of the run before it
/// is left byte for byte and still evaluates.
#[test]
fn a_diverging_run_stops_and_keeps_the_last_good_checkpoint() {
    let dir = Dir::new("diverge");
    let out = dir.path("run");
    let out_s = out.to_str().unwrap();
    let common = [
        "train",
        "--quiet",
        "--out",
        out_s,
        "--seq-len",
        "16",
        "--batch-size",
        "4",
    ];
    run_ok(&[&common[..], &["--steps", "4"]].concat());
    let ckpt = out.join("checkpoint.safetensors");
    let before = std::fs::read(&ckpt).unwrap();
    let err = run_err(&[&common[..], &["--steps", "6", "--lr", "1e30"]].concat());
    assert!(
        err.contains("diverged") && err.contains("of step 2 is NaN"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(std::fs::read(&ckpt).unwrap(), before);
    let eval = run_ok(&["eval", ckpt.to_str().unwrap(), "--json", "--batches", "2"]);
    let eval: serde_json::Value = serde_json::from_str(&eval).unwrap();
    assert_eq!(eval["step"], 4);
    assert!(eval["loss"].as_f64().unwrap().is_finite());
}

/// Killing `edifice train` mid-run (SIGKILL, like a crash) and resuming ends
/// with the same weights as an uninterrupted run. (The optimizer state is
/// keyed by parameter ids, which differ between processes, so its bytes are
/// not compared; the weights depend on it at every step.)
#[test]
fn killed_and_resumed_run_ends_like_an_uninterrupted_one() {
    let dir = Dir::new("kill");
    let (a, b) = (dir.path("a"), dir.path("b"));
    let args = |out: &Path| small_train(out, 300);
    run_ok(&args(&a).iter().map(String::as_str).collect::<Vec<_>>());
    let mut child = edifice()
        .args(args(&b))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill once the first checkpoint (step 100) exists and before the end.
    wait_for_checkpoint(&b);
    child.kill().unwrap();
    child.wait().unwrap();
    let resume: Vec<String> = args(&b)
        .into_iter()
        .chain(["--resume".to_string()])
        .collect();
    run_ok(&resume.iter().map(String::as_str).collect::<Vec<_>>());
    let load = |out: &Path| {
        let bytes = std::fs::read(out.join("checkpoint.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut all: Vec<(String, Vec<u8>)> = st
            .tensors()
            .into_iter()
            .filter(|(n, _)| n != "__optimizer__")
            .map(|(n, v)| (n, v.data().to_vec()))
            .collect();
        all.sort();
        all
    };
    let (wa, wb) = (load(&a), load(&b));
    assert!(wa.len() > 10);
    for ((na, da), (nb, db)) in wa.iter().zip(&wb) {
        assert_eq!(na, nb);
        assert!(da == db, "weights of `{na}` differ after kill + resume");
    }
}

/// Ctrl-C (SIGINT) evaluates, saves a checkpoint and exits cleanly; the run
/// then resumes from the step it stopped at.
#[test]
fn sigint_saves_and_exits_cleanly() {
    let dir = Dir::new("sigint");
    let out = dir.path("run");
    let args = small_train(&out, 100_000);
    let child = edifice()
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_checkpoint(&out);
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "exit status {:?}", output.status);
    let log = String::from_utf8(output.stdout).unwrap();
    let step: usize = log
        .split("interrupted at step ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no interruption message in {log:?}"));
    assert!((100..100000).contains(&step), "{log}");
    let ckpt = out.join("checkpoint.safetensors");
    let eval = run_ok(&["eval", ckpt.to_str().unwrap(), "--json", "--batches", "1"]);
    let eval: serde_json::Value = serde_json::from_str(&eval).unwrap();
    assert_eq!(eval["step"], step);
}

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
