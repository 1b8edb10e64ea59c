//! Ring attention on one process equals fused causal attention.

mod common;

use common::data;
use edifice_kernels::{reference, ring, Attention, AttnShape, Pattern, PatternKind};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every chunk count that divides N, GQA, odd head dims: output and lse
    /// match the f64 reference of full causal attention.
    #[test]
    fn ring_equals_causal(
        batch in 1usize..=2,
        heads_kv in 1usize..=2,
        group in 1usize..=2,
        cs in prop::sample::select(&[1usize, 2, 3, 16, 64, 65][..]),
        chunks in 1usize..=5,
        head_dim in prop::sample::select(&[8usize, 24, 64][..]),
        seed in any::<u64>(),
    ) {
        let n = cs * chunks;
        let shape = AttnShape { batch, heads_q: heads_kv * group, heads_kv, len_q: n, len_k: n, head_dim };
        let (q, k, v) = (data(shape.q_len(), seed), data(shape.kv_len(), seed ^ 1), data(shape.kv_len(), seed ^ 2));
        let scale = 0.7 / (head_dim as f32).sqrt();
        let (o, lse) = ring::forward(shape, chunks, scale, &q, &k, &v).unwrap();
        let causal = Attention::new(shape, Pattern::new(PatternKind::Full, true)).unwrap().with_scale(scale).unwrap();
        let (want_o, want_lse) = reference::forward(&causal, &q, &k, &v);
        for (a, b) in o.iter().zip(&want_o) {
            prop_assert!((a - b).abs() < 1e-5, "o {a} vs {b}");
        }
        for (a, b) in lse.iter().zip(&want_lse) {
            prop_assert!((a - b).abs() < 1e-4, "lse {a} vs {b}");
        }
    }
}

#[test]
fn merge_of_two_halves_is_the_whole() {
    // Split the keys of a full (non-causal) row set in two; merging the halves
    // by lse must give attention over all keys.
    let shape = AttnShape {
        batch: 1,
        heads_q: 2,
        heads_kv: 2,
        len_q: 7,
        len_k: 10,
        head_dim: 16,
    };
    let (q, k, v) = (
        data(shape.q_len(), 3),
        data(shape.kv_len(), 4),
        data(shape.kv_len(), 5),
    );
    let full = Attention::new(shape, Pattern::new(PatternKind::Full, false)).unwrap();
    let (want_o, want_lse) = full.forward_vec(&q, &k, &v).unwrap();
    let split = |x: &[f32], lo: usize, hi: usize| -> Vec<f32> {
        x.chunks_exact(10 * 16)
            .flat_map(|p| p[lo * 16..hi * 16].to_vec())
            .collect()
    };
    let mut acc = (
        vec![0.0; shape.q_len()],
        vec![f32::NEG_INFINITY; shape.lse_len()],
    );
    for (lo, hi) in [(0, 4), (4, 10)] {
        let part = AttnShape {
            len_k: hi - lo,
            ..shape
        };
        let att = Attention::new(part, Pattern::new(PatternKind::Full, false)).unwrap();
        let (o, lse) = att
            .forward_vec(&q, &split(&k, lo, hi), &split(&v, lo, hi))
            .unwrap();
        ring::merge(&mut acc.0, &mut acc.1, &o, &lse, 16);
    }
    for (a, b) in acc.0.iter().zip(&want_o) {
        assert!((a - b).abs() < 1e-6);
    }
    for (a, b) in acc.1.iter().zip(&want_lse) {
        assert!((a - b).abs() < 1e-5);
    }
}

#[test]
fn bad_chunking_is_an_error() {
    let shape = AttnShape {
        batch: 1,
        heads_q: 1,
        heads_kv: 1,
        len_q: 10,
        len_k: 10,
        head_dim: 8,
    };
    let x = vec![0.0; shape.q_len()];
    let err = ring::forward(shape, 4, 1.0, &x, &x, &x).unwrap_err();
    assert!(err.to_string().contains("divisible"), "{err}");
    assert!(ring::forward(shape, 0, 1.0, &x, &x, &x).is_err());
    let cross = AttnShape { len_k: 5, ..shape };
    assert!(ring::forward(cross, 5, 1.0, &x, &x[..40], &x[..40]).is_err());
}
