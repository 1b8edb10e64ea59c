//! `edifice stream`: a file of frames streamed equals `forward
//! --all-timesteps`, the timing report, and refused inputs.

mod common;

use common::{data, f32_tensor, read_f32, run_err, run_ok, write, Dir};

const CONFIG: &str = r#"{"model": "sliding_window", "embed_dim": 6, "num_heads": 2, "head_dim": 4, "window_size": 4, "ffn_dim": 8, "seq_len": 12}"#;

#[test]
fn streaming_a_file_equals_forward_all_timesteps() {
    let dir = Dir::new("stream-file");
    let (w, x, y) = dir.wxy();
    let config = dir.path("c.json");
    std::fs::write(&config, CONFIG).unwrap();
    let c = config.to_str().unwrap();
    run_ok(&[
        "init",
        "--config",
        c,
        "--seed",
        "3",
        "--out",
        w.to_str().unwrap(),
    ]);
    write(&x, &[f32_tensor("x", vec![2, 12, 6], &data(2 * 12 * 6, 4))]);
    let streamed = dir.path("s.safetensors");
    let (w, x) = (w.to_str().unwrap(), x.to_str().unwrap());
    run_ok(&[
        "stream",
        "--config",
        c,
        "--weights",
        w,
        "--input",
        x,
        "--output",
        streamed.to_str().unwrap(),
    ]);
    run_ok(&[
        "forward",
        "--config",
        c,
        "--weights",
        w,
        "--input",
        x,
        "--output",
        y.to_str().unwrap(),
        "--all-timesteps",
    ]);
    let (got, dims) = read_f32(&streamed, "y");
    let (want, want_dims) = read_f32(&y, "y");
    assert_eq!(dims, want_dims);
    let diff = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(diff <= 1e-5, "stream and forward differ by {diff}");
}

#[test]
fn timing_reports_both_modes_as_json() {
    let dir = Dir::new("stream-json");
    let config = dir.path("c.json");
    std::fs::write(&config, CONFIG).unwrap();
    let out = run_ok(&[
        "stream",
        "--config",
        config.to_str().unwrap(),
        "--frames",
        "40",
        "--batch",
        "3",
        "--rollback",
        "2",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["model"], "sliding_window");
    assert_eq!(report["batch"], 3);
    for mode in ["incremental", "recompute"] {
        let l = &report[mode];
        let (p50, p99, max) = (
            l["p50_us"].as_f64().unwrap(),
            l["p99_us"].as_f64().unwrap(),
            l["max_us"].as_f64().unwrap(),
        );
        assert!(p50 > 0.0 && p50 <= p99 && p99 <= max, "{mode}: {l}");
    }
    assert_eq!(report["incremental"]["steps"], 40);
    let text = run_ok(&[
        "stream",
        "--config",
        config.to_str().unwrap(),
        "--frames",
        "20",
    ]);
    assert!(
        text.contains("p99.9") && text.contains("recompute"),
        "{text}"
    );
}

#[test]
fn refused_streams_say_why() {
    let dir = Dir::new("stream-errors");
    let acausal = dir.path("dc.json");
    std::fs::write(&acausal, r#"{"model": "dual_chunk", "embed_dim": 8, "hidden_size": 8, "num_heads": 2, "chunk_size": 4, "seq_len": 8}"#).unwrap();
    let err = run_err(&[
        "stream",
        "--config",
        acausal.to_str().unwrap(),
        "--frames",
        "5",
    ]);
    assert!(err.contains("strict_causal"), "{err}");

    let config = dir.path("c.json");
    std::fs::write(&config, CONFIG).unwrap();
    let c = config.to_str().unwrap();
    let (_, x, y) = dir.wxy();
    let (x, y) = (x.to_str().unwrap(), y.to_str().unwrap());
    let stream_file = |dims: Vec<usize>, frames: &[f32]| {
        write(x.as_ref(), &[f32_tensor("x", dims, frames)]);
        run_err(&["stream", "--config", c, "--input", x, "--output", y])
    };
    let mut frames = data(12 * 6, 5);
    frames[7 * 6 + 2] = f32::NAN;
    let err = stream_file(vec![1, 12, 6], &frames);
    assert!(
        err.contains("step 7") && err.contains("non-finite"),
        "{err}"
    );
    let err = stream_file(vec![1, 12, 5], &data(60, 6));
    assert!(err.contains("frames of 6"), "{err}");
    let err = run_err(&["stream", "--config", c, "--input", x]);
    assert!(err.contains("--output"), "{err}");
}
