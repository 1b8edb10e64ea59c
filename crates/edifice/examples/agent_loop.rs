//! A 60 Hz agent loop: read a frame, step the model, act, with rollback.
//!
//! Every 16.7 ms a 287-wide frame arrives (here a synthetic game: the
//! player's own state and a remote player's last known input); the
//! sliding-window model (Edifice's defaults) steps once and its output picks
//! one of eight actions. The remote input is predicted ("same as last
//! frame") until the real one arrives 7 frames late, as in netplay: then the
//! stream rewinds 7 steps and replays the corrected frames, which must give
//! the outputs a stream fed the true inputs from the start gives, bit for bit.
//!
//! ```sh
//! cargo run --release -p edifice --example agent_loop [frames]
//! ```

use std::time::{Duration, Instant};

use edifice::models::SlidingWindowConfig;
use edifice::stream::{StreamOptions, Streamer};
use edifice::ModelConfig;

const EMBED: usize = 287;
const ROLLBACK: usize = 7;
const FRAME: Duration = Duration::from_nanos(16_666_667);

/// Frame `t` of the game, with the remote player's input `remote`.
fn frame(t: u64, remote: f32) -> Vec<f32> {
    let mut f: Vec<f32> = (0..EMBED)
        .map(|i| (t as f32 * 0.05 + i as f32 * 0.37).sin() * 0.5)
        .collect();
    f[0] = remote;
    f
}

/// The remote player's true input at frame `t` (it changes every 45 frames).
fn remote_input(t: u64) -> f32 {
    if (t / 45).is_multiple_of(2) {
        0.8
    } else {
        -0.8
    }
}

fn action(out: &[f32]) -> usize {
    out[..8]
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

fn main() -> Result<(), edifice::Error> {
    let frames: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(150);
    let config = ModelConfig::SlidingWindow(SlidingWindowConfig::new(EMBED));
    let model = config.init(&Default::default())?;
    let streamer = Streamer::new(
        &config,
        &model,
        StreamOptions::default().with_rollback(ROLLBACK),
    )?;
    let mut state = streamer.state();
    // A second stream fed the true inputs from the start: the rollback's check.
    let mut truth = streamer.state();
    let mut out = vec![0.0; streamer.output_size()];
    let mut true_out = out.clone();
    let mut predicted = remote_input(0);
    let (mut worst, mut mismatches) = (Duration::ZERO, 0);
    let mut next = Instant::now();
    for t in 0..frames {
        // The real remote input for frame t - ROLLBACK arrives now.
        if t >= ROLLBACK as u64 && remote_input(t - ROLLBACK as u64) != predicted {
            let start = Instant::now();
            state.rewind(ROLLBACK)?;
            for past in t - ROLLBACK as u64..t {
                streamer.step(&mut state, &frame(past, remote_input(past)), &mut out)?;
            }
            predicted = remote_input(t - ROLLBACK as u64);
            println!(
                "frame {t:4}: remote input changed 7 frames ago: rewound and replayed 7 frames in {:.0} µs",
                start.elapsed().as_secs_f64() * 1e6
            );
        }
        let start = Instant::now();
        streamer.step(&mut state, &frame(t, predicted), &mut out)?;
        let took = start.elapsed();
        worst = worst.max(took);
        streamer.step(&mut truth, &frame(t, remote_input(t)), &mut true_out)?;
        // Once the prediction has caught up (no change in the last 7 frames),
        // the stream must agree with the one that knew all along.
        let settled = (t.saturating_sub(ROLLBACK as u64)..=t).all(|p| remote_input(p) == predicted);
        if settled
            && out
                .iter()
                .zip(&true_out)
                .any(|(a, b)| a.to_bits() != b.to_bits())
        {
            mismatches += 1;
        }
        if t.is_multiple_of(15) {
            println!(
                "frame {t:4}: action {} ({:.1} µs)",
                action(&out),
                took.as_secs_f64() * 1e6
            );
        }
        next += FRAME;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    println!(
        "{frames} frames at 60 Hz; slowest step {:.1} µs; settled frames differing from the true stream: {mismatches}",
        worst.as_secs_f64() * 1e6
    );
    assert_eq!(mismatches, 0, "a replay must give the true stream's bits");
    Ok(())
}
