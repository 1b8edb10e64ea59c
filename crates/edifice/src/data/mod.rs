//! Recorded sequences from files: a [`Dataset`] of `N` sequences of up to
//! `T` frames of `E` features, zero-padded at the end to `T`, with each
//! sequence's real length and its target.
//!
//! | format | extension | layout |
//! |---|---|---|
//! | safetensors | `.safetensors` | `x [N, T, E]`, `y [N]` (classes) or `[N, K]` (targets), optional `lengths [N]` |
//! | NumPy | `.npz` | arrays `x`, `y`, optional `lengths`, as above |
//! | NumPy | `.npy` | one array `[N, T, E + 1]`: the last feature of frame 0 is `y` |
//! | CSV | `.csv` | a header, then one row per frame: `sequence,y,<features...>` ([`table`]) |
//! | UCR/UEA | `.ts` | the time-series archive's format ([`ts`]) |
//!
//! Targets: integer or string labels make a classification set (classes
//! numbered in order of their names, or as a `.ts` header lists them);
//! floating-point `y` makes a regression set (`[N]` is one target). A
//! malformed file is one [`Error::Data`] naming the file, the line (text
//! formats) and the problem.

mod npy;
pub mod run;
pub mod table;
mod tensors;
pub mod ts;

use std::path::Path;

use crate::Error;

/// What each sequence is labelled with.
#[derive(Clone, Debug, PartialEq)]
pub enum Targets {
    /// One class per sequence, `0..names.len()`.
    Classes {
        /// The label of each sequence.
        labels: Vec<usize>,
        /// Each class's name, as the file spells it.
        names: Vec<String>,
    },
    /// `width` real targets per sequence, row-major `[N, width]`.
    Values {
        /// The targets.
        values: Vec<f32>,
        /// Targets per sequence.
        width: usize,
    },
}

/// Sequences, zero-padded to a common length, and their targets.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// `[N, T, E]` row-major; frames past a sequence's length are 0.
    pub x: Vec<f32>,
    /// `[N, T, E]`.
    pub dims: [usize; 3],
    /// Real frames of each sequence (`1..=T`).
    pub lengths: Vec<usize>,
    /// The targets.
    pub y: Targets,
}

/// One sequence while a file is read: its frames `[len, E]` row-major.
#[derive(Clone, Debug, Default)]
pub(crate) struct Sequence {
    pub frames: Vec<f32>,
    pub len: usize,
}

/// A label while a file is read.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Label {
    Name(String),
    Values(Vec<f32>),
}

impl Dataset {
    /// Reads `path` by its extension (see the module docs).
    pub fn read(path: &Path) -> Result<Self, Error> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let shown = path.display().to_string();
        let bytes =
            || std::fs::read(path).map_err(|e| Error::Data(format!("cannot read {shown}: {e}")));
        let text = || {
            std::fs::read_to_string(path)
                .map_err(|e| Error::Data(format!("cannot read {shown}: {e}")))
        };
        match ext {
            "safetensors" => tensors::read(&bytes()?, &shown),
            "npz" => npy::read_npz(&bytes()?, &shown),
            "npy" => npy::read_npy(&bytes()?, &shown),
            "csv" => table::read(&text()?, &shown),
            "ts" => ts::read(&text()?, &shown),
            _ => Err(Error::Data(format!(
                "{shown}: unknown extension `.{ext}`; expected .safetensors, .npz, .npy, .csv or .ts"
            ))),
        }
    }

    /// Sequences and labels into a dataset: sequences padded to the
    /// longest, labels resolved (`classes`: the class names in order, when
    /// the file declares them).
    pub(crate) fn build(
        file: &str,
        width: usize,
        sequences: Vec<Sequence>,
        labels: Vec<Label>,
        classes: Option<Vec<String>>,
    ) -> Result<Self, Error> {
        let bad = |m: String| Err(Error::Data(format!("{file}: {m}")));
        if sequences.is_empty() {
            return bad("no sequences".into());
        }
        if width == 0 {
            return bad("frames have no features".into());
        }
        if let Some(i) = sequences.iter().position(|s| s.len == 0) {
            return bad(format!("sequence {i} has no frames"));
        }
        let t = sequences.iter().map(|s| s.len).max().unwrap_or(0);
        let n = sequences.len();
        let mut x = vec![0.0; n * t * width];
        for (s, row) in sequences.iter().zip(x.chunks_exact_mut(t * width)) {
            row[..s.frames.len()].copy_from_slice(&s.frames);
        }
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return bad(format!(
                "sequence {} holds a missing or non-finite value",
                i / (t * width)
            ));
        }
        Ok(Self {
            x,
            dims: [n, t, width],
            lengths: sequences.iter().map(|s| s.len).collect(),
            y: targets(file, labels, classes)?,
        })
    }

    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.dims[0]
    }

    /// Whether it holds no sequence.
    pub fn is_empty(&self) -> bool {
        self.dims[0] == 0
    }

    /// Number of classes, or of regression targets.
    pub fn outputs(&self) -> usize {
        match &self.y {
            Targets::Classes { names, .. } => names.len(),
            Targets::Values { width, .. } => *width,
        }
    }

    /// The same sequences zero-padded at the end to `t` frames (at least
    /// their current `T`); lengths unchanged.
    pub fn padded(&self, t: usize) -> Self {
        let [n, t0, e] = self.dims;
        let t = t.max(t0);
        let mut x = vec![0.0; n * t * e];
        for (s, row) in x.chunks_exact_mut(t * e).enumerate() {
            row[..t0 * e].copy_from_slice(&self.x[s * t0 * e..(s + 1) * t0 * e]);
        }
        Self {
            x,
            dims: [n, t, e],
            lengths: self.lengths.clone(),
            y: self.y.clone(),
        }
    }

    /// Groups every `k` consecutive frames into one frame of `k·E`
    /// features (PatchTST's patches: a token per stretch of the series
    /// instead of per sample). A last, partial patch is zero-filled.
    pub fn patched(&self, k: usize) -> Self {
        let [n, t, e] = self.dims;
        let k = k.max(1);
        let t2 = t.div_ceil(k);
        let mut x = vec![0.0; n * t2 * k * e];
        for s in 0..n {
            x[s * t2 * k * e..s * t2 * k * e + t * e]
                .copy_from_slice(&self.x[s * t * e..(s + 1) * t * e]);
        }
        Self {
            x,
            dims: [n, t2, k * e],
            lengths: self.lengths.iter().map(|l| l.div_ceil(k)).collect(),
            y: self.y.clone(),
        }
    }

    /// The sequences at `rows`, in that order.
    pub fn select(&self, rows: &[usize]) -> Self {
        let [_, t, e] = self.dims;
        let mut x = Vec::with_capacity(rows.len() * t * e);
        for &r in rows {
            x.extend_from_slice(&self.x[r * t * e..(r + 1) * t * e]);
        }
        let y = match &self.y {
            Targets::Classes { labels, names } => Targets::Classes {
                labels: rows.iter().map(|&r| labels[r]).collect(),
                names: names.clone(),
            },
            Targets::Values { values, width } => Targets::Values {
                values: rows
                    .iter()
                    .flat_map(|&r| values[r * width..(r + 1) * width].iter().copied())
                    .collect(),
                width: *width,
            },
        };
        Self {
            x,
            dims: [rows.len(), t, e],
            lengths: rows.iter().map(|&r| self.lengths[r]).collect(),
            y,
        }
    }
}

/// Labels into targets: all values → regression; names that are all
/// integers → classes in numeric order; other names → classes in
/// alphabetical order (or as `classes` lists them).
fn targets(file: &str, labels: Vec<Label>, classes: Option<Vec<String>>) -> Result<Targets, Error> {
    let bad = |m: String| Err(Error::Data(format!("{file}: {m}")));
    if let Some(Label::Values(first)) = labels.first() {
        let width = first.len();
        let mut values = Vec::with_capacity(labels.len() * width);
        for (i, l) in labels.iter().enumerate() {
            match l {
                Label::Values(v) if v.len() == width && v.iter().all(|x| x.is_finite()) => {
                    values.extend_from_slice(v)
                }
                _ => return bad(format!("target {i} is not {width} finite numbers")),
            }
        }
        return Ok(Targets::Values { values, width });
    }
    let mut seen: Vec<String> = Vec::new();
    let mut names_of = Vec::with_capacity(labels.len());
    for (i, l) in labels.into_iter().enumerate() {
        let Label::Name(name) = l else {
            return bad(format!(
                "target {i} is a number where the others are labels"
            ));
        };
        if !seen.contains(&name) {
            seen.push(name.clone());
        }
        names_of.push(name);
    }
    let names = match classes {
        Some(declared) => {
            if let Some(extra) = seen.iter().find(|s| !declared.contains(s)) {
                return bad(format!(
                    "label `{extra}` is not among the declared classes {declared:?}"
                ));
            }
            declared
        }
        None => {
            let mut names = seen;
            if names.iter().all(|s| s.parse::<i64>().is_ok()) {
                names.sort_by_key(|s| s.parse::<i64>().unwrap_or(0));
            } else {
                names.sort();
            }
            names
        }
    };
    if names.len() < 2 {
        return bad(format!(
            "a classification set needs at least 2 classes, found {names:?}"
        ));
    }
    let labels = names_of
        .iter()
        .map(|n| names.iter().position(|c| c == n).unwrap_or(0))
        .collect();
    Ok(Targets::Classes { labels, names })
}

/// Per-feature standardisation fitted on a training set's real frames:
/// `x' = (x - mean) / std` (a feature that never varies gets std 1).
#[derive(Clone, Debug, PartialEq)]
pub struct Normalizer {
    /// Mean of each feature.
    pub mean: Vec<f32>,
    /// Standard deviation of each feature.
    pub std: Vec<f32>,
}

impl Normalizer {
    /// Fits the statistics on the real (unpadded) frames of `data`.
    pub fn fit(data: &Dataset) -> Self {
        let [_, t, e] = data.dims;
        let frames = (data.lengths.iter().enumerate())
            .flat_map(|(s, &len)| data.x[s * t * e..].chunks_exact(e).take(len));
        Self::fit_rows(frames, e)
    }

    /// Fits the statistics of regression targets `[N, width]`, if `data`
    /// has them.
    pub fn fit_targets(data: &Dataset) -> Option<Self> {
        match &data.y {
            Targets::Values { values, width } => {
                Some(Self::fit_rows(values.chunks_exact(*width), *width))
            }
            Targets::Classes { .. } => None,
        }
    }

    /// Per-column statistics of rows of `width` values.
    fn fit_rows<'a>(rows: impl Iterator<Item = &'a [f32]>, width: usize) -> Self {
        let (mut sum, mut sq, mut count) = (vec![0.0f64; width], vec![0.0f64; width], 0usize);
        for row in rows {
            for (f, &v) in row.iter().enumerate() {
                sum[f] += v as f64;
                sq[f] += (v as f64) * (v as f64);
            }
            count += 1;
        }
        let n = count.max(1) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        let std = sq
            .iter()
            .zip(&mean)
            .map(|(q, m)| {
                let sd = (q / n - m * m).max(0.0).sqrt();
                if sd > 1e-6 {
                    sd as f32
                } else {
                    1.0
                }
            })
            .collect();
        Self {
            mean: mean.iter().map(|&m| m as f32).collect(),
            std,
        }
    }

    /// Standardises the real frames of `data` in place (padding stays 0).
    pub fn apply(&self, data: &mut Dataset) -> Result<(), Error> {
        let [_, t, e] = data.dims;
        if e != self.mean.len() {
            return Err(Error::Data(format!(
                "the data has {e} features, the normalisation was fitted on {}",
                self.mean.len()
            )));
        }
        for (s, &len) in data.lengths.iter().enumerate() {
            for frame in data.x[s * t * e..].chunks_exact_mut(e).take(len) {
                self.standardise(frame);
            }
        }
        Ok(())
    }

    /// `(v - mean) / std` on rows of as many values as the statistics have.
    pub fn standardise(&self, rows: &mut [f32]) {
        for row in rows.chunks_exact_mut(self.mean.len()) {
            for ((v, m), sd) in row.iter_mut().zip(&self.mean).zip(&self.std) {
                *v = (*v - m) / sd;
            }
        }
    }

    /// The inverse of [`standardise`](Self::standardise): `v · std + mean`.
    pub fn restore(&self, rows: &mut [f32]) {
        for row in rows.chunks_exact_mut(self.mean.len()) {
            for ((v, m), sd) in row.iter_mut().zip(&self.mean).zip(&self.std) {
                *v = *v * sd + m;
            }
        }
    }
}

#[cfg(test)]
mod tests;
