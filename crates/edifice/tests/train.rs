//! Training: tasks are deterministic, a resumed run equals an uninterrupted
//! one bit for bit, and bad run configs or checkpoints are refused clearly.

use edifice::tasks::{Labels, Split, TaskConfig, TaskKind};
use edifice::train::{RunConfig, Trainer};
use edifice::weights;

/// Trainers seed and draw from the device's one RNG: tests that build them
/// take turns, so a run's weights do not depend on another test's draws.
static DEVICE_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn tiny_run() -> RunConfig {
    RunConfig::from_toml(
        r#"
        [model]
        model = "sliding_window"
        num_heads = 2
        head_dim = 4
        num_layers = 1
        ffn_dim = 8
        dropout = 0.2
        [task]
        seq_len = 12
        embed_dim = 12
        classes = 4
        offsets = 3
        [train]
        steps = 12
        batch_size = 4
        eval_every = 4
        eval_batches = 2
        warmup_steps = 3
        "#,
    )
    .unwrap()
}

#[test]
fn tasks_are_deterministic_and_labelled() {
    for kind in [TaskKind::Lookback, TaskKind::Recall, TaskKind::Frames] {
        let task = TaskConfig::new()
            .with_kind(kind)
            .with_seq_len(40)
            .with_embed_dim(30)
            .with_classes(6);
        task.validate().unwrap();
        let a = task.batch(7, Split::Train, 3, 5);
        assert_eq!(a, task.batch(7, Split::Train, 3, 5), "{kind:?}");
        assert_ne!(a, task.batch(7, Split::Eval, 3, 5), "{kind:?}");
        assert_ne!(a, task.batch(7, Split::Train, 4, 5), "{kind:?}");
        assert_eq!(a.dims, [5, 40, 30]);
        let Labels::Classes(y) = &a.y else {
            panic!("built-in tasks have classes")
        };
        assert!(y.iter().all(|&y| (0..6).contains(&y)));
    }
    // Lookback's label really is the class of the frame k steps back.
    let task = TaskConfig::new()
        .with_seq_len(20)
        .with_embed_dim(12)
        .with_classes(4)
        .with_offsets(3);
    let offsets = task.lookback_offsets();
    let b = task.batch(1, Split::Train, 0, 8);
    let Labels::Classes(labels) = &b.y else {
        panic!("built-in tasks have classes")
    };
    for (i, &y) in labels.iter().enumerate() {
        let frame = |t: usize| &b.x[(i * 20 + t) * 12..(i * 20 + t + 1) * 12];
        let pick = (0..3).find(|&m| frame(19)[4 + m] == 1.0).unwrap();
        let back = frame(19 - offsets[pick]);
        assert_eq!(back[y as usize], 1.0);
    }
    assert!(TaskConfig::new().with_embed_dim(5).validate().is_err());
}

#[test]
fn resumed_run_equals_uninterrupted_run() {
    let _rng = DEVICE_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let mut straight = Trainer::new(tiny_run()).unwrap();
    for _ in 0..12 {
        straight.train_step().unwrap();
    }
    let dir = std::env::temp_dir().join(format!("edifice-train-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("checkpoint.safetensors");
    let mut first = Trainer::new(tiny_run()).unwrap();
    for _ in 0..5 {
        first.train_step().unwrap();
    }
    first.save(&path).unwrap();
    drop(first);
    let mut resumed = Trainer::load(&path, Some(&tiny_run())).unwrap();
    assert_eq!(resumed.step, 5);
    for _ in 5..12 {
        resumed.train_step().unwrap();
    }
    assert_eq!(
        weights::tensors(&mut straight.model),
        weights::tensors(&mut resumed.model)
    );
    assert_eq!(straight.evaluate().unwrap(), resumed.evaluate().unwrap());

    // Refusals: another run's config, a truncated file, a plain weights file, garbage.
    let other = RunConfig::from_toml("[train]\nlr = 0.5").unwrap();
    let err = Trainer::load(&path, Some(&other))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("different run config"), "{err}");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = Trainer::load(&path, None).err().unwrap().to_string();
    assert!(err.contains("not a valid safetensors"), "{err}");
    let plain = weights::to_safetensors(&weights::tensors(&mut resumed.model)).unwrap();
    std::fs::write(&path, plain).unwrap();
    let err = Trainer::load(&path, None).err().unwrap().to_string();
    assert!(err.contains("not an edifice checkpoint"), "{err}");
    let err = Trainer::load(&dir.join("missing.safetensors"), None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("cannot read"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_run_configs_are_refused() {
    for (text, needle) in [
        ("[trian]\nsteps = 3", "unknown table `trian`"),
        ("[train]\nstep = 3", "unknown option"),
        ("[train]\nsteps = 0", "at least 1"),
        ("[train]\nlr = -1.0", "lr"),
        ("[task]\nkind = \"guess\"", "bad [task]"),
        ("[task]\nembed_dim = 4", "embed_dim"),
        (
            "[model]\nmodel = \"ring\"\nwindow_size = 32",
            "the task makes",
        ),
        (
            "[model]\nmodel = \"dual_chunk\"\nchunk_size = 5",
            "multiple of chunk_size",
        ),
        ("train = 3", "must be a table"),
    ] {
        let err = RunConfig::from_toml(text)
            .err()
            .unwrap_or_else(|| panic!("{text:?} was accepted"))
            .to_string();
        assert!(err.contains(needle), "{text:?}: {err}");
    }
    let run = RunConfig::default_run();
    assert_eq!(run.model.name(), "sliding_window");
    assert_eq!(run.model.input_dims(), (64, 16));
    // Warm-up then cosine decay to min_lr.
    assert!(run.lr(0) < run.lr(49) && (run.lr(49) - 3e-3).abs() < 1e-12);
    assert!((run.lr(999) - run.train.min_lr).abs() < 1e-6);
}

/// A weight that is not finite: evaluation and saving are errors naming
/// what diverged, and saving leaves the file on disk as it was.
#[test]
fn non_finite_weights_are_never_saved() {
    let _rng = DEVICE_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let mut trainer = Trainer::new(tiny_run()).unwrap();
    let dir = std::env::temp_dir().join(format!("edifice-nonfinite-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("checkpoint.safetensors");
    trainer.save(&path).unwrap();
    let before = std::fs::read(&path).unwrap();
    let mut tensors = weights::tensors(&mut trainer.model);
    let (name, (_, values)) = tensors.iter_mut().next().unwrap();
    let name = name.clone();
    values[0] = f32::NAN;
    weights::load_tensors(&mut trainer.model, tensors).unwrap();
    let err = trainer.save(&path).unwrap_err().to_string();
    assert!(err.contains("diverged") && err.contains(&name), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    let err = trainer.evaluate().unwrap_err().to_string();
    assert!(err.contains("held-out loss"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
