//! `daa train`: a whole training run (feature `io`). The optimizer step
//! itself is [`crate::Trainer`]'s; this module orchestrates around it.
//!
//! A run, in the order [`train`] calls its parts:
//! 0. **the inputs** ([`inputs`]): the model, data and judge resolved (local
//!    paths, Hub ids in the local cache, shards and splits) and the
//!    checkpoint to resume from checked, so that every configuration error
//!    comes before anything loads; then **the lock** ([`lock`]): one run per
//!    output folder;
//! 1. **prepare** ([`prepare`]): the checkpoint and data (generated for
//!    `builtin:tiny`, made and cached for `builtin:testbed`), tokenised and
//!    split into training and held-out pairs; `daa plan`'s memory check;
//! 2. **references** (`run/references.rs`): the reference policy's scores of every
//!    pair (cached on disk, or a frozen copy of the initial model), before
//!    the policy is loaded, so one model is in memory at a time;
//! 3. **the timetable** ([`crate::schedule`]): which pairs each step takes,
//!    when to evaluate and save, where to stop;
//! 4. **resume** ([`resume`]): with `--resume`, the checkpoint to continue
//!    from, refused when the configuration describes another run;
//! 5. **the trainer**: the policy, AdamW, the objective, positioned at the
//!    resumed step;
//! 6. **evaluation** (`run/evaluation.rs`): before the first step, every
//!    `monitor.eval_every` steps and after the last — the held-out figures,
//!    the policy's samples, and the monitor's reaction
//!    ([`crate::monitor`]: events, `best-indicator/`, early stop, the
//!    adaptive objective);
//! 7. **the steps** (`run/step_loop.rs`), writing `metrics.jsonl` ([`metrics`]),
//!    TensorBoard's event file ([`tensorboard`]) and checkpoints ([`checkpoints`]);
//! 8. **the summary** (`run/summary.rs`): `summary.json`.
//!
//! Assumptions: the data order is a function of the seed and the step, so a
//! checkpoint (weights, AdamW moments, step) restores a run exactly;
//! checkpoints are saved after whole optimizer steps only.

pub mod checkpoints;
pub mod config;
mod evaluation;
pub mod inputs;
pub mod interrupt;
pub mod lock;
mod memory_check;
pub mod metrics;
mod observer;
mod prepare;
pub mod process;
pub mod rank_checkpoints;
mod ranks;
mod references;
pub mod resume;
mod samples;
pub mod samples_log;
mod step_loop;
mod summary;
pub mod tensorboard;
mod weight_files;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::tensor::FloatDType;
use burn::tensor::backend::AutodiffBackend;
use daa_core::io::write_bytes_atomic;
use daa_core::preference::PreferenceLossParams;

pub use config::{LossSection, ReferenceMode, TrainConfig};
pub use inputs::{Input, RunInputs};
pub use observer::{RunObserver, Silent};
pub use prepare::{Prepared, prepare, prepare_with};
pub use summary::{RunOutcome, RunSummary};

use checkpoints::load_optimizer;
use evaluation::Evaluation;
use metrics::MetricsLog;
use ranks::RunRanks;
use references::References;
use resume::ResumePoint;
use step_loop::StepLoop;

use crate::backend::{BackendTask, with_compute_backend};
use crate::checkpoint::{load_model, load_model_each_block, load_model_in, read_config};
use crate::distributed::parameter_units::PreslicedBlocks;
use crate::model::CausalLm;
use crate::peft::attach_adapter;
use crate::schedule::BatchSchedule;
use crate::trainer::{ReferencePolicy, Trainer};

/// Runs (or resumes, from a checkpoint folder or a run folder) a training run.
pub fn train(config: TrainConfig, resume: Option<PathBuf>, observer: &mut dyn RunObserver) -> Result<RunOutcome> {
    let (backend, device) = (config.model.backend, ranks::device_of_this_rank(&config)?);
    with_compute_backend(backend, device, TrainTask { config, resume, observer })
}

struct TrainTask<'a> {
    config: TrainConfig,
    resume: Option<PathBuf>,
    observer: &'a mut dyn RunObserver,
}

impl BackendTask for TrainTask<'_> {
    type Output = RunOutcome;
    type Error = anyhow::Error;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<RunOutcome> {
        run::<B>(self.config, self.resume, device, self.observer)
    }
}

/// The run on backend `B` (module documentation: the parts in order).
fn run<B: AutodiffBackend>(
    config: TrainConfig,
    resume: Option<PathBuf>,
    device: B::Device,
    observer: &mut dyn RunObserver,
) -> Result<RunOutcome> {
    // Every configuration error before anything loads: the paths, the
    // splits, the judge, the checkpoint to resume from.
    let inputs = RunInputs::resolve(&config)?;
    let resume = resume.map(|path| ResumePoint::find(&path, &config)).transpose()?;
    let loss = config.loss_params()?;
    // Started by mpirun: the other ranks, and whether they run the same.
    let mut ranks = RunRanks::from_env(&config)?;
    let mut quiet = Silent;
    let observer: &mut dyn RunObserver = if ranks.is_first() { observer } else { &mut quiet };
    ranks.agree(
        "the daa version and configuration",
        &format!("daa {}\n{}", env!("CARGO_PKG_VERSION"), toml::to_string(&config)?),
    )?;
    for notice in config.notices() {
        observer.note(&notice);
    }
    let run_dir = config.output_dir();
    let first = ranks.is_first();
    if config.train.batch_size < ranks.world_size() {
        bail!(
            "`train.batch_size` ({}) must be at least the number of ranks ({}): each rank steps on its slice",
            config.train.batch_size,
            ranks.world_size()
        );
    }
    // Held until the run returns, by rank 0: a second run into this folder is refused.
    let _lock = ranks.first_then_others("the run folder", || {
        std::fs::create_dir_all(&run_dir)
            .with_context(|| format!("{}: cannot create the run folder", run_dir.display()))?;
        first.then(|| lock::RunLock::acquire(&run_dir, &mut |line| eprintln!("{line}"))).transpose()
    })?;
    ranks.check_shared_folder(&run_dir)?;
    config.train.precision.check_supported::<B>(&device)?;
    let counts = memory_check::RankCounts { world: ranks.world_size(), local: ranks.local_world_size() };
    // Rank 0 first: it writes the caches (data, references) the others read.
    let (prepared, references) = ranks.first_then_others("preparing the data and references", || {
        let prepared = prepare_with(&config, &inputs, &run_dir, &mut |line| observer.note(line))?;
        observer.note(&memory_check::check_memory(&config, &read_config(&prepared.model_dir)?, counts)?);
        observer.note(&prepared.data_summary());
        let references = References::<B::InnerBackend>::compute(&config, &prepared, &device, observer)?;
        Ok((prepared, references))
    })?;
    ranks.agree("the encoded training and held-out data", &prepared.fingerprint())?;
    let References { train: train_scores, eval: mut eval_scores, frozen } = references;
    // A frozen reference (loss.reference = "model") goes to the trainer; the
    // sample evaluation shares its tensors when it samples the reference.
    let schedule = BatchSchedule::new(prepared.train.len(), config.train.batch_size, config.train.seed)?;
    let last = prepared.train.len() % config.train.batch_size;
    if last != 0 && last < ranks.world_size() {
        bail!(
            "the last step of each epoch has {last} pair(s) ({} training pairs, train.batch_size {}), fewer than the {} \
             ranks, which each need one: change train.batch_size or data.eval_size",
            prepared.train.len(),
            config.train.batch_size,
            ranks.world_size()
        );
    }
    let total_steps = schedule.steps_per_epoch() * config.train.epochs as u64;
    let cadence = config.cadence(total_steps)?;
    let lora_reference = config.lora.is_some() && config.loss.reference == ReferenceMode::Model;
    // The sample evaluation's reference (below), when it is the frozen model.
    let frozen_copy = frozen.as_ref().filter(|_| config.samples().is_some() && config.lora.is_none()).cloned();
    let reference_policy = match frozen {
        _ if lora_reference => ReferencePolicy::AdapterOff,
        Some(model) => ReferencePolicy::Frozen(Box::new(model)),
        None => ReferencePolicy::Given,
    };
    // Every rank starts from the same weights (a node's own copy of the
    // checkpoint, at the same path, could differ).
    let weights_dir = resume.as_ref().map_or(prepared.model_dir.as_path(), |point| point.dir.as_path());
    if ranks.world_size() > 1 {
        let what = format!("the weight files of {} (sampled fingerprint)", weights_dir.display());
        ranks.agree(&what, &weight_files::fingerprint(weights_dir)?)?;
    }
    let (rank, world) = (ranks.rank(), ranks.world_size());
    let build =
        TrainerInputs { loss, total_steps, reference: reference_policy, resume: resume.as_ref(), ranks: &mut ranks };
    let mut trainer = build_trainer::<B>(&config, &prepared, build, &device).map_err(|e| match &resume {
        // A checkpoint whose files are whole but whose contents do not
        // load (a tensor missing from the index, a wrong shape).
        Some(point) => checkpoints::offer_earlier(e, &point.dir),
        None => e,
    })?;
    if let Some(point) = &resume {
        observer.note(&format!("resuming from {} (step {})", point.dir.display(), point.step));
    }
    if world > 1 {
        observer.note(&format!(
            "{world} ranks, {} pairs per step each at most, sharding {}{}",
            config.train.batch_size.div_ceil(world),
            config.train.sharding.as_str(),
            match config.train.shard_within {
                config::ShardWithin::Node => " within each node (HSDP)",
                config::ShardWithin::All => "",
            }
        ));
    }
    if lora_reference {
        eval_scores =
            references::score_adapter_off(&trainer.valid_model(), &prepared, config.train.micro_batch_size, observer)?;
    }
    let start_step = resume.as_ref().map_or(0, |point| point.step);
    // Rank 0 writes the run's files; the others' logs write nothing (after
    // rank 0 opened its own, which a resumed run cuts back to its step).
    let resume_step = resume.as_ref().map(|point| point.step);
    let mut metrics = match first {
        true => MetricsLog::open(&run_dir, resume_step, config.train.tensorboard, &mut |line| observer.note(line))?,
        false => MetricsLog::discarding(&run_dir),
    };
    if let Some(c) = trainer.collective() {
        c.barrier().context("waiting for rank 0's metrics file")?;
    }
    if first {
        write_bytes_atomic(&run_dir.join("config.toml"), toml::to_string_pretty(&config)?.as_bytes())?;
    }
    let model = trainer.model().config();
    let lora = match trainer.model().lora() {
        Some(lora) => {
            let mut trained = 0;
            trainer.model().visit_adapters(&mut |_: &str, p: crate::model::ParamKind<'_, B>| {
                trained += p.file_shape().iter().product::<usize>();
            });
            format!(
                ", LoRA rank {} α {} on {}: {:.3} M trained",
                lora.rank,
                lora.alpha,
                lora.target_modules.join(", "),
                trained as f64 / 1e6
            )
        }
        None => String::new(),
    };
    observer.note(&format!(
        "model {} ({}, {:.2} M parameters{lora}) on {}; {} steps ({} per epoch), {} pairs per step, loss {}",
        prepared.model_dir.display(),
        model.architecture_name,
        model.parameter_count() as f64 / 1e6,
        config.model.backend,
        total_steps,
        schedule.steps_per_epoch(),
        config.train.batch_size,
        loss.loss.name()
    ));

    // The sample evaluation's reference: the run's frozen model, or a LoRA
    // policy's base (shared, not copied); else loaded when needed.
    let sample_reference = match &config.lora {
        Some(_) if config.samples().is_some() => Some(trainer.valid_model().without_adapters()),
        _ => frozen_copy,
    };
    let mut evaluation = Evaluation::new(&config, &prepared, &eval_scores, sample_reference, loss, &device, observer)?;
    evaluation.catch_up(&metrics, &mut trainer)?;
    let steps = StepLoop {
        config: &config,
        prepared: &prepared,
        reference: train_scores.as_deref(),
        schedule,
        cadence,
        total_steps,
        stats: config.monitor.stats_params(),
        rank: (rank, world),
    };
    let totals = steps.run(start_step, &mut trainer, &mut evaluation, &mut metrics, observer)?;
    // Rank 0's metrics are complete before any rank reads them.
    if let Some(c) = trainer.collective() {
        c.barrier().context("waiting for every rank at the end of the run")?;
    }
    let summary = match first {
        true => RunSummary::write(&run_dir, metrics.path(), totals, total_steps, config.model.backend)?,
        false => RunSummary::of(metrics.path(), totals, total_steps, config.model.backend)?,
    };
    Ok(RunOutcome { run_dir, steps: totals.last_step, summary, rank })
}

/// What [`build_trainer`] needs besides the configuration and the data.
struct TrainerInputs<'a, B: burn::tensor::backend::Backend> {
    loss: PreferenceLossParams,
    total_steps: u64,
    reference: ReferencePolicy<B>,
    resume: Option<&'a ResumePoint>,
    ranks: &'a mut RunRanks,
}

/// The policy (the initial model, or the resumed checkpoint's weights), its
/// AdamW state and schedule position, and the reference policy; with
/// several ranks, data parallel and sharded as `train.sharding` says (each
/// rank keeps its slice of a resumed checkpoint's state, whatever the
/// number of ranks that saved it).
fn build_trainer<B: AutodiffBackend>(
    config: &TrainConfig,
    prepared: &Prepared,
    inputs: TrainerInputs<'_, B::InnerBackend>,
    device: &B::Device,
) -> Result<Trainer<B>> {
    let TrainerInputs { loss, total_steps, reference, resume, ranks } = inputs;
    let options = config.trainer_options(loss, total_steps, prepared.encoder.pad_id);
    let dtype = config.train.precision.dtype();
    // HSDP's groups first: ZeRO-3 slices each block for its place in them as it loads.
    let groups = ranks.shard_groups(config)?;
    let zero3 = ranks.world_size() > 1 && config.train.sharding == crate::plan::Sharding::Parameters;
    let mut presliced = zero3.then(|| match &groups {
        Some(groups) => PreslicedBlocks::new(groups.shard.rank(), groups.shard.world_size()),
        None => PreslicedBlocks::new(ranks.rank(), ranks.world_size()),
    });
    let model: CausalLm<B> = match (&config.lora, resume) {
        (None, _) => {
            let dir = resume.map_or(prepared.model_dir.as_path(), |point| point.dir.as_path());
            match presliced.as_mut() {
                // Each block cut to this rank's slice and let go as it loads.
                Some(slices) => load_model_each_block(dir, device, FloatDType::F32, &mut |b, l| slices.take(b, l))?,
                None => load_model(dir, device)?,
            }
        }
        // The frozen base is loaded straight into the training dtype.
        (Some(lora), None) => load_model_in(&prepared.model_dir, device, dtype)?.with_lora(lora, config.train.seed)?,
        (Some(_), Some(point)) => attach_adapter(load_model_in(&prepared.model_dir, device, dtype)?, &point.dir)?,
    };
    let mut trainer = Trainer::<B>::new(model, options, reference)?
        .with_dropout_seed(config.train.seed)
        .with_batch_layout(config.train.batch_layout());
    if let Some(presliced) = presliced {
        trainer = trainer.with_presliced_blocks(presliced);
    }
    // A sharded run reads only its slice of the moments (below).
    let sharded = ranks.world_size() > 1 && config.train.sharding != crate::plan::Sharding::None;
    if let Some(point) = resume {
        let context = || format!("--resume {}", point.dir.display());
        match sharded {
            true => {
                trainer.optimizer_mut().steps = rank_checkpoints::checkpoint_steps(&point.dir).with_context(context)?
            }
            false => {
                load_optimizer(&point.dir, &trainer.valid_model(), trainer.optimizer_mut()).with_context(context)?
            }
        }
        trainer.resume_at(point.step);
    }
    if let Some(reducer) = ranks.reducer() {
        trainer = trainer.with_reducer(Box::new(reducer)).with_sharding_in(config.train.sharding, groups)?;
    }
    if let (Some(point), Some(zero)) = (resume, trainer.zero_state_mut()) {
        let slice =
            rank_checkpoints::read_moment_pieces(&point.dir, zero.layout(), &zero.slice_pieces(), zero.slice_len())
                .with_context(|| format!("--resume {}", point.dir.display()))?;
        if let Some((m, v)) = slice {
            zero.set_moments(m, v)?;
        }
    }
    Ok(trainer)
}
