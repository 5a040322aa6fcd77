//! Hugging Face checkpoints: `config.json`, `model.safetensors` (or shards
//! listed in `model.safetensors.index.json`) and tokenizer files.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::backend::Backend;
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::error::ModelError;
use crate::model::{CausalLm, ModelConfig, ParamKind, WeightSource};

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

/// The safetensors files of a checkpoint, memory-mapped, and which file holds
/// which tensor.
#[derive(Debug)]
pub struct SafetensorsWeights {
    files: Vec<(PathBuf, Mmap)>,
    location: HashMap<String, usize>,
}

fn map_file(path: &Path) -> Result<Mmap> {
    let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    // SAFETY: the file is only read; a checkpoint changed underneath a run is
    // outside what any trainer can guard against.
    unsafe { Mmap::map(&file) }.with_context(|| format!("{}: cannot map", path.display()))
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
                let Some(shard) = shard.as_str() else {
                    bail!("{}: `weight_map.{tensor}` must be a file name", index_path.display());
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
                files.push((path.clone(), map_file(&path)?));
            }
        } else if single.exists() {
            let map = map_file(&single)?;
            let names = SafeTensors::deserialize(&map)
                .with_context(|| format!("{}: not a safetensors file", single.display()))?
                .names()
                .into_iter()
                .map(str::to_string)
                .collect::<Vec<_>>();
            location.extend(names.into_iter().map(|n| (n, 0)));
            files.push((single, map));
        } else {
            bail!("{}: no model.safetensors or model.safetensors.index.json", dir.display());
        }
        Ok(Self { files, location })
    }

    /// Names of every stored tensor.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.location.keys().map(String::as_str)
    }
}

fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        _ => return None,
    })
}

impl WeightSource for SafetensorsWeights {
    fn read(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let Some(&i) = self.location.get(name) else {
            return Err(ModelError::MissingTensor { name: name.to_string() });
        };
        let (path, map) = &self.files[i];
        let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        let located = || format!("{name}` in `{file}");
        let tensors = SafeTensors::deserialize(map)
            .map_err(|e| ModelError::Config(format!("{}: not a safetensors file ({e})", path.display())))?;
        let view = tensors.tensor(name).map_err(|_| ModelError::MissingTensor { name: located() })?;
        if view.shape() != shape {
            return Err(ModelError::Shape { name: located(), expected: shape.to_vec(), found: view.shape().to_vec() });
        }
        to_f32(view.dtype(), view.data()).ok_or_else(|| {
            ModelError::Config(format!(
                "tensor `{}` has dtype {:?}; daa reads F32, F16 and BF16",
                located(),
                view.dtype()
            ))
        })
    }
}

/// Loads a checkpoint folder onto `device`.
pub fn load_model<B: Backend>(dir: &Path, device: &B::Device) -> Result<CausalLm<B>> {
    let config = read_config(dir)?;
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
pub fn model_tensors<B: Backend>(model: &CausalLm<B>) -> Vec<NamedTensor> {
    let mut out = Vec::new();
    model.visit_weights(&mut |name: &str, p: ParamKind<'_, B>| {
        out.push(NamedTensor::f32(name, p.file_shape(), &p.to_file_f32()));
    });
    out
}

/// Writes `model` as a Hugging Face checkpoint into the existing folder
/// `dir`: `model.safetensors` (f32), `config.json` and, from `source_dir`,
/// the tokenizer files present there.
pub fn save_model<B: Backend>(model: &CausalLm<B>, dir: &Path, source_dir: &Path) -> Result<()> {
    let bytes = safetensors_bytes(&model_tensors(model), &[])?;
    std::fs::write(dir.join("model.safetensors"), bytes)
        .with_context(|| format!("{}: write failed", dir.join("model.safetensors").display()))?;
    std::fs::write(dir.join("config.json"), model.config().to_json("float32"))
        .with_context(|| format!("{}: write failed", dir.join("config.json").display()))?;
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
