//! The forward kernel against the naive f64 reference, over random shapes,
//! every pattern (with and without causal), custom scales and every
//! instruction set this CPU has.

mod common;

use common::{data, long_kinds, pattern_strategy, shape_strategy, GATHER_BUDGETS};
use edifice_kernels::{reference, Attention, AttnShape, Isa, Pattern, PatternKind};
use proptest::prelude::*;

/// The bar: o and lse within 1e-4 of the f64 reference.
const TOL: f32 = 1e-4;

fn assert_close(att: &Attention, q: &[f32], k: &[f32], v: &[f32]) -> Result<(), TestCaseError> {
    let (o, lse) = att.forward_vec(q, k, v).unwrap();
    let (o_ref, lse_ref) = reference::forward(att, q, k, v);
    for (idx, (&a, &b)) in lse.iter().zip(&lse_ref).enumerate() {
        if b == f32::NEG_INFINITY {
            prop_assert_eq!(a, b, "lse[{}] of a fully masked row", idx);
        } else {
            prop_assert!(
                (a - b).abs() <= TOL,
                "lse[{}] = {} want {} ({:?})",
                idx,
                a,
                b,
                att
            );
        }
    }
    for (idx, (&a, &b)) in o.iter().zip(&o_ref).enumerate() {
        prop_assert!(a.is_finite(), "o[{}] = {}", idx, a);
        prop_assert!(
            (a - b).abs() <= TOL,
            "o[{}] = {} want {} ({:?})",
            idx,
            a,
            b,
            att
        );
    }
    Ok(())
}

fn case() -> impl Strategy<Value = (AttnShape, Pattern, Option<f32>, usize, usize, u64)> {
    shape_strategy().prop_flat_map(|shape| {
        (
            Just(shape),
            pattern_strategy(shape),
            prop::option::of(0.01f32..2.0),
            0..Isa::available().len(),
            prop::sample::select(GATHER_BUDGETS),
            any::<u64>(),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn forward_matches_reference((shape, pattern, scale, isa, budget, seed) in case()) {
        let mut att = Attention::new(shape, pattern)
            .unwrap()
            .with_isa(Isa::available()[isa])
            .with_gather_budget(budget);
        if let Some(scale) = scale {
            att = att.with_scale(scale).unwrap();
        }
        let q = data(shape.q_len(), seed);
        let k = data(shape.kv_len(), seed ^ 1);
        let v = data(shape.kv_len(), seed ^ 2);
        assert_close(&att, &q, &k, &v)?;
    }
}

/// Long sequences cross many tiles and every tile kind; one case per pattern.
#[test]
fn long_sequences_every_pattern() {
    let shape = AttnShape {
        batch: 1,
        heads_q: 4,
        heads_kv: 2,
        len_q: 700,
        len_k: 1000,
        head_dim: 64,
    };
    let q = data(shape.q_len(), 7);
    let k = data(shape.kv_len(), 8);
    let v = data(shape.kv_len(), 9);
    for kind in long_kinds() {
        for causal in [false, true] {
            for isa in Isa::available() {
                for &budget in GATHER_BUDGETS {
                    let att = Attention::new(shape, Pattern::new(kind.clone(), causal))
                        .unwrap()
                        .with_isa(isa)
                        .with_gather_budget(budget);
                    assert_close(&att, &q, &k, &v).unwrap();
                }
            }
        }
    }
}

/// Rows with no allowed key: o = 0 and lse = -inf, never NaN. With Nq > Nk
/// and causal, the first Nq - Nk rows sit before every key.
#[test]
fn fully_masked_rows_are_zero() {
    let shape = AttnShape {
        batch: 1,
        heads_q: 2,
        heads_kv: 1,
        len_q: 90,
        len_k: 20,
        head_dim: 16,
    };
    let q = data(shape.q_len(), 1);
    let k = data(shape.kv_len(), 2);
    for isa in Isa::available() {
        let att = Attention::new(shape, Pattern::new(PatternKind::Full, true))
            .unwrap()
            .with_isa(isa);
        let (o, lse) = att.forward_vec(&q, &k, &k).unwrap();
        for h in 0..2 {
            for i in 0..90 {
                let row = h * 90 + i;
                if i < 70 {
                    assert_eq!(lse[row], f32::NEG_INFINITY);
                    assert!(o[row * 16..(row + 1) * 16].iter().all(|&x| x == 0.0));
                } else {
                    assert!(lse[row].is_finite());
                }
            }
        }
    }
}

#[test]
fn bad_inputs_are_errors() {
    let shape = AttnShape {
        batch: 1,
        heads_q: 3,
        heads_kv: 2,
        len_q: 4,
        len_k: 4,
        head_dim: 8,
    };
    assert!(Attention::new(shape, Pattern::new(PatternKind::Full, false)).is_err());
    let shape = AttnShape {
        heads_q: 2,
        ..shape
    };
    let att = Attention::new(shape, Pattern::new(PatternKind::Full, false)).unwrap();
    let err = att
        .forward_vec(&[0.0; 3], &[0.0; 64], &[0.0; 64])
        .unwrap_err();
    assert!(err.to_string().contains("q has 3 elements"), "{err}");
    assert!(att.clone().with_scale(f32::NAN).is_err());
    assert!(Attention::new(shape, Pattern::new(PatternKind::Window { window: 0 }, true)).is_err());
    let mask = edifice_kernels::BoolMask::new(vec![true; 12], &[3, 4]).unwrap();
    let err = Attention::new(shape, Pattern::new(PatternKind::Mask(mask), false)).unwrap_err();
    assert!(err.to_string().contains("[4, 4]"), "{err}");
    assert!("strided:8".parse::<PatternKind>().is_err());
    assert!("window:x".parse::<PatternKind>().is_err());
    assert_eq!(
        "strided:8:64".parse::<PatternKind>().unwrap(),
        PatternKind::Strided {
            stride: 8,
            local: 64
        }
    );
}
