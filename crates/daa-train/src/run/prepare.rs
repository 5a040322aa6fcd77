//! Everything a run needs before the first step: the checkpoint and data
//! (generated for `builtin:tiny`, made and cached for `builtin:testbed`), the tokenised pairs split into training and
//! held-out sets.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::config::TrainConfig;
use super::inputs::{Input, RunInputs};
use crate::data::{DataSource, EncodeOptions, EncodedPair, EncodedSet, RowIndex, TextEncoder};
use crate::reference_cache::cache_dir;
use crate::rng::permutation;
use crate::testbed::build::{TestbedFiles, materialize as materialize_testbed};
use crate::tiny_run;

/// A run's inputs, ready to train on.
#[derive(Debug)]
pub struct Prepared {
    /// The checkpoint folder of the initial (and reference) model.
    pub model_dir: PathBuf,
    /// The training data: its file or shards.
    pub data: DataSource,
    /// Where each training file's rows start.
    pub data_rows: RowIndex,
    /// The held-out data, when separate.
    pub eval_data: Option<DataSource>,
    /// Tokenizer and template.
    pub encoder: TextEncoder,
    /// Length limits.
    pub options: EncodeOptions,
    /// Training pairs, in file order.
    pub train: Vec<EncodedPair>,
    /// Held-out pairs.
    pub eval: Vec<EncodedPair>,
    /// Encoding report of the training data.
    pub train_report: EncodedSet,
    /// The sample evaluation's reward model folder (`monitor.samples.judge`), when not the gold reward.
    pub reward_model: Option<PathBuf>,
}

impl Prepared {
    /// The encoded pairs' digest (rows, token ids, completion starts), to
    /// check that every rank of a run holds the same data.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        for (set, pairs) in [("train", &self.train), ("eval", &self.eval)] {
            hash.update(set.as_bytes());
            hash.update((pairs.len() as u64).to_le_bytes());
            for p in pairs.iter() {
                hash.update((p.row as u64).to_le_bytes());
                for sequence in [&p.pair.chosen, &p.pair.rejected] {
                    hash.update((sequence.completion_start as u64).to_le_bytes());
                    hash.update((sequence.ids.len() as u64).to_le_bytes());
                    sequence.ids.iter().for_each(|id| hash.update(id.to_le_bytes()));
                }
            }
        }
        let digest: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
        format!("{} training and {} held-out pairs, sha256 {digest}", self.train.len(), self.eval.len())
    }

    /// One line on the data: rows read, pairs kept and split, rows skipped
    /// (by reason) and pairs truncated.
    pub fn data_summary(&self) -> String {
        let report = &self.train_report;
        format!(
            "data {}: {} rows, {} pairs ({} train, {} held out), {} skipped{}, {} truncated",
            self.data.describe(),
            report.rows,
            report.pairs.len(),
            self.train.len(),
            self.eval.len(),
            report.skipped_total(),
            if report.skipped.is_empty() { String::new() } else { format!(" {:?}", report.skipped) },
            report.truncated
        )
    }

    /// The source the held-out pairs were read from.
    pub fn held_out_source(&self) -> &DataSource {
        self.eval_data.as_ref().unwrap_or(&self.data)
    }
}

/// Resolves the inputs ([`RunInputs`]; `builtin:tiny` generated,
/// `builtin:testbed` made and cached), reads and encodes the data, splits
/// off the held-out set.
pub fn prepare(config: &TrainConfig, run_dir: &Path) -> Result<Prepared> {
    prepare_with(config, &RunInputs::resolve(config)?, run_dir, &mut |_| {})
}

/// [`prepare`] of resolved `inputs`, telling `note` what it makes (the testbed's first build).
pub fn prepare_with(
    config: &TrainConfig,
    inputs: &RunInputs,
    run_dir: &Path,
    note: &mut dyn FnMut(&str),
) -> Result<Prepared> {
    let builtin = inputs
        .uses(Input::Tiny)
        .then(|| tiny_run::materialize(&run_dir.join("builtin"), config.train.seed))
        .transpose()?;
    let testbed = inputs
        .uses(Input::Testbed)
        .then(|| materialize_testbed(&config.testbed, &cache_dir(config.train.cache_dir.as_deref()), note))
        .transpose()?;
    let model_dir = match &inputs.model {
        Input::Tiny => builtin.as_ref().map(|b| b.0.clone()),
        Input::Testbed => testbed.as_ref().map(|t| t.reference.clone()),
        Input::Given(dir) => Some(dir.clone()),
    }
    .context("the built-in model was not made")?;
    let source = |input: &Input<DataSource>, testbed_file: fn(&TestbedFiles) -> PathBuf| {
        match input {
            Input::Tiny => builtin.as_ref().map(|b| DataSource::file(&b.1)),
            Input::Testbed => testbed.as_ref().map(|t| DataSource::file(&testbed_file(t))),
            Input::Given(source) => Some(source.clone()),
        }
        .context("the built-in data was not made")
    };
    let data = source(&inputs.data, |t| t.train.clone())?;
    let eval_data = match &inputs.eval {
        Some(input) => Some(source(input, |t| t.eval.clone())?),
        None if inputs.data == Input::Testbed => Some(source(&Input::Testbed, |t| t.eval.clone())?),
        None => None,
    };
    let encoder = TextEncoder::open(&model_dir).with_context(|| format!("model {}", model_dir.display()))?;
    let options = EncodeOptions {
        max_length: config.data.max_length,
        max_prompt_length: config.data.max_prompt_length,
        strict: config.data.strict,
    };
    let (report, data_rows) = data.encode(&encoder, &options)?;
    let (train, eval) = match &eval_data {
        Some(source) => (report.pairs.clone(), source.encode(&encoder, &options)?.0.pairs),
        None => {
            let n = report.pairs.len();
            let held = config.data.eval_size.min(n / 2);
            let order = permutation(n, config.train.seed, u64::MAX);
            let mut is_eval = vec![false; n];
            for &i in &order[..held] {
                is_eval[i] = true;
            }
            let (mut train, mut eval) = (Vec::new(), Vec::new());
            for (pair, held_out) in report.pairs.iter().zip(is_eval) {
                if held_out { eval.push(pair.clone()) } else { train.push(pair.clone()) }
            }
            (train, eval)
        }
    };
    if train.is_empty() {
        bail!(
            "{}: no usable training pairs ({} rows read, {} skipped: {:?})",
            data.describe(),
            report.rows,
            report.skipped_total(),
            report.skipped
        );
    }
    if eval.is_empty() {
        bail!("no held-out pairs: set data.eval_path or a positive data.eval_size");
    }
    Ok(Prepared {
        model_dir,
        data,
        data_rows,
        eval_data,
        encoder,
        options,
        train,
        eval,
        train_report: report,
        reward_model: inputs.reward_model.clone(),
    })
}
