//! The reference policy's side of a run: the training and held-out pairs'
//! reference scores (from the cache file, computed into it when absent, or
//! from a frozen copy of the initial model), computed before the policy is
//! loaded so that only one model is in memory.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;

use super::config::{ReferenceMode, TrainConfig};
use super::observer::RunObserver;
use super::prepare::Prepared;
use crate::checkpoint::load_model;
use crate::data::{DataSource, EncodedPair};
use crate::model::CausalLm;
use crate::reference_cache::{ScoresKey, cache_dir, read_scores, score_encoded, write_scores};
use crate::score::PairScore;

/// The training pairs' and held-out pairs' reference scores, and the frozen
/// reference model when scores are not cached.
pub(crate) struct References<B: Backend> {
    /// One score per training pair (`loss.reference = "cache"`).
    pub train: Option<Vec<PairScore>>,
    /// One score per held-out pair.
    pub eval: Vec<PairScore>,
    /// The frozen initial model (`loss.reference = "model"`).
    pub frozen: Option<CausalLm<B>>,
}

impl<B: Backend> References<B> {
    /// Scores the prepared pairs as `loss.reference` says.
    pub fn compute(
        config: &TrainConfig,
        prepared: &Prepared,
        device: &B::Device,
        observer: &mut dyn RunObserver,
    ) -> Result<Self> {
        let batch = config.train.micro_batch_size;
        match config.loss.reference {
            ReferenceMode::Cache => {
                let root = cache_dir(config.train.cache_dir.as_deref());
                let mut cached = |source: &DataSource, pairs: &[EncodedPair]| {
                    cached_reference::<B>(prepared, &root, source, pairs, batch, device, observer)
                };
                let (train, eval) = match &prepared.eval_data {
                    Some(eval_data) => (cached(&prepared.data, &prepared.train)?, cached(eval_data, &prepared.eval)?),
                    None => {
                        let all = &prepared.train_report.pairs;
                        let scores = cached(&prepared.data, all)?;
                        let by_row: HashMap<usize, PairScore> = all.iter().map(|p| p.row).zip(scores).collect();
                        let pick = |set: &[EncodedPair]| set.iter().map(|p| by_row[&p.row]).collect::<Vec<_>>();
                        (pick(&prepared.train), pick(&prepared.eval))
                    }
                };
                Ok(Self { train: Some(train), eval, frozen: None })
            }
            // A LoRA run's reference is its own base model: nothing loaded
            // here, the held-out pairs scored by `score_adapter_off` once
            // the trainer exists.
            ReferenceMode::Model if config.lora.is_some() => Ok(Self { train: None, eval: Vec::new(), frozen: None }),
            ReferenceMode::Model => {
                let frozen: CausalLm<B> = load_model(&prepared.model_dir, device)?;
                let eval = score_held_out(&frozen, prepared, batch, observer)?;
                Ok(Self { train: None, eval, frozen: Some(frozen) })
            }
        }
    }
}

/// Reference scores of `pairs` from the cache file of `data`, computing
/// (with the initial model) and storing it when absent or incomplete.
fn cached_reference<B: Backend>(
    prepared: &Prepared,
    cache_root: &Path,
    data: &DataSource,
    pairs: &[EncodedPair],
    batch: usize,
    device: &B::Device,
    observer: &mut dyn RunObserver,
) -> Result<Vec<PairScore>> {
    let key = ScoresKey::new(&prepared.model_dir, data, prepared.options)?;
    let path = key.cache_path(cache_root);
    if path.exists() {
        let cached = read_scores(&path)?;
        if let Some(scores) = pairs.iter().map(|p| cached.get(&p.row).copied()).collect::<Option<Vec<_>>>() {
            observer.note(&format!("reference log-probabilities: cached {}", path.display()));
            return Ok(scores);
        }
    }
    let model: CausalLm<B> = load_model(&prepared.model_dir, device)?;
    let total = pairs.len();
    let scores =
        score_encoded(&model, pairs, batch, prepared.encoder.pad_id, &mut |done| observer.scoring(done, total))?;
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))
        .with_context(|| format!("{}: cannot create the cache folder", path.display()))?;
    write_scores(&path, pairs, &scores, &key.metadata())?;
    observer.note(&format!("reference log-probabilities: computed {} pairs into {}", pairs.len(), path.display()));
    Ok(scores)
}

/// The held-out pairs' reference scores under `reference`.
fn score_held_out<B: Backend>(
    reference: &CausalLm<B>,
    prepared: &Prepared,
    batch: usize,
    observer: &mut dyn RunObserver,
) -> Result<Vec<PairScore>> {
    let total = prepared.eval.len();
    score_encoded(reference, &prepared.eval, batch, prepared.encoder.pad_id, &mut |done| observer.scoring(done, total))
}

/// The held-out reference scores of a LoRA run with `loss.reference =
/// "model"`: the policy with its adapters off (the base, shared).
pub(crate) fn score_adapter_off<B: Backend>(
    policy: &CausalLm<B>,
    prepared: &Prepared,
    batch: usize,
    observer: &mut dyn RunObserver,
) -> Result<Vec<PairScore>> {
    score_held_out(&policy.without_adapters(), prepared, batch, observer)
}
