//! The study's evaluation after training: every kept checkpoint of every
//! finished run judged on the testbed's test and generalisation prompts
//! (`daa_train::testbed::splits`), which no run, controller or threshold
//! ever reads (`daa_train::testbed::split_eval` has the formulas).
//!
//! Per testbed, the reference policy's samples of both splits are drawn
//! once (`OUT/splits/<testbed key>.json`); per run, `split_eval.json` beside
//! its `metrics.jsonl` keeps the per-prompt outcomes of each checkpoint
//! (step 0 is the reference itself). Both are written atomically, and a run
//! that has its file is not evaluated again, so the study resumes. Each run
//! is judged by the worker that trained it, right after its training.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::backend::Flex;
use daa_core::sampling::SamplingParams;
use daa_train::checkpoint::load_model;
use daa_train::model::CausalLm;
use daa_train::reference_cache::cache_dir;
use daa_train::run::TrainConfig;
use daa_train::testbed::build::materialize;
use daa_train::testbed::split_eval::{SplitEvalSettings, SplitOutcomes, evaluate_split, reference_rewards};
use daa_train::testbed::splits::{SplitPrompt, generalisation_prompts, test_prompts};
use serde::{Deserialize, Serialize};

/// Test prompts per testbed.
pub const TEST_PROMPTS: usize = 512;
/// Generalisation prompts per testbed.
pub const GENERALISATION_PROMPTS: usize = 256;
/// Samples per prompt, of the policy and of the reference.
pub const SAMPLES_PER_PROMPT: usize = 4;
/// Sequences per forward pass.
const BATCH: usize = 256;

/// One checkpoint's outcomes on both splits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointOutcomes {
    /// Optimizer steps of the checkpoint (0: the reference).
    pub step: u64,
    /// Test prompts.
    pub test: SplitOutcomes,
    /// Generalisation prompts.
    pub generalisation: SplitOutcomes,
}

/// A run's `split_eval.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunOutcomes {
    /// Per checkpoint, in step order.
    pub checkpoints: Vec<CheckpointOutcomes>,
}

impl RunOutcomes {
    /// The outcomes at `step`.
    pub fn at(&self, step: u64) -> Option<&CheckpointOutcomes> {
        self.checkpoints.iter().find(|c| c.step == step)
    }
}

/// The file of a run's outcomes.
pub fn outcomes_path(run_dir: &Path) -> PathBuf {
    run_dir.join("split_eval.json")
}

/// Reads a run's outcomes, `None` when it has none.
pub fn read_outcomes(run_dir: &Path) -> Result<Option<RunOutcomes>> {
    let path = outcomes_path(run_dir);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(Some(serde_json::from_str(&text).with_context(|| format!("{}: not a split evaluation", path.display()))?))
}

/// The reference's rewards on both splits of one testbed.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ReferenceDraws {
    test: Vec<Vec<f64>>,
    generalisation: Vec<Vec<f64>>,
}

/// What every run of one testbed is judged with.
struct TestbedSplits {
    reference_dir: PathBuf,
    test: Vec<SplitPrompt>,
    generalisation: Vec<SplitPrompt>,
    draws: ReferenceDraws,
    settings: SplitEvalSettings,
    /// The reference's own outcomes (every run's step 0).
    start: Option<CheckpointOutcomes>,
}

impl TestbedSplits {
    /// The splits of `config`'s testbed and the reference's draws (cached in `out/splits/`).
    fn prepare(config: &TrainConfig, out: &Path) -> Result<Self> {
        let spec = &config.testbed;
        let samples = config.monitor.samples.as_ref().context("the study's runs need `[monitor.samples]`")?;
        let settings = SplitEvalSettings {
            samples_per_prompt: SAMPLES_PER_PROMPT,
            sampling: SamplingParams { temperature: samples.temperature, top_p: samples.top_p },
            max_new_tokens: samples.max_new_tokens,
            batch_size: BATCH,
            seed: samples.seed ^ 0x51D1_7E57,
        };
        let files = materialize(spec, &cache_dir(config.train.cache_dir.as_deref()), &mut |_| {})?;
        let test = test_prompts(spec, TEST_PROMPTS);
        let generalisation = generalisation_prompts(spec, GENERALISATION_PROMPTS).map_err(anyhow::Error::msg)?;
        let path = out.join("splits").join(format!("{}.json", spec.key()));
        let draws = if path.exists() {
            let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{}: not the reference's draws", path.display()))?
        } else {
            let reference: CausalLm<Flex> = load_model(&files.reference, &Default::default())?;
            let draws = ReferenceDraws {
                test: reference_rewards(&reference, &test, &settings)?,
                generalisation: reference_rewards(&reference, &generalisation, &settings)?,
            };
            std::fs::create_dir_all(path.parent().unwrap_or(out))?;
            daa_core::io::write_bytes_atomic(&path, serde_json::to_string(&draws)?.as_bytes())?;
            draws
        };
        let mut splits = Self { reference_dir: files.reference, test, generalisation, draws, settings, start: None };
        // Step 0 is the reference itself, the same in every arm: judged once.
        splits.start = Some(splits.evaluate(&splits.reference_dir, 0)?);
        Ok(splits)
    }

    /// One checkpoint's outcomes.
    fn evaluate(&self, model_dir: &Path, step: u64) -> Result<CheckpointOutcomes> {
        let policy: CausalLm<Flex> = load_model(model_dir, &Default::default())?;
        Ok(CheckpointOutcomes {
            step,
            test: evaluate_split(&policy, &self.test, &self.draws.test, &self.settings)?,
            generalisation: evaluate_split(&policy, &self.generalisation, &self.draws.generalisation, &self.settings)?,
        })
    }
}

/// `checkpoint-NNNNNN` folders of a run, by step.
fn checkpoints(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(run_dir).with_context(|| format!("{}: cannot list", run_dir.display()))? {
        let path = entry?.path();
        let step = path.file_name().and_then(|n| n.to_str()?.strip_prefix("checkpoint-")?.parse::<u64>().ok());
        // A full checkpoint, or a LoRA run's adapter folder (load_model reads both).
        let saved = path.join("model.safetensors").exists()
            || path.join("model.safetensors.index.json").exists()
            || daa_train::peft::is_adapter_dir(&path);
        if let Some(step) = step.filter(|_| saved) {
            found.push((step, path));
        }
    }
    found.sort();
    Ok(found)
}

/// The splits of every testbed of a study, ready to judge its runs.
pub struct SplitJudge {
    testbeds: BTreeMap<String, TestbedSplits>,
}

impl SplitJudge {
    /// The splits of each distinct testbed of `configs` and the reference's
    /// draws on them (cached under `out/splits/`).
    pub fn prepare(out: &Path, configs: &[TrainConfig]) -> Result<Self> {
        let mut testbeds = BTreeMap::new();
        for config in configs {
            let key = config.testbed.key();
            if let Entry::Vacant(slot) = testbeds.entry(key) {
                eprintln!("testbed {}: the reference's samples of the test and generalisation prompts", slot.key());
                slot.insert(TestbedSplits::prepare(config, out)?);
            }
        }
        Ok(Self { testbeds })
    }

    /// Judges step 0 (the reference) and every checkpoint of the run in
    /// `run_dir` (trained with `config`) and writes its `split_eval.json`;
    /// nothing to do when the file exists.
    pub fn judge(&self, run_dir: &Path, config: &TrainConfig) -> Result<()> {
        if outcomes_path(run_dir).exists() {
            return Ok(());
        }
        let key = config.testbed.key();
        let splits = self.testbeds.get(&key).with_context(|| format!("testbed {key} was not prepared"))?;
        let list = checkpoints(run_dir)?;
        if list.is_empty() {
            bail!("{}: no checkpoints to judge (the study's runs keep one per evaluation)", run_dir.display());
        }
        let mut checkpoints = match &splits.start {
            Some(start) => vec![start.clone()],
            None => vec![splits.evaluate(&splits.reference_dir, 0)?],
        };
        for (step, dir) in &list {
            checkpoints.push(splits.evaluate(dir, *step).with_context(|| format!("judging {}", dir.display()))?);
        }
        let outcomes = RunOutcomes { checkpoints };
        daa_core::io::write_bytes_atomic(&outcomes_path(run_dir), serde_json::to_string(&outcomes)?.as_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::checkpoints;

    #[test]
    fn full_and_lora_checkpoints_are_judged_and_incomplete_folders_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let make = |name: &str, file: &str| {
            let folder = dir.path().join(name);
            std::fs::create_dir_all(&folder).unwrap();
            if !file.is_empty() {
                std::fs::write(folder.join(file), b"{}").unwrap();
            }
        };
        make("checkpoint-000002", "model.safetensors");
        make("checkpoint-000001", "adapter_config.json");
        make("checkpoint-000003", "model.safetensors.index.json");
        make("checkpoint-000004", "");
        make("best-indicator", "model.safetensors");
        let found: Vec<u64> = checkpoints(dir.path()).unwrap().into_iter().map(|(step, _)| step).collect();
        assert_eq!(found, [1, 2, 3]);
    }
}
