//! A training run's orchestration: data, the reference's scores, the
//! evaluation schedule, checkpoints and logging. The optimizer step itself is
//! [`Trainer::step`]; progress is reported to a [`RunObserver`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::backend::{AutodiffBackend, Backend};
use daa_core::TokenStatsParams;
use daa_core::io::write_bytes_atomic;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::config::{ReferenceMode, TrainConfig};
use super::memory_check;
use super::metrics::{MetricsLog, read_metrics};
use super::monitoring::RunMonitor;
use super::prepare::{Prepared, prepare_with};
use super::state::{TrainerState, find_checkpoint, load_optimizer, read_state, replace_dir, save_checkpoint};
use crate::backend::{BackendTask, ComputeBackend, with_backend};
use crate::batch::SequencePair;
use crate::checkpoint::{load_model, read_config, save_model};
use crate::data::EncodedPair;
use crate::eval::EvalReport;
use crate::model::CausalLm;
use crate::records::{EvalRecord, EventRecord, MetricsRecord, MonitorEvent, TrainRecord};
use crate::reference_cache::{ScoresKey, cache_dir, read_scores, score_encoded, write_scores};
use crate::rng::permutation;
use crate::score::PairScore;
use crate::trainer::{ReferencePolicy, StepPair, Trainer, TrainerOptions};

/// What a run reports as it goes. Every method has a do-nothing default;
/// `daa train` draws progress bars from them.
pub trait RunObserver {
    /// A line for people: the data read, where reference scores came from,
    /// the model and schedule.
    fn note(&mut self, _line: &str) {}
    /// Reference scoring: `done` of `total` pairs.
    fn scoring(&mut self, _done: usize, _total: usize) {}
    /// Training starts after `start` of `last` steps.
    fn training(&mut self, _start: u64, _last: u64) {}
    /// A step finished; `last_eval` is the latest evaluation.
    fn stepped(&mut self, _record: &TrainRecord, _last_eval: Option<&EvalReport>) {}
    /// An evaluation finished.
    fn evaluated(&mut self, _record: &EvalRecord) {}
}

/// Reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl RunObserver for Silent {}

/// `summary.json`: throughput and the first and last evaluations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// Steps completed by the end of this run.
    pub steps: u64,
    /// Steps this invocation ran (fewer when resumed).
    pub steps_this_run: u64,
    /// Steps of the whole schedule.
    pub total_steps: u64,
    /// Seconds of this invocation's training loop.
    pub elapsed_s: f64,
    /// Optimizer steps per second.
    pub steps_per_s: f64,
    /// Policy tokens (forward + backward) per second.
    pub tokens_per_s: f64,
    /// Peak resident memory of the process (Linux), MiB.
    pub peak_memory_mib: Option<f64>,
    /// Where it ran.
    pub backend: ComputeBackend,
    /// The run's first evaluation.
    pub first_eval: Option<EvalRecord>,
    /// The run's last evaluation.
    pub last_eval: Option<EvalRecord>,
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// The run folder.
    pub run_dir: PathBuf,
    /// Completed optimizer steps.
    pub steps: u64,
    /// `summary.json`'s content.
    pub summary: RunSummary,
}

/// Runs (or resumes, from a checkpoint folder or a run folder) a training run.
pub fn train(config: TrainConfig, resume: Option<PathBuf>, observer: &mut dyn RunObserver) -> Result<RunOutcome> {
    let (backend, device) = (config.model.backend, config.model.device);
    with_backend(backend, device, TrainTask { config, resume, observer })
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

/// Reference scores of `pairs` from the cache file of `data_file`, computing
/// (with the initial model) and storing it when absent or incomplete.
fn cached_reference<B: Backend>(
    prepared: &Prepared,
    cache_root: &Path,
    data_file: &Path,
    pairs: &[EncodedPair],
    batch: usize,
    device: &B::Device,
    observer: &mut dyn RunObserver,
) -> Result<Vec<PairScore>> {
    let key = ScoresKey::new(&prepared.model_dir, data_file, prepared.options)?;
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

/// The training pairs' and held-out pairs' reference scores, and the frozen
/// reference model when scores are not cached.
struct References<B: Backend> {
    train: Option<Vec<PairScore>>,
    eval: Vec<PairScore>,
    frozen: Option<CausalLm<B>>,
}

fn references<B: Backend>(
    config: &TrainConfig,
    prepared: &Prepared,
    device: &B::Device,
    observer: &mut dyn RunObserver,
) -> Result<References<B>> {
    let batch = config.train.micro_batch_size;
    match config.loss.reference {
        ReferenceMode::Cache => {
            let root = cache_dir(config.train.cache_dir.as_deref());
            let (train, eval) = match &prepared.eval_path {
                Some(eval_path) => (
                    cached_reference::<B>(
                        prepared,
                        &root,
                        &prepared.data_path,
                        &prepared.train,
                        batch,
                        device,
                        observer,
                    )?,
                    cached_reference::<B>(prepared, &root, eval_path, &prepared.eval, batch, device, observer)?,
                ),
                None => {
                    let all = &prepared.train_report.pairs;
                    let scores =
                        cached_reference::<B>(prepared, &root, &prepared.data_path, all, batch, device, observer)?;
                    let by_row: HashMap<usize, PairScore> = all.iter().map(|p| p.row).zip(scores).collect();
                    let pick = |set: &[EncodedPair]| set.iter().map(|p| by_row[&p.row]).collect::<Vec<_>>();
                    (pick(&prepared.train), pick(&prepared.eval))
                }
            };
            Ok(References { train: Some(train), eval, frozen: None })
        }
        ReferenceMode::Model => {
            let frozen: CausalLm<B> = load_model(&prepared.model_dir, device)?;
            let total = prepared.eval.len();
            let pad = prepared.encoder.pad_id;
            let eval = score_encoded(&frozen, &prepared.eval, batch, pad, &mut |done| observer.scoring(done, total))?;
            Ok(References { train: None, eval, frozen: Some(frozen) })
        }
    }
}

/// One evaluation of a run: teacher-forced figures, the policy's samples,
/// the monitor's decisions (events, `best-indicator/`, the objective).
struct EvalRound<'a> {
    eval_pairs: &'a [&'a SequencePair],
    reference: &'a [PairScore],
    stats: &'a TokenStatsParams,
    batch: usize,
    prepared: &'a Prepared,
    run_dir: &'a Path,
    best_indicator_step: Option<u64>,
}

impl EvalRound<'_> {
    /// Evaluates after `step` steps, logs, acts; returns the record and
    /// whether the run must stop.
    fn run<B: AutodiffBackend>(
        &mut self,
        trainer: &mut Trainer<B>,
        step: u64,
        monitor: &mut RunMonitor<B::InnerBackend>,
        metrics: &mut MetricsLog,
        observer: &mut dyn RunObserver,
    ) -> Result<(EvalRecord, bool)> {
        let context = || format!("evaluation after step {step}");
        let report = trainer.evaluate(self.eval_pairs, self.reference, self.stats, self.batch).with_context(context)?;
        let samples = monitor.sample_report(&trainer.valid_model(), self.prepared).with_context(context)?;
        let record = EvalRecord { step, report, samples };
        metrics.write(&MetricsRecord::Eval(record))?;
        observer.evaluated(&record);
        let decision = monitor.after_eval(&record)?;
        for event in decision.events {
            metrics.write(&MetricsRecord::Event(EventRecord { step, event }))?;
            if let MonitorEvent::TurningPoint { indicator, peak_step, .. } = event {
                observer.note(&format!("step {step}: {} turned (smoothed peak at step {peak_step})", indicator.name()));
            }
        }
        if decision.keep_best {
            let dest = self.run_dir.join("best-indicator");
            let model_dir = &self.prepared.model_dir;
            let policy = trainer.master_model();
            let fill = |dir: &Path| -> Result<()> {
                save_model(&policy, dir, model_dir)?;
                write_bytes_atomic(&dir.join("step.json"), serde_json::json!({ "step": step }).to_string().as_bytes())?;
                Ok(())
            };
            replace_dir(&dest, fill)?;
            self.best_indicator_step = Some(step);
        }
        if let Some(loss) = decision.loss {
            trainer.set_loss(loss)?;
        }
        Ok((record, decision.stop))
    }
}

/// The fields whose change makes `--resume` refuse: everything but the
/// stopping point, checkpoint cadence, folders, monitoring and the memory
/// settings (which change how a step is computed, not what: a run that ran
/// out of memory resumes with checkpointing on).
fn resume_mismatch(saved: &TrainConfig, now: &TrainConfig) -> Vec<String> {
    let strip = |c: &TrainConfig| {
        let mut v = serde_json::to_value(c).unwrap_or(Value::Null);
        for field in [
            "max_steps",
            "checkpoint_every",
            "output_dir",
            "cache_dir",
            "fused_head",
            "head_chunk_tokens",
            "activation_checkpointing",
            "precision",
            "device_memory",
            "memory_check",
        ] {
            if let Some(t) = v.get_mut("train").and_then(Value::as_object_mut) {
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
    for section in ["model", "data", "loss", "train", "testbed"] {
        if let (Some(x), Some(y)) =
            (a.get(section).and_then(Value::as_object), b.get(section).and_then(Value::as_object))
        {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                if x.get(k) != y.get(k) {
                    differing.push(format!("{section}.{k}"));
                }
            }
        }
    }
    differing
}

fn run<B: AutodiffBackend>(
    config: TrainConfig,
    resume: Option<PathBuf>,
    device: B::Device,
    observer: &mut dyn RunObserver,
) -> Result<RunOutcome> {
    let run_dir = config.output_dir();
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("{}: cannot create the run folder", run_dir.display()))?;
    let loss = config.loss_params()?;
    config.train.precision.check_supported::<B>(&device)?;
    let stats = TokenStatsParams { k: config.monitor.top_k, entropy_base: config.monitor.entropy_base };
    let prepared = prepare_with(&config, &run_dir, &mut |line| observer.note(line))?;
    observer.note(&memory_check::check_memory(&config, &read_config(&prepared.model_dir)?)?);
    let report = &prepared.train_report;
    observer.note(&format!(
        "data {}: {} rows, {} pairs ({} train, {} held out), {} skipped{}, {} truncated",
        prepared.data_path.display(),
        report.rows,
        report.pairs.len(),
        prepared.train.len(),
        prepared.eval.len(),
        report.skipped_total(),
        if report.skipped.is_empty() { String::new() } else { format!(" {:?}", report.skipped) },
        report.truncated
    ));

    // Reference scores, computed before the policy is loaded: one model in memory.
    let references = references::<B::InnerBackend>(&config, &prepared, &device, observer)?;

    // Policy, optimizer, position.
    let steps_per_epoch = prepared.train.len().div_ceil(config.train.batch_size) as u64;
    let total_steps = steps_per_epoch * config.train.epochs as u64;
    let mut last_step = if config.train.max_steps > 0 { total_steps.min(config.train.max_steps) } else { total_steps };
    let options = TrainerOptions {
        loss,
        optimizer: config.adamw(),
        schedule: config.schedule(total_steps),
        micro_batch_size: config.train.micro_batch_size,
        pad_id: prepared.encoder.pad_id,
        memory: config.train.memory_options(),
        precision: config.train.precision,
    };
    let sample_reference = references.frozen.clone();
    let reference = match references.frozen {
        Some(frozen) => ReferencePolicy::Frozen(frozen),
        None => ReferencePolicy::Given,
    };
    let resume_from = match &resume {
        Some(path) => {
            let dir = find_checkpoint(path)?;
            let state = read_state(&dir)?;
            let differing = resume_mismatch(&state.config, &config);
            if !differing.is_empty() {
                bail!(
                    "--resume {}: the configuration differs from the checkpoint's in {}",
                    dir.display(),
                    differing.join(", ")
                );
            }
            Some((dir, state.step))
        }
        None => None,
    };
    let model_dir = resume_from.as_ref().map_or(prepared.model_dir.as_path(), |(dir, _)| dir.as_path());
    let model: CausalLm<B> = load_model(model_dir, &device)?;
    let mut trainer = Trainer::<B>::new(model, options, reference)?;
    let start_step = match &resume_from {
        Some((dir, step)) => {
            load_optimizer(dir, &trainer.valid_model(), trainer.optimizer_mut())
                .with_context(|| format!("--resume {}", dir.display()))?;
            trainer.resume_at(*step);
            observer.note(&format!("resuming from {} (step {step})", dir.display()));
            *step
        }
        None => 0,
    };
    let mut metrics = MetricsLog::open(&run_dir, resume.as_ref().map(|_| start_step))?;
    write_bytes_atomic(&run_dir.join("config.toml"), toml::to_string_pretty(&config)?.as_bytes())?;
    observer.note(&format!(
        "model {} ({}, {:.2} M parameters) on {}; {} steps ({} per epoch), {} pairs per step, loss {}",
        prepared.model_dir.display(),
        trainer.model().config().architecture_name,
        trainer.model().config().parameter_count() as f64 / 1e6,
        config.model.backend,
        total_steps,
        steps_per_epoch,
        config.train.batch_size,
        loss.loss.name()
    ));

    let eval_pairs: Vec<&SequencePair> = prepared.eval.iter().map(|p| &p.pair).collect();
    let eval_batch = config.monitor.eval_batch_size;
    let mut monitor = RunMonitor::<B::InnerBackend>::new(&config, &prepared, loss, sample_reference, &device)?;
    if let Some(reward) = monitor.competitor_reward() {
        observer.note(&format!("sample evaluation: the reference policy's samples score {reward:.4} on average"));
    }
    // A resumed run's monitor catches up on the evaluations already logged.
    for record in read_metrics(metrics.path())?.iter().filter_map(MetricsRecord::eval) {
        if let Some(loss) = monitor.after_eval(record)?.loss {
            trainer.set_loss(loss)?;
        }
    }
    let mut round = EvalRound {
        eval_pairs: &eval_pairs,
        reference: &references.eval,
        stats: &stats,
        batch: eval_batch,
        prepared: &prepared,
        run_dir: &run_dir,
        best_indicator_step: None,
    };
    let mut last_eval = None;
    if start_step == 0 {
        let (record, stop) = round.run(&mut trainer, 0, &mut monitor, &mut metrics, observer)?;
        last_eval = Some(record.report);
        if stop {
            bail!("monitor.early_stop: a turning point before the first step (patience must be at least 1)");
        }
    }
    observer.training(start_step, last_step);
    let started = Instant::now();
    let mut tokens_seen = 0usize;
    let mut order: Option<(u64, Vec<usize>)> = None;
    for step in start_step..last_step {
        let epoch = step / steps_per_epoch;
        if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            order = Some((epoch, permutation(prepared.train.len(), config.train.seed, epoch)));
        }
        let order = order.as_ref().map(|(_, o)| o.as_slice()).unwrap_or_default();
        let offset = ((step % steps_per_epoch) as usize) * config.train.batch_size;
        let indices = &order[offset..(offset + config.train.batch_size).min(order.len())];
        let pairs: Vec<StepPair<'_>> = indices
            .iter()
            .map(|&i| StepPair {
                sequences: &prepared.train[i].pair,
                reference: references.train.as_ref().map(|scores| scores[i]),
            })
            .collect();
        let (nll_weight, beta) = monitor.coefficients();
        let every = config.monitor.train_stats_every;
        let batch_stats = (every > 0 && (step + 1) % every == 0).then_some(&stats);
        let record = trainer.step_with_stats(&pairs, batch_stats).with_context(|| format!("step {}", step + 1))?;
        tokens_seen += record.tokens;
        let done = record.step;
        let train_record = TrainRecord {
            step: record,
            epoch: done as f64 / steps_per_epoch as f64,
            elapsed_s: started.elapsed().as_secs_f64(),
            nll_weight,
            beta,
        };
        metrics.write(&MetricsRecord::Train(train_record))?;
        let mut stop = false;
        if done % config.monitor.eval_every == 0 || done == last_step {
            let (record, early_stop) = round.run(&mut trainer, done, &mut monitor, &mut metrics, observer)?;
            last_eval = Some(record.report);
            stop = early_stop;
        }
        observer.stepped(&train_record, last_eval.as_ref());
        if stop {
            let event = MonitorEvent::EarlyStop { best_indicator_step: round.best_indicator_step };
            metrics.write(&MetricsRecord::Event(EventRecord { step: done, event }))?;
            observer.note(&format!(
                "early stop at step {done}: an indicator turned; best-indicator/ holds step {}",
                round.best_indicator_step.map_or("none".to_string(), |s| s.to_string())
            ));
            last_step = done;
        }
        if (config.train.checkpoint_every > 0 && done % config.train.checkpoint_every == 0) || done == last_step {
            let state = TrainerState {
                step: done,
                total_steps,
                config: config.clone(),
                daa_version: env!("CARGO_PKG_VERSION").to_string(),
            };
            save_checkpoint(&run_dir, &trainer.master_model(), trainer.optimizer(), &state, &prepared.model_dir)?;
        }
        if stop {
            break;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let steps_run = last_step.saturating_sub(start_step);
    let evals: Vec<EvalRecord> = read_metrics(metrics.path())?.iter().filter_map(|r| r.eval().copied()).collect();
    let summary = RunSummary {
        steps: last_step,
        steps_this_run: steps_run,
        total_steps,
        elapsed_s: elapsed,
        steps_per_s: steps_run as f64 / elapsed.max(1e-9),
        tokens_per_s: tokens_seen as f64 / elapsed.max(1e-9),
        peak_memory_mib: super::process::memory_mib("VmHWM"),
        backend: config.model.backend,
        first_eval: evals.first().copied(),
        last_eval: evals.last().copied(),
    };
    write_bytes_atomic(&run_dir.join("summary.json"), serde_json::to_string_pretty(&summary)?.as_bytes())?;
    Ok(RunOutcome { run_dir, steps: last_step, summary })
}
