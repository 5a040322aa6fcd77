//! The training loop.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::{AutodiffModule, ParamId};
use burn::tensor::backend::{AutodiffBackend, Backend};
use daa_core::TokenStatsParams;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use super::chart::eval_chart;
use super::config::TrainConfig;
use super::eval::{EvalReport, evaluate};
use super::metrics::{MetricsLog, read_metrics};
use super::prepare::{Prepared, permutation, prepare};
use super::state::{TrainerState, find_checkpoint, load_optimizer, read_state, save_checkpoint};
use crate::atomic_write::write_bytes;
use crate::backends::{BackendTask, with_backend};
use crate::checkpoint::load_model;
use crate::data::EncodedPair;
use crate::model::{CausalLm, ParamKind};
use crate::objective::{pair_objective, sequence_logps};
use crate::optim::{AdamW, GradAccumulator};
use crate::scores::{PairScore, ScoresKey, cache_dir, pair_batch, read_scores, score_batch, score_pairs, write_scores};

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// The run folder.
    pub run_dir: PathBuf,
    /// Completed optimizer steps.
    pub steps: u64,
    /// `summary.json`'s content.
    pub summary: Value,
}

/// Runs (or resumes, from a checkpoint folder or a run folder) a training run.
pub fn train(config: TrainConfig, resume: Option<PathBuf>) -> Result<RunOutcome> {
    let backend = config.model.backend.clone();
    let device = config.model.device;
    with_backend(&backend, device, TrainTask { config, resume })
}

struct TrainTask {
    config: TrainConfig,
    resume: Option<PathBuf>,
}

impl BackendTask for TrainTask {
    type Output = RunOutcome;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<RunOutcome> {
        run::<B>(self.config, self.resume, device)
    }
}

fn progress_bar(len: u64, message: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {msg} (ETA {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(message.to_string());
    bar
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
) -> Result<Vec<PairScore>> {
    let key = ScoresKey::new(&prepared.model_dir, data_file, prepared.options)?;
    let path = key.cache_path(cache_root);
    if path.exists() {
        let cached = read_scores(&path)?;
        if let Some(scores) = pairs.iter().map(|p| cached.get(&p.row).copied()).collect::<Option<Vec<_>>>() {
            eprintln!("reference log-probabilities: cached {}", path.display());
            return Ok(scores);
        }
    }
    let model: CausalLm<B> = load_model(&prepared.model_dir, device)?;
    let bar = progress_bar(pairs.len() as u64, "reference");
    let scores = score_pairs(&model, pairs, batch, prepared.encoder.pad_id, &mut |done| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))
        .with_context(|| format!("{}: cannot create the cache folder", path.display()))?;
    write_scores(&path, pairs, &scores, &key.metadata())?;
    eprintln!("reference log-probabilities: computed {} pairs into {}", pairs.len(), path.display());
    Ok(scores)
}

/// Where the training pairs' reference scores come from.
enum TrainReference<B: Backend> {
    /// Scored once with the initial model, indexed like the training pairs.
    Cached(Vec<PairScore>),
    /// A frozen copy of the initial model, run on each micro-batch.
    Frozen(CausalLm<B>),
}

fn resume_mismatch(saved: &TrainConfig, now: &TrainConfig) -> Vec<String> {
    let strip = |c: &TrainConfig| {
        let mut v = serde_json::to_value(c).unwrap_or(Value::Null);
        for field in ["max_steps", "checkpoint_every", "output_dir", "cache_dir"] {
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
    for section in ["model", "data", "loss", "train"] {
        if let (Some(x), Some(y)) =
            (a.get(section).and_then(Value::as_object), b.get(section).and_then(Value::as_object))
        {
            for (k, v) in x {
                if y.get(k) != Some(v) {
                    differing.push(format!("{section}.{k}"));
                }
            }
        }
    }
    differing
}

fn peak_memory_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn eval_record(step: u64, report: &EvalReport) -> Value {
    let mut record = json!({ "type": "eval", "step": step });
    if let (Some(o), Ok(Value::Object(fields))) = (record.as_object_mut(), serde_json::to_value(report)) {
        o.extend(fields);
    }
    record
}

#[allow(clippy::too_many_lines)]
fn run<B: AutodiffBackend>(config: TrainConfig, resume: Option<PathBuf>, device: B::Device) -> Result<RunOutcome> {
    let run_dir = config.output_dir();
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("{}: cannot create the run folder", run_dir.display()))?;
    let params = config.loss_params()?;
    let stats = TokenStatsParams { k: config.monitor.top_k, entropy_base: config.monitor.entropy_base };
    let prepared = prepare(&config, &run_dir)?;
    let report = &prepared.train_report;
    eprintln!(
        "data {}: {} rows, {} pairs ({} train, {} held out), {} skipped{}, {} truncated",
        prepared.data_path.display(),
        report.rows,
        report.pairs.len(),
        prepared.train.len(),
        prepared.eval.len(),
        report.skipped_total(),
        if report.skipped.is_empty() { String::new() } else { format!(" {:?}", report.skipped) },
        report.truncated
    );

    // Reference scores, computed before the policy is loaded: one model in memory.
    let batch = config.train.micro_batch_size;
    let pad = prepared.encoder.pad_id;
    let inner = device.clone();
    let (train_ref, eval_ref): (TrainReference<B::InnerBackend>, Vec<PairScore>) = if config.loss.reference == "cache" {
        let cache_root = cache_dir(config.train.cache_dir.as_deref());
        let (train_ref, eval_ref) = match &prepared.eval_path {
            Some(eval_path) => (
                cached_reference::<B::InnerBackend>(
                    &prepared,
                    &cache_root,
                    &prepared.data_path,
                    &prepared.train,
                    batch,
                    &inner,
                )?,
                cached_reference::<B::InnerBackend>(&prepared, &cache_root, eval_path, &prepared.eval, batch, &inner)?,
            ),
            None => {
                let all = &prepared.train_report.pairs;
                let scores = cached_reference::<B::InnerBackend>(
                    &prepared,
                    &cache_root,
                    &prepared.data_path,
                    all,
                    batch,
                    &inner,
                )?;
                let by_row: HashMap<usize, PairScore> = all.iter().map(|p| p.row).zip(scores).collect();
                let pick = |set: &[EncodedPair]| set.iter().map(|p| by_row[&p.row]).collect::<Vec<_>>();
                (pick(&prepared.train), pick(&prepared.eval))
            }
        };
        (TrainReference::Cached(train_ref), eval_ref)
    } else {
        let frozen: CausalLm<B::InnerBackend> = load_model(&prepared.model_dir, &inner)?;
        let eval_ref = score_pairs(&frozen, &prepared.eval, batch, pad, &mut |_| {})?;
        (TrainReference::Frozen(frozen), eval_ref)
    };

    // Policy, optimizer, position.
    let steps_per_epoch = prepared.train.len().div_ceil(config.train.batch_size) as u64;
    let total_steps = steps_per_epoch * config.train.epochs as u64;
    let last_step = if config.train.max_steps > 0 { total_steps.min(config.train.max_steps) } else { total_steps };
    let schedule = config.schedule(total_steps);
    let mut optimizer = AdamW::<B::InnerBackend>::new(config.adamw());
    let (mut model, start_step): (CausalLm<B>, u64) = match &resume {
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
            let model: CausalLm<B> = load_model(&dir, &device)?;
            load_optimizer(&dir, &model.valid(), &mut optimizer)
                .with_context(|| format!("--resume {}", dir.display()))?;
            eprintln!("resuming from {} (step {})", dir.display(), state.step);
            (model, state.step)
        }
        None => (load_model(&prepared.model_dir, &device)?, 0),
    };
    // Which parameters weight decay applies to, by id (ids survive `valid()` and optimizer steps).
    let mut decays: HashMap<ParamId, bool> = HashMap::new();
    model.visit_weights(&mut |_: &str, p: ParamKind<'_, B>| {
        decays.insert(p.id(), p.decays());
    });
    let mut metrics = MetricsLog::open(&run_dir, resume.as_ref().map(|_| start_step))?;
    write_bytes(&run_dir.join("config.toml"), toml::to_string_pretty(&config)?.as_bytes())?;
    eprintln!(
        "model {} ({}, {:.2} M parameters) on {}; {} steps ({} per epoch), {} pairs per step, loss {}",
        prepared.model_dir.display(),
        model.config().architecture_name,
        model.config().parameter_count() as f64 / 1e6,
        config.model.backend,
        total_steps,
        steps_per_epoch,
        config.train.batch_size,
        params.loss.name()
    );

    let run_eval = |model: &CausalLm<B>| -> Result<EvalReport> {
        evaluate(&model.valid(), &prepared.eval, &eval_ref, &params, &stats, config.monitor.eval_batch_size, pad)
    };
    let mut last_eval = None;
    if start_step == 0 {
        let report = run_eval(&model)?;
        metrics.write(&eval_record(0, &report))?;
        last_eval = Some(report);
    }
    let bar = progress_bar(last_step, "train");
    bar.set_position(start_step);
    let started = Instant::now();
    let mut tokens_seen = 0usize;
    let mut first_eval = read_metrics(metrics.path())?.into_iter().find(|r| r["type"] == "eval");
    let mut order: Option<(u64, Vec<usize>)> = None;
    for step in start_step..last_step {
        let epoch = step / steps_per_epoch;
        if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            order = Some((epoch, permutation(prepared.train.len(), config.train.seed, epoch)));
        }
        let order = order.as_ref().map(|(_, o)| o.as_slice()).unwrap_or_default();
        let offset = ((step % steps_per_epoch) as usize) * config.train.batch_size;
        let indices = &order[offset..(offset + config.train.batch_size).min(order.len())];
        let step_pairs = indices.len() as f64;
        let lr = schedule.at(step);
        let mut grads = GradAccumulator::<B::InnerBackend>::default();
        let mut inputs = Vec::new();
        let mut losses = Vec::new();
        for micro in indices.chunks(config.train.micro_batch_size) {
            let pairs: Vec<&EncodedPair> = micro.iter().map(|&i| &prepared.train[i]).collect();
            let tokens = pair_batch(&pairs, pad, model.config().vocab_size)?;
            tokens_seen += pairs.iter().map(|p| p.chosen.ids.len() + p.rejected.ids.len()).sum::<usize>();
            let input = tokens.input::<B>(&device);
            let (targets, weights) = tokens.targets::<B>(&device);
            let policy = sequence_logps(model.forward(input), targets, weights);
            let reference: Vec<(f64, f64)> = match &train_ref {
                TrainReference::Cached(cache) => micro.iter().map(|&i| (cache[i].chosen, cache[i].rejected)).collect(),
                TrainReference::Frozen(frozen) => {
                    score_batch(frozen, &pairs, pad)?.iter().map(|s| (s.chosen, s.rejected)).collect()
                }
            };
            let counts: Vec<(f64, f64)> =
                pairs.iter().map(|p| (p.chosen.completion_len() as f64, p.rejected.completion_len() as f64)).collect();
            let objective = pair_objective(policy, &reference, &counts, &params, step_pairs)
                .with_context(|| format!("step {}", step + 1))?;
            grads.add::<B, _>(&model, objective.surrogate.backward());
            inputs.extend(objective.inputs);
            losses.extend(objective.losses);
        }
        let (updated, report) =
            optimizer.step::<B, _>(model, grads, lr, &decays).with_context(|| format!("step {}", step + 1))?;
        model = updated;
        let done = step + 1;
        let mean = |f: &dyn Fn(usize) -> f64| (0..losses.len()).map(f).sum::<f64>() / losses.len() as f64;
        let loss = mean(&|i| losses[i].loss);
        let record = json!({
            "type": "train",
            "step": done,
            "epoch": done as f64 / steps_per_epoch as f64,
            "lr": report.lr,
            "loss": loss,
            "grad_norm": report.grad_norm,
            "rewards/chosen": mean(&|i| losses[i].chosen_reward),
            "rewards/rejected": mean(&|i| losses[i].rejected_reward),
            "rewards/margin": mean(&|i| losses[i].margin),
            "rewards/accuracy": mean(&|i| losses[i].accuracy),
            "logps/chosen": mean(&|i| inputs[i].policy_chosen),
            "logps/rejected": mean(&|i| inputs[i].policy_rejected),
            "logps/chosen_per_token": mean(&|i| inputs[i].policy_chosen / inputs[i].chosen_tokens),
            "logps/rejected_per_token": mean(&|i| inputs[i].policy_rejected / inputs[i].rejected_tokens),
            "pairs": losses.len(),
            "elapsed_s": started.elapsed().as_secs_f64(),
        });
        metrics.write(&record)?;
        if done % config.monitor.eval_every == 0 || done == last_step {
            let report = run_eval(&model)?;
            metrics.write(&eval_record(done, &report))?;
            bar.println(format!(
                "step {done:>5}  eval loss {:.4}  acc {:.3}  chosen ll/token {:.4}  top-{} entropy {:.4}  top-{} mass {:.4}",
                report.loss, report.accuracy, report.chosen_token_loglik, stats.k, report.topk_entropy, stats.k, report.topk_mass
            ));
            if first_eval.is_none() {
                first_eval = Some(eval_record(done, &report));
            }
            last_eval = Some(report);
        }
        let entropy = last_eval.map_or(f64::NAN, |r| r.topk_entropy);
        bar.set_message(format!("loss {loss:.4} H_k {entropy:.3}"));
        bar.set_position(done);
        if (config.train.checkpoint_every > 0 && done % config.train.checkpoint_every == 0) || done == last_step {
            let state = TrainerState {
                step: done,
                total_steps,
                config: config.clone(),
                daa_version: env!("CARGO_PKG_VERSION").to_string(),
            };
            save_checkpoint(&run_dir, &model.valid(), &optimizer, &state, &prepared.model_dir)?;
        }
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    let steps_run = last_step.saturating_sub(start_step);
    let records = read_metrics(metrics.path())?;
    write_bytes(
        &run_dir.join("metrics.svg"),
        eval_chart(&records, &format!("daa train — {}", run_dir.display())).as_bytes(),
    )?;
    let last_eval_record = records.iter().rev().find(|r| r["type"] == "eval").cloned();
    let summary = json!({
        "steps": last_step,
        "steps_this_run": steps_run,
        "total_steps": total_steps,
        "elapsed_s": elapsed,
        "steps_per_s": steps_run as f64 / elapsed.max(1e-9),
        "tokens_per_s": tokens_seen as f64 / elapsed.max(1e-9),
        "peak_memory_mib": peak_memory_mib(),
        "backend": config.model.backend,
        "first_eval": first_eval,
        "last_eval": last_eval_record,
    });
    write_bytes(&run_dir.join("summary.json"), serde_json::to_string_pretty(&summary)?.as_bytes())?;
    print_summary(&summary, &run_dir);
    Ok(RunOutcome { run_dir, steps: last_step, summary })
}

fn print_summary(summary: &Value, run_dir: &Path) {
    let number = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.4}"));
    eprintln!(
        "done: {} steps in {:.1} s ({:.2} steps/s, {:.0} tokens/s, peak memory {} MiB)",
        summary["steps_this_run"],
        summary["elapsed_s"].as_f64().unwrap_or(0.0),
        summary["steps_per_s"].as_f64().unwrap_or(0.0),
        summary["tokens_per_s"].as_f64().unwrap_or(0.0),
        summary["peak_memory_mib"].as_f64().map_or("?".into(), |m| format!("{m:.0}"))
    );
    eprintln!("{:<28} {:>10} {:>10}", "held-out", "first", "last");
    for key in [
        "eval/loss",
        "eval/rewards_accuracy",
        "eval/chosen_token_loglik",
        "eval/rejected_token_loglik",
        "eval/topk_entropy",
        "eval/topk_mass",
        "eval/entropy",
    ] {
        eprintln!("{key:<28} {:>10} {:>10}", number(&summary["first_eval"][key]), number(&summary["last_eval"][key]));
    }
    eprintln!("metrics: {0}/metrics.jsonl, chart: {0}/metrics.svg, checkpoints: {0}/checkpoint-*", run_dir.display());
}
