//! The backward kernel against the reference's analytic gradients (f64),
//! and those against central finite differences, over random shapes, every
//! pattern with and without causal, custom scales and every instruction set.

mod common;

use common::{data, long_kinds, pattern_strategy, shape_strategy, GATHER_BUDGETS};
use edifice_kernels::{
    bf16, reference, Attention, AttnShape, BackwardSchedule, Element, Isa, Pattern, PatternKind,
};
use proptest::prelude::*;

/// Both explicit schedules, and the automatic choice.
const SCHEDULES: &[BackwardSchedule] = &[
    BackwardSchedule::OnePass,
    BackwardSchedule::TwoPass,
    BackwardSchedule::Auto,
];

/// The bar: within 1e-4 of the reference, relative to max |grad|.
const TOL: f64 = 1e-4;

fn max_abs(x: &[f32]) -> f64 {
    x.iter().fold(0.0f64, |m, &v| m.max((v as f64).abs()))
}

/// bf16 storage, relative to max |grad|: the gradients are rounded to bf16
/// (2⁻⁹) and δ = rowsum(dO ∘ O) reads the bf16-rounded o of the forward pass.
const BF16_TOL: f64 = 1.0 / 256.0;

fn assert_grads(att: &Attention, seed: u64) -> Result<(), TestCaseError> {
    assert_grads_as::<f32>(att, seed, TOL)
}

/// Gradients with storage type `E` against the reference on the same
/// (rounded) inputs, within `tol` relative to max |grad|.
fn assert_grads_as<E: Element>(att: &Attention, seed: u64, tol: f64) -> Result<(), TestCaseError> {
    let s = att.shape();
    let stored = |n, seed| -> Vec<E> { data(n, seed).into_iter().map(E::from_f32).collect() };
    let q = stored(s.q_len(), seed);
    let k = stored(s.kv_len(), seed ^ 1);
    let v = stored(s.kv_len(), seed ^ 2);
    let d_o = stored(s.q_len(), seed ^ 3);
    let (o, lse) = att.forward_vec(&q, &k, &v).unwrap();
    let got = att.backward_vec(&q, &k, &v, &o, &lse, &d_o).unwrap();
    let wide = |x: &[E]| -> Vec<f32> { x.iter().map(|v| v.to_f32()).collect() };
    let got = (wide(&got.0), wide(&got.1), wide(&got.2));
    let want = reference::backward(att, &wide(&q), &wide(&k), &wide(&v), &wide(&d_o));
    // Relative to the largest gradient of the call: a gradient that is zero
    // in exact arithmetic (one key: dS = P·(dP - δ) with dP = δ) comes out as
    // rounding noise of the size of its terms.
    let scale = [&want.0, &want.1, &want.2]
        .iter()
        .map(|w| max_abs(w))
        .fold(1e-2, f64::max);
    for (name, g, w) in [
        ("dq", &got.0, &want.0),
        ("dk", &got.1, &want.1),
        ("dv", &got.2, &want.2),
    ] {
        let tol = tol * scale;
        for (idx, (&a, &b)) in g.iter().zip(w.iter()).enumerate() {
            prop_assert!(a.is_finite(), "{}[{}] = {}", name, idx, a);
            prop_assert!(
                ((a - b) as f64).abs() <= tol,
                "{}[{}] = {} want {} (tol {}) {:?}",
                name,
                idx,
                a,
                b,
                tol,
                att
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    #[test]
    fn backward_matches_reference(
        (shape, pattern, scale, isa, budget, schedule, seed) in shape_strategy().prop_flat_map(|shape| (
            Just(shape),
            pattern_strategy(shape),
            prop::option::of(0.01f32..2.0),
            0..Isa::available().len(),
            prop::sample::select(GATHER_BUDGETS),
            prop::sample::select(SCHEDULES),
            any::<u64>(),
        ))
    ) {
        let mut att = Attention::new(shape, pattern)
            .unwrap()
            .with_isa(Isa::available()[isa])
            .with_gather_budget(budget)
            .with_backward_schedule(schedule);
        if let Some(scale) = scale {
            att = att.with_scale(scale).unwrap();
        }
        assert_grads(&att, seed)?;
    }
}

/// bf16 storage: q, k, v, dO rounded to bf16, both bf16 forward paths (f32
/// products on widened tiles, and `vdpbf16ps` pairs), every pattern.
#[test]
fn bf16_gradients_match_reference() {
    let shape = AttnShape {
        batch: 2,
        heads_q: 4,
        heads_kv: 2,
        len_q: 150,
        len_k: 200,
        head_dim: 32,
    };
    for kind in long_kinds() {
        for causal in [false, true] {
            for isa in Isa::available() {
                let att = Attention::new(shape, Pattern::new(kind.clone(), causal))
                    .unwrap()
                    .with_isa(isa);
                assert_grads_as::<bf16>(&att, 5, BF16_TOL).unwrap();
            }
        }
    }
}

/// Long sequences: many key chunks per kv head, strided spans crossing
/// chunk boundaries, grouped heads.
#[test]
fn long_sequences_every_pattern() {
    let shape = AttnShape {
        batch: 1,
        heads_q: 4,
        heads_kv: 2,
        len_q: 300,
        len_k: 700,
        head_dim: 32,
    };
    for kind in long_kinds() {
        for causal in [false, true] {
            for &budget in GATHER_BUDGETS {
                for &schedule in SCHEDULES {
                    let att = Attention::new(shape, Pattern::new(kind.clone(), causal))
                        .unwrap()
                        .with_gather_budget(budget)
                        .with_backward_schedule(schedule);
                    assert_grads(&att, 11).unwrap();
                }
            }
        }
    }
}

/// Key lengths across many tiles: a batch element without keys, one cut
/// inside a tile and one with every key, for every pattern kind.
#[test]
fn long_sequences_with_key_lengths() {
    let shape = AttnShape {
        batch: 3,
        heads_q: 2,
        heads_kv: 1,
        len_q: 300,
        len_k: 300,
        head_dim: 16,
    };
    for kind in long_kinds() {
        for causal in [false, true] {
            for &schedule in SCHEDULES {
                let pattern =
                    Pattern::new(kind.clone(), causal).with_key_lengths(vec![0, 171, 300]);
                let att = Attention::new(shape, pattern)
                    .unwrap()
                    .with_backward_schedule(schedule);
                assert_grads(&att, 13).unwrap();
            }
        }
    }
}

/// The reference's analytic gradients against central differences of its
/// own f64 forward pass, for loss = Σ o · r.
#[test]
fn reference_gradients_match_finite_differences() {
    let shape = AttnShape {
        batch: 1,
        heads_q: 2,
        heads_kv: 1,
        len_q: 5,
        len_k: 7,
        head_dim: 8,
    };
    for (kind, causal) in [
        (PatternKind::Full, true),
        (
            PatternKind::Strided {
                stride: 2,
                local: 2,
            },
            false,
        ),
        (PatternKind::Window { window: 2 }, true),
    ] {
        let att = Attention::new(shape, Pattern::new(kind, causal))
            .unwrap()
            .with_scale(0.7)
            .unwrap();
        let q = data(shape.q_len(), 1);
        let k = data(shape.kv_len(), 2);
        let v = data(shape.kv_len(), 3);
        let r = data(shape.q_len(), 4);
        let (dq, dk, dv) = reference::backward(&att, &q, &k, &v, &r);
        let wide = |x: &[f32]| x.iter().map(|&v| v as f64).collect::<Vec<f64>>();
        let loss = |q: &[f64], k: &[f64], v: &[f64]| -> f64 {
            let (o, _) = reference::forward_f64(&att, q, k, v);
            o.iter().zip(&r).map(|(a, &b)| a * b as f64).sum()
        };
        let (q64, k64, v64) = (wide(&q), wide(&k), wide(&v));
        let eps = 1e-5;
        for (which, grad) in [(0, &dq), (1, &dk), (2, &dv)] {
            let tol = 1e-6 * max_abs(grad).max(1e-3);
            for idx in 0..grad.len() {
                let mut inputs = [q64.clone(), k64.clone(), v64.clone()];
                inputs[which][idx] += eps;
                let up = loss(&inputs[0], &inputs[1], &inputs[2]);
                inputs[which][idx] -= 2.0 * eps;
                let down = loss(&inputs[0], &inputs[1], &inputs[2]);
                let fd = (up - down) / (2.0 * eps);
                assert!(
                    (fd - grad[idx] as f64).abs() <= tol.max(1e-7),
                    "input {which}[{idx}]: fd {fd} vs {}",
                    grad[idx]
                );
            }
        }
    }
}

/// Rows that read no key (causal with Nq > Nk) get zero dQ, and contribute
/// nothing to dK and dV; nothing is NaN.
#[test]
fn fully_masked_rows_have_zero_gradient() {
    let shape = AttnShape {
        batch: 1,
        heads_q: 1,
        heads_kv: 1,
        len_q: 80,
        len_k: 10,
        head_dim: 16,
    };
    let att = Attention::new(shape, Pattern::new(PatternKind::Full, true)).unwrap();
    let q = data(shape.q_len(), 5);
    let k = data(shape.kv_len(), 6);
    let d_o = data(shape.q_len(), 7);
    let (o, lse) = att.forward_vec(&q, &k, &k).unwrap();
    let (dq, dk, dv) = att.backward_vec(&q, &k, &k, &o, &lse, &d_o).unwrap();
    assert!(dq[..70 * 16].iter().all(|&x| x == 0.0));
    assert!(dq.iter().chain(&dk).chain(&dv).all(|x| x.is_finite()));
}
