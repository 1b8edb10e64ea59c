use super::*;
use crate::tasks::{Labels, Readout};

const TS: &str = "# a comment\n@problemName Tiny\n@univariate false\n@dimensions 2\n@equalLength false\n@classLabel true b a\n@data\n1,2,3:4,5,6:a\n7,8:9,10,11:b\n";

#[test]
fn ts_multivariate_unequal_lengths_and_declared_classes() {
    let d = ts::read(TS, "t.ts").unwrap();
    assert_eq!(d.dims, [2, 3, 2]);
    assert_eq!(d.lengths, vec![3, 3]);
    // Frame t holds (dimension 0, dimension 1); dimension 0 of the second
    // sequence is one shorter and padded with 0.
    assert_eq!(&d.x[..6], &[1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    assert_eq!(&d.x[6..], &[7.0, 9.0, 8.0, 10.0, 0.0, 11.0]);
    assert_eq!(
        d.y,
        Targets::Classes {
            labels: vec![1, 0],
            names: vec!["b".into(), "a".into()]
        }
    );
}

#[test]
fn malformed_ts_names_file_and_line() {
    let cases = [
        (
            TS.replace("1,2,3:4,5,6:a", "1,x,3:4,5,6:a"),
            "t.ts:8: dimension 0: `x` is not a number",
        ),
        (
            TS.replace("1,2,3:4,5,6:a", "1,2,3:a"),
            "t.ts:8: expected 2 dimension(s)",
        ),
        (
            TS.replace("1,2,3:4,5,6:a", "1,?,3:4,5,6:a"),
            "t.ts:8: dimension 0 has a missing value",
        ),
        (
            TS.replace(":b\n", ":c\n"),
            "label `c` is not among the declared classes",
        ),
        (
            TS.replace("@data\n", ""),
            "t.ts:7: expected a header line or @data",
        ),
        (
            TS.replace("1,2,3:4,5,6:a\n7,8:9,10,11:b\n", "")
                .replace("@data\n", ""),
            "t.ts: no @data line",
        ),
        (
            TS.replace("@problemName Tiny", "problemName Tiny"),
            "t.ts:2: expected a header line",
        ),
    ];
    for (text, want) in cases {
        let err = ts::read(&text, "t.ts").unwrap_err().to_string();
        assert!(err.contains(want), "{err:?} should contain {want:?}");
        assert_eq!(err.lines().count(), 1);
    }
}

#[test]
fn csv_groups_rows_into_sequences() {
    let text = "sequence,y,f0,f1\n0,walk,1,2\n0,walk,3,4\n1,run,5,6\n";
    let d = table::read(text, "d.csv").unwrap();
    assert_eq!(d.dims, [2, 2, 2]);
    assert_eq!(d.lengths, vec![2, 1]);
    assert_eq!(d.x, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0, 0.0]);
    assert_eq!(
        d.y,
        Targets::Classes {
            labels: vec![1, 0],
            names: vec!["run".into(), "walk".into()]
        }
    );
    let reg = table::read("sequence,y0,y1,f0\na,0.5,1,1\nb,2,3,2\n", "r.csv").unwrap();
    assert_eq!(
        reg.y,
        Targets::Values {
            values: vec![0.5, 1.0, 2.0, 3.0],
            width: 2
        }
    );
}

#[test]
fn malformed_csv_names_file_and_line() {
    let cases = [
        (
            "sequence,y,f0\n0,a,1\n0,b,2\n",
            "c.csv:3: sequence `0` changes its target",
        ),
        (
            "sequence,y,f0\n0,a,1\n1,b,2\n0,a,3\n",
            "c.csv:4: the rows of sequence `0` are not together",
        ),
        (
            "sequence,y,f0\n0,a,1\n1,b,oops\n",
            "c.csv:3: column `f0`: `oops` is not a number",
        ),
        (
            "seq,y,f0\n0,a,1\n",
            "c.csv:1: the first column must be `sequence`",
        ),
        (
            "sequence,f0\n0,1\n",
            "c.csv:1: the header needs target column(s)",
        ),
        ("sequence,y,f0\n0,a,1\n1,b\n", "c.csv:3:"),
        ("sequence,y,f0\n0,a,1\n", "at least 2 classes"),
    ];
    for (text, want) in cases {
        let err = table::read(text, "c.csv").unwrap_err().to_string();
        assert!(err.contains(want), "{err:?} should contain {want:?}");
        assert_eq!(err.lines().count(), 1);
    }
}

#[test]
fn integer_labels_are_classes_in_numeric_order() {
    let text = "sequence,y,f0\n0,10,1\n1,2,1\n2,10,1\n";
    let d = table::read(text, "d.csv").unwrap();
    assert_eq!(
        d.y,
        Targets::Classes {
            labels: vec![1, 0, 1],
            names: vec!["2".into(), "10".into()]
        }
    );
}

#[test]
fn normalizer_fits_real_frames_and_keeps_padding_zero() {
    let mut d = table::read("sequence,y,f0\n0,a,1\n0,a,3\n1,b,5\n", "d.csv").unwrap();
    let norm = Normalizer::fit(&d);
    // Real values 1, 3, 5: the padded frame of sequence 1 is not one.
    assert!((norm.mean[0] - 3.0).abs() < 1e-6);
    assert!((norm.std[0] - (8.0f32 / 3.0).sqrt()).abs() < 1e-5);
    norm.apply(&mut d).unwrap();
    assert_eq!(d.x[3], 0.0);
    assert!((d.x[0] + d.x[1] + d.x[2]).abs() < 1e-6);
}

#[test]
fn select_keeps_rows_in_order() {
    let d = table::read("sequence,y,f0\n0,a,1\n1,b,2\n2,a,3\n", "d.csv").unwrap();
    let s = d.select(&[2, 0]);
    assert_eq!(s.x, vec![3.0, 1.0]);
    assert_eq!(
        s.y,
        Targets::Classes {
            labels: vec![0, 0],
            names: vec!["a".into(), "b".into()]
        }
    );
}

fn tiny_run_of(data: &Dataset, model: serde_json::Value) -> crate::train::RunConfig {
    let [_, t, e] = data.dims;
    crate::train::RunConfig::from_value(serde_json::json!({
        "task": {"kind": "data", "seq_len": t, "embed_dim": e, "classes": data.outputs()},
        "model": model,
        "train": {"steps": 2, "batch_size": 2},
    }))
    .unwrap()
}

fn tiny_run(data: &Dataset) -> crate::train::RunConfig {
    let model = serde_json::json!({"model": "sliding_window", "num_heads": 1, "head_dim": 4, "num_layers": 1, "ffn_dim": 8});
    tiny_run_of(data, model)
}

#[test]
fn a_checkpoint_restores_the_statistics_classes_and_patch() {
    let data = ts::read(TS, "t.ts").unwrap();
    let run = run::DataRun::new(data.clone(), data.clone(), None, 2).unwrap();
    let mut trainer = crate::train::Trainer::new(tiny_run(&data.patched(2)))
        .unwrap()
        .with_data(run.clone())
        .unwrap();
    trainer.train_step().unwrap();
    let path = std::env::temp_dir().join(format!(
        "edifice-data-ckpt-{}.safetensors",
        std::process::id()
    ));
    trainer.save(&path).unwrap();
    let loaded = crate::train::Trainer::load(&path, None).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(loaded.restored.unwrap(), run.meta);
    assert_eq!(run.meta.patch, 2);
}

#[test]
fn regression_targets_are_standardised_and_recorded() {
    let mut data = ts::read(TS, "t.ts").unwrap();
    data.y = Targets::Values {
        values: vec![10.0, -1.0, 30.0, -3.0],
        width: 2,
    };
    let run = run::DataRun::new(data.clone(), data.clone(), None, 1).unwrap();
    let targets = run.meta.targets.clone().unwrap();
    assert_eq!(
        (targets.mean.clone(), targets.std.clone()),
        (vec![20.0, -2.0], vec![10.0, 1.0])
    );
    let Targets::Values { values, .. } = &run.train.y else {
        panic!("values expected");
    };
    assert_eq!(values, &vec![-1.0, 1.0, 1.0, -1.0]);
    // The checkpoint's metadata gives the same statistics back; a half
    // written pair of target statistics is refused.
    let meta = run.meta.to_meta();
    assert_eq!(run::DataMeta::from_meta(&meta).unwrap(), run.meta);
    let mut broken = meta.clone();
    broken.as_object_mut().unwrap().remove("target_std");
    assert!(run::DataMeta::from_meta(&broken).is_err());
    // Class labels where the run has targets are refused.
    let labelled = ts::read(TS, "t.ts").unwrap();
    let err = run.prepare(labelled).unwrap_err().to_string();
    assert!(
        err.contains("class labels where the training data has 2 regression targets"),
        "{err}"
    );
}

/// The logits at each sequence's last real frame ignore its padding (every
/// model's outputs: `tests/padding.rs`; here the read-out, with two models
/// whose positions read later ones).
#[test]
fn padding_does_not_change_the_logits() {
    use burn::module::Module;
    use burn::tensor::{Tensor, TensorData};
    // Sequence 1 has three real frames and one of padding, which shares a
    // chunk (dual_chunk) and a group (shifted_sparse) with its last real one.
    let text = "sequence,y,f0,f1\n0,a,1,2\n0,a,3,1\n0,a,2,2\n0,a,0,1\n1,b,5,0\n1,b,1,1\n1,b,2,3\n";
    let data = table::read(text, "d.csv").unwrap();
    let models = [
        serde_json::json!({"model": "dual_chunk", "hidden_size": 8, "num_heads": 2, "num_layers": 1, "chunk_size": 2}),
        serde_json::json!({"model": "shifted_sparse", "hidden_size": 8, "num_heads": 2, "num_layers": 1, "local_window": 2, "causal": false}),
    ];
    for (model, readout) in models
        .iter()
        .flat_map(|m| [Readout::Last, Readout::Mean].map(|r| (m.clone(), r)))
    {
        let mut run = tiny_run_of(&data, model.clone());
        run.task.readout = readout;
        let trainer = crate::train::Trainer::new(run).unwrap();
        let (net, device) = (trainer.model.valid(), burn::tensor::Device::flex());
        let tensor = |x: Vec<f32>| Tensor::<3>::from_data(TensorData::new(x, data.dims), &device);
        let logits = |x: Vec<f32>| -> Vec<f32> {
            let y = net.forward_lengths(tensor(x), Some(&data.lengths)).unwrap();
            y.into_data().try_to_vec().unwrap()
        };
        // Whatever the padding holds, sequence 1's logits (read from its
        // real frames) stay the same.
        let mut garbage = data.x.clone();
        garbage[14..].iter_mut().for_each(|v| *v = 7.0);
        let padded = logits(data.x.clone());
        assert_eq!(padded, logits(garbage), "{model} {readout:?}");
        // Sequence 0 has no padding: the padded read-out agrees with the
        // plain one.
        let plain: Vec<f32> = net
            .forward(tensor(data.x.clone()))
            .unwrap()
            .into_data()
            .try_to_vec()
            .unwrap();
        let diff = (0..2).fold(0f32, |m, c| m.max((plain[c] - padded[c]).abs()));
        assert!(diff < 1e-5, "{model} {readout:?}: {diff}");
    }
}

#[test]
fn patches_group_consecutive_frames() {
    // Sequences of 3 and 1 frames of 2 features, patches of 2 frames.
    let d = table::read(
        "sequence,y,f0,f1\n0,a,1,2\n0,a,3,4\n0,a,5,6\n1,b,7,8\n",
        "d.csv",
    )
    .unwrap();
    let p = d.patched(2);
    assert_eq!(p.dims, [2, 2, 4]);
    assert_eq!(p.lengths, vec![2, 1]);
    assert_eq!(
        p.x,
        vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0, 0.0, 7.0, 8.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    );
    assert_eq!(d.patched(1), d);
}

#[test]
fn class_weights_weight_the_cross_entropy() {
    use burn::tensor::{Int, Tensor, TensorData};
    let device = burn::tensor::Device::flex();
    let logits = [[2.0f64, 0.0], [0.0, 1.0], [1.0, 1.0]];
    let (labels, weights) = ([0usize, 1, 1], [1.0f64, 3.0]);
    let flat: Vec<f32> = logits.iter().flatten().map(|&v| v as f32).collect();
    let t = Tensor::<2>::from_data(TensorData::new(flat, [3, 2]), &device);
    let y = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1, 1], [3]), &device);
    let w: Vec<f32> = weights.iter().map(|&v| v as f32).collect();
    let (loss, accuracy) = crate::train::Trainer::weighted_stats(t, y, Some(&w), &device);
    // Σ w_y · (-log softmax_y) / Σ w_y, in f64.
    let (mut num, mut den) = (0.0, 0.0);
    for (row, &c) in logits.iter().zip(&labels) {
        let lse = row.iter().map(|v| v.exp()).sum::<f64>().ln();
        num += weights[c] * (lse - row[c]);
        den += weights[c];
    }
    let got = loss.into_scalar::<f32>() as f64;
    assert!((got - num / den).abs() < 1e-6, "{got} vs {}", num / den);
    assert!((accuracy - 2.0 / 3.0).abs() < 1e-12);
}

#[test]
fn a_length_the_model_cannot_take_is_padded_up_to_one_it_can() {
    let data = ts::read(TS, "t.ts").unwrap();
    let model = serde_json::json!({"model": "dual_chunk", "hidden_size": 8, "num_heads": 2, "num_layers": 1, "chunk_size": 2});
    let config = tiny_run_of(&data, model);
    // Three frames, chunks of two: the run takes four.
    assert_eq!((data.dims[1], config.task.seq_len), (3, 4));
    assert_eq!(config.model.input_dims().0, 4);
    let run = run::DataRun::new(data.clone(), data.clone(), None, 1).unwrap();
    let mut trainer = crate::train::Trainer::new(config)
        .unwrap()
        .with_data(run)
        .unwrap();
    trainer.train_step().unwrap();
    let stored = trainer.data().unwrap();
    assert_eq!((stored.train.dims[1], stored.val.dims[1]), (4, 4));
    assert_eq!(stored.prepare(data).unwrap().dims[1], 4);
    // A length given in the model table is kept (and refused when it does
    // not fit the chunks).
    let fixed = serde_json::json!({"model": "dual_chunk", "hidden_size": 8, "num_heads": 2, "num_layers": 1, "chunk_size": 2, "seq_len": 3});
    let err = crate::train::RunConfig::from_value(serde_json::json!({
        "task": {"kind": "data", "seq_len": 3, "embed_dim": 2, "classes": 2},
        "model": fixed,
    }))
    .unwrap_err();
    assert!(err.to_string().contains("chunk_size"), "{err}");
}

#[test]
fn training_noise_moves_real_tokens_only_and_is_reproducible() {
    // Sequence 0 has 3 frames, sequence 1 one frame and 2 of padding.
    let d = table::read(
        "sequence,y,f0,f1\n0,a,1,2\n0,a,3,4\n0,a,5,6\n1,b,7,8\n",
        "d.csv",
    )
    .unwrap();
    let run = run::DataRun::new(d.clone(), d, None, 1).unwrap();
    let (clean, lengths) = run.train_batch(7, 0, 2, noise(0.0));
    let (noisy, noisy_lengths) = run.train_batch(7, 0, 2, noise(0.5));
    assert_eq!(
        (noisy.dims, &noisy.y, &noisy_lengths),
        (clean.dims, &clean.y, &lengths)
    );
    let e = clean.dims[2];
    for (row, &len) in lengths.iter().enumerate() {
        let at = |x: &[f32], t: usize| x[(row * clean.dims[1] + t) * e..][..e].to_vec();
        for t in 0..clean.dims[1] {
            let (c, n) = (at(&clean.x, t), at(&noisy.x, t));
            if t < len {
                assert!(c.iter().zip(&n).all(|(c, n)| c != n), "row {row} frame {t}");
            } else {
                assert_eq!(n, vec![0.0; e], "padding of row {row} frame {t}");
            }
        }
    }
    // The same (seed, step) draws the same noise; another step another.
    assert_eq!(run.train_batch(7, 0, 2, noise(0.5)).0.x, noisy.x);
    assert_ne!(run.train_batch(7, 1, 2, noise(0.5)).0.x, noisy.x);
}

#[test]
fn training_noise_is_gaussian_with_the_given_deviation() {
    let frames = 4000;
    let d = Dataset {
        x: vec![0.0; frames],
        dims: [1, frames, 1],
        lengths: vec![frames],
        y: Targets::Classes {
            labels: vec![0],
            names: vec!["a".into()],
        },
    };
    let run = run::DataRun::new(d.clone(), d, None, 1).unwrap();
    let x = run.train_batch(0, 0, 1, noise(0.5)).0.x;
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let kurtosis = x.iter().map(|&v| (v as f64 - mean).powi(4)).sum::<f64>() / n / var.powi(2);
    // Standard errors at n = 4000: mean 0.008, deviation 0.006, kurtosis 0.08.
    assert!(mean.abs() < 0.03, "mean {mean}");
    assert!((var.sqrt() - 0.5).abs() < 0.03, "deviation {}", var.sqrt());
    assert!((kurtosis - 3.0).abs() < 0.4, "kurtosis {kurtosis}");
}

fn noise(sigma: f32) -> run::Augment {
    run::Augment {
        noise: sigma,
        ..Default::default()
    }
}

#[test]
fn training_shift_moves_each_sequence_within_its_real_frames() {
    // Sequence `a` has 20 frames (t, −t), `b` 8 frames (100 + t, t); patched
    // by 3, so the last token of each holds padding frames.
    let mut csv = String::from("sequence,y,f0,f1\n");
    for t in 0..20 {
        csv += &format!("0,a,{t},{}\n", -t);
    }
    for t in 0..8 {
        csv += &format!("1,b,{},{t}\n", 100 + t);
    }
    let d = table::read(&csv, "d.csv").unwrap();
    let run = run::DataRun::new(d.clone(), d, None, 3).unwrap();
    let shift = run::Augment {
        shift: 0.25,
        ..Default::default()
    };
    let mut seen = std::collections::BTreeSet::new();
    for step in 0..12 {
        let (clean, _) = run.train_batch(9, step, 2, run::Augment::default());
        let (moved, _) = run.train_batch(9, step, 2, shift);
        assert_eq!(run.train_batch(9, step, 2, shift).0.x, moved.x);
        let row = clean.dims[1] * clean.dims[2];
        for (b, (c, m)) in clean.x.chunks(row).zip(moved.x.chunks(row)).enumerate() {
            let Labels::Classes(y) = &clean.y else {
                panic!()
            };
            // ⌊0.25 · 20⌋ = 5 and ⌊0.25 · 8⌋ = 2 frames at most.
            let (frames, most) = if y[b] == 0 { (20, 5) } else { (8, 2) };
            let frame = |x: &[f32], t: usize| x[2 * t..2 * t + 2].to_vec();
            let s = (-most..=most)
                .find(|&s: &isize| {
                    (0..frames).all(|t| {
                        frame(m, t)
                            == frame(c, (t as isize - s).clamp(0, frames as isize - 1) as usize)
                    })
                })
                .unwrap_or_else(|| panic!("step {step} row {b}: not a shift of ±{most}"));
            assert_eq!(&m[2 * frames..], &c[2 * frames..], "padding moved");
            seen.insert(s);
        }
    }
    assert!(
        seen.len() >= 5 && seen.first() < Some(&0) && seen.last() > Some(&0),
        "{seen:?}"
    );
}

#[test]
fn augmentations_are_checked_and_for_data_runs_only() {
    let config = |task: &str, name: &str, value: f64| {
        crate::train::RunConfig::from_value(serde_json::json!({
            "task": {"kind": task, "seq_len": 8, "embed_dim": 8, "classes": 2},
            "train": {name: value},
        }))
    };
    assert_eq!(config("data", "noise", 0.1).unwrap().train.noise, 0.1);
    assert_eq!(config("data", "shift", 0.1).unwrap().train.shift, 0.1);
    for (name, bad) in [
        ("noise", -0.1),
        ("noise", 1e39),
        ("shift", -0.1),
        ("shift", 0.5),
    ] {
        let err = config("data", name, bad).unwrap_err().to_string();
        assert!(err.contains(&format!("{name} must be in [0,")), "{err}");
        let err = config("lookback", name, 0.1).unwrap_err().to_string();
        assert!(err.contains("--data"), "{err}");
        // Off, the recorded run config is what it was before the option
        // existed, so older checkpoints still resume.
        let quiet = config("lookback", name, 0.0).unwrap();
        assert_eq!(quiet.train.augment(), run::Augment::default());
        assert!(quiet.to_value()["train"].get(name).is_none());
    }
}

#[test]
fn a_resumed_augmented_run_equals_an_uninterrupted_one() {
    let data = ts::read(TS, "t.ts").unwrap();
    let model = serde_json::json!({"model": "sliding_window", "num_heads": 1, "head_dim": 4, "num_layers": 1, "ffn_dim": 8, "dropout": 0.0});
    let mut value = tiny_run_of(&data, model).to_value();
    value["train"]["noise"] = 0.3.into();
    value["train"]["shift"] = 0.4.into();
    value["train"]["steps"] = 4.into();
    let config = crate::train::RunConfig::from_value(value).unwrap();
    let run = run::DataRun::new(data.clone(), data.clone(), None, 1).unwrap();
    let trainer = || {
        crate::train::Trainer::new(config.clone())
            .unwrap()
            .with_data(run.clone())
            .unwrap()
    };
    let mut straight = trainer();
    let mut first = trainer();
    for _ in 0..4 {
        straight.train_step().unwrap();
    }
    for _ in 0..2 {
        first.train_step().unwrap();
    }
    let path = std::env::temp_dir().join(format!(
        "edifice-augmented-resume-{}.safetensors",
        std::process::id()
    ));
    first.save(&path).unwrap();
    let loaded = crate::train::Trainer::load(&path, Some(&config)).unwrap();
    std::fs::remove_file(&path).unwrap();
    let mut resumed = loaded.with_data(run.clone()).unwrap();
    for _ in 0..2 {
        resumed.train_step().unwrap();
    }
    let weights = |t: &mut crate::train::Trainer| crate::weights::tensors(&mut t.model);
    assert_eq!(weights(&mut straight), weights(&mut resumed));
    // The augmentation is what it trained on: without it the weights
    // differ.
    let mut value = config.to_value();
    value["train"]["noise"] = 0.0.into();
    value["train"]["shift"] = 0.0.into();
    let quiet = crate::train::RunConfig::from_value(value).unwrap();
    let mut plain = crate::train::Trainer::new(quiet)
        .unwrap()
        .with_data(run)
        .unwrap();
    for _ in 0..4 {
        plain.train_step().unwrap();
    }
    assert_ne!(weights(&mut straight), weights(&mut plain));
}
