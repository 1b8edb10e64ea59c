//! The forward kernel against the naive f64 reference, over random shapes,
//! every pattern (with and without causal), custom scales, every
//! instruction set this CPU has, and both storage types.

mod common;

use common::{data, long_kinds, pattern_strategy, shape_strategy, GATHER_BUDGETS};
use edifice_kernels::{bf16, reference, Attention, AttnShape, Element, Isa, Pattern, PatternKind};
use proptest::prelude::*;

/// The bar: o and lse within 1e-4 of the f64 reference.
const TOL: f32 = 1e-4;

/// bf16 storage: o within 2⁻⁸ · max|v| (half from rounding P to bf16 before
/// P·V, half from rounding o), with |v| ≤ 1 here. Scores are exact products
/// of the stored values summed in f32, so lse keeps the f32 tolerance.
const BF16_O_TOL: f32 = 1.0 / 256.0;

fn assert_close<E: Element + Into<f64>>(
    att: &Attention,
    q: &[E],
    k: &[E],
    v: &[E],
    o_tol: f32,
) -> Result<(), TestCaseError> {
    assert_matches(att, (q, k, v), &reference::forward_f64(att, q, k, v), o_tol)
}

/// The kernel's `(o, lse)` against the reference's `want`.
fn assert_matches<E: Element>(
    att: &Attention,
    (q, k, v): (&[E], &[E], &[E]),
    want: &(Vec<f64>, Vec<f64>),
    o_tol: f32,
) -> Result<(), TestCaseError> {
    let (o, lse) = att.forward_vec(q, k, v).unwrap();
    let o: Vec<f32> = o.iter().map(|x| x.to_f32()).collect();
    let o_ref: Vec<f32> = want.0.iter().map(|&x| x as f32).collect();
    let lse_ref: Vec<f32> = want.1.iter().map(|&x| x as f32).collect();
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
            (a - b).abs() <= o_tol,
            "o[{}] = {} want {} ({:?})",
            idx,
            a,
            b,
            att
        );
    }
    Ok(())
}

type Case = (AttnShape, Pattern, Option<f32>, usize, usize, u64);

fn case() -> impl Strategy<Value = Case> {
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

/// One drawn case with storage type `E`.
fn check_case<E: Element + Into<f64>>(
    (shape, pattern, scale, isa, budget, seed): Case,
    o_tol: f32,
) -> Result<(), TestCaseError> {
    let mut att = Attention::new(shape, pattern)
        .unwrap()
        .with_isa(Isa::available()[isa])
        .with_gather_budget(budget);
    if let Some(scale) = scale {
        att = att.with_scale(scale).unwrap();
    }
    let q = stored::<E>(shape.q_len(), seed);
    let k = stored::<E>(shape.kv_len(), seed ^ 1);
    let v = stored::<E>(shape.kv_len(), seed ^ 2);
    assert_close(&att, &q, &k, &v, o_tol)
}

/// [`data`] rounded to the storage type.
fn stored<E: Element>(n: usize, seed: u64) -> Vec<E> {
    data(n, seed).into_iter().map(E::from_f32).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn forward_matches_reference(case in case()) {
        check_case::<f32>(case, TOL)?;
    }

    #[test]
    fn bf16_forward_matches_reference(case in case()) {
        check_case::<bf16>(case, BF16_O_TOL)?;
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
    let (q16, k16, v16) = (
        stored::<bf16>(q.len(), 7),
        stored(k.len(), 8),
        stored(v.len(), 9),
    );
    for kind in long_kinds() {
        for causal in [false, true] {
            let att = Attention::new(shape, Pattern::new(kind.clone(), causal)).unwrap();
            let want = reference::forward_f64(&att, &q, &k, &v);
            let want16 = reference::forward_f64(&att, &q16, &k16, &v16);
            for isa in Isa::available() {
                for &budget in GATHER_BUDGETS {
                    let att = att.clone().with_isa(isa).with_gather_budget(budget);
                    assert_matches(&att, (&q, &k, &v), &want, TOL).unwrap();
                    assert_matches(&att, (&q16, &k16, &v16), &want16, BF16_O_TOL).unwrap();
                }
            }
        }
    }
}

/// A key-padding cut: each batch element's real positions give the same
/// output as the sequence alone, unpadded, and the reference agrees.
#[test]
fn key_lengths_match_the_unpadded_sequence() {
    let (n, real, d) = (300, 171, 16);
    let shape = AttnShape {
        batch: 2,
        heads_q: 2,
        heads_kv: 1,
        len_q: n,
        len_k: n,
        head_dim: d,
    };
    let alone = AttnShape {
        batch: 1,
        len_q: real,
        len_k: real,
        ..shape
    };
    let (q, k, v) = (
        data(shape.q_len(), 1),
        data(shape.kv_len(), 2),
        data(shape.kv_len(), 3),
    );
    // Batch element 1's first `real` positions of every head, contiguous.
    let head_rows = |x: &[f32], heads: usize| -> Vec<f32> {
        (0..heads)
            .flat_map(|h| x[((heads + h) * n) * d..][..real * d].to_vec())
            .collect()
    };
    for kind in long_kinds() {
        for causal in [false, true] {
            let pattern = Pattern::new(kind.clone(), causal);
            let att =
                Attention::new(shape, pattern.clone().with_key_lengths(vec![n, real])).unwrap();
            let want = reference::forward_f64(&att, &q, &k, &v);
            assert_matches(&att, (&q, &k, &v), &want, TOL).unwrap();
            let (o, _) = att.forward_vec(&q, &k, &v).unwrap();
            let single = Attention::new(alone, pattern).unwrap();
            let (o1, _) = single
                .forward_vec(&head_rows(&q, 2), &head_rows(&k, 1), &head_rows(&v, 1))
                .unwrap();
            let got = head_rows(&o, 2);
            let diff = got
                .iter()
                .zip(&o1)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(diff < 1e-5, "{kind:?} causal {causal}: {diff}");
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

/// bf16 with an odd head dimension cannot form pairs along D; it runs on
/// f32 copies and must give the same answer.
#[test]
fn bf16_odd_head_dim() {
    let shape = AttnShape {
        batch: 2,
        heads_q: 2,
        heads_kv: 1,
        len_q: 67,
        len_k: 70,
        head_dim: 7,
    };
    let q = stored::<bf16>(shape.q_len(), 3);
    let k = stored::<bf16>(shape.kv_len(), 4);
    let v = stored::<bf16>(shape.kv_len(), 5);
    let att = Attention::new(shape, Pattern::new(PatternKind::Window { window: 9 }, true)).unwrap();
    assert_close(&att, &q, &k, &v, BF16_O_TOL).unwrap();
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

/// bf16 products: a forced instruction set picks the path (pairs only with
/// `Avx512Bf16`); unforced, pairs exactly where the CPU has AVX-512 and the
/// calibration found `vdpbf16ps` at full rate. Both paths agree with the
/// reference either way (the proptests above run both).
#[test]
fn bf16_products_follow_the_forced_isa_else_the_calibration() {
    use edifice_kernels::calibrate::bf16_pairs_full_rate;
    use edifice_kernels::Bf16Products;
    let shape = AttnShape {
        batch: 1,
        heads_q: 1,
        heads_kv: 1,
        len_q: 8,
        len_k: 8,
        head_dim: 16,
    };
    let att = Attention::new(shape, Pattern::new(PatternKind::Full, false)).unwrap();
    let auto = if att.isa() == Isa::Avx512 && bf16_pairs_full_rate() {
        Bf16Products::Pairs
    } else {
        Bf16Products::Widen
    };
    assert_eq!(att.bf16_products(), auto);
    assert_eq!(
        att.clone().with_isa(Isa::Avx512Bf16).bf16_products(),
        Bf16Products::Pairs
    );
    for isa in [Isa::Avx512, Isa::Avx2, Isa::Scalar] {
        assert_eq!(
            att.clone().with_isa(isa).bf16_products(),
            Bf16Products::Widen
        );
    }
    let odd = AttnShape {
        head_dim: 15,
        ..shape
    };
    let att = Attention::new(odd, Pattern::new(PatternKind::Full, false)).unwrap();
    assert_eq!(
        att.with_isa(Isa::Avx512Bf16).bf16_products(),
        Bf16Products::Widen
    );
    // Without AVX512-BF16 there is nothing to calibrate.
    #[cfg(target_arch = "x86_64")]
    if !std::arch::is_x86_feature_detected!("avx512bf16") {
        assert!(!bf16_pairs_full_rate());
        assert!(edifice_kernels::calibrate::pair_rate().is_none());
    }
}
