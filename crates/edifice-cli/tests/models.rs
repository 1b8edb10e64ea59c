//! `edifice init`, `inspect`, `forward`, `convert` and `patterns` end to
//! end, and models too big for the machine.

mod common;

use common::*;

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
