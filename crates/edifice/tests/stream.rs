//! Streams against the models they step: every position equals
//! `forward_all`, rewinds and snapshots replay bitwise, batches equal
//! single streams, and bad input leaves a stream as it was.

use std::path::PathBuf;

use burn::tensor::{Tensor, TensorData};
use edifice::functional::positional_encoding;
use edifice::layers::Combine;
use edifice::models::{
    DualChunkConfig, HybridConfig, RingConfig, ShiftedSparseConfig, SlidingWindowConfig,
    SparsePattern,
};
use edifice::stream::{Mode, StreamOptions, StreamState, Streamer};
use edifice::{weights, Model, ModelConfig};
use edifice_kernels::reference::uniform;

const ROLLBACK: usize = 7;

/// A small config of every model a stream runs, with the window `W` its
/// test steps through ten times.
fn streamable() -> Vec<(&'static str, ModelConfig, usize)> {
    let sliding = SlidingWindowConfig::new(12)
        .with_window_size(4)
        .with_num_heads(2)
        .with_head_dim(4)
        .with_ffn_dim(16);
    let hybrid = HybridConfig::new(12)
        .with_lstm_hidden(8)
        .with_lstm_layers(2)
        .with_num_heads(2)
        .with_head_dim(4);
    let dual = DualChunkConfig::new(12)
        .with_hidden_size(16)
        .with_num_heads(2)
        .with_num_layers(2)
        .with_chunk_size(4)
        .with_strict_causal(true);
    let sparse = ShiftedSparseConfig::new(12)
        .with_hidden_size(16)
        .with_num_heads(4)
        .with_num_layers(2)
        .with_local_window(3)
        .with_seq_len(40);
    vec![
        (
            "sliding_window",
            ModelConfig::SlidingWindow(sliding.clone()),
            4,
        ),
        (
            "sliding_window, 3 layers",
            ModelConfig::SlidingWindow(SlidingWindowConfig {
                embed_dim: 20,
                ..sliding.with_num_layers(3)
            }),
            5,
        ),
        (
            "hybrid, attention_window 5",
            ModelConfig::Hybrid(hybrid.clone().with_attention_window(Some(5))),
            5,
        ),
        (
            "hybrid, full causal",
            ModelConfig::Hybrid(hybrid.clone()),
            4,
        ),
        (
            "hybrid_mlp",
            ModelConfig::HybridMlp(hybrid.with_mlp_sizes(vec![8, 6]).with_lstm_layers(1)),
            4,
        ),
        ("dual_chunk, gate", ModelConfig::DualChunk(dual.clone()), 4),
        (
            "dual_chunk, sum, no input projection",
            ModelConfig::DualChunk(DualChunkConfig {
                embed_dim: 16,
                ..dual.with_combine(Combine::Sum)
            }),
            4,
        ),
        (
            "ring",
            ModelConfig::Ring(
                RingConfig::new(12)
                    .with_hidden_size(16)
                    .with_num_heads(2)
                    .with_num_layers(2)
                    .with_num_chunks(4),
            ),
            4,
        ),
        (
            "shifted_sparse, strided + global",
            ModelConfig::ShiftedSparse(sparse.clone().with_global_tokens(2)),
            4,
        ),
        (
            "shifted_sparse, shifted",
            ModelConfig::ShiftedSparse(
                sparse
                    .with_pattern(SparsePattern::Shifted)
                    .with_group_size(Some(6)),
            ),
            4,
        ),
    ]
}

fn options() -> StreamOptions {
    StreamOptions::default()
        .with_rollback(ROLLBACK)
        .with_max_len(64)
}

/// The config for `len` frames and its model, every parameter (biases,
/// norms and gates too) moved off its initial value.
fn build(config: &ModelConfig, len: usize, seed: u32) -> (ModelConfig, Model) {
    let config = config.with_seq_len(len);
    let mut model = config.init(&Default::default()).unwrap();
    let mut tensors = weights::tensors(&mut model);
    for (i, (_, values)) in tensors.values_mut().enumerate() {
        let noise = uniform(values.len(), seed + i as u32);
        values
            .iter_mut()
            .zip(noise)
            .for_each(|(v, n)| *v += 0.2 * n);
    }
    weights::load_tensors(&mut model, tensors).unwrap();
    (config, model)
}

fn frames(n: usize, width: usize, seed: u32) -> Vec<f32> {
    uniform(n * width, seed)
}

/// Steps one stream through `frames`, every output in order.
fn run(streamer: &Streamer, state: &mut StreamState, frames: &[f32]) -> Vec<f32> {
    let (e, o) = (streamer.input_size(), streamer.output_size());
    let mut out = vec![0.0; frames.len() / e * o];
    for (f, y) in frames.chunks_exact(e).zip(out.chunks_exact_mut(o)) {
        streamer.step(state, f, y).unwrap();
    }
    out
}

/// Frames `x [T·E]` as one sequence `[1, T, E]`.
fn sequence(x: Vec<f32>, e: usize) -> Tensor<3> {
    let t = x.len() / e;
    Tensor::from_data(TensorData::new(x, [1, t, e]), &Default::default())
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec().unwrap()
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn every_position_equals_forward_all() {
    for (name, config, w) in streamable() {
        let t = 10 * w;
        let (config, model) = build(&config, t, 1);
        let streamer = Streamer::new(&config, &model, options()).unwrap();
        let e = streamer.input_size();
        let x = frames(t, e, 2);
        let got = run(&streamer, &mut streamer.state(), &x);
        let want = values(model.forward_all(sequence(x, e)).unwrap());
        let o = streamer.output_size();
        for (pos, (g, w)) in got.chunks_exact(o).zip(want.chunks_exact(o)).enumerate() {
            let diff = g
                .iter()
                .zip(w)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(diff <= 1e-5, "{name}: position {pos} differs by {diff}");
        }
    }
}

#[test]
fn rewinding_and_replaying_gives_the_same_bits() {
    for (name, config, w) in streamable() {
        let (config, model) = build(&config, 10 * w, 3);
        let streamer = Streamer::new(&config, &model, options()).unwrap();
        let e = streamer.input_size();
        let x = frames(3 * w + ROLLBACK, e, 4);
        let mut state = streamer.state();
        let first = run(&streamer, &mut state, &x);
        let o = streamer.output_size();
        let tail = &x[(x.len() / e - ROLLBACK) * e..];
        for k in [1, 3, ROLLBACK] {
            let tail = &tail[(ROLLBACK - k) * e..];
            // A misprediction: rewind, take other frames, rewind them, replay.
            state.rewind(k).unwrap();
            run(&streamer, &mut state, &frames(k, e, 99));
            state.rewind(k).unwrap();
            let again = run(&streamer, &mut state, tail);
            let want = &first[first.len() - k * o..];
            assert_eq!(bits(&again), bits(want), "{name}: rewind {k}");
        }
        state.reset();
        assert_eq!(
            bits(&run(&streamer, &mut state, &x)),
            bits(&first),
            "{name}: reset"
        );
    }
}

#[test]
fn a_batch_gives_each_stream_its_own_bits() {
    for (name, config, w) in streamable() {
        let (config, model) = build(&config, 10 * w, 5);
        let streamer = Streamer::new(&config, &model, options()).unwrap();
        let (e, o, b) = (streamer.input_size(), streamer.output_size(), 8);
        // Streams at different positions: stream i has seen i frames.
        let mut alone: Vec<StreamState> = (0..b).map(|_| streamer.state()).collect();
        for (i, s) in alone.iter_mut().enumerate() {
            run(&streamer, s, &frames(i, e, 10 + i as u32));
        }
        let mut batch = alone.clone();
        for step in 0..2 * w {
            let x = frames(b, e, 100 + step as u32);
            let mut together = vec![0.0; b * o];
            streamer.step_batch(&mut batch, &x, &mut together).unwrap();
            for (i, s) in alone.iter_mut().enumerate() {
                let mut y = vec![0.0; o];
                streamer.step(s, &x[i * e..(i + 1) * e], &mut y).unwrap();
                assert_eq!(
                    bits(&y),
                    bits(&together[i * o..(i + 1) * o]),
                    "{name}: stream {i}"
                );
            }
        }
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let (name, config, w) = streamable().remove(0);
    let (config, model) = build(&config, 10 * w, 6);
    let streamer = Streamer::new(&config, &model, options()).unwrap();
    let x = frames(3 * w, streamer.input_size(), 7);
    let with = |threads| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| run(&streamer, &mut streamer.state(), &x))
    };
    assert_eq!(bits(&with(1)), bits(&with(3)), "{name}");
}

/// Where the parent leaves the weights, snapshot, frames and outputs for
/// the child process.
fn handoff() -> PathBuf {
    std::env::temp_dir().join(format!("edifice-stream-handoff-{}", std::process::id()))
}

#[test]
fn a_snapshot_continues_bitwise_in_a_new_process() {
    let dir = handoff();
    std::fs::create_dir_all(&dir).unwrap();
    for (i, (name, config, w)) in streamable().into_iter().enumerate() {
        let (config, mut model) = build(&config, 10 * w, 8);
        let streamer = Streamer::new(&config, &model, options()).unwrap();
        let e = streamer.input_size();
        let (before, after) = (frames(2 * w + 1, e, 9), frames(2 * w, e, 10));
        let mut state = streamer.state();
        run(&streamer, &mut state, &before);
        let snapshot = state.snapshot();
        let want = run(&streamer, &mut state, &after);

        let case = dir.join(i.to_string());
        std::fs::create_dir_all(&case).unwrap();
        let json = serde_json::Value::Object(config.to_value()).to_string();
        std::fs::write(case.join("config.json"), json).unwrap();
        let tensors = weights::tensors(&mut model);
        std::fs::write(
            case.join("weights"),
            weights::to_safetensors(&tensors).unwrap(),
        )
        .unwrap();
        std::fs::write(case.join("snapshot"), &snapshot).unwrap();
        std::fs::write(case.join("frames"), bytes(&after)).unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "snapshot_child",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("EDIFICE_STREAM_CHILD", &case)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "{name}: the child process failed");
        let got = floats(&std::fs::read(case.join("outputs")).unwrap());
        assert_eq!(
            bits(&got),
            bits(&want),
            "{name}: continued in another process"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The other process of [`a_snapshot_continues_bitwise_in_a_new_process`]
/// (does nothing when run on its own).
#[test]
fn snapshot_child() {
    let Some(case) = std::env::var_os("EDIFICE_STREAM_CHILD").map(PathBuf::from) else {
        return;
    };
    let config = ModelConfig::from_path(&case.join("config.json")).unwrap();
    let mut model = config.init(&Default::default()).unwrap();
    let tensors = weights::from_safetensors(&std::fs::read(case.join("weights")).unwrap()).unwrap();
    weights::load_tensors(&mut model, tensors).unwrap();
    let streamer = Streamer::new(&config, &model, options()).unwrap();
    let mut state = streamer.state();
    state
        .restore(&std::fs::read(case.join("snapshot")).unwrap())
        .unwrap();
    let out = run(
        &streamer,
        &mut state,
        &floats(&std::fs::read(case.join("frames")).unwrap()),
    );
    std::fs::write(case.join("outputs"), bytes(&out)).unwrap();
}

fn bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn floats(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn refused_input_leaves_the_stream_unchanged() {
    let (_, config, w) = streamable().remove(0);
    let (config, model) = build(&config, 10 * w, 11);
    let streamer = Streamer::new(&config, &model, options()).unwrap();
    let (e, o) = (streamer.input_size(), streamer.output_size());
    let mut state = streamer.state();
    run(&streamer, &mut state, &frames(5, e, 12));
    let saved = state.snapshot();
    let mut out = vec![0.0; o];
    let nan = {
        let mut f = frames(1, e, 13);
        f[3] = f32::NAN;
        f
    };
    let errors = [
        streamer
            .step(&mut state, &frames(1, e + 1, 13), &mut out)
            .unwrap_err(),
        streamer.step(&mut state, &nan, &mut out).unwrap_err(),
        streamer
            .step(&mut state, &frames(1, e, 13), &mut [0.0; 1])
            .unwrap_err(),
        state.rewind(ROLLBACK + 1).unwrap_err(),
    ];
    for e in &errors {
        assert!(matches!(e, edifice::Error::Stream(_)), "{e}");
    }
    assert!(
        errors[1].to_string().contains("non-finite"),
        "{}",
        errors[1]
    );
    assert_eq!(state.snapshot(), saved);
    assert_eq!(state.position(), 5);

    // A snapshot of another model, other weights, another version, or cut short.
    let (other_config, other_model) = build(&streamable()[2].1, 20, 14);
    let other = Streamer::new(&other_config, &other_model, options()).unwrap();
    let (_, reweighted) = build(&config, 10 * w, 15);
    let reweighted = Streamer::new(&config, &reweighted, options()).unwrap();
    let mut versioned = saved.clone();
    versioned[8] = 2;
    for (what, bytes) in [
        ("another model", other.state().snapshot()),
        ("other weights", reweighted.state().snapshot()),
        ("another version", versioned),
        ("truncated", saved[..saved.len() - 1].to_vec()),
        ("garbage", b"not a snapshot".to_vec()),
    ] {
        let err = state.restore(&bytes).unwrap_err();
        assert!(matches!(err, edifice::Error::Stream(_)), "{what}: {err}");
        assert_eq!(state.snapshot(), saved, "{what} changed the state");
    }
    // A state of another streamer is refused by step.
    let mut foreign = other.state();
    assert!(streamer
        .step(&mut foreign, &frames(1, e, 16), &mut out)
        .is_err());
    assert!(state.rewind(5).is_ok());
    assert!(state.rewind(1).is_err(), "rewinding past position 0");
}

#[test]
fn growing_states_stop_at_max_len_and_acausal_models_are_refused() {
    let (_, config, w) = streamable().remove(7); // ring
    let (config, model) = build(&config, 10 * w, 17);
    let streamer = Streamer::new(&config, &model, options().with_max_len(6)).unwrap();
    let mut state = streamer.state();
    run(&streamer, &mut state, &frames(6, streamer.input_size(), 18));
    let err = streamer
        .step(
            &mut state,
            &frames(1, streamer.input_size(), 19),
            &mut vec![0.0; streamer.output_size()],
        )
        .unwrap_err();
    assert!(err.to_string().contains("max_len 6"), "{err}");

    let bidirectional = [
        ModelConfig::DualChunk(
            DualChunkConfig::new(8)
                .with_hidden_size(8)
                .with_num_heads(2)
                .with_chunk_size(4)
                .with_seq_len(Some(8)),
        ),
        ModelConfig::ShiftedSparse(
            ShiftedSparseConfig::new(8)
                .with_hidden_size(8)
                .with_num_heads(2)
                .with_causal(false),
        ),
    ];
    for config in bidirectional {
        let model = config.init(&Default::default()).unwrap();
        let err = Streamer::new(&config, &model, options()).unwrap_err();
        assert!(err.to_string().contains("causal"), "{err}");
    }
}

#[test]
fn recompute_runs_the_model_on_the_last_window() {
    let (_, config, w) = streamable().remove(0);
    let (config, model) = build(&config, w, 20);
    let streamer = Streamer::new(&config, &model, options().with_mode(Mode::Recompute)).unwrap();
    let (e, o) = (streamer.input_size(), streamer.output_size());
    let x = frames(2 * w, e, 21);
    let got = run(&streamer, &mut streamer.state(), &x);
    for t in 0..2 * w {
        // The window ends at frame t, zero frames before frame 0.
        let mut window = vec![0.0; w * e];
        let first = (t + 1).saturating_sub(w);
        let n = t + 1 - first;
        window[(w - n) * e..].copy_from_slice(&x[first * e..(t + 1) * e]);
        let want = values(model.forward(sequence(window, e)).unwrap());
        assert_eq!(bits(&got[t * o..(t + 1) * o]), bits(&want), "frame {t}");
    }
}

#[test]
fn positions_stay_exact_on_long_streams() {
    // sin(10⁷) and sin(10⁷ / 2) (d = 0 and d = 100 at scale 0.01, whose
    // frequencies are exact), from Python's math.sin in f64.
    let cases = [
        (10_000_000, 0, 0.420_547_793_190_782_5),
        (10_000_000, 100, -0.976_542_468_657_082_9),
        (10, 0, -0.544_021_110_889_369_8),
    ];
    for (pos, d, want) in cases {
        let got = positional_encoding(pos, d, 0.01);
        assert!(
            (got as f64 - want).abs() < 1e-7,
            "pe({pos}, {d}) = {got}, want {want}"
        );
    }
    // At d = 50 the frequency 1/1.5 is inexact: the f64 quotient stays
    // within 1e-9 rad of the true angle, an f32 product is 0.3 rad off.
    let exact = (1e7f64 / 1.5).sin();
    let got = positional_encoding(10_000_000, 50, 0.01) as f64;
    assert!(
        (got - exact).abs() < 1e-7,
        "pe(1e7, 50) = {got}, want {exact}"
    );
    let lossy = (1e7f32 * (1.0 / (1.0 + 50.0 * 0.01f32))).sin() as f64;
    assert!(
        (lossy - exact).abs() > 1e-3,
        "the f32 product is {lossy}, exact {exact}"
    );
}
