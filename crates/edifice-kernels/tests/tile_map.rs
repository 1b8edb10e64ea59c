//! The tile map against the predicate: every allowed pair is visited exactly
//! once, full tiles hold only allowed pairs, and skipped pairs are never
//! allowed.

mod common;

use common::{pattern_strategy, shape_strategy};
use edifice_kernels::{AttnShape, Pattern, PatternKind, TileMap};
use proptest::prelude::*;

fn check_map(
    shape: &AttnShape,
    pattern: &Pattern,
    tile_q: usize,
    tile_k: usize,
) -> Result<(), TestCaseError> {
    let map = TileMap::build(shape, pattern, tile_q, tile_k);
    let (nq, nk) = (shape.len_q, shape.len_k);
    for batch in 0..shape.batch {
        for head in 0..shape.heads_q {
            let class = pattern.class_of(shape, batch, head);
            let mut seen = vec![0u8; nq * nk];
            for t in 0..map.q_tiles() {
                let rows = t * tile_q..((t + 1) * tile_q).min(nq);
                for block in map.row(class, t) {
                    for keys in map.tiles(block) {
                        prop_assert!(keys.len <= tile_k);
                        for tk in 0..keys.len {
                            let j = keys.key(tk);
                            prop_assert!(j < nk);
                            for i in rows.clone() {
                                seen[i * nk + j] += 1;
                                if block.full {
                                    prop_assert!(
                                        pattern.allowed(shape, batch, head, i, j),
                                        "full tile holds forbidden ({}, {}) in {:?}",
                                        i,
                                        j,
                                        pattern
                                    );
                                }
                            }
                        }
                    }
                }
            }
            for i in 0..nq {
                for j in 0..nk {
                    let allowed = pattern.allowed(shape, batch, head, i, j);
                    let n = seen[i * nk + j];
                    prop_assert!(
                        n <= 1,
                        "({}, {}) visited {} times in {:?}",
                        i,
                        j,
                        n,
                        pattern
                    );
                    prop_assert!(
                        !allowed || n == 1,
                        "allowed ({}, {}) never visited, head {} {:?}",
                        i,
                        j,
                        head,
                        pattern
                    );
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn tile_map_covers_exactly_the_allowed_pairs(
        (shape, pattern, tq, tk) in shape_strategy().prop_flat_map(|s| (
            Just(s), pattern_strategy(s), prop::sample::select(vec![1usize, 4, 16, 64]), prop::sample::select(vec![1usize, 3, 16, 64])
        ))
    ) {
        check_map(&shape, &pattern, tq, tk)?;
    }
}

/// The predicate matches Edifice's masks read from its own outputs:
/// `causal_mask(5)` and `window_mask(8, 3)` (spec §1.5).
#[test]
fn window_plus_causal_is_edifices_window_mask() {
    let shape = AttnShape {
        batch: 1,
        heads_q: 1,
        heads_kv: 1,
        len_q: 8,
        len_k: 8,
        head_dim: 1,
    };
    let window = Pattern::new(PatternKind::Window { window: 3 }, true);
    let causal = Pattern::new(PatternKind::Full, true);
    for i in 0..8 {
        for j in 0..8 {
            let edifice_window = i >= j && j + 2 >= i;
            assert_eq!(
                window.allowed(&shape, 0, 0, i, j),
                edifice_window,
                "({i}, {j})"
            );
            assert_eq!(causal.allowed(&shape, 0, 0, i, j), i >= j);
        }
    }
}

/// Sparse maps stay small: causal at N = 65536 is a few KiB, not N².
#[test]
fn causal_map_is_compact() {
    let shape = AttnShape {
        batch: 1,
        heads_q: 8,
        heads_kv: 8,
        len_q: 65536,
        len_k: 65536,
        head_dim: 64,
    };
    let map = TileMap::build(&shape, &Pattern::new(PatternKind::Full, true), 64, 64);
    assert!(map.bytes() < 64 * 1024, "{} bytes", map.bytes());
    // One run of full tiles and the diagonal tile per query tile.
    assert_eq!(map.row(0, 10).len(), 2);
}

/// The shifted sparse promise: with as many heads as the stride, the strided
/// pattern's heads together read every (query, key) pair in the causal range;
/// with fewer, the residues past the head count stay unread.
#[test]
fn strided_heads_cover_every_causal_pair() {
    for (heads, stride, local) in [(8, 8, 16), (8, 4, 1), (4, 4, 0), (3, 2, 5)] {
        let p = Pattern::new(PatternKind::Strided { stride, local }, true);
        assert_eq!(
            p.uncovered(heads, 200).unwrap(),
            vec![],
            "{heads} heads, stride {stride}"
        );
    }
    let p = Pattern::new(
        PatternKind::Strided {
            stride: 8,
            local: 4,
        },
        true,
    );
    let gaps = p.uncovered(6, 64).unwrap();
    // Residues 6 and 7 are nobody's: the first gap is query 10, key 6 (offset 4 = local).
    assert_eq!(gaps[0], (10, 6));
    assert!(gaps.iter().all(|&(i, j)| i - j >= 4 && j % 8 >= 6));
    // Shifted groups leave pairs farther apart than a group unread, by design.
    let shifted = Pattern::new(PatternKind::Shifted { group: 16 }, true);
    assert!(shifted.uncovered(8, 64).unwrap().contains(&(63, 0)));
}
