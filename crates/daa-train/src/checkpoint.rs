//! Hugging Face checkpoints: `config.json`, `model.safetensors` (or shards
//! listed in `model.safetensors.index.json`) and tokenizer files.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::tensor::FloatDType;
use burn::tensor::backend::Backend;
use daa_core::HostTensor;
use daa_core::io::SafetensorsFile;
use safetensors::Dtype;

use crate::error::ModelError;
use crate::model::{CausalLm, DecoderLayer, ModelConfig, OutputHead, ParamKind, WeightSource};
use crate::shards::{SaveDtype, SaveOptions, write_weights};

/// Files copied from the source checkpoint into every saved one (when present).
pub const TOKENIZER_FILES: [&str; 5] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
];

/// Reads `config.json` of a checkpoint folder.
pub fn read_config(dir: &Path) -> Result<ModelConfig> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    ModelConfig::from_json(&text).with_context(|| format!("{}", path.display()))
}

/// Whether `name` names a file directly in its folder (an index from the Hub
/// must not point outside the checkpoint).
fn is_plain_file_name(name: &str) -> bool {
    let path = Path::new(name);
    !name.is_empty() && path.file_name().is_some_and(|f| f == path.as_os_str()) && name != ".." && name != "."
}

/// The safetensors files of a checkpoint, memory-mapped (headers parsed
/// once), and which file holds which tensor.
#[derive(Debug)]
pub struct SafetensorsWeights {
    files: Vec<SafetensorsFile>,
    location: HashMap<String, usize>,
}

impl SafetensorsWeights {
    /// Opens `model.safetensors.index.json` and its shards, or a single
    /// `model.safetensors`. A shard named by the index but absent is an error
    /// naming both files.
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let mut files = Vec::new();
        let mut location = HashMap::new();
        if index_path.exists() {
            let text = std::fs::read_to_string(&index_path)
                .with_context(|| format!("{}: cannot read", index_path.display()))?;
            let index: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", index_path.display()))?;
            let Some(map) = index.get("weight_map").and_then(|m| m.as_object()) else {
                bail!("{}: no `weight_map` object", index_path.display());
            };
            let mut shard_of: BTreeMap<String, usize> = BTreeMap::new();
            for (tensor, shard) in map {
                let Some(shard) = shard.as_str().filter(|s| is_plain_file_name(s)) else {
                    bail!(
                        "{}: `weight_map.{tensor}` must be the name of a file in the checkpoint folder, found {shard}",
                        index_path.display()
                    );
                };
                let next = shard_of.len();
                let i = *shard_of.entry(shard.to_string()).or_insert(next);
                location.insert(tensor.clone(), i);
            }
            let mut ordered: Vec<(&String, &usize)> = shard_of.iter().collect();
            ordered.sort_by_key(|(_, i)| **i);
            for (shard, _) in ordered {
                let path = dir.join(shard);
                if !path.exists() {
                    bail!("{}: shard `{shard}` is missing from {}", index_path.display(), dir.display());
                }
                files.push(SafetensorsFile::open(&path)?);
            }
            // Every stored tensor is listed (an entry lost from the index
            // would otherwise surface later as a "missing tensor").
            for (i, file) in files.iter().enumerate() {
                if let Some(unlisted) = file.names().into_iter().find(|n| location.get(n) != Some(&i)) {
                    bail!(
                        "{}: no entry for tensor `{unlisted}`, which {} holds (the index is damaged or stale)",
                        index_path.display(),
                        file.path().display()
                    );
                }
            }
        } else if single.exists() {
            let file = SafetensorsFile::open(&single)?;
            location.extend(file.names().into_iter().map(|n| (n, 0)));
            files.push(file);
        } else {
            bail!("{}: no model.safetensors or model.safetensors.index.json", dir.display());
        }
        Ok(Self { files, location })
    }

    /// One safetensors file (a PEFT adapter's weights).
    pub fn open_file(path: &Path) -> Result<Self> {
        let file = SafetensorsFile::open(path)?;
        let location = file.names().into_iter().map(|n| (n, 0)).collect();
        Ok(Self { files: vec![file], location })
    }

    /// Names of every stored tensor.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.location.keys().map(String::as_str)
    }
}

impl WeightSource for SafetensorsWeights {
    fn read(&mut self, name: &str, shape: &[usize]) -> Result<HostTensor, ModelError> {
        let Some(&i) = self.location.get(name) else {
            return Err(ModelError::MissingTensor { name: name.to_string() });
        };
        let file = &self.files[i];
        let file_name = file.path().file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        let located = || format!("{name}` in `{file_name}");
        let stored = file.get(name).ok_or_else(|| ModelError::MissingTensor { name: located() })?;
        if stored.shape() != shape {
            return Err(ModelError::Shape {
                name: located(),
                expected: shape.to_vec(),
                found: stored.shape().to_vec(),
            });
        }
        stored.host().map_err(|e| ModelError::Config(e.to_string()))
    }

    fn release(&mut self, name: &str) {
        if let Some(stored) = self.location.get(name).and_then(|&i| self.files[i].get(name)) {
            stored.release();
        }
    }
}

/// Loads a language-model checkpoint folder onto `device` (a reward model
/// is refused: it has no next-token head), from its f32 master weights when
/// it has them ([`MASTER_WEIGHTS_DIR`]). Tensor by tensor: each shard's pages
/// are let go once its tensor is built, so host memory holds the tensor
/// being converted, not the files. A PEFT adapter folder
/// ([`crate::peft`]) loads as its base model with the adapters attached.
pub fn load_model<B: Backend>(dir: &Path, device: &B::Device) -> Result<CausalLm<B>> {
    load_model_in(dir, device, FloatDType::F32)
}

/// [`load_model`] with the weights in `dtype`, each converted as it is built
/// (LoRA adapters stay f32).
pub fn load_model_in<B: Backend>(dir: &Path, device: &B::Device, dtype: FloatDType) -> Result<CausalLm<B>> {
    if crate::peft::is_adapter_only(dir) {
        return crate::peft::load_adapted(dir, None, device, dtype);
    }
    load_model_each_block(dir, device, dtype, &mut |_, layer| Ok(layer))
}

/// [`load_model_in`] of a full checkpoint with each decoder block handed to
/// `on_block` as it is loaded ([`CausalLm::from_weights_each_block`]).
pub fn load_model_each_block<B: Backend>(
    dir: &Path,
    device: &B::Device,
    dtype: FloatDType,
    on_block: &mut dyn FnMut(usize, DecoderLayer<B>) -> Result<DecoderLayer<B>, ModelError>,
) -> Result<CausalLm<B>> {
    let config = read_config(dir)?;
    if let OutputHead::SequenceClassification { .. } = config.head {
        bail!(
            "{}: {} is a sequence-classification (reward) model, not a language model; use it as a judge \
             (`daa judge --judge {}`)",
            dir.display(),
            config.architecture_name,
            dir.display()
        );
    }
    let master = dir.join(MASTER_WEIGHTS_DIR);
    let weights_dir = if master.is_dir() { master } else { dir.to_path_buf() };
    let mut weights = SafetensorsWeights::open(&weights_dir)?;
    CausalLm::from_weights_each_block(&config, &mut weights, device, dtype, on_block)
        .with_context(|| format!("loading {}", weights_dir.display()))
}

/// Loads a reward model: a `…ForSequenceClassification` checkpoint with one
/// label.
pub fn load_reward_model<B: Backend>(dir: &Path, device: &B::Device) -> Result<CausalLm<B>> {
    let config = read_config(dir)?;
    match config.head {
        OutputHead::SequenceClassification { num_labels: 1 } => {}
        OutputHead::SequenceClassification { num_labels } => {
            bail!("{}: the score head has {num_labels} labels (`id2label`); a reward model has one", dir.display())
        }
        OutputHead::LanguageModel => bail!(
            "{}: {} is a language model; a reward model is a `…ForSequenceClassification` checkpoint with a \
             `score` head",
            dir.display(),
            config.architecture_name
        ),
    }
    let mut weights = SafetensorsWeights::open(dir)?;
    CausalLm::from_weights(&config, &mut weights, device).with_context(|| format!("loading {}", dir.display()))
}

/// A tensor to write: name, dtype, shape and little-endian bytes.
#[derive(Debug, Clone)]
pub struct NamedTensor {
    /// Name in the file.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Little-endian element bytes.
    pub bytes: Vec<u8>,
}

impl NamedTensor {
    /// An f32 tensor.
    pub fn f32(name: &str, shape: Vec<usize>, values: &[f32]) -> Self {
        Self { name: name.into(), dtype: Dtype::F32, shape, bytes: bytemuck::cast_slice(values).to_vec() }
    }
    /// An f64 tensor.
    pub fn f64(name: &str, shape: Vec<usize>, values: &[f64]) -> Self {
        Self { name: name.into(), dtype: Dtype::F64, shape, bytes: bytemuck::cast_slice(values).to_vec() }
    }
    /// An i64 tensor.
    pub fn i64(name: &str, shape: Vec<usize>, values: &[i64]) -> Self {
        Self { name: name.into(), dtype: Dtype::I64, shape, bytes: bytemuck::cast_slice(values).to_vec() }
    }
}

/// Serialises `tensors` as safetensors with `{"format": "pt"}` metadata (what
/// transformers expects), plus `extra` metadata.
pub fn safetensors_bytes(tensors: &[NamedTensor], extra: &[(&str, String)]) -> Result<Vec<u8>> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|t| {
            let view = safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.bytes)
                .with_context(|| format!("tensor `{}`", t.name))?;
            Ok((t.name.clone(), view))
        })
        .collect::<Result<_>>()?;
    let mut metadata: HashMap<String, String> = HashMap::from([("format".to_string(), "pt".to_string())]);
    metadata.extend(extra.iter().map(|(k, v)| ((*k).to_string(), v.clone())));
    safetensors::serialize(views, Some(metadata)).context("serialising safetensors")
}

/// Every weight of `model`, file layout, in visiting order.
pub fn model_tensors<B: Backend>(model: &CausalLm<B>) -> Result<Vec<NamedTensor>, ModelError> {
    visited_tensors(|f| model.visit_weights(f))
}

/// The parameters a visit of a model shows (its weights, its adapters), as
/// f32 tensors in the file layout, in visiting order.
pub fn visited_tensors<B: Backend>(
    visit: impl FnOnce(&mut dyn FnMut(&str, ParamKind<'_, B>)),
) -> Result<Vec<NamedTensor>, ModelError> {
    let mut out = Vec::new();
    let mut failed = None;
    visit(&mut |name: &str, p: ParamKind<'_, B>| {
        if failed.is_none() {
            match p.to_file_f32(name) {
                Ok(values) => out.push(NamedTensor::f32(name, p.file_shape(), &values)),
                Err(e) => failed = Some(e),
            }
        }
    });
    match failed {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// Folder of a checkpoint that holds the f32 master weights when the weights
/// themselves were saved in a lower precision: what a resumed run (and
/// [`load_model`]) continues from, so that saving does not round the run.
pub const MASTER_WEIGHTS_DIR: &str = "master";

/// Writes `model` as a Hugging Face checkpoint into the existing folder
/// `dir` in the dtype it was loaded in (see [`save_model_as`]).
pub fn save_model<B: Backend>(model: &CausalLm<B>, dir: &Path, source_dir: &Path) -> Result<()> {
    save_model_as(model, dir, source_dir, &SaveOptions::like_source(model.config()))
}

/// Writes `model` into the existing folder `dir`: the weights as `options`
/// says ([`crate::shards`]: dtype, shards of at most 5 GB with an index),
/// `config.json` naming that dtype and, from `source_dir`, the tokenizer
/// files present there. Weights saved below f32 also get their f32 values
/// under [`MASTER_WEIGHTS_DIR`] (with `options.f32_copy`). A model with LoRA adapters is saved as a
/// PEFT adapter folder on the base `source_dir` ([`crate::peft::save_adapter`]).
pub fn save_model_as<B: Backend>(
    model: &CausalLm<B>,
    dir: &Path,
    source_dir: &Path,
    options: &SaveOptions,
) -> Result<()> {
    if model.lora().is_some() {
        return crate::peft::save_adapter(model, dir, source_dir);
    }
    write_weights(model, dir, options)?;
    if options.dtype != SaveDtype::F32 && options.f32_copy {
        let master = dir.join(MASTER_WEIGHTS_DIR);
        std::fs::create_dir_all(&master).with_context(|| format!("{}: cannot create", master.display()))?;
        write_weights(model, &master, &SaveOptions { dtype: SaveDtype::F32, ..*options })?;
    }
    std::fs::write(dir.join("config.json"), model.config().to_json(options.dtype.torch_dtype()))
        .with_context(|| format!("{}: write failed", dir.join("config.json").display()))?;
    copy_tokenizer_files(source_dir, dir)
}

/// Copies the [`TOKENIZER_FILES`] present in `source_dir` into `dir`
/// (nothing when they are the same folder).
pub fn copy_tokenizer_files(source_dir: &Path, dir: &Path) -> Result<()> {
    let same = |a: &Path, b: &Path| matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y);
    if same(source_dir, dir) {
        return Ok(());
    }
    for name in TOKENIZER_FILES {
        let from = source_dir.join(name);
        if from.exists() {
            std::fs::copy(&from, dir.join(name)).with_context(|| format!("copying {}", from.display()))?;
        }
    }
    Ok(())
}
