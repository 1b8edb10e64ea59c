//! Shared generators for the kernel tests: random shapes, patterns and data.
#![allow(dead_code)]

use edifice_kernels::{AttnShape, BlockRow, BlockSparse, BoolMask, Pattern, PatternKind};
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
    // A quarter of the cases cut each batch element's keys to a length of
    // its own (a key-padding mask), empty and full included.
    let lengths = prop::option::weighted(0.25, prop::collection::vec(0..=shape.len_k, shape.batch));
    (kind, any::<bool>(), offset, lengths).prop_map(|(kind, causal, offset, lengths)| {
        let mut pattern = Pattern::new(kind, causal);
        if let Some(offset) = offset {
            pattern = pattern.with_query_offset(offset);
        }
        match lengths {
            Some(lengths) => pattern.with_key_lengths(lengths),
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
        (1usize..=9, 1usize..=9, 0usize..4, any::<u64>()).prop_map(
            move |(bq, bk, planes, seed)| PatternKind::Blocks(block_mask(
                shape,
                (bq, bk),
                planes,
                seed
            ))
        ),
    ]
}

/// A random block mask for `shape`: blocks of `bq × bk`, planes shared,
/// per head, per batch, or per (batch, head) (`planes` 0-3); each key
/// block unread, read in full or read in part (random pairs) with equal
/// odds.
pub fn block_mask(
    shape: AttnShape,
    (bq, bk): (usize, usize),
    planes: usize,
    seed: u64,
) -> BlockSparse {
    let planes = match planes {
        0 => (1, 1),
        1 => (1, shape.heads_q),
        2 => (shape.batch, 1),
        _ => (shape.batch, shape.heads_q),
    };
    let (q_blocks, k_blocks) = (shape.len_q.div_ceil(bq), shape.len_k.div_ceil(bk));
    let rows_n = planes.0 * planes.1 * q_blocks;
    let choice = data(rows_n * k_blocks, seed);
    let pairs = data(rows_n * k_blocks * bq * bk, seed.wrapping_add(1));
    let rows: Vec<BlockRow> = (0..rows_n)
        .map(|r| {
            let mut row = BlockRow::default();
            for kb in 0..k_blocks {
                let c = choice[r * k_blocks + kb];
                if c > 1.0 / 3.0 {
                    row.full.push(kb);
                } else if c > -1.0 / 3.0 {
                    let at = (r * k_blocks + kb) * bq * bk;
                    row.partial.push((
                        kb,
                        pairs[at..at + bq * bk].iter().map(|&x| x > 0.0).collect(),
                    ));
                }
            }
            row
        })
        .collect();
    BlockSparse::new((shape.len_q, shape.len_k), (bq, bk), planes, &rows).unwrap()
}
