//! Sequence log-probabilities of preference pairs under a model, and the
//! on-disk cache of the reference model's (`daa logps`).
//!
//! The cache file is safetensors: `row` (i64, 1-based row of the data file),
//! `chosen_logps`, `rejected_logps` (f64, summed over completion tokens),
//! `chosen_tokens`, `rejected_tokens` (i64), with the fingerprints of the
//! model and data in the metadata. Its name is the SHA-256 of the model
//! files, the data file, the tokenizer files and the length limits, so a
//! change to any of them computes a new one.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::backend::Backend;
use safetensors::{Dtype, SafeTensors};
use sha2::{Digest, Sha256};

use crate::atomic_write::write_bytes;
use crate::batch::TokenBatch;
use crate::checkpoint::{NamedTensor, TOKENIZER_FILES, safetensors_bytes};
use crate::data::{EncodeOptions, EncodedPair};
use crate::model::CausalLm;
use crate::objective::sequence_logps;

/// Summed completion log-probabilities of one pair and the completion lengths.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairScore {
    /// `π_w`.
    pub chosen: f64,
    /// `π_l`.
    pub rejected: f64,
    /// `n_w`.
    pub chosen_tokens: usize,
    /// `n_l`.
    pub rejected_tokens: usize,
}

/// Chosen sequences first, then rejected, padded: one forward pass per pair batch.
pub fn pair_batch(pairs: &[&EncodedPair], pad_id: u32, vocab: usize) -> Result<TokenBatch> {
    let sequences: Vec<_> = pairs.iter().map(|p| &p.chosen).chain(pairs.iter().map(|p| &p.rejected)).collect();
    TokenBatch::new(&sequences, pad_id, vocab)
        .with_context(|| format!("pair batch starting at data row {}", pairs.first().map_or(0, |p| p.row)))
}

/// Scores one batch of pairs with `model` in a single forward pass (no gradients).
pub fn score_batch<B: Backend>(model: &CausalLm<B>, pairs: &[&EncodedPair], pad_id: u32) -> Result<Vec<PairScore>> {
    let device = model.devices().into_iter().next().context("the model has no device")?;
    let tokens = pair_batch(pairs, pad_id, model.config().vocab_size)?;
    let logits = model.forward(tokens.input::<B>(&device));
    let (targets, weights) = tokens.targets::<B>(&device);
    let values =
        sequence_logps(logits, targets, weights).into_data().convert::<f64>().into_vec::<f64>().unwrap_or_default();
    let n = pairs.len();
    pairs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let score = PairScore {
                chosen: values[i],
                rejected: values[n + i],
                chosen_tokens: p.chosen.completion_len(),
                rejected_tokens: p.rejected.completion_len(),
            };
            if !(score.chosen.is_finite() && score.rejected.is_finite()) {
                bail!(
                    "data row {}: the model's log-probability is not finite ({}, {})",
                    p.row,
                    score.chosen,
                    score.rejected
                );
            }
            Ok(score)
        })
        .collect()
}

/// Scores `pairs` with `model` (no gradients), `batch` pairs per forward
/// pass; `progress` is told how many pairs are done.
pub fn score_pairs<B: Backend>(
    model: &CausalLm<B>,
    pairs: &[EncodedPair],
    batch: usize,
    pad_id: u32,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<PairScore>> {
    let mut scores = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(batch.max(1)) {
        scores.extend(score_batch(model, &chunk.iter().collect::<Vec<_>>(), pad_id)?);
        progress(scores.len());
    }
    Ok(scores)
}

/// Writes scores keyed by data row as a safetensors file (atomically).
pub fn write_scores(
    path: &Path,
    pairs: &[EncodedPair],
    scores: &[PairScore],
    metadata: &[(&str, String)],
) -> Result<()> {
    let n = pairs.len();
    let ints = |f: &dyn Fn(usize) -> i64| (0..n).map(f).collect::<Vec<i64>>();
    let tensors = [
        NamedTensor::i64("row", vec![n], &ints(&|i| pairs[i].row as i64)),
        NamedTensor::f64("chosen_logps", vec![n], &scores.iter().map(|s| s.chosen).collect::<Vec<_>>()),
        NamedTensor::f64("rejected_logps", vec![n], &scores.iter().map(|s| s.rejected).collect::<Vec<_>>()),
        NamedTensor::i64("chosen_tokens", vec![n], &ints(&|i| scores[i].chosen_tokens as i64)),
        NamedTensor::i64("rejected_tokens", vec![n], &ints(&|i| scores[i].rejected_tokens as i64)),
    ];
    write_bytes(path, &safetensors_bytes(&tensors, metadata)?)
}

fn column<T: bytemuck::Pod>(file: &SafeTensors<'_>, path: &Path, name: &str, dtype: Dtype) -> Result<Vec<T>> {
    let view = file.tensor(name).with_context(|| format!("{}: no tensor `{name}`", path.display()))?;
    if view.dtype() != dtype || view.shape().len() != 1 {
        bail!("{}: tensor `{name}` must be a vector of {dtype:?}", path.display());
    }
    Ok(bytemuck::pod_collect_to_vec(view.data()))
}

/// Reads a scores file: data row → score.
pub fn read_scores(path: &Path) -> Result<HashMap<usize, PairScore>> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let file =
        SafeTensors::deserialize(&bytes).with_context(|| format!("{}: not a safetensors file", path.display()))?;
    let rows: Vec<i64> = column(&file, path, "row", Dtype::I64)?;
    let chosen: Vec<f64> = column(&file, path, "chosen_logps", Dtype::F64)?;
    let rejected: Vec<f64> = column(&file, path, "rejected_logps", Dtype::F64)?;
    let chosen_tokens: Vec<i64> = column(&file, path, "chosen_tokens", Dtype::I64)?;
    let rejected_tokens: Vec<i64> = column(&file, path, "rejected_tokens", Dtype::I64)?;
    let n = rows.len();
    if [chosen.len(), rejected.len(), chosen_tokens.len(), rejected_tokens.len()].iter().any(|&l| l != n) {
        bail!("{}: columns have different lengths", path.display());
    }
    Ok((0..n)
        .map(|i| {
            (
                rows[i] as usize,
                PairScore {
                    chosen: chosen[i],
                    rejected: rejected[i],
                    chosen_tokens: chosen_tokens[i] as usize,
                    rejected_tokens: rejected_tokens[i] as usize,
                },
            )
        })
        .collect())
}

fn hash_file(hasher: &mut Sha256, path: &Path) -> Result<()> {
    let mut file = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut buffer = vec![0u8; 1 << 20];
    hasher.update(path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default().as_bytes());
    loop {
        let read = file.read(&mut buffer).with_context(|| format!("{}: cannot read", path.display()))?;
        if read == 0 {
            return Ok(());
        }
        hasher.update(&buffer[..read]);
    }
}

/// SHA-256 (hex) of a checkpoint folder's config, weights and tokenizer files.
pub fn model_fingerprint(dir: &Path) -> Result<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            name == "config.json"
                || name.ends_with(".safetensors")
                || name.ends_with(".safetensors.index.json")
                || TOKENIZER_FILES.contains(&name.as_str())
        })
        .collect();
    files.sort();
    let mut hasher = Sha256::new();
    for f in &files {
        hash_file(&mut hasher, f)?;
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// SHA-256 (hex) of a data file.
pub fn file_fingerprint(path: &Path) -> Result<String> {
    let mut hasher = Sha256::new();
    hash_file(&mut hasher, path)?;
    Ok(format!("{:x}", hasher.finalize()))
}

/// Where reference scores are cached: `configured` (`train.cache_dir`), else
/// `$DAA_CACHE_DIR`, else `$XDG_CACHE_HOME/daa`, else `~/.cache/daa`, else
/// `.daa-cache`.
pub fn cache_dir(configured: Option<&str>) -> PathBuf {
    if let Some(dir) = configured {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("DAA_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("daa");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".cache").join("daa"),
        None => PathBuf::from(".daa-cache"),
    }
}

/// Identifies a reference-score file: model, data and tokenisation settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoresKey {
    /// [`model_fingerprint`].
    pub model: String,
    /// [`file_fingerprint`] of the data.
    pub data: String,
    /// Length limits.
    pub options: EncodeOptions,
}

impl ScoresKey {
    /// Computes the fingerprints.
    pub fn new(model_dir: &Path, data: &Path, options: EncodeOptions) -> Result<Self> {
        Ok(Self { model: model_fingerprint(model_dir)?, data: file_fingerprint(data)?, options })
    }

    /// The cache file for this key under the cache folder `root`.
    pub fn cache_path(&self, root: &Path) -> PathBuf {
        let mut hasher = Sha256::new();
        hasher.update(format!(
            "daa-logps-v1\n{}\n{}\n{}\n{}\n",
            self.model, self.data, self.options.max_length, self.options.max_prompt_length
        ));
        root.join("logps").join(format!("{:x}.safetensors", hasher.finalize()))
    }

    /// Metadata stored in the file.
    pub fn metadata(&self) -> Vec<(&'static str, String)> {
        vec![
            ("model_sha256", self.model.clone()),
            ("data_sha256", self.data.clone()),
            ("max_length", self.options.max_length.to_string()),
            ("max_prompt_length", self.options.max_prompt_length.to_string()),
        ]
    }
}
