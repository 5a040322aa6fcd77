//! The testbed's files, made once and cached by their specification's hash:
//! a reference policy fine-tuned (SFT) on the behaviour writer's samples,
//! and preference pairs sampled from that reference and labelled by
//! Bradley–Terry on the gold reward, in binarized UltraFeedback's schema.
//!
//! Prompts are drawn from disjoint index ranges of the task: SFT prompts
//! `[0, n_sft)`, training pairs `[n_sft, n_sft + n_pairs)`, held-out pairs
//! after them. Each pair is two samples of the reference for one prompt
//! (its own seeds), dropped when both samples are the same text.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::backend::{Autodiff, Flex};
use daa_core::io::{write_bytes_atomic, write_dir_atomic};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::labels::ultrafeedback_row;
use super::spec::TestbedSpec;
use super::stages::{PairSampler, SftRun, pair_ranges};
use crate::checkpoint::{load_model, save_model};
use crate::model::CausalLm;
use crate::tiny_run::write_tokenizer;

/// Where the testbed's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestbedFiles {
    /// The SFT reference checkpoint (tokenizer included).
    pub reference: PathBuf,
    /// Training pairs (JSON Lines).
    pub train: PathBuf,
    /// Held-out pairs (JSON Lines).
    pub eval: PathBuf,
}

impl TestbedSpec {
    /// 16 hex digits of the SHA-256 of the specification.
    pub fn key(&self) -> String {
        let text = serde_json::to_string(self).unwrap_or_default();
        let digest = Sha256::digest(format!("daa-testbed-v1 {text}").as_bytes());
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}

type Cpu = Autodiff<Flex>;

/// Fine-tunes the random model on behaviour samples; writes the checkpoint into `dir`.
fn fine_tune(spec: &TestbedSpec, dir: &Path, note: &mut dyn FnMut(&str)) -> Result<()> {
    write_tokenizer(dir)?;
    let mut sft = SftRun::<Cpu>::new(spec, &Default::default())?;
    while !sft.finished() {
        let record = sft.step().with_context(|| format!("testbed SFT step {}", sft.completed() + 1))?;
        let step = sft.completed();
        if step % 50 == 0 || step == sft.total() {
            note(&format!("testbed SFT step {step}/{}: NLL {:.4} per token", sft.total(), record.loss));
        }
    }
    save_model(&sft.valid_model(), dir, dir)
}

/// Samples and labels the pairs of `range` from `reference`: their
/// UltraFeedback rows and how many prompts gave identical samples.
fn labelled_rows(
    spec: &TestbedSpec,
    reference: &CausalLm<Flex>,
    range: std::ops::Range<u64>,
    stream: u64,
) -> Result<(Vec<Value>, usize)> {
    let mut sampler = PairSampler::new(spec, range, stream);
    let pairs = sampler.sample(reference, sampler.remaining(), 128)?;
    let rows = pairs
        .iter()
        .map(|p| {
            ultrafeedback_row(
                &format!("testbed-{:06}", p.index),
                &p.prompt.to_text(),
                (p.chosen.text.as_str(), p.chosen.reward),
                (p.rejected.text.as_str(), p.rejected.reward),
            )
        })
        .collect();
    Ok((rows, sampler.identical()))
}

fn write_jsonl(path: &Path, rows: &[Value]) -> Result<()> {
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    Ok(write_bytes_atomic(path, text.as_bytes())?)
}

/// The testbed's files under `cache_root/testbed/<key>/`, made when missing
/// (the SFT and the sampling take a minute or two on 2 cores; later runs
/// reuse them). `note` hears what is being done.
pub fn materialize(spec: &TestbedSpec, cache_root: &Path, note: &mut dyn FnMut(&str)) -> Result<TestbedFiles> {
    spec.check().map_err(anyhow::Error::msg)?;
    let root = cache_root.join("testbed").join(spec.key());
    let files = TestbedFiles {
        reference: root.join("reference"),
        train: root.join("train.jsonl"),
        eval: root.join("eval.jsonl"),
    };
    if !files.reference.join("model.safetensors").exists() {
        note(&format!("testbed: fine-tuning the reference policy into {}", files.reference.display()));
        if files.reference.exists() {
            std::fs::remove_dir_all(&files.reference)
                .with_context(|| format!("{}: cannot clear", files.reference.display()))?;
        }
        write_dir_atomic(&files.reference, |dir| fine_tune(spec, dir, note))
            .with_context(|| format!("testbed: writing the reference policy {}", files.reference.display()))?;
    } else {
        note(&format!("testbed: cached reference policy {}", files.reference.display()));
    }
    if !(files.train.exists() && files.eval.exists()) {
        let reference: CausalLm<Flex> = load_model(&files.reference, &Default::default())?;
        let (train_range, eval_range) = pair_ranges(spec);
        let (train, same_train) = labelled_rows(spec, &reference, train_range, 1)?;
        let (eval, same_eval) = labelled_rows(spec, &reference, eval_range, 2)?;
        if train.is_empty() || eval.is_empty() {
            bail!("testbed: the reference's two samples were identical for every prompt; raise `pair_temperature`");
        }
        let mean = |rows: &[Value], field: &str| {
            rows.iter().filter_map(|r| r[field].as_f64()).sum::<f64>() / rows.len().max(1) as f64
        };
        note(&format!(
            "testbed: {} training and {} held-out pairs ({} and {} prompts with identical samples dropped); \
             gold reward of chosen {:.3}, rejected {:.3}",
            train.len(),
            eval.len(),
            same_train,
            same_eval,
            mean(&train, "score_chosen"),
            mean(&train, "score_rejected")
        ));
        write_jsonl(&files.eval, &eval)?;
        write_jsonl(&files.train, &train)?;
    }
    Ok(files)
}
