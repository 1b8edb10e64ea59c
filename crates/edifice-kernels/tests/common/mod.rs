//! Shared generators for the kernel tests: random shapes, patterns and data.
#![allow(dead_code)]

use edifice_kernels::{AttnShape, BoolMask, Pattern, PatternKind};
use proptest::prelude::*;

/// Sequence lengths that stress tiling: 1, primes, around the tile size.
pub const LENGTHS: &[usize] = &[1, 2, 3, 5, 7, 13, 31, 63, 64, 65, 97, 128, 131, 200];
/// Head dims named by the issue.
pub const HEAD_DIMS: &[usize] = &[8, 16, 24, 32, 64, 96, 128];

/// Deterministic inputs in [-1, 1).
pub fn data(n: usize, seed: u64) -> Vec<f32> {
    edifice_kernels::reference::uniform(n, (seed ^ (seed >> 32)) as u32)
}

/// Per-worker budgets for gathered strided rows: none (every strided tile
/// read in place), a few rows (classes cut off part way), and the default.
pub const GATHER_BUDGETS: &[usize] = &[0, 1024, edifice_kernels::DEFAULT_GATHER_BUDGET];

/// One of each pattern kind, sized for sequences of a few hundred.
pub fn long_kinds() -> Vec<PatternKind> {
    vec![
        PatternKind::Full,
        PatternKind::Window { window: 100 },
        PatternKind::Chunk { chunk: 96 },
        PatternKind::Strided {
            stride: 3,
            local: 40,
        },
        PatternKind::Shifted { group: 250 },
        PatternKind::Global { tokens: 5 },
        PatternKind::Union(vec![
            PatternKind::Strided {
                stride: 4,
                local: 16,
            },
            PatternKind::Global { tokens: 3 },
        ]),
    ]
}

pub fn shape_strategy() -> impl Strategy<Value = AttnShape> {
    (
        1usize..=2,
        1usize..=2,
        1usize..=3,
        prop::sample::select(LENGTHS),
        prop::sample::select(LENGTHS),
        prop::sample::select(HEAD_DIMS),
    )
        .prop_map(
            |(batch, heads_kv, group, len_q, len_k, head_dim)| AttnShape {
                batch,
                heads_q: heads_kv * group,
                heads_kv,
                len_q,
                len_k,
                head_dim,
            },
        )
}

/// A pattern for `shape`: every kind, parameters from degenerate to larger
/// than the sequence, with and without causal. Masks have random density,
/// fully masked rows included.
pub fn pattern_strategy(shape: AttnShape) -> impl Strategy<Value = Pattern> {
    let leaf = leaf_kind(shape);
    let kind = prop_oneof![
        3 => leaf.clone(),
        1 => prop::collection::vec(leaf, 1..=3).prop_map(PatternKind::Union),
    ];
    // A quarter of the cases place the queries elsewhere than the end of
    // the keys (a ring's block pairs), before, inside and past them.
    let reach = (shape.len_q + shape.len_k) as i64 + 3;
    let offset = prop::option::weighted(0.25, -reach..=reach);
    (kind, any::<bool>(), offset).prop_map(|(kind, causal, offset)| {
        let pattern = Pattern::new(kind, causal);
        match offset {
            Some(offset) => pattern.with_query_offset(offset),
            None => pattern,
        }
    })
}

/// Every kind but unions.
fn leaf_kind(shape: AttnShape) -> impl Strategy<Value = PatternKind> + Clone {
    let n = shape.len_q.max(shape.len_k);
    let size = 1usize..=(n + 3);
    prop_oneof![
        Just(PatternKind::Full),
        size.clone()
            .prop_map(|window| PatternKind::Window { window }),
        size.clone().prop_map(|chunk| PatternKind::Chunk { chunk }),
        (1usize..=9, 0usize..=(n + 1))
            .prop_map(|(stride, local)| PatternKind::Strided { stride, local }),
        size.prop_map(|group| PatternKind::Shifted { group }),
        (0usize..=(n + 1)).prop_map(|tokens| PatternKind::Global { tokens }),
        (any::<bool>(), 0u32..=4, any::<u64>()).prop_map(move |(per_head, density, seed)| {
            let dims = if per_head {
                vec![shape.batch, shape.heads_q, shape.len_q, shape.len_k]
            } else {
                vec![shape.len_q, shape.len_k]
            };
            let count: usize = dims.iter().product();
            // `density` quarters of the pairs allowed, except row 0 of every
            // plane, which is always fully masked.
            let plane = shape.len_q * shape.len_k;
            let bits: Vec<bool> = data(count, seed)
                .iter()
                .enumerate()
                .map(|(idx, &x)| idx % plane >= shape.len_k && (x + 1.0) * 2.0 < density as f32)
                .collect();
            PatternKind::Mask(BoolMask::new(bits, &dims).unwrap())
        }),
    ]
}
