//! Everything a run needs before the first step: the checkpoint and data
//! (generated for `builtin:tiny`, made and cached for `builtin:testbed`), the tokenised pairs split into training and
//! held-out sets.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::config::{BUILTIN, BUILTIN_TESTBED, TrainConfig};
use crate::data::{EncodeOptions, EncodedPair, EncodedSet, TextEncoder, encode_rows, read_rows};
use crate::reference_cache::cache_dir;
use crate::rng::permutation;
use crate::testbed::build::materialize as materialize_testbed;
use crate::tiny_run;

/// A run's inputs, ready to train on.
#[derive(Debug)]
pub struct Prepared {
    /// The checkpoint folder of the initial (and reference) model.
    pub model_dir: PathBuf,
    /// The training data file.
    pub data_path: PathBuf,
    /// The held-out data file, when separate.
    pub eval_path: Option<PathBuf>,
    /// Tokenizer and template.
    pub encoder: TextEncoder,
    /// Length limits.
    pub options: EncodeOptions,
    /// Training pairs, in file order.
    pub train: Vec<EncodedPair>,
    /// Held-out pairs.
    pub eval: Vec<EncodedPair>,
    /// Encoding report of the training file.
    pub train_report: EncodedSet,
}

impl Prepared {
    /// One line on the data: rows read, pairs kept and split, rows skipped
    /// (by reason) and pairs truncated.
    pub fn data_summary(&self) -> String {
        let report = &self.train_report;
        format!(
            "data {}: {} rows, {} pairs ({} train, {} held out), {} skipped{}, {} truncated",
            self.data_path.display(),
            report.rows,
            report.pairs.len(),
            self.train.len(),
            self.eval.len(),
            report.skipped_total(),
            if report.skipped.is_empty() { String::new() } else { format!(" {:?}", report.skipped) },
            report.truncated
        )
    }
}

fn encode_file(path: &Path, encoder: &TextEncoder, options: &EncodeOptions) -> Result<EncodedSet> {
    let rows = read_rows(path)?;
    encode_rows(&rows, encoder, options, &path.display().to_string())
}

/// Resolves `builtin:tiny` and `builtin:testbed`, reads and encodes the
/// data, splits off the held-out set.
pub fn prepare(config: &TrainConfig, run_dir: &Path) -> Result<Prepared> {
    prepare_with(config, run_dir, &mut |_| {})
}

/// [`prepare`], telling `note` what it makes (the testbed's first build).
pub fn prepare_with(config: &TrainConfig, run_dir: &Path, note: &mut dyn FnMut(&str)) -> Result<Prepared> {
    let builtin = (config.model.path == BUILTIN || config.data.path == BUILTIN)
        .then(|| tiny_run::materialize(&run_dir.join("builtin"), config.train.seed))
        .transpose()?;
    let testbed = (config.model.path == BUILTIN_TESTBED || config.data.path == BUILTIN_TESTBED)
        .then(|| materialize_testbed(&config.testbed, &cache_dir(config.train.cache_dir.as_deref()), note))
        .transpose()?;
    let pick = |value: &str, builtin_path: Option<PathBuf>, testbed_path: Option<PathBuf>| -> PathBuf {
        match (builtin_path, testbed_path) {
            (Some(p), _) if value == BUILTIN => p,
            (_, Some(p)) if value == BUILTIN_TESTBED => p,
            _ => PathBuf::from(value),
        }
    };
    let model_dir =
        pick(&config.model.path, builtin.as_ref().map(|b| b.0.clone()), testbed.as_ref().map(|t| t.reference.clone()));
    let data_path =
        pick(&config.data.path, builtin.as_ref().map(|b| b.1.clone()), testbed.as_ref().map(|t| t.train.clone()));
    let encoder = TextEncoder::open(&model_dir).with_context(|| format!("model {}", model_dir.display()))?;
    let options = EncodeOptions {
        max_length: config.data.max_length,
        max_prompt_length: config.data.max_prompt_length,
        strict: config.data.strict,
    };
    let report = encode_file(&data_path, &encoder, &options)?;
    let eval_path = match (&config.data.eval_path, &testbed) {
        (Some(path), Some(t)) if path == BUILTIN_TESTBED => Some(t.eval.clone()),
        (Some(path), _) => Some(PathBuf::from(path)),
        (None, Some(t)) if config.data.path == BUILTIN_TESTBED => Some(t.eval.clone()),
        (None, _) => None,
    };
    let (train, eval) = match &eval_path {
        Some(path) => (report.pairs.clone(), encode_file(path, &encoder, &options)?.pairs),
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
            data_path.display(),
            report.rows,
            report.skipped_total(),
            report.skipped
        );
    }
    if eval.is_empty() {
        bail!("no held-out pairs: set data.eval_path or a positive data.eval_size");
    }
    Ok(Prepared { model_dir, data_path, eval_path, encoder, options, train, eval, train_report: report })
}
