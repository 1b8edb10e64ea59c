//! A stream's step allocates nothing once its state exists: a counting
//! global allocator watches this thread while every model steps, alone and
//! in a batch, across rewinds.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use edifice::models::{
    DualChunkConfig, HybridConfig, RingConfig, ShiftedSparseConfig, SlidingWindowConfig,
};
use edifice::stream::{StreamOptions, Streamer};
use edifice::ModelConfig;

struct Counting;

thread_local! {
    static WATCHING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if WATCHING.with(Cell::get) {
            COUNT.with(|c| c.set(c.get() + 1));
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Allocations made on this thread by `f`.
fn allocations(f: impl FnOnce()) -> usize {
    COUNT.with(|c| c.set(0));
    WATCHING.with(|w| w.set(true));
    f();
    WATCHING.with(|w| w.set(false));
    COUNT.with(Cell::get)
}

#[test]
fn steps_do_not_allocate() {
    // The counter sees allocations: a Vec, and Recompute's burn forward.
    assert_eq!(allocations(|| drop(std::hint::black_box(vec![1u8; 8]))), 1);
    let config = ModelConfig::SlidingWindow(
        SlidingWindowConfig::new(8)
            .with_num_heads(2)
            .with_head_dim(4)
            .with_window_size(3),
    );
    let model = config.init(&Default::default()).unwrap();
    let options = StreamOptions::default().with_mode(edifice::stream::Mode::Recompute);
    let recompute = Streamer::new(&config, &model, options).unwrap();
    let mut state = recompute.state();
    let mut out = vec![0.0; recompute.output_size()];
    assert!(allocations(|| recompute.step(&mut state, &[0.5; 8], &mut out).unwrap()) > 0);

    let configs = [
        ModelConfig::SlidingWindow(
            SlidingWindowConfig::new(20)
                .with_num_heads(2)
                .with_head_dim(16)
                .with_window_size(6),
        ),
        ModelConfig::Hybrid(
            HybridConfig::new(20)
                .with_lstm_hidden(16)
                .with_num_heads(2)
                .with_head_dim(8)
                .with_attention_window(Some(6)),
        ),
        ModelConfig::HybridMlp(
            HybridConfig::new_mlp(20)
                .with_lstm_hidden(16)
                .with_num_heads(2)
                .with_head_dim(8),
        ),
        ModelConfig::DualChunk(
            DualChunkConfig::new(20)
                .with_hidden_size(16)
                .with_num_heads(2)
                .with_num_layers(2)
                .with_chunk_size(4)
                .with_strict_causal(true),
        ),
        ModelConfig::Ring(
            RingConfig::new(20)
                .with_hidden_size(16)
                .with_num_heads(2)
                .with_num_layers(2),
        ),
        ModelConfig::ShiftedSparse(
            ShiftedSparseConfig::new(20)
                .with_hidden_size(16)
                .with_num_heads(4)
                .with_global_tokens(2),
        ),
    ];
    for config in configs {
        let model = config.init(&Default::default()).unwrap();
        let streamer =
            Streamer::new(&config, &model, StreamOptions::default().with_rollback(4)).unwrap();
        let (e, o) = (streamer.input_size(), streamer.output_size());
        let mut states: Vec<_> = (0..6).map(|_| streamer.state()).collect();
        let frames: Vec<f32> = (0..6 * e).map(|i| (i % 7) as f32 / 7.0).collect();
        let mut out = vec![0.0; 6 * o];
        let n = allocations(|| {
            for step in 0..40 {
                streamer
                    .step(&mut states[0], &frames[..e], &mut out[..o])
                    .unwrap();
                streamer
                    .step_batch(&mut states[1..], &frames[e..], &mut out[o..])
                    .unwrap();
                if step % 10 == 9 {
                    states.iter_mut().for_each(|s| s.rewind(3).unwrap());
                }
            }
        });
        assert_eq!(n, 0, "{}: {n} allocations in 40 steps", config.name());
    }
}
