//! Loss and accuracy curves of a run, drawn from its `metrics.jsonl`
//! (plotters, PNG): training loss and accuracy (smoothed) with the held-out
//! evaluations as points.

use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;
use serde_json::Value;

/// Fonts tried for labels; without one the chart is drawn without text.
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

fn register_font() -> bool {
    static FONT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FONT.get_or_init(|| {
        FONTS.iter().any(|path| {
            std::fs::read(path).is_ok_and(|bytes| {
                plotters::style::register_font(
                    "sans-serif",
                    FontStyle::Normal,
                    Box::leak(bytes.into_boxed_slice()),
                )
                .is_ok()
            })
        })
    })
}

struct Series {
    train: Vec<(f64, f64, f64)>,
    eval: Vec<(f64, f64, f64)>,
}

fn read(metrics: &Path) -> Result<Series> {
    let text = std::fs::read_to_string(metrics)
        .with_context(|| format!("cannot read {}", metrics.display()))?;
    let mut series = Series {
        train: Vec::new(),
        eval: Vec::new(),
    };
    let (mut loss, mut acc) = (None::<f64>, None::<f64>);
    for line in text.lines() {
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("bad line in {}", metrics.display()))?;
        let (Some(step), Some(l), Some(a)) = (
            v["step"].as_f64(),
            v["loss"].as_f64(),
            v["accuracy"].as_f64(),
        ) else {
            continue;
        };
        if v["split"] == "eval" {
            series.eval.push((step, l, a));
        } else {
            let smooth = |avg: Option<f64>, x: f64| Some(avg.map_or(x, |m| 0.95 * m + 0.05 * x));
            loss = smooth(loss, l);
            acc = smooth(acc, a);
            series
                .train
                .push((step, loss.unwrap_or(l), acc.unwrap_or(a)));
        }
    }
    Ok(series)
}

/// Draws `metrics` (JSON lines of `edifice train`) into `png`.
pub fn draw(metrics: &Path, png: &Path) -> Result<()> {
    let s = read(metrics)?;
    let labels = register_font();
    let last = s
        .train
        .iter()
        .chain(&s.eval)
        .map(|p| p.0)
        .fold(1.0, f64::max);
    let max_loss = s
        .train
        .iter()
        .chain(&s.eval)
        .map(|p| p.1)
        .fold(0.1, f64::max)
        * 1.05;
    let root = BitMapBackend::new(png, (1000, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(500);
    let panels = [
        (left, "loss", max_loss, 1usize),
        (right, "accuracy", 1.0, 2usize),
    ];
    for (area, title, y_max, field) in panels {
        let mut builder = ChartBuilder::on(&area);
        builder.margin(12);
        if labels {
            builder
                .caption(title, ("sans-serif", 20))
                .x_label_area_size(30)
                .y_label_area_size(45);
        }
        let mut chart = builder.build_cartesian_2d(0.0..last, 0.0..y_max)?;
        let mut mesh = chart.configure_mesh();
        if labels {
            mesh.x_desc("step");
        } else {
            mesh.disable_x_axis().disable_y_axis();
        }
        mesh.draw()?;
        let pick = |p: &(f64, f64, f64)| (p.0, if field == 1 { p.1 } else { p.2 });
        let train = chart.draw_series(LineSeries::new(
            s.train.iter().map(pick),
            BLUE.stroke_width(2),
        ))?;
        if labels {
            train
                .label("train (smoothed)")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
        }
        let eval =
            chart.draw_series(s.eval.iter().map(|p| Circle::new(pick(p), 4, RED.filled())))?;
        if labels {
            eval.label("held-out")
                .legend(|(x, y)| Circle::new((x + 10, y), 4, RED.filled()));
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }
    }
    root.present()
        .with_context(|| format!("cannot write {}", png.display()))?;
    Ok(())
}

/// Draws a confusion matrix (`counts[true][predicted]`) into `png`: one
/// cell per pair with its count, shaded by its share of the true class.
pub fn confusion(png: &Path, counts: &[Vec<usize>], names: &[String]) -> Result<()> {
    let labels = register_font();
    let k = names.len();
    let side = 200 + 70 * k as u32;
    let root = BitMapBackend::new(png, (side, side)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(16);
    if labels {
        builder
            .caption("true (rows) vs predicted", ("sans-serif", 16))
            .x_label_area_size(40)
            .y_label_area_size(70);
    }
    // A segmented range `0..m` has segments 0..=m: k cells need `0..k - 1`.
    let axis = || (0..k.saturating_sub(1)).into_segmented();
    let mut chart = builder.build_cartesian_2d(axis(), axis())?;
    // Row t is drawn top-down: true class 0 at the top.
    let row = |t: usize| k - 1 - t;
    let name = |v: &SegmentValue<usize>, flip: bool| match v {
        SegmentValue::CenterOf(i) if *i < k => names[if flip { row(*i) } else { *i }].clone(),
        _ => String::new(),
    };
    let (x_name, y_name) = (
        |v: &SegmentValue<usize>| name(v, false),
        |v: &SegmentValue<usize>| name(v, true),
    );
    let mut mesh = chart.configure_mesh();
    mesh.disable_mesh()
        .x_label_formatter(&x_name)
        .y_label_formatter(&y_name);
    if labels {
        mesh.x_desc("predicted").y_desc("true");
    } else {
        mesh.disable_x_axis().disable_y_axis();
    }
    mesh.draw()?;
    for (t, counts_t) in counts.iter().enumerate() {
        let total = counts_t.iter().sum::<usize>().max(1) as f64;
        for (p, &n) in counts_t.iter().enumerate() {
            let shade = (255.0 * (1.0 - 0.75 * n as f64 / total)) as u8;
            let cell = [
                (SegmentValue::Exact(p), SegmentValue::Exact(row(t))),
                (SegmentValue::Exact(p + 1), SegmentValue::Exact(row(t) + 1)),
            ];
            chart.draw_series(std::iter::once(Rectangle::new(
                cell,
                RGBColor(shade, shade, 255).filled(),
            )))?;
            if labels {
                let at = (SegmentValue::CenterOf(p), SegmentValue::CenterOf(row(t)));
                chart.draw_series(std::iter::once(Text::new(
                    n.to_string(),
                    at,
                    ("sans-serif", 18),
                )))?;
            }
        }
    }
    root.present()
        .with_context(|| format!("cannot write {}", png.display()))?;
    Ok(())
}
