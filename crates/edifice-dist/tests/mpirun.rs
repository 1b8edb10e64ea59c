//! The distributed scenarios of `edifice-dist-check` under `mpirun` with 2,
//! 3 and 4 ranks on this machine (`--oversubscribe`): each compares the
//! ring with one process and fails on a difference above the bar, or
//! plants a failure and checks that the job ends in time.
//!
//! Needs Open MPI's `mpirun` (`scripts/test.sh` installs it). Each run
//! has its own timeout, after which its whole process group is killed and
//! the test fails.

use std::time::Duration;

use edifice_dist::launch::{self, Run};

/// `mpirun -n ranks edifice-dist-check scenario`, killed after `limit`.
fn mpirun(ranks: usize, scenario: &str, env: &[(&str, &str)], limit: Duration) -> Run {
    let program = std::path::Path::new(env!("CARGO_BIN_EXE_edifice-dist-check"));
    launch::mpirun(ranks, program, &[scenario], env, limit).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `scenario` on 2, 3 and 4 ranks; returns each run's output.
fn passes(scenario: &str, expect: &str) -> Vec<String> {
    let mut outputs = Vec::new();
    for ranks in [2, 3, 4] {
        let run = mpirun(ranks, scenario, &[], Duration::from_secs(240));
        assert!(
            run.success,
            "{scenario} on {ranks} ranks failed:\n{}",
            run.output
        );
        assert!(
            run.output.contains(expect),
            "{scenario} on {ranks} ranks:\n{}",
            run.output
        );
        eprintln!(
            "{scenario}, {ranks} ranks ({:.1} s):\n{}",
            run.took.as_secs_f64(),
            run.output.trim()
        );
        outputs.push(run.output);
    }
    outputs
}

/// The largest number after `label` in `output`.
fn largest_after(output: &str, label: &str) -> f64 {
    output
        .lines()
        .filter_map(|l| {
            l.split(label)
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
        .fold(0.0, f64::max)
}

#[test]
fn ring_attention_matches_one_process() {
    let worst: Vec<f64> = passes("kernel", "kernel max |diff|")
        .iter()
        .map(|out| largest_after(out, "kernel max |diff| "))
        .collect();
    // Each rank already checked 1e-5; the error must not grow with P.
    assert!(worst.iter().all(|&e| e > 0.0 && e <= 1e-5), "{worst:?}");
    assert!(
        worst[2] <= 2.0 * worst[0] + 1e-6,
        "error grows with the ranks: {worst:?}"
    );
}

#[test]
fn ring_model_forward_matches_one_process() {
    passes("model", "model forward max |diff|");
}

#[test]
fn ring_model_training_matches_one_process() {
    passes("train", "20 steps");
}

#[test]
fn ranks_with_different_weights_are_refused() {
    let run = mpirun(3, "mismatch", &[], Duration::from_secs(60));
    assert!(run.success, "{}", run.output);
    assert_eq!(
        run.output.matches("refused: ranks disagree").count(),
        9,
        "{}",
        run.output
    );
}

#[test]
fn a_killed_rank_ends_every_rank() {
    let run = mpirun(3, "die", &[], Duration::from_secs(30));
    assert!(!run.success, "{}", run.output);
    assert!(run.output.contains("killing itself"), "{}", run.output);
}

#[test]
fn a_stuck_rank_times_out_every_rank() {
    let run = mpirun(
        3,
        "hang",
        &[("EDIFICE_DIST_TIMEOUT", "5")],
        Duration::from_secs(30),
    );
    assert!(!run.success, "{}", run.output);
    assert!(
        run.output
            .contains("timed out after 5 s waiting for rank 1"),
        "{}",
        run.output
    );
}
