//! Checkpoints of a run and resuming from them.
//!
//! `checkpoint-NNNNNN/` (N = completed optimizer steps) holds a Hugging Face
//! checkpoint (`model.safetensors` in f32, `config.json`, tokenizer files;
//! with `[lora]`, a PEFT adapter folder instead, [`crate::peft`]) plus `optimizer.safetensors` (AdamW moments `{name}.exp_avg`,
//! `{name}.exp_avg_sq`, flattened in burn's layout) and
//! `trainer_state.json` (a run over several ranks with sharded optimizer
//! state writes `layout.json` and one slice per rank instead of
//! `optimizer.safetensors`: [`super::rank_checkpoints`]). The data order is a function of the seed and the
//! step, so these restore the run exactly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::ParamId;
use burn::tensor::backend::{AutodiffBackend, Backend};
use daa_core::io::SafetensorsFile;
use serde::{Deserialize, Serialize};

use super::config::TrainConfig;
use crate::checkpoint::{NamedTensor, SafetensorsWeights, safetensors_bytes, save_model};
use crate::model::{CausalLm, ParamKind};
use crate::optim::AdamW;
use crate::peft::{ADAPTER_WEIGHTS, is_adapter_dir, read_adapter_config};
use crate::trainer::Trainer;
use daa_core::io::write_dir_atomic as write_dir;

use super::rank_checkpoints::{
    check_rank_files, load_sharded_optimizer, read_moment, read_sharded_state, save_on_ranks, saved_steps,
};

/// `trainer_state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Completed optimizer steps.
    pub step: u64,
    /// Steps of the whole schedule.
    pub total_steps: u64,
    /// The configuration of the run.
    pub config: TrainConfig,
    /// daa version that wrote it.
    pub daa_version: String,
}

/// Folder of the checkpoint after `step` steps.
pub fn checkpoint_dir(run_dir: &Path, step: u64) -> PathBuf {
    run_dir.join(format!("checkpoint-{step:06}"))
}

/// Saves model, optimizer and state atomically (a temporary folder renamed
/// into place; an older folder of the same step is replaced only after the
/// new one is complete).
pub fn save_checkpoint<B: Backend>(
    run_dir: &Path,
    model: &CausalLm<B>,
    optimizer: &AdamW<B>,
    state: &TrainerState,
    source_dir: &Path,
) -> Result<PathBuf> {
    let dest = checkpoint_dir(run_dir, state.step);
    let fill = |dir: &Path| -> Result<()> {
        let tensors = optimizer_tensors(model, optimizer)?;
        write_checkpoint_files(dir, model, Some((tensors, optimizer.steps)), state, source_dir)
    };
    replace_dir(&dest, fill)?;
    Ok(dest)
}

/// AdamW's moments of `model`'s trained parameters as
/// `optimizer.safetensors` names them (`{name}.exp_avg`, `{name}.exp_avg_sq`).
pub(crate) fn optimizer_tensors<B: Backend>(model: &CausalLm<B>, optimizer: &AdamW<B>) -> Result<Vec<NamedTensor>> {
    let mut params = Vec::new();
    model.visit_trainable(&mut |name: &str, p: ParamKind<'_, B>| params.push((name.to_string(), p.id())));
    let mut tensors = Vec::new();
    for (name, id) in params {
        match optimizer.export(id, &name)? {
            Some((m, v)) => {
                tensors.push(NamedTensor::f32(&format!("{name}.exp_avg"), vec![m.len()], &m));
                tensors.push(NamedTensor::f32(&format!("{name}.exp_avg_sq"), vec![v.len()], &v));
            }
            None if optimizer.steps > 0 => bail!("optimizer has no state for `{name}`"),
            None => {}
        }
    }
    Ok(tensors)
}

/// Writes a checkpoint's files into `dir`: the model, `optimizer.safetensors`
/// from `(tensors, steps)` when given (sharded state has its own files:
/// [`super::rank_checkpoints`]) and `trainer_state.json`.
pub(crate) fn write_checkpoint_files<B: Backend>(
    dir: &Path,
    model: &CausalLm<B>,
    optimizer: Option<(Vec<NamedTensor>, u64)>,
    state: &TrainerState,
    source_dir: &Path,
) -> Result<()> {
    save_model(model, dir, source_dir)?;
    if let Some((tensors, steps)) = optimizer {
        let meta = [("steps", steps.to_string())];
        std::fs::write(dir.join("optimizer.safetensors"), safetensors_bytes(&tensors, &meta)?)
            .context("writing optimizer.safetensors")?;
    }
    std::fs::write(dir.join("trainer_state.json"), serde_json::to_string_pretty(state)?)
        .context("writing trainer_state.json")?;
    Ok(())
}

/// Saves `trainer`'s master weights and optimizer state after `step` of
/// `total_steps` steps of the run `config` describes, as
/// `checkpoint-NNNNNN/` of `run_dir`; `source_dir` is the initial
/// checkpoint (its tokenizer files and dtype). With several ranks every
/// rank must call it ([`super::rank_checkpoints`]).
pub(crate) fn save_trainer<B: AutodiffBackend>(
    run_dir: &Path,
    trainer: &mut Trainer<B>,
    config: &TrainConfig,
    (step, total_steps): (u64, u64),
    source_dir: &Path,
) -> Result<PathBuf> {
    let state =
        TrainerState { step, total_steps, config: config.clone(), daa_version: env!("CARGO_PKG_VERSION").to_string() };
    let context = || {
        format!(
            "saving the checkpoint {} (not saved: nothing was written under its name; earlier checkpoints are \
             untouched)",
            checkpoint_dir(run_dir, step).display()
        )
    };
    // Rank 0 holds the gathered model; the others take part and let it go.
    let model = trainer.master_model_on_first().with_context(context)?;
    if trainer.collective().is_some_and(|c| c.world_size() > 1) {
        return save_on_ranks(run_dir, model.as_ref(), trainer, &state, source_dir).with_context(context);
    }
    let model = model.context("one process holds its model")?;
    save_checkpoint(run_dir, &model, trainer.optimizer(), &state, source_dir).with_context(context)
}

/// Writes the folder `dest` through a temporary one and renames it into
/// place; an existing `dest` is moved aside first and removed after, so a
/// failure never leaves a half-written folder under the name.
pub(crate) fn replace_dir(dest: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if !dest.exists() {
        return write_dir(dest, fill);
    }
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let old = dest.with_file_name(format!(".{name}.old"));
    let _ = std::fs::remove_dir_all(&old);
    std::fs::rename(dest, &old).with_context(|| format!("{}: cannot move aside", dest.display()))?;
    write_dir(dest, fill)?;
    std::fs::remove_dir_all(&old).with_context(|| format!("{}: cannot remove", old.display()))
}

/// The checkpoint to resume from: `path` itself when it is one, else the
/// latest `checkpoint-*` inside it.
pub fn find_checkpoint(path: &Path) -> Result<PathBuf> {
    if path.join("trainer_state.json").exists() {
        return Ok(path.to_path_buf());
    }
    let entries = std::fs::read_dir(path).with_context(|| format!("--resume {}: cannot list", path.display()))?;
    let latest = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step: u64 = name.strip_prefix("checkpoint-")?.parse().ok()?;
            e.path().join("trainer_state.json").exists().then_some((step, e.path()))
        })
        .max_by_key(|(step, _)| *step);
    match latest {
        Some((_, dir)) => Ok(dir),
        None => bail!("--resume {}: no checkpoint-* folder with trainer_state.json", path.display()),
    }
}

/// The step a `checkpoint-NNNNNN` folder's name says.
fn folder_step(dir: &Path) -> Option<u64> {
    dir.file_name()?.to_str()?.strip_prefix("checkpoint-")?.parse().ok()
}

/// Checks that a checkpoint folder is whole before anything loads from it:
/// `trainer_state.json` reads and names the folder's step, and the weights
/// (every shard of an index) and `optimizer.safetensors` are complete
/// safetensors files (headers parse, every tensor's data lies inside the
/// file: a truncated file fails here). The error names the file.
pub fn check_complete(dir: &Path) -> Result<TrainerState> {
    let state = read_state(dir)?;
    if let Some(step) = folder_step(dir).filter(|s| *s != state.step) {
        bail!(
            "{}: says step {}, but the folder is the checkpoint of step {step}",
            dir.join("trainer_state.json").display(),
            state.step
        );
    }
    if is_adapter_dir(dir) {
        read_adapter_config(dir)?;
        SafetensorsFile::open(&dir.join(ADAPTER_WEIGHTS))?;
    } else {
        SafetensorsWeights::open(dir)?;
    }
    match read_sharded_state(dir)? {
        Some(sharded) => check_rank_files(dir, &sharded)?,
        None => drop(SafetensorsFile::open(&dir.join("optimizer.safetensors"))?),
    }
    Ok(state)
}

/// The latest checkpoint of `run_dir` saved before `step` that
/// [`check_complete`] accepts.
pub fn earlier_complete(run_dir: &Path, step: u64) -> Option<PathBuf> {
    let mut earlier: Vec<(u64, PathBuf)> = std::fs::read_dir(run_dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| Some((folder_step(&p)?, p)))
        .filter(|(s, _)| *s < step)
        .collect();
    earlier.sort();
    earlier.into_iter().rev().map(|(_, p)| p).find(|p| check_complete(p).is_ok())
}

/// `error` about the checkpoint `dir`, followed by where the run can
/// continue from instead: the latest earlier complete checkpoint, if any.
pub fn offer_earlier(error: anyhow::Error, dir: &Path) -> anyhow::Error {
    let run_dir = dir.parent().unwrap_or(dir);
    let step = folder_step(dir).unwrap_or(u64::MAX);
    match earlier_complete(run_dir, step) {
        Some(earlier) => error.context(format!(
            "--resume {}: the checkpoint is damaged; an earlier checkpoint is complete: {} (continue from it \
             with --resume {})",
            dir.display(),
            earlier.display(),
            earlier.display()
        )),
        None => error.context(format!(
            "--resume {}: the checkpoint is damaged, and no earlier complete checkpoint is in {}",
            dir.display(),
            run_dir.display()
        )),
    }
}

/// Reads `trainer_state.json`.
pub fn read_state(dir: &Path) -> Result<TrainerState> {
    let path = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a daa trainer state", path.display()))
}

/// Restores AdamW moments saved by [`save_checkpoint`] for `model`'s parameters.
pub fn load_optimizer<B: Backend>(dir: &Path, model: &CausalLm<B>, optimizer: &mut AdamW<B>) -> Result<()> {
    if let Some(sharded) = read_sharded_state(dir)? {
        return load_sharded_optimizer(dir, &sharded, model, optimizer);
    }
    let path = dir.join("optimizer.safetensors");
    let file = SafetensorsFile::open(&path)?;
    let steps = saved_steps(&file, &path)?;
    let read = |name: &str, len: usize| read_moment(&file, &path, name, len);
    let mut params: Vec<(String, ParamId, usize)> = Vec::new();
    model.visit_trainable(&mut |name: &str, p: ParamKind<'_, B>| {
        params.push((name.to_string(), p.id(), p.file_shape().iter().product()));
    });
    let device = model.embed.weight.device();
    let mut restored = HashMap::new();
    if steps > 0 {
        for (name, id, len) in params {
            let m = read(&format!("{name}.exp_avg"), len)?;
            let v = read(&format!("{name}.exp_avg_sq"), len)?;
            restored.insert(id, (m, v));
        }
    }
    for (id, (m, v)) in restored {
        optimizer.import(id, m, v, &device)?;
    }
    optimizer.steps = steps;
    Ok(())
}
