//! Checkpoints of a run over several ranks. Rank 0 writes the model (the
//! master weights, gathered where sharded), `trainer_state.json` and, when
//! the optimizer state is whole on every rank, `optimizer.safetensors`;
//! with sharded state (`train.sharding`) every rank writes its slice (with
//! HSDP, `train.shard_within = "node"`, the ranks of the first node),
//! `optimizer-rank-RRRRR-of-WWWWW.safetensors` (`exp_avg`, `exp_avg_sq`:
//! the flat slice [`FlatLayout::shard`] names), and rank 0 `layout.json`
//! (the parameters by name, shape and offset, the world size, the steps).
//!
//! A checkpoint is complete only when every rank wrote and synced its part:
//! the ranks write into `.checkpoint-NNNNNN.partial/` (which resume never
//! takes), agree that every part was written, and only then rank 0 renames
//! the folder into place. A rank that fails is named and nothing is
//! renamed. Resuming reads the layout and re-slices the state for any
//! number of ranks: a sharded run's rank reads only its slice
//! ([`read_moment_pieces`]), a run with whole state puts every slice
//! together ([`load_sharded_optimizer`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::backend::{AutodiffBackend, Backend};
use daa_core::DType;
use daa_core::io::SafetensorsFile;
use serde::{Deserialize, Serialize};

use super::checkpoints::{TrainerState, checkpoint_dir, optimizer_tensors, write_checkpoint_files};
use crate::checkpoint::{NamedTensor, safetensors_bytes};
use crate::distributed::{Collective, FlatLayout, Sharding};
use crate::model::{CausalLm, ParamKind};
use crate::optim::AdamW;
use crate::trainer::Trainer;

/// The sharded optimizer state's description (`layout.json`).
pub const LAYOUT_FILE: &str = "layout.json";

/// `layout.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardedState {
    /// AdamW steps taken (the bias correction's `t`).
    pub steps: u64,
    /// The stage that wrote it.
    pub sharding: Sharding,
    /// The parameters and the world size.
    pub layout: FlatLayout,
}

/// The file of rank `rank`'s slice.
pub fn rank_file(rank: usize, world: usize) -> String {
    format!("optimizer-rank-{rank:05}-of-{world:05}.safetensors")
}

/// Ranks whose part failed, the same list on every rank.
fn failed_ranks(collective: &mut dyn Collective, ok: bool) -> Result<Vec<usize>> {
    let mut failed = vec![0f64; collective.world_size()];
    failed[collective.rank()] = f64::from(u8::from(!ok));
    collective.all_reduce_sum_f64(&mut failed)?;
    Ok(failed.iter().enumerate().filter(|(_, f)| **f > 0.0).map(|(r, _)| r).collect())
}

/// `Ok` when every rank's part succeeded; else this rank's error, or one
/// naming the ranks that failed.
fn all_succeeded(collective: &mut dyn Collective, mine: Result<()>, what: &str) -> Result<()> {
    let failed = failed_ranks(collective, mine.is_ok())?;
    mine?;
    if !failed.is_empty() {
        bail!("{what}: rank(s) {failed:?} failed (their errors say why)");
    }
    Ok(())
}

/// Saves `trainer` after `state.step` steps as `checkpoint-NNNNNN/` of
/// `run_dir`, every rank taking part (module documentation); `model` is the
/// gathered master model, on rank 0. Returns the folder.
pub(crate) fn save_on_ranks<B: AutodiffBackend>(
    run_dir: &Path,
    model: Option<&CausalLm<B::InnerBackend>>,
    trainer: &mut Trainer<B>,
    state: &TrainerState,
    source_dir: &Path,
) -> Result<PathBuf> {
    let dest = checkpoint_dir(run_dir, state.step);
    let partial = run_dir.join(format!(".checkpoint-{:06}.partial", state.step));
    let (rank, world) = {
        let c = trainer.collective().context("a checkpoint over ranks without a collective")?;
        (c.rank(), c.world_size())
    };
    // What this rank writes, read before the collective is borrowed: its
    // slice of sharded state, or (rank 0) the whole state.
    let steps = trainer.optimizer().steps;
    // With HSDP the ranks of the first replica write the slices (the
    // others hold the same), named by slice of the shard group.
    let sharded = trainer.zero_state().map(|zero| zero.slice_of());
    // Every rank takes part (ZeRO-3 gathers each unit's moments in turn).
    let moments = trainer.layout_moments()?;
    let slice = match (trainer.zero_state(), moments) {
        (Some(zero), Some((m, v))) if zero.writes_slice() => {
            Some((ShardedState { steps, sharding: zero.stage(), layout: zero.layout().clone() }, m, v))
        }
        _ => None,
    };
    let model = match (rank, model) {
        (0, None) => bail!("rank 0 writes the model but was given none"),
        (_, model) => model,
    };
    let whole = match (sharded, model) {
        (None, Some(model)) => Some(optimizer_tensors(model, trainer.optimizer())),
        _ => None,
    };
    let collective = trainer.collective().context("a checkpoint over ranks without a collective")?;
    let fresh = match rank {
        0 => (|| -> Result<()> {
            if partial.exists() {
                std::fs::remove_dir_all(&partial).with_context(|| format!("{}: cannot remove", partial.display()))?;
            }
            std::fs::create_dir_all(&partial).with_context(|| format!("{}: cannot create", partial.display()))
        })(),
        _ => Ok(()),
    };
    all_succeeded(collective, fresh, "preparing the checkpoint folder")?;
    super::ranks::injected_exit("DAA_FAULT_EXIT_IN_CHECKPOINT", rank, state.step);
    let written = (|| -> Result<()> {
        if let Some((layout, m, v)) = &slice {
            let tensors =
                [NamedTensor::f32("exp_avg", vec![m.len()], m), NamedTensor::f32("exp_avg_sq", vec![v.len()], v)];
            let (index, slices) = sharded.unwrap_or((rank, world));
            let meta = [("rank", index.to_string()), ("world_size", slices.to_string())];
            let path = partial.join(rank_file(index, slices));
            std::fs::write(&path, safetensors_bytes(&tensors, &meta)?)
                .with_context(|| format!("{}: write failed", path.display()))?;
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("{}: cannot sync", path.display()))?;
            if rank == 0 {
                std::fs::write(partial.join(LAYOUT_FILE), serde_json::to_string_pretty(layout)?)
                    .context("writing layout.json")?;
            }
        }
        if let Some(model) = model {
            let optimizer = whole.map(|tensors| tensors.map(|t| (t, steps))).transpose()?;
            write_checkpoint_files(&partial, model, optimizer, state, source_dir)?;
            // Rank 0's files on disk too before the ranks agree the folder is whole.
            for entry in std::fs::read_dir(&partial).with_context(|| format!("{}: cannot list", partial.display()))? {
                let path = entry?.path();
                if path.is_file() {
                    std::fs::File::open(&path)
                        .and_then(|f| f.sync_all())
                        .with_context(|| format!("{}: cannot sync", path.display()))?;
                }
            }
        }
        Ok(())
    })();
    if let Err(e) = all_succeeded(collective, written, &format!("writing {}", dest.display())) {
        if rank == 0 {
            let _ = std::fs::remove_dir_all(&partial);
        }
        return Err(e);
    }
    let installed = match rank {
        0 => install_dir(&partial, &dest),
        _ => Ok(()),
    };
    all_succeeded(collective, installed, &format!("renaming {} into place", dest.display()))?;
    Ok(dest)
}

/// Renames the complete folder `partial` to `dest`, an existing `dest`
/// moved aside first and removed after.
fn install_dir(partial: &Path, dest: &Path) -> Result<()> {
    if !dest.exists() {
        return std::fs::rename(partial, dest).with_context(|| format!("{}: cannot rename into place", dest.display()));
    }
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let old = dest.with_file_name(format!(".{name}.old"));
    let _ = std::fs::remove_dir_all(&old);
    std::fs::rename(dest, &old).with_context(|| format!("{}: cannot move aside", dest.display()))?;
    std::fs::rename(partial, dest).with_context(|| format!("{}: cannot rename into place", dest.display()))?;
    std::fs::remove_dir_all(&old).with_context(|| format!("{}: cannot remove", old.display()))
}

/// `layout.json` of a checkpoint folder, if it holds sharded state.
pub fn read_sharded_state(dir: &Path) -> Result<Option<ShardedState>> {
    let path = dir.join(LAYOUT_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).map(Some).with_context(|| format!("{}: not a daa sharded-state layout", path.display()))
}

/// The f32 vector `name` of `len` values in `file` (at `path`), or an
/// error naming the file, the tensor and what it holds instead.
pub(crate) fn read_moment(file: &SafetensorsFile, path: &Path, name: &str, len: usize) -> Result<Vec<f32>> {
    let view = file.require(name, "AdamW moments")?;
    if view.dtype()? != DType::F32 || view.shape() != [len] {
        bail!(
            "{}: tensor `{name}` must be F32 [{len}], found {} {:?}",
            path.display(),
            view.stored_dtype(),
            view.shape()
        );
    }
    Ok(view.host()?.as_f32("moment")?.to_vec())
}

/// `optimizer.safetensors`'s `steps` metadata.
pub(crate) fn saved_steps(file: &SafetensorsFile, path: &Path) -> Result<u64> {
    file.metadata("steps")
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{}: no `steps` metadata", path.display()))
}

/// Checks every rank's file of a sharded checkpoint opens whole.
pub fn check_rank_files(dir: &Path, state: &ShardedState) -> Result<()> {
    let world = state.layout.world_size;
    for rank in 0..world {
        SafetensorsFile::open(&dir.join(rank_file(rank, world)))?;
    }
    Ok(())
}

/// Restores the AdamW moments of a sharded checkpoint for `model`'s
/// parameters, every saved slice read and put together: for a run whose
/// state is whole (one process, or ranks with `train.sharding = "none"`).
/// A layout that names other parameters or shapes is refused, naming them.
pub fn load_sharded_optimizer<B: Backend>(
    dir: &Path,
    state: &ShardedState,
    model: &CausalLm<B>,
    optimizer: &mut AdamW<B>,
) -> Result<()> {
    let mut params = Vec::new();
    let mut ids = Vec::new();
    model.visit_trainable(&mut |name: &str, p: ParamKind<'_, B>| {
        params.push((name.to_string(), p.file_shape(), p.decays()));
        ids.push(p.id());
    });
    let mine = FlatLayout::new(params, 1);
    mine.check_same_parameters(&state.layout)
        .map_err(|e| anyhow::anyhow!("{}: {e}", dir.join(LAYOUT_FILE).display()))?;
    let layout = &state.layout;
    let n = layout.shard_len();
    let (mut m, mut v) = (Vec::with_capacity(layout.padded_len()), Vec::with_capacity(layout.padded_len()));
    for rank in 0..layout.world_size {
        let path = dir.join(rank_file(rank, layout.world_size));
        let file = SafetensorsFile::open(&path)?;
        for (name, into) in [("exp_avg", &mut m), ("exp_avg_sq", &mut v)] {
            into.extend(read_moment(&file, &path, name, n)?);
        }
    }
    let device = model.embed.weight.device();
    if state.steps > 0 {
        for (entry, id) in layout.entries.iter().zip(ids) {
            let range = entry.offset..entry.offset + entry.len;
            optimizer.import(id, m[range.clone()].to_vec(), v[range].to_vec(), &device)?;
        }
    }
    optimizer.steps = state.steps;
    Ok(())
}

/// AdamW steps a checkpoint's optimizer state has taken (`layout.json`, or
/// `optimizer.safetensors`'s `steps` metadata).
pub fn checkpoint_steps(dir: &Path) -> Result<u64> {
    if let Some(state) = read_sharded_state(dir)? {
        return Ok(state.steps);
    }
    let path = dir.join("optimizer.safetensors");
    saved_steps(&SafetensorsFile::open(&path)?, &path)
}

/// The moments `(m, v)` of a rank's slice of `layout` (this run's
/// parameters), `len` values, whose `pieces` say which flat ranges of
/// `layout` go where in it (`(range, start in the slice)`; values no piece
/// covers are zeros: padding), read from a checkpoint without the rest:
/// each rank file of a sharded checkpoint (saved by any number of ranks)
/// that overlaps them read once, or a whole `optimizer.safetensors` one
/// parameter at a time. `None` before the first step (no moments saved).
pub fn read_moment_pieces(
    dir: &Path,
    layout: &FlatLayout,
    pieces: &[(std::ops::Range<usize>, usize)],
    len: usize,
) -> Result<Option<(Vec<f32>, Vec<f32>)>> {
    let (mut m, mut v) = (vec![0f32; len], vec![0f32; len]);
    if pieces.iter().any(|(range, at)| at + range.len() > len) {
        bail!("a piece of the slice passes its {len} values");
    }
    if let Some(state) = read_sharded_state(dir)? {
        layout
            .check_same_parameters(&state.layout)
            .map_err(|e| anyhow::anyhow!("{}: {e}", dir.join(LAYOUT_FILE).display()))?;
        if state.steps == 0 {
            return Ok(None);
        }
        let saved = &state.layout;
        for rank in 0..saved.world_size {
            let theirs = saved.shard(rank);
            let overlaps = |(range, _): &&(std::ops::Range<usize>, usize)| {
                theirs.start.max(range.start) < theirs.end.min(range.end)
            };
            if !pieces.iter().any(|p| overlaps(&p)) {
                continue;
            }
            let path = dir.join(rank_file(rank, saved.world_size));
            let file = SafetensorsFile::open(&path)?;
            for (name, into) in [("exp_avg", &mut m), ("exp_avg_sq", &mut v)] {
                let values = read_moment(&file, &path, name, theirs.len())?;
                for (range, at) in pieces.iter().filter(overlaps) {
                    let (start, end) = (theirs.start.max(range.start), theirs.end.min(range.end));
                    let to = at + start - range.start..at + end - range.start;
                    into[to].copy_from_slice(&values[start - theirs.start..end - theirs.start]);
                }
            }
        }
        return Ok(Some((m, v)));
    }
    if checkpoint_steps(dir)? == 0 {
        return Ok(None);
    }
    let path = dir.join("optimizer.safetensors");
    let file = SafetensorsFile::open(&path)?;
    for (range, at) in pieces {
        for segment in layout.segments(range.clone()) {
            let entry = &layout.entries[segment.entry];
            let to = at + segment.flat.start - range.start..at + segment.flat.end - range.start;
            for (suffix, into) in [("exp_avg", &mut m), ("exp_avg_sq", &mut v)] {
                let values = read_moment(&file, &path, &format!("{}.{suffix}", entry.name), entry.len)?;
                into[to.clone()].copy_from_slice(&values[segment.within.clone()]);
            }
        }
    }
    Ok(Some((m, v)))
}
