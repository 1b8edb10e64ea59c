//! The UCR/UEA time-series archive's `.ts` format: `#` comments, `@` header
//! lines (`@problemName`, `@univariate`, `@dimensions`, `@equalLength`,
//! `@seriesLength`, `@classLabel true A B ...` or `@targetLabel true`,
//! `@missing`, `@timeStamps false`), then `@data` and one sequence per
//! line: each dimension's values comma-separated, dimensions separated by
//! `:`, the label last. Dimension `d` of a sequence becomes feature `d` of
//! its frames; a sequence is as long as its longest dimension, shorter
//! dimensions are zero-padded. `?` (missing) is refused: the archive's
//! data sets used here have none, and silent imputation would be a choice
//! the user did not make.

use super::{Dataset, Label, Sequence};
use crate::Error;

/// Parses a `.ts` file's `text`; `file` names it in errors.
pub fn read(text: &str, file: &str) -> Result<Dataset, Error> {
    let bad = |line: usize, m: String| Err(Error::Data(format!("{file}:{line}: {m}")));
    let mut classes: Option<Vec<String>> = None;
    let mut regression = false;
    let mut dims: Option<usize> = None;
    let mut data_at = None::<usize>;
    let mut lines = text.lines().enumerate();
    for (i, line) in lines.by_ref() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let key = words.next().unwrap_or("").to_ascii_lowercase();
        match key.as_str() {
            "@data" => {
                data_at = Some(i + 1);
                break;
            }
            "@classlabel" => match words.next() {
                Some("true") => classes = Some(words.map(str::to_string).collect()),
                Some("false") => {}
                _ => {
                    return bad(
                        i + 1,
                        "@classLabel must be followed by true or false".into(),
                    )
                }
            },
            "@targetlabel" => regression = words.next() == Some("true"),
            "@dimensions" => match words.next().and_then(|w| w.parse().ok()) {
                Some(d) if d > 0 => dims = Some(d),
                _ => return bad(i + 1, "@dimensions needs a positive number".into()),
            },
            "@timestamps" if words.next() == Some("true") => {
                return bad(i + 1, "time-stamped series are not supported".into())
            }
            k if k.starts_with('@') => {}
            _ => {
                return bad(
                    i + 1,
                    format!("expected a header line or @data, got `{}`", clip(line)),
                )
            }
        }
    }
    if data_at.is_none() {
        return Err(Error::Data(format!("{file}: no @data line")));
    }
    if classes.is_none() && !regression {
        return Err(Error::Data(format!(
            "{file}: the header declares neither @classLabel true nor @targetLabel true"
        )));
    }
    let (mut sequences, mut labels) = (Vec::new(), Vec::new());
    for (i, line) in lines {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let n = i + 1;
        let mut parts: Vec<&str> = line.split(':').collect();
        let label = parts.pop().unwrap_or("").trim();
        let want = dims.unwrap_or(parts.len());
        if parts.is_empty() || parts.len() != want {
            return bad(
                n,
                format!(
                    "expected {want} dimension(s) and a label separated by `:`, found {} field(s)",
                    parts.len() + 1
                ),
            );
        }
        let mut series = Vec::with_capacity(parts.len());
        for (d, part) in parts.iter().enumerate() {
            let values = part
                .split(',')
                .map(|v| match v.trim() {
                    "?" => Err(format!("dimension {d} has a missing value (`?`)")),
                    v => v
                        .parse::<f32>()
                        .map_err(|_| format!("dimension {d}: `{}` is not a number", clip(v))),
                })
                .collect::<Result<Vec<f32>, String>>();
            match values {
                Ok(v) => series.push(v),
                Err(m) => return bad(n, m),
            }
        }
        sequences.push(frames(&series));
        labels.push(if regression {
            match label.parse::<f32>() {
                Ok(v) => Label::Values(vec![v]),
                Err(_) => return bad(n, format!("target `{}` is not a number", clip(label))),
            }
        } else {
            Label::Name(label.to_string())
        });
        dims = Some(want);
    }
    Dataset::build(file, dims.unwrap_or(1), sequences, labels, classes)
}

/// Dimensions `[D][len_d]` into frames `[max len, D]`, zero-padded.
fn frames(series: &[Vec<f32>]) -> Sequence {
    let len = series.iter().map(Vec::len).max().unwrap_or(0);
    let d = series.len();
    let mut frames = vec![0.0; len * d];
    for (dim, values) in series.iter().enumerate() {
        for (t, &v) in values.iter().enumerate() {
            frames[t * d + dim] = v;
        }
    }
    Sequence { frames, len }
}

/// The start of `s`, for messages.
fn clip(s: &str) -> String {
    s.chars().take(40).collect()
}
