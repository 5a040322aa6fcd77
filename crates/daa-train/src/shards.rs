//! Checkpoints written the way Hugging Face writes them, tensor by tensor:
//! in the source model's dtype (a bf16 model stays bf16), split into shards
//! of at most [`SaveOptions::max_shard_bytes`]
//! (`model-00001-of-00003.safetensors` … plus `model.safetensors.index.json`
//! with `metadata.total_size` and `weight_map`), or one `model.safetensors`
//! when everything fits in one shard.
//!
//! Every shard's header is known before its data (names, dtypes, shapes and
//! hence offsets), so each tensor is read from the device, converted and
//! written on its own: host memory holds one tensor, never the model. The
//! caller writes into a fresh folder that is renamed into place
//! ([`daa_core::io::write_dir_atomic`], `replace_dir`), so a checkpoint
//! appears whole or not at all.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::tensor::backend::Backend;
use half::{bf16, f16};
use serde_json::{Map, Value, json};

use crate::model::{CausalLm, ModelConfig, ParamKind};

/// Hugging Face's default shard limit (`max_shard_size="5GB"`).
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 5_000_000_000;

/// Element type of saved weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveDtype {
    /// `float32`.
    F32,
    /// `bfloat16` (round to nearest even).
    Bf16,
    /// `float16` (round to nearest even).
    F16,
}

impl SaveDtype {
    /// The dtype `config.json`'s `torch_dtype` names, if daa writes it.
    pub fn from_torch_dtype(name: &str) -> Option<Self> {
        match name {
            "float32" | "float" => Some(Self::F32),
            "bfloat16" => Some(Self::Bf16),
            "float16" | "half" => Some(Self::F16),
            _ => None,
        }
    }

    /// `torch_dtype` as `config.json` spells it.
    pub fn torch_dtype(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::Bf16 => "bfloat16",
            Self::F16 => "float16",
        }
    }

    /// The safetensors header's name.
    fn safetensors_name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::Bf16 => "BF16",
            Self::F16 => "F16",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            Self::F32 => 4,
            Self::Bf16 | Self::F16 => 2,
        }
    }

    /// Little-endian bytes of `values` in this type.
    fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            Self::F32 => bytemuck::cast_slice(values).to_vec(),
            Self::Bf16 => values.iter().flat_map(|&x| bf16::from_f32(x).to_le_bytes()).collect(),
            Self::F16 => values.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect(),
        }
    }
}

/// How weights are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaveOptions {
    /// Element type.
    pub dtype: SaveDtype,
    /// Largest shard; a single tensor larger than this gets a shard of its own.
    pub max_shard_bytes: u64,
    /// Below f32, also the f32 values under `master/` (what a run continues
    /// from; `daa merge` leaves them out unless asked).
    pub f32_copy: bool,
}

impl SaveOptions {
    /// The dtype the model was loaded in (`torch_dtype` of its `config.json`;
    /// f32 when absent or a type daa does not write), shards of 5 GB, the f32
    /// copy below f32.
    pub fn like_source(config: &ModelConfig) -> Self {
        let dtype = config.raw.get("torch_dtype").and_then(Value::as_str).and_then(SaveDtype::from_torch_dtype);
        Self { dtype: dtype.unwrap_or(SaveDtype::F32), max_shard_bytes: DEFAULT_MAX_SHARD_BYTES, f32_copy: true }
    }
}

/// One tensor to write.
struct Entry {
    name: String,
    shape: Vec<usize>,
    bytes: u64,
}

/// Writes the weights of `model` into the folder `dir` as `options` says;
/// returns the names of the files written (shards, then the index if any).
pub fn write_weights<B: Backend>(model: &CausalLm<B>, dir: &Path, options: &SaveOptions) -> Result<Vec<String>> {
    let mut entries = Vec::new();
    model.visit_weights(&mut |name: &str, p: ParamKind<'_, B>| {
        let shape = p.file_shape();
        let bytes = shape.iter().product::<usize>() as u64 * options.dtype.size();
        entries.push(Entry { name: name.to_string(), shape, bytes });
    });
    let shards = split(&entries, options.max_shard_bytes.max(1));
    let n = shards.len();
    let files: Vec<String> = if n <= 1 {
        vec!["model.safetensors".to_string()]
    } else {
        (1..=n).map(|i| format!("model-{i:05}-of-{n:05}.safetensors")).collect()
    };
    let shard_of: Vec<usize> =
        shards.iter().enumerate().flat_map(|(s, members)| members.iter().map(move |_| s)).collect();

    let mut open: Option<(usize, BufWriter<File>)> = None;
    let mut index = 0;
    let mut failed: Option<anyhow::Error> = None;
    model.visit_weights(&mut |name: &str, p: ParamKind<'_, B>| {
        if failed.is_some() {
            return;
        }
        let mut write = || -> Result<()> {
            let entry = entries.get(index).filter(|e| e.name == name);
            let Some(entry) = entry else { bail!("`{name}`: the model's weights changed while being saved") };
            let shard = shard_of[index];
            if open.as_ref().map(|(s, _)| *s) != Some(shard) {
                if let Some((s, writer)) = open.take() {
                    finish(writer, &dir.join(&files[s]))?;
                }
                let path = dir.join(&files[shard]);
                let file = File::create(&path).with_context(|| format!("{}: cannot create", path.display()))?;
                let mut writer = BufWriter::with_capacity(8 << 20, file);
                writer
                    .write_all(&header(&shards[shard], &entries, options.dtype)?)
                    .with_context(|| format!("{}: write failed", path.display()))?;
                open = Some((shard, writer));
            }
            let values = p.to_file_f32(name)?;
            let bytes = options.dtype.encode(&values);
            debug_assert_eq!(bytes.len() as u64, entry.bytes);
            let (s, writer) = open.as_mut().expect("a shard is open");
            writer.write_all(&bytes).with_context(|| format!("{}: write failed", dir.join(&files[*s]).display()))
        };
        if let Err(e) = write() {
            failed = Some(e);
        }
        index += 1;
    });
    if let Some(e) = failed {
        return Err(e);
    }
    if let Some((s, writer)) = open.take() {
        finish(writer, &dir.join(&files[s]))?;
    }
    if index != entries.len() {
        bail!("the model's weights changed while being saved ({index} written, {} planned)", entries.len());
    }
    let mut written = files.clone();
    if n > 1 {
        let total: u64 = entries.iter().map(|e| e.bytes).sum();
        let weight_map: BTreeMap<&str, &str> =
            entries.iter().zip(&shard_of).map(|(e, &s)| (e.name.as_str(), files[s].as_str())).collect();
        let index = json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
        let path = dir.join("model.safetensors.index.json");
        std::fs::write(&path, serde_json::to_string_pretty(&index)? + "\n")
            .with_context(|| format!("{}: write failed", path.display()))?;
        written.push("model.safetensors.index.json".to_string());
    }
    Ok(written)
}

/// Consecutive runs of entries of at most `max` bytes (an entry larger than
/// `max` alone).
fn split(entries: &[Entry], max: u64) -> Vec<Vec<usize>> {
    let mut shards = Vec::new();
    let mut current = Vec::new();
    let mut size = 0u64;
    for (i, e) in entries.iter().enumerate() {
        if !current.is_empty() && size + e.bytes > max {
            shards.push(std::mem::take(&mut current));
            size = 0;
        }
        current.push(i);
        size += e.bytes;
    }
    if !current.is_empty() {
        shards.push(current);
    }
    shards
}

/// The 8-byte length and the JSON header of a shard holding `members`, in
/// that order, padded with spaces to a multiple of 8 bytes (so every tensor's
/// data is aligned, as the safetensors libraries write it).
fn header(members: &[usize], entries: &[Entry], dtype: SaveDtype) -> Result<Vec<u8>> {
    let mut map = Map::new();
    map.insert("__metadata__".into(), json!({ "format": "pt" }));
    let mut offset = 0u64;
    for &i in members {
        let e = &entries[i];
        map.insert(
            e.name.clone(),
            json!({ "dtype": dtype.safetensors_name(), "shape": e.shape, "data_offsets": [offset, offset + e.bytes] }),
        );
        offset += e.bytes;
    }
    let mut json = serde_json::to_vec(&Value::Object(map))?;
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    Ok(out)
}

/// Flushes and syncs a finished shard.
fn finish(writer: BufWriter<File>, path: &Path) -> Result<()> {
    let file = writer.into_inner().map_err(|e| anyhow::anyhow!("{}: write failed: {}", path.display(), e.error()))?;
    file.sync_all().with_context(|| format!("{}: sync failed", path.display()))
}
