//! Weights in safetensors with PyTorch's conventions, and import from
//! Edifice/Axon parameter dumps.
//!
//! Every model lists its parameters once, in [`Walk::walk`]: our name (PyTorch
//! style: `Linear` weight `[out, in]` and bias `[out]`, LayerNorm `weight` and
//! `bias`, LSTM `weight_ih_l{n}` `[4U, in]`, `weight_hh_l{n}` `[4U, U]`,
//! `bias_ih_l{n}`, `bias_hh_l{n}` with gates `i, f, g, o`) and where Axon keeps
//! the same numbers ([`Source`]). That one list drives saving, loading with
//! checks, `edifice inspect`, `docs/weights.md` and `edifice convert`.

use std::collections::{BTreeMap, BTreeSet};

use burn::module::{Param, ParamId};
use burn::optim::GradientsParams;

use crate::layers::{LayerNorm, Linear};
use burn::tensor::{Gradients, Tensor, TensorData};

use crate::layers::Lstm;
use crate::Error;

mod files;
pub use files::{
    decode_f32, from_safetensors, from_safetensors_with, serialize, to_safetensors,
    to_safetensors_with, Blobs, Encoded, Metadata,
};

/// Where Axon stores a parameter (names without the `param/` prefix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// `{layer}.kernel` `[in, out]`, transposed to `[out, in]`.
    DenseKernel(String),
    /// `{layer}.bias`.
    DenseBias(String),
    /// `{layer}.gamma`.
    NormGamma(String),
    /// `{layer}.beta`.
    NormBeta(String),
    /// `{layer}.input_kernel.w{i,f,g,o}`, each `[in, U]`, transposed and stacked.
    LstmInput(String),
    /// `{layer}.hidden_kernel.wh{i,f,g,o}`, each `[U, U]`, transposed and stacked.
    LstmHidden(String),
    /// `{layer}.bias.b{i,f,g,o}`, concatenated.
    LstmBias(String),
    /// No Axon counterpart: Axon's LSTM has one bias per gate, so ours is zero.
    Zero,
    /// `{layer}.{name}` as it is.
    Raw(String),
}

impl Source {
    /// Where the value comes from in an Axon dump, in words.
    pub fn describe(&self) -> String {
        match self {
            Source::DenseKernel(l) => format!("`{l}.kernel`ᵀ"),
            Source::DenseBias(l) => format!("`{l}.bias`"),
            Source::NormGamma(l) => format!("`{l}.gamma`"),
            Source::NormBeta(l) => format!("`{l}.beta`"),
            Source::LstmInput(l) => format!("`{l}.input_kernel.w{{ii,if,ig,io}}`ᵀ stacked"),
            Source::LstmHidden(l) => format!("`{l}.hidden_kernel.wh{{i,f,g,o}}`ᵀ stacked"),
            Source::LstmBias(l) => format!("`{l}.bias.b{{i,f,g,o}}` concatenated"),
            Source::Zero => "zeros (Axon has one bias per gate)".into(),
            Source::Raw(name) => format!("`{name}`"),
        }
    }
}

/// A markdown table of `entries`: name, shape, Axon source.
pub fn markdown_table(entries: &[Entry]) -> String {
    let mut out = String::from("| name | shape | from Edifice (`param/…`) |\n|---|---|---|\n");
    for e in entries {
        out.push_str(&format!(
            "| `{}` | {:?} | {} |\n",
            e.name,
            e.shape,
            e.source.describe()
        ));
    }
    out
}

/// One parameter of a model.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Our (PyTorch-style) name.
    pub name: String,
    /// Shape in our layout.
    pub shape: Vec<usize>,
    /// Where Axon keeps it.
    pub source: Source,
}

/// A tensor in our layout: shape and row-major f32 values.
pub type Values = (Vec<usize>, Vec<f32>);

enum Mode<'a> {
    List(&'a mut Vec<Entry>),
    Grads {
        grads: &'a Gradients,
        out: &'a mut Vec<(String, Option<Vec<f32>>)>,
    },
    Save(&'a mut BTreeMap<String, Values>),
    Load {
        tensors: &'a mut BTreeMap<String, Values>,
        problems: &'a mut Vec<String>,
        ids: Option<&'a BTreeMap<String, u64>>,
    },
    Ids(&'a mut BTreeMap<String, u64>),
    /// Moves each gradient out of `grads` into `out`: its values (zeros
    /// when it has none), then 1 if it had one, else 0.
    TakeGrads {
        grads: &'a mut GradientsParams,
        out: &'a mut Vec<f32>,
    },
    /// Puts back gradients laid out as `TakeGrads` does, from `values[at..]`,
    /// where the marker is not 0.
    PutGrads {
        grads: &'a mut GradientsParams,
        values: &'a [f32],
        at: usize,
    },
}

/// Visits every parameter of a module tree with its full name.
pub struct Walker<'a> {
    prefix: String,
    mode: Mode<'a>,
}

/// A module whose parameters can be walked.
pub trait Walk {
    /// Calls the walker once per parameter, in a fixed order.
    fn walk(&mut self, w: &mut Walker);
}

impl<'a> Walker<'a> {
    /// Runs `f` with `name.` prepended to every parameter name.
    pub fn scope(&mut self, name: &str, f: impl FnOnce(&mut Self)) {
        let saved = self.prefix.clone();
        self.prefix = format!("{saved}{name}.");
        f(self);
        self.prefix = saved;
    }

    /// A parameter in our layout. `transpose` says that the stored value is
    /// the transpose of the module's (burn keeps Linear weights `[in, out]`).
    pub fn tensor<const D: usize>(
        &mut self,
        name: &str,
        source: Source,
        p: &mut Param<Tensor<D>>,
        transpose: bool,
    ) {
        let full = format!("{}{name}", self.prefix);
        let stored = |t: Tensor<D>| if transpose { t.transpose() } else { t };
        match &mut self.mode {
            Mode::List(out) => out.push(Entry {
                name: full,
                shape: stored(p.val()).dims().to_vec(),
                source,
            }),
            Mode::Grads { grads, out } => {
                let grad = p.val().grad(grads).map(|g| {
                    g.into_data()
                        .convert::<f32>()
                        .try_to_vec()
                        .expect("f32 data")
                });
                out.push((full, grad));
            }
            Mode::Save(out) => {
                let t = stored(p.val());
                let shape = t.dims().to_vec();
                let values = t
                    .into_data()
                    .convert::<f32>()
                    .try_to_vec()
                    .expect("f32 data");
                out.insert(full, (shape, values));
            }
            Mode::Ids(out) => {
                out.insert(full, p.id.val());
            }
            Mode::TakeGrads { grads, out } => {
                let grad = grads.remove::<D>(p.id);
                let size = p.val().shape().num_elements();
                match &grad {
                    Some(g) => out.extend(g.to_data().convert::<f32>().iter::<f32>()),
                    None => out.resize(out.len() + size, 0.0),
                }
                out.push(if grad.is_some() { 1.0 } else { 0.0 });
            }
            Mode::PutGrads { grads, values, at } => {
                let (dims, device) = (p.val().dims(), p.val().device());
                let size = p.val().shape().num_elements();
                let (grad, marker) = (&values[*at..*at + size], values[*at + size]);
                *at += size + 1;
                if marker != 0.0 {
                    let data = TensorData::new(grad.to_vec(), dims);
                    grads.register::<D>(p.id, Tensor::from_data(data, &device));
                }
            }
            Mode::Load {
                tensors,
                problems,
                ids,
            } => {
                let want = stored(p.val()).dims().to_vec();
                match tensors.remove(&full) {
                    None => problems.push(format!("missing tensor `{full}` (shape {want:?})")),
                    Some((shape, _)) if shape != want => problems.push(format!(
                        "tensor `{full}` has shape {shape:?}, expected {want:?}"
                    )),
                    Some(stored_values) => {
                        // Transpose the values, not the tensor, so the
                        // parameter is a contiguous leaf.
                        let (shape, values) = if transpose {
                            transpose_values(&stored_values)
                        } else {
                            stored_values
                        };
                        let device = p.val().device();
                        let id = ids.and_then(|ids| ids.get(&full)).copied();
                        *p = Param::from_tensor(Tensor::<D>::from_data(
                            TensorData::new(values, shape),
                            &device,
                        ));
                        if let Some(id) = id {
                            p.id = ParamId::from(id);
                        }
                    }
                }
            }
        }
    }

    /// A Linear layer as `{name}.weight [out, in]` and `{name}.bias [out]`.
    pub fn linear(&mut self, name: &str, axon: &str, linear: &mut Linear) {
        self.scope(name, |w| {
            w.tensor(
                "weight",
                Source::DenseKernel(axon.into()),
                &mut linear.weight,
                true,
            );
            w.tensor(
                "bias",
                Source::DenseBias(axon.into()),
                &mut linear.bias,
                false,
            );
        });
    }

    /// A LayerNorm as `{name}.weight` and `{name}.bias`.
    pub fn norm(&mut self, name: &str, axon: &str, norm: &mut LayerNorm) {
        self.scope(name, |w| {
            w.tensor(
                "weight",
                Source::NormGamma(axon.into()),
                &mut norm.gamma,
                false,
            );
            w.tensor("bias", Source::NormBeta(axon.into()), &mut norm.beta, false);
        });
    }

    /// LSTM layer `n` as PyTorch's `weight_ih_l{n}`, `weight_hh_l{n}`,
    /// `bias_ih_l{n}`, `bias_hh_l{n}`.
    pub fn lstm(&mut self, n: usize, axon: &str, lstm: &mut Lstm) {
        self.tensor(
            &format!("weight_ih_l{n}"),
            Source::LstmInput(axon.into()),
            &mut lstm.weight_ih,
            false,
        );
        self.tensor(
            &format!("weight_hh_l{n}"),
            Source::LstmHidden(axon.into()),
            &mut lstm.weight_hh,
            false,
        );
        self.tensor(
            &format!("bias_ih_l{n}"),
            Source::LstmBias(axon.into()),
            &mut lstm.bias_ih,
            false,
        );
        self.tensor(
            &format!("bias_hh_l{n}"),
            Source::Zero,
            &mut lstm.bias_hh,
            false,
        );
    }
}

/// Walks `model` from the root in `mode`.
fn walk(model: &mut impl Walk, mode: Mode) {
    model.walk(&mut Walker {
        prefix: String::new(),
        mode,
    });
}

/// Every parameter of `model`, in walk order.
pub fn entries(model: &mut impl Walk) -> Vec<Entry> {
    let mut out = Vec::new();
    walk(model, Mode::List(&mut out));
    out
}

/// The model's parameters in our layout, by name.
pub fn tensors(model: &mut impl Walk) -> BTreeMap<String, Values> {
    let mut out = BTreeMap::new();
    walk(model, Mode::Save(&mut out));
    out
}

/// Each parameter's gradient in `grads` (module layout, `None` when the
/// parameter got none), by our name.
pub fn gradients(model: &mut impl Walk, grads: &Gradients) -> Vec<(String, Option<Vec<f32>>)> {
    let mut out = Vec::new();
    walk(
        model,
        Mode::Grads {
            grads,
            out: &mut out,
        },
    );
    out
}

/// Passes every parameter's gradient in `grads` through `reduce` as one flat
/// buffer in walk order (each gradient's values, zeros where a parameter has
/// none, followed by a marker: 1 where it has one, else 0), then puts back
/// what `reduce` leaves there for every parameter whose marker is not 0. A
/// sequence-parallel run sums the buffer across processes: every parameter
/// that got a gradient on any process gets the sum.
pub fn reduce_gradients(
    model: &mut impl Walk,
    grads: &mut GradientsParams,
    reduce: impl FnOnce(&mut [f32]) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut flat = Vec::new();
    walk(
        model,
        Mode::TakeGrads {
            grads,
            out: &mut flat,
        },
    );
    reduce(&mut flat)?;
    walk(
        model,
        Mode::PutGrads {
            grads,
            values: &flat,
            at: 0,
        },
    );
    Ok(())
}

/// Replaces every parameter of `model` with `tensors`, which must hold
/// exactly the model's names with the right shapes. On error the message
/// lists every missing, misshapen and extra tensor, and the model may be
/// partly updated.
pub fn load_tensors(model: &mut impl Walk, tensors: BTreeMap<String, Values>) -> Result<(), Error> {
    load_tensors_with_ids(model, tensors, None)
}

/// Each parameter's id (what optimizer state is keyed by), by name.
pub fn param_ids(model: &mut impl Walk) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    walk(model, Mode::Ids(&mut out));
    out
}

/// [`load_tensors`], also restoring each parameter's id from `ids` (so
/// saved optimizer state finds its parameters again).
pub fn load_tensors_with_ids(
    model: &mut impl Walk,
    mut tensors: BTreeMap<String, Values>,
    ids: Option<&BTreeMap<String, u64>>,
) -> Result<(), Error> {
    let mut problems = Vec::new();
    walk(
        model,
        Mode::Load {
            tensors: &mut tensors,
            problems: &mut problems,
            ids,
        },
    );
    problems.extend(
        tensors
            .keys()
            .map(|name| format!("unexpected tensor `{name}`")),
    );
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Weights(problems.join("; ")))
    }
}

const LSTM_GATES: [char; 4] = ['i', 'f', 'g', 'o'];

/// Builds our tensors for `entries` from an Axon parameter dump (tensors
/// named `param/<layer>.<param>`, as in `shared/golden/edifice`).
///
/// Tensors outside `param/` (inputs, outputs, intermediates) and Axon state
/// (`*.key`: dropout and LSTM-state RNG keys) are ignored. Every other
/// `param/` tensor must be used, and every needed one present with the shape
/// the model expects; the error lists each problem.
pub fn from_axon(
    entries: &[Entry],
    axon: &BTreeMap<String, Values>,
) -> Result<BTreeMap<String, Values>, Error> {
    let mut reader = AxonReader {
        axon,
        used: BTreeSet::new(),
        problems: Vec::new(),
    };
    let mut out = BTreeMap::new();
    for entry in entries {
        let value = reader.build(entry);
        match value {
            Some((shape, _)) if shape != entry.shape => reader.problems.push(format!(
                "`{}` built from Axon's {:?} has shape {shape:?}, the model needs {:?}",
                entry.name, entry.source, entry.shape
            )),
            Some(v) => {
                out.insert(entry.name.clone(), v);
            }
            None => {}
        }
    }
    for name in axon.keys() {
        if name.starts_with("param/") && !name.ends_with(".key") && !reader.used.contains(name) {
            reader
                .problems
                .push(format!("unexpected Axon tensor `{name}`"));
        }
    }
    if reader.problems.is_empty() {
        Ok(out)
    } else {
        Err(Error::Weights(reader.problems.join("; ")))
    }
}

/// Looks tensors up in an Axon dump, remembering what was used and what was wrong.
struct AxonReader<'a> {
    axon: &'a BTreeMap<String, Values>,
    used: BTreeSet<String>,
    problems: Vec<String>,
}

impl AxonReader<'_> {
    fn fetch(&mut self, name: String, rank: usize) -> Option<Values> {
        let key = format!("param/{name}");
        match self.axon.get(&key) {
            None => {
                self.problems.push(format!("missing Axon tensor `{key}`"));
                None
            }
            Some(t) if t.0.len() != rank => {
                self.problems.push(format!(
                    "Axon tensor `{key}` has shape {:?}, expected rank {rank}",
                    t.0
                ));
                None
            }
            Some(t) => {
                self.used.insert(key);
                Some(t.clone())
            }
        }
    }

    /// The four gate tensors `{layer}.{group}.{prefix}{i,f,g,o}`, stacked.
    fn gates(&mut self, layer: &str, group: &str, prefix: &str, rank: usize) -> Option<Values> {
        let parts: Vec<Values> = LSTM_GATES
            .iter()
            .filter_map(|g| self.fetch(format!("{layer}.{group}.{prefix}{g}"), rank))
            .map(|t| if rank == 2 { transpose_values(&t) } else { t })
            .collect();
        stack(parts)
    }

    fn build(&mut self, entry: &Entry) -> Option<Values> {
        match &entry.source {
            Source::DenseKernel(l) => self
                .fetch(format!("{l}.kernel"), 2)
                .map(|t| transpose_values(&t)),
            Source::DenseBias(l) => self.fetch(format!("{l}.bias"), 1),
            Source::NormGamma(l) => self.fetch(format!("{l}.gamma"), 1),
            Source::NormBeta(l) => self.fetch(format!("{l}.beta"), 1),
            Source::Raw(name) => self.fetch(name.clone(), entry.shape.len()),
            Source::Zero => Some((entry.shape.clone(), vec![0.0; entry.shape.iter().product()])),
            Source::LstmInput(l) => self.gates(l, "input_kernel", "wi", 2),
            Source::LstmHidden(l) => self.gates(l, "hidden_kernel", "wh", 2),
            Source::LstmBias(l) => self.gates(l, "bias", "b", 1),
        }
    }
}

/// `[r, c]` → `[c, r]`.
fn transpose_values((shape, values): &Values) -> Values {
    let (r, c) = (shape[0], shape[1]);
    let mut out = vec![0.0; values.len()];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = values[i * c + j];
        }
    }
    (vec![c, r], out)
}

/// Concatenates the four gate blocks along the first axis (`None` when one
/// was missing, which `fetch` already reported).
fn stack(parts: Vec<Values>) -> Option<Values> {
    if parts.len() != LSTM_GATES.len() {
        return None;
    }
    let mut shape = parts[0].0.clone();
    shape[0] = parts.iter().map(|p| p.0[0]).sum();
    Some((shape, parts.into_iter().flat_map(|p| p.1).collect()))
}
