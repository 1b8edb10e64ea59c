//! `edifice patterns`: pictures of attention patterns, one PNG per head and a
//! coverage picture, so a user sees what every head reads.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use edifice_kernels::AttnShape;

use crate::bench::parse_pattern;

#[derive(Args)]
pub struct PatternsArgs {
    /// Output folder (one subfolder per pattern).
    #[arg(long)]
    out: PathBuf,
    /// Patterns, `KIND[:ARGS][|KIND...][+causal]` (default: the shifted sparse
    /// model's patterns and two references).
    #[arg(long, value_delimiter = ',')]
    patterns: Vec<String>,
    /// Query heads.
    #[arg(long, default_value_t = 8)]
    heads: usize,
    /// Sequence length.
    #[arg(long, default_value_t = 64)]
    n: usize,
    /// Pixels per (query, key) cell.
    #[arg(long, default_value_t = 6)]
    scale: usize,
}

const DEFAULT_PATTERNS: &[&str] = &[
    "strided:8:16+causal",
    "strided:8:16|global:4+causal",
    "shifted:16+causal",
    "window:16+causal",
    "chunk:16+causal",
];

const READ: [u8; 3] = [31, 78, 160];
const SKIPPED: [u8; 3] = [255, 255, 255];
const FUTURE: [u8; 3] = [225, 225, 225];
const UNCOVERED: [u8; 3] = [220, 40, 40];

pub fn run(args: PatternsArgs) -> Result<()> {
    let specs: Vec<String> = if args.patterns.is_empty() {
        DEFAULT_PATTERNS.iter().map(|s| s.to_string()).collect()
    } else {
        args.patterns.clone()
    };
    anyhow::ensure!(
        args.heads > 0 && args.n > 0 && args.scale > 0,
        "--heads, --n and --scale must be at least 1"
    );
    anyhow::ensure!(
        args.n * args.scale <= 8192,
        "--n × --scale must stay within 8192 pixels"
    );
    for spec in &specs {
        let pattern = parse_pattern(spec)?;
        let shape = AttnShape {
            batch: 1,
            heads_q: args.heads,
            heads_kv: 1,
            len_q: args.n,
            len_k: args.n,
            head_dim: 1,
        };
        pattern
            .validate(&shape)
            .with_context(|| format!("pattern `{spec}`"))?;
        let dir = args.out.join(spec.replace(':', "_").replace('|', "+"));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let reads = |h: usize, i: usize, j: usize| pattern.allowed(&shape, 0, h, i, j);
        for h in 0..args.heads {
            let path = dir.join(format!("head{h}.png"));
            draw(&path, args.n, args.scale, |i, j| {
                if reads(h, i, j) {
                    READ
                } else if pattern.causal && j > i {
                    FUTURE
                } else {
                    SKIPPED
                }
            })?;
        }
        // Coverage: darker where more heads read the pair; red where none does.
        let heads = args.heads;
        let uncovered = pattern.uncovered(heads, args.n)?.len();
        draw(&dir.join("coverage.png"), args.n, args.scale, |i, j| {
            let count = (0..heads).filter(|&h| reads(h, i, j)).count();
            if pattern.causal && j > i {
                FUTURE
            } else if count == 0 {
                UNCOVERED
            } else {
                let t = count as f32 / heads as f32;
                READ.map(|c| (255.0 - (255.0 - c as f32) * (0.25 + 0.75 * t)) as u8)
            }
        })?;
        println!(
            "{}: {heads} heads + coverage.png ({uncovered} uncovered pairs) in {}",
            spec,
            dir.display()
        );
    }
    Ok(())
}

fn draw(
    path: &Path,
    n: usize,
    scale: usize,
    color: impl Fn(usize, usize) -> [u8; 3],
) -> Result<()> {
    let side = n * scale;
    let mut pixels = vec![0u8; side * side * 3];
    for (y, row) in pixels.chunks_exact_mut(side * 3).enumerate() {
        for (x, px) in row.chunks_exact_mut(3).enumerate() {
            px.copy_from_slice(&color(y / scale, x / scale));
        }
    }
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), side as u32, side as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&pixels)?;
    writer.finish()?;
    Ok(())
}
