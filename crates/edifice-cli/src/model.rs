//! `edifice init`, `inspect`, `forward` and `convert`: models from config
//! files and weights in safetensors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::tensor::{Device, Tensor, TensorData};
use clap::{Args, ValueEnum};
use edifice::weights::{self, Values};
use edifice::{Model, ModelConfig};

use crate::tensors::TensorFile;
use crate::world::World;

pub fn read_config(path: &Path) -> Result<ModelConfig> {
    ModelConfig::from_path(path).with_context(|| format!("config {}", path.display()))
}

/// Writes named f32 tensors to a safetensors file.
pub fn write(path: &Path, tensors: &BTreeMap<String, Values>) -> Result<()> {
    let bytes = weights::to_safetensors(tensors)?;
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

fn read_weights(path: &Path) -> Result<BTreeMap<String, Values>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    weights::from_safetensors(&bytes).with_context(|| format!("{}", path.display()))
}

/// Builds the model of `config` with the weights in `path`.
pub fn load_model(config: &ModelConfig, path: &Path, device: &Device) -> Result<Model> {
    let mut model = config.init(device)?;
    weights::load_tensors(&mut model, read_weights(path)?).with_context(|| {
        format!(
            "{} does not fit the `{}` config",
            path.display(),
            config.name()
        )
    })?;
    Ok(model)
}

/// `edifice init`.
#[derive(Args)]
pub struct InitArgs {
    /// Model config (TOML, or JSON when it ends in .json).
    #[arg(long)]
    config: PathBuf,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to write the weights.
    #[arg(long)]
    out: PathBuf,
}

pub fn init(args: InitArgs) -> Result<()> {
    let config = read_config(&args.config)?;
    let device = Device::flex();
    device.seed(args.seed);
    let mut model = config.init(&device)?;
    let tensors = weights::tensors(&mut model);
    write(&args.out, &tensors)?;
    let params: usize = tensors.values().map(|(_, v)| v.len()).sum();
    println!(
        "wrote {} ({} model, {} tensors, {params} parameters)",
        args.out.display(),
        config.name(),
        tensors.len()
    );
    Ok(())
}

/// `edifice inspect`.
#[derive(Args)]
pub struct InspectArgs {
    /// A weights file.
    weights: PathBuf,
}

pub fn inspect(args: InspectArgs) -> Result<()> {
    let tensors = read_weights(&args.weights)?;
    let width = tensors.keys().map(String::len).max().unwrap_or(0);
    let mut total = 0;
    for (name, (shape, values)) in &tensors {
        println!("{name:width$}  {shape:?}");
        total += values.len();
    }
    println!("{} tensors, {total} parameters", tensors.len());
    Ok(())
}

/// `edifice forward`.
#[derive(Args)]
pub struct ForwardArgs {
    /// Model config.
    #[arg(long)]
    config: PathBuf,
    /// Weights (from `edifice init`, `convert` or training).
    #[arg(long)]
    weights: PathBuf,
    /// Input safetensors with tensor `x` [B, T, E] f32.
    #[arg(long)]
    input: PathBuf,
    /// Output safetensors; gets tensor `y`.
    #[arg(long)]
    output: PathBuf,
    /// Output every timestep, `y` [B, T, out], instead of the last, [B, out].
    #[arg(long)]
    all_timesteps: bool,
    /// Spread the `ring` model's sequence over the ranks of `mpirun -n P`
    /// (build with `--features dist`); every rank reads the same files,
    /// rank 0 writes the output.
    #[arg(long)]
    distributed: bool,
}

pub fn forward(args: ForwardArgs) -> Result<()> {
    let config = read_config(&args.config)?;
    let device = Device::flex();
    let model = load_model(&config, &args.weights, &device)?;
    let (x, dims) = TensorFile::read(&args.input)?.f32("x", 3)?;
    let (seq_len, embed_dim) = config.input_dims();
    if dims[1] != seq_len || dims[2] != embed_dim {
        bail!(
            "input `x` has dims {dims:?}; the `{}` config needs [batch, {seq_len}, {embed_dim}]",
            config.name()
        );
    }
    // Without the dist feature, only refuses --distributed.
    #[cfg_attr(not(feature = "dist"), allow(unused_variables))]
    let world = World::new(args.distributed)?;
    #[cfg(feature = "dist")]
    if let Some(comm) = world.comm() {
        return forward_distributed(comm, &args, &config, model, x, [dims[0], dims[1], dims[2]]);
    }
    let x = Tensor::<3>::from_data(TensorData::new(x, dims), &device);
    let (shape, values) = if args.all_timesteps {
        let y = model.forward_all(x)?;
        (y.dims().to_vec(), y.into_data())
    } else {
        let y = model.forward(x)?;
        (y.dims().to_vec(), y.into_data())
    };
    let values: Vec<f32> = values.try_to_vec().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    write_output(&args.output, shape, values)
}

fn write_output(path: &Path, shape: Vec<usize>, values: Vec<f32>) -> Result<()> {
    write(
        path,
        &BTreeMap::from([("y".to_string(), (shape.clone(), values))]),
    )?;
    println!("wrote y {shape:?} to {}", path.display());
    Ok(())
}

/// `forward --distributed`: the ring model's sequence spread over the
/// ranks, after checking they all read the same config, weights and input.
#[cfg(feature = "dist")]
fn forward_distributed(
    comm: &std::sync::Arc<edifice_dist::Comm>,
    args: &ForwardArgs,
    config: &ModelConfig,
    model: Model,
    x: Vec<f32>,
    dims: [usize; 3],
) -> Result<()> {
    use edifice_dist::model::Spread;
    let spread = Spread::new(comm.clone(), config)?;
    let mut model = spread.model(model)?;
    let config_text = serde_json::Value::Object(config.to_value()).to_string();
    let input: Vec<u8> = x.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect();
    spread.check_same(
        "the config, weights or input",
        &[config_text.as_bytes(), &input],
        &mut model,
    )?;
    let x = Tensor::<3>::from_data(TensorData::new(x, dims), &Device::flex());
    let out = if args.all_timesteps {
        spread.forward_all(&model, x)?.map(|(v, s)| (s.to_vec(), v))
    } else {
        spread
            .forward_last(&model, x)?
            .map(|(v, s)| (s.to_vec(), v))
    };
    match out {
        Some((shape, values)) => write_output(&args.output, shape, values),
        None => Ok(()),
    }
}

/// Where `convert` reads from.
#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    /// Edifice/Axon parameters named `param/<layer>.<param>`.
    Edifice,
}

/// `edifice convert`.
#[derive(Args)]
pub struct ConvertArgs {
    /// Format of the input file.
    #[arg(long, value_enum)]
    from: Format,
    /// The file to convert.
    input: PathBuf,
    /// Model config the parameters belong to.
    #[arg(long)]
    config: PathBuf,
    /// Where to write our weights.
    #[arg(long)]
    out: PathBuf,
}

pub fn convert(args: ConvertArgs) -> Result<()> {
    let config = read_config(&args.config)?;
    let Format::Edifice = args.from;
    let bytes = std::fs::read(&args.input)
        .with_context(|| format!("cannot read {}", args.input.display()))?;
    let axon = axon_params(&bytes).with_context(|| format!("{}", args.input.display()))?;
    let mut model = config.init(&Device::flex())?;
    let ours = weights::from_axon(&weights::entries(&mut model), &axon).with_context(|| {
        format!(
            "{} does not fit the `{}` config",
            args.input.display(),
            config.name()
        )
    })?;
    write(&args.out, &ours)?;
    println!("wrote {} ({} tensors)", args.out.display(), ours.len());
    Ok(())
}

/// The `param/` tensors of an Axon dump (others, e.g. inputs and outputs
/// stored beside them, are skipped whatever their dtype).
fn axon_params(bytes: &[u8]) -> Result<BTreeMap<String, Values>> {
    let file = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| anyhow::anyhow!("not a valid safetensors file: {e}"))?;
    let mut out = BTreeMap::new();
    for (name, view) in file.tensors() {
        if !name.starts_with("param/") || name.ends_with(".key") {
            continue;
        }
        if view.dtype() != safetensors::Dtype::F32 {
            bail!("tensor `{name}` has dtype {:?}, expected F32", view.dtype());
        }
        out.insert(
            name,
            (view.shape().to_vec(), weights::decode_f32(view.data())),
        );
    }
    Ok(out)
}
