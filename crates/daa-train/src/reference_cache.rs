//! The on-disk cache of the reference model's sequence log-probabilities
//! (what `daa logps` writes and `daa train` reuses).
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

use anyhow::{Context, Result, anyhow, bail};
use burn::tensor::backend::Backend;
use daa_core::io::{SafetensorsFile, write_bytes_atomic};
use daa_core::{DType, HostTensor};
use sha2::{Digest, Sha256};

use crate::batch::SequencePair;
use crate::checkpoint::{NamedTensor, TOKENIZER_FILES, safetensors_bytes};
use crate::data::{DataSource, EncodeOptions, EncodedPair};
use crate::error::ModelError;
use crate::model::CausalLm;
use crate::score::{PairScore, score_pairs};

/// Scores `pairs` with `model` (no gradients), `batch` pairs per forward
/// pass; `progress` is told how many pairs are done. Errors name the data row.
pub fn score_encoded<B: Backend>(
    model: &CausalLm<B>,
    pairs: &[EncodedPair],
    batch: usize,
    pad_id: u32,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<PairScore>> {
    let sequences: Vec<&SequencePair> = pairs.iter().map(|p| &p.pair).collect();
    score_pairs(model, &sequences, batch, pad_id, progress).map_err(|e| match e {
        ModelError::NonFiniteScore { pair, chosen, rejected } => {
            anyhow!("data row {}: the model's log-probability is not finite ({chosen}, {rejected})", pairs[pair].row)
        }
        other => anyhow::Error::from(other).context("scoring preference pairs"),
    })
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
    Ok(write_bytes_atomic(path, &safetensors_bytes(&tensors, metadata)?)?)
}

fn column<'a>(file: &'a SafetensorsFile, name: &'a str, dtype: DType) -> Result<HostTensor> {
    let view = file.require(name, "a reference-score column")?;
    if view.dtype()? != dtype || view.shape().len() != 1 {
        bail!("{}: tensor `{name}` must be a vector of {dtype}", file.path().display());
    }
    Ok(view.host()?)
}

/// Reads a scores file: data row → score.
pub fn read_scores(path: &Path) -> Result<HashMap<usize, PairScore>> {
    let file = SafetensorsFile::open(path)?;
    let rows = column(&file, "row", DType::I64)?.to_i64_vec("row")?;
    let chosen = column(&file, "chosen_logps", DType::F64)?.to_f64_vec("chosen_logps")?;
    let rejected = column(&file, "rejected_logps", DType::F64)?.to_f64_vec("rejected_logps")?;
    let chosen_tokens = column(&file, "chosen_tokens", DType::I64)?.to_i64_vec("chosen_tokens")?;
    let rejected_tokens = column(&file, "rejected_tokens", DType::I64)?.to_i64_vec("rejected_tokens")?;
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

/// SHA-256 (hex) of a checkpoint folder's config, weights and tokenizer
/// files (a PEFT adapter folder's `adapter_config.json` and its base
/// model's fingerprint, too).
pub fn model_fingerprint(dir: &Path) -> Result<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            name == "config.json"
                || name == crate::peft::ADAPTER_CONFIG
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
    // An adapter's scores depend on its base's weights too.
    if crate::peft::is_adapter_only(dir) {
        hasher.update(model_fingerprint(&crate::peft::base_model_dir(dir, None)?)?.as_bytes());
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// SHA-256 (hex) of a data file.
pub fn file_fingerprint(path: &Path) -> Result<String> {
    let mut hasher = Sha256::new();
    hash_file(&mut hasher, path)?;
    Ok(format!("{:x}", hasher.finalize()))
}

/// SHA-256 (hex) of a data source: [`file_fingerprint`] of its one file,
/// or, over several files (shards), of each file's name and fingerprint in
/// reading order.
pub fn source_fingerprint(source: &DataSource) -> Result<String> {
    if let [one] = source.files.as_slice() {
        return file_fingerprint(one);
    }
    let mut hasher = Sha256::new();
    for file in &source.files {
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        hasher.update(format!("{name}\0{}\n", file_fingerprint(file)?));
    }
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
    /// [`source_fingerprint`] of the data.
    pub data: String,
    /// Length limits.
    pub options: EncodeOptions,
}

impl ScoresKey {
    /// Computes the fingerprints.
    pub fn new(model_dir: &Path, data: &DataSource, options: EncodeOptions) -> Result<Self> {
        Ok(Self { model: model_fingerprint(model_dir)?, data: source_fingerprint(data)?, options })
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
