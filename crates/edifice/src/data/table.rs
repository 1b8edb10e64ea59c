//! CSV: a header, then one row per frame, rows of a sequence together and
//! in time order:
//!
//! ```text
//! sequence,y,f0,f1,f2
//! 0,walk,0.1,0.2,0.3
//! 0,walk,0.2,0.1,0.0
//! 1,run,0.9,0.8,0.7
//! ```
//!
//! `sequence` (first column) names the sequence; the target columns are `y`
//! (one target) or `y0, y1, ...` (several); every other column is a
//! feature. A target repeats on every row of its sequence. Targets that are
//! all integers or words are class labels; otherwise they are real values
//! (regression), as are several target columns.

use super::{Dataset, Label, Sequence};
use crate::Error;

/// Parses CSV `text`; `file` names it in errors.
pub fn read(text: &str, file: &str) -> Result<Dataset, Error> {
    let bad = |line: u64, m: String| Error::Data(format!("{file}:{line}: {m}"));
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let header = reader
        .headers()
        .map_err(|e| bad(1, format!("no header: {e}")))?
        .clone();
    if header.get(0) != Some("sequence") {
        return Err(bad(1, "the first column must be `sequence`".into()));
    }
    let targets: Vec<usize> = (1..header.len())
        .filter(|&c| {
            header[c] == *"y"
                || header[c]
                    .strip_prefix('y')
                    .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    let features: Vec<usize> = (1..header.len()).filter(|c| !targets.contains(c)).collect();
    if targets.is_empty() || features.is_empty() {
        return Err(bad(1, "the header needs target column(s) `y` or `y0, y1, ...` and at least one feature column".into()));
    }
    let (mut ids, mut sequences, mut raw): (Vec<String>, Vec<Sequence>, Vec<Vec<String>>) =
        Default::default();
    for record in reader.records() {
        let record =
            record.map_err(|e| bad(e.position().map_or(0, |p| p.line()), e.to_string()))?;
        let line = record.position().map_or(0, |p| p.line());
        let id = &record[0];
        let target: Vec<String> = targets.iter().map(|&c| record[c].to_string()).collect();
        if ids.last().map(String::as_str) != Some(id) {
            if ids.iter().any(|s| s == id) {
                return Err(bad(
                    line,
                    format!("the rows of sequence `{id}` are not together"),
                ));
            }
            ids.push(id.to_string());
            sequences.push(Sequence::default());
            raw.push(target.clone());
        } else if raw.last() != Some(&target) {
            return Err(bad(
                line,
                format!("sequence `{id}` changes its target within the sequence"),
            ));
        }
        let seq = sequences.last_mut().expect("pushed above");
        for &c in &features {
            let v: f32 = record[c].parse().map_err(|_| {
                bad(
                    line,
                    format!("column `{}`: `{}` is not a number", &header[c], &record[c]),
                )
            })?;
            seq.frames.push(v);
        }
        seq.len += 1;
    }
    let numbers: Option<Vec<Vec<f32>>> = raw
        .iter()
        .map(|t| t.iter().map(|v| v.parse::<f32>().ok()).collect())
        .collect();
    let integers = raw.iter().flatten().all(|v| v.parse::<i64>().is_ok());
    let labels = match numbers {
        Some(values) if targets.len() > 1 || !integers => {
            values.into_iter().map(Label::Values).collect()
        }
        _ if targets.len() > 1 => {
            return Err(Error::Data(format!(
                "{file}: several target columns must all hold numbers"
            )))
        }
        _ => raw
            .into_iter()
            .map(|mut t| Label::Name(t.remove(0)))
            .collect(),
    };
    Dataset::build(file, features.len(), sequences, labels, None)
}
