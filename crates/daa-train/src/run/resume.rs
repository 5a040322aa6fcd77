//! The resume decision: which checkpoint `--resume` continues from, and
//! whether the configuration still describes the same run.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use serde_json::Value;

use super::checkpoints::{check_complete, find_checkpoint, offer_earlier};
use super::config::TrainConfig;

/// A checkpoint to continue from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumePoint {
    /// The `checkpoint-NNNNNN/` folder.
    pub dir: PathBuf,
    /// Optimizer steps done when it was saved.
    pub step: u64,
}

impl ResumePoint {
    /// The checkpoint at `path` (a checkpoint folder, or a run folder: its
    /// latest checkpoint), after checking that it is whole
    /// ([`super::checkpoints::check_complete`]; a damaged one's error offers
    /// the latest earlier complete checkpoint) and that `config` describes
    /// the same run as the one saved there ([`resume_mismatch`]).
    pub fn find(path: &Path, config: &TrainConfig) -> Result<Self> {
        let dir = find_checkpoint(path)?;
        let state = check_complete(&dir).map_err(|e| offer_earlier(e, &dir))?;
        let differing = resume_mismatch(&state.config, config);
        if !differing.is_empty() {
            bail!(
                "--resume {}: the configuration differs from the checkpoint's in {}",
                dir.display(),
                differing.join(", ")
            );
        }
        Ok(Self { dir, step: state.step })
    }
}

/// The `[train]` fields a resumed run may change: where it stops, how often
/// it saves, how many non-finite steps it skips, its folders, whether it writes TensorBoard files, and the memory settings and packing (which change how a step
/// is computed, not what: a run that ran out of memory resumes with
/// checkpointing on), the sharding stage, the collectives' deadline and transport (a
/// run resumes onto any number of ranks).
pub const RESUMABLE_TRAIN_FIELDS: [&str; 17] = [
    "max_steps",
    "checkpoint_every",
    "skip_nonfinite",
    "output_dir",
    "cache_dir",
    "fused_head",
    "head_chunk_tokens",
    "activation_checkpointing",
    "packing",
    "precision",
    "device_memory",
    "memory_check",
    "tensorboard",
    "sharding",
    "collective_timeout",
    "collective",
    "shard_within",
];

/// The fields (`section.field`) whose change makes `--resume` refuse:
/// everything but [`RESUMABLE_TRAIN_FIELDS`] and the `[monitor]` section.
pub fn resume_mismatch(saved: &TrainConfig, now: &TrainConfig) -> Vec<String> {
    let strip = |c: &TrainConfig| {
        let mut v = serde_json::to_value(c).unwrap_or(Value::Null);
        if let Some(t) = v.get_mut("train").and_then(Value::as_object_mut) {
            for field in RESUMABLE_TRAIN_FIELDS {
                t.remove(field);
            }
        }
        if let Some(o) = v.as_object_mut() {
            o.remove("monitor");
        }
        v
    };
    let (a, b) = (strip(saved), strip(now));
    let mut differing = Vec::new();
    if a.get("lora") != b.get("lora") {
        differing.push("lora".to_string());
    }
    for section in ["model", "data", "loss", "train", "testbed"] {
        if let (Some(x), Some(y)) =
            (a.get(section).and_then(Value::as_object), b.get(section).and_then(Value::as_object))
        {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            differing.extend(keys.into_iter().filter(|k| x.get(*k) != y.get(*k)).map(|k| format!("{section}.{k}")));
        }
    }
    differing
}
