//! `daa train`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use daa_train::ComputeBackend;
use daa_train::EvalRecord;
use daa_train::eval::{EvalReport, Figure};
use daa_train::records::{MetricsRecord, MonitorEvent};
use daa_train::run::metrics::read_metrics;
use daa_train::run::samples_log::{SampleLine, read_samples};
use daa_train::run::{RunSummary, TrainConfig, train};
use daa_train::sample_eval::SampleReport;

use crate::plot::{Series, line_charts};
use crate::progress::TrainProgress;

/// Arguments of `daa train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// TOML configuration (see configs/); the testbed (configs/testbed.toml) when absent.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a field: --set train.lr=1e-6 (repeatable).
    #[arg(long = "set", value_name = "SECTION.FIELD=VALUE")]
    overrides: Vec<String>,
    /// Checkpoint folder, or run folder (its latest checkpoint), to continue from.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Shorthand for --set model.path=DIR (a checkpoint folder, or a Hub
    /// model id in the local Hugging Face cache).
    #[arg(long)]
    model: Option<String>,
    /// Shorthand for --set data.path=FILE (a .jsonl / .parquet file, a folder
    /// of shards, or a Hub dataset id in the local cache; the split:
    /// --set data.split=NAME).
    #[arg(long)]
    data: Option<String>,
    /// Shorthand for --set train.output_dir=DIR.
    #[arg(long)]
    out: Option<String>,
    /// Shorthand for --set model.backend=NAME.
    #[arg(long, value_enum)]
    backend: Option<ComputeBackend>,
    /// Shorthand for --set train.max_steps=N.
    #[arg(long)]
    max_steps: Option<u64>,
    /// Shorthand for --set data.strict=true: stop at the first bad row.
    #[arg(long)]
    strict: bool,
    /// Ranks on this node: starts this many `daa train` processes and
    /// supervises them (data parallel, sharded as `train.sharding` says;
    /// rank i of the node on GPU model.device + i).
    #[arg(long, value_name = "N")]
    nproc_per_node: Option<usize>,
    /// Nodes in the run (run the same command on each, with its --node-rank).
    #[arg(long, value_name = "M", default_value_t = 1)]
    nnodes: usize,
    /// This node, 0..M (node 0 holds rank 0).
    #[arg(long, value_name = "R", default_value_t = 0)]
    node_rank: usize,
    /// Node 0's host, which every node reaches (needed with --nnodes above 1).
    #[arg(long, value_name = "HOST")]
    master_addr: Option<String>,
    /// The port the ranks meet at on node 0 (a free one on one node;
    /// 29500 across nodes).
    #[arg(long, value_name = "PORT")]
    master_port: Option<u16>,
}

/// The launcher's own flags, which the ranks do not get.
const LAUNCHER_FLAGS: [&str; 5] = ["--nproc-per-node", "--nnodes", "--node-rank", "--master-addr", "--master-port"];

fn quoted(s: &str) -> String {
    format!("{:?}", s)
}

/// The evaluation series of a run's records, one per [`EvalReport::FIGURES`]
/// entry, then one per [`SampleReport::FIGURES`] entry when the run sampled.
pub fn eval_series(records: &[MetricsRecord]) -> Vec<Series> {
    let evals: Vec<&EvalRecord> = records.iter().filter_map(MetricsRecord::eval).collect();
    let teacher_forced = EvalReport::FIGURES.iter().map(|figure| Series {
        title: figure.title.to_string(),
        points: evals.iter().map(|r| (r.step as f64, (figure.value)(&r.report))).filter(|p| p.1.is_finite()).collect(),
    });
    let sampled = SampleReport::FIGURES.iter().map(|figure| Series {
        title: figure.title.to_string(),
        points: evals
            .iter()
            .filter_map(|r| Some((r.step as f64, (figure.value)(r.samples.as_ref()?))))
            .filter(|p| p.1.is_finite())
            .collect(),
    });
    teacher_forced.chain(sampled).filter(|s| !s.points.is_empty()).collect()
}

/// A table of `figures` over a run's `reports` (in step order): the first
/// and last values (`± standard error` where the figure has one) and, where
/// the largest value means something, the peak.
fn print_figures<R>(title: &str, figures: &[Figure<R>], reports: &[&R]) {
    let (Some(first), Some(last)) = (reports.first(), reports.last()) else { return };
    eprintln!("{title:<30} {:>17} {:>17} {:>10}", "first", "last", "peak");
    for figure in figures {
        let cell = |r: &R| match figure.standard_error.and_then(|se| se(r)) {
            Some(se) => format!("{:.4} ± {se:.4}", (figure.value)(r)),
            None => format!("{:.4}", (figure.value)(r)),
        };
        let peak = reports.iter().map(|r| (figure.value)(r)).fold(f64::NEG_INFINITY, f64::max);
        let peak = if figure.peak { format!("{peak:.4}") } else { "—".to_string() };
        eprintln!("{:<30} {:>17} {:>17} {:>10}", figure.title, cell(first), cell(last), peak);
    }
}

/// The evaluations' tables, where win probability peaked and what the monitor decided.
fn print_monitoring(records: &[MetricsRecord]) {
    let evals: Vec<&EvalRecord> = records.iter().filter_map(MetricsRecord::eval).collect();
    let held_out: Vec<&EvalReport> = evals.iter().map(|r| &r.report).collect();
    print_figures("held-out", &EvalReport::FIGURES, &held_out);
    let sampled: Vec<(u64, &SampleReport)> = evals.iter().filter_map(|r| Some((r.step, r.samples.as_ref()?))).collect();
    let reports: Vec<&SampleReport> = sampled.iter().map(|(_, r)| *r).collect();
    print_figures("samples (held-out prompts)", &SampleReport::FIGURES, &reports);
    if !sampled.is_empty() {
        let (step, peak) = sampled
            .iter()
            .fold((0, f64::NEG_INFINITY), |b, (s, r)| if r.win_prob > b.1 { (*s, r.win_prob) } else { b });
        eprintln!("win probability peaked at step {step} ({peak:.4})");
    }
    for event in records.iter().filter_map(MetricsRecord::event) {
        match event.event {
            MonitorEvent::TurningPoint { indicator, peak_step, .. } => eprintln!(
                "{} turned: confirmed at step {}, smoothed peak at step {peak_step}",
                indicator.name(),
                event.step
            ),
            MonitorEvent::EarlyStop { best_indicator_step } => eprintln!(
                "stopped early at step {} (best-indicator/ holds step {})",
                event.step,
                best_indicator_step.map_or("none".into(), |s| s.to_string())
            ),
        }
    }
}

/// `text` on one line, at most `width` characters (`…` where cut).
fn clip(text: &str, width: usize) -> String {
    let flat: String = text.chars().map(|c| if c.is_control() { '⏎' } else { c }).collect();
    if flat.chars().count() <= width {
        return flat;
    }
    flat.chars().take(width - 1).chain(['…']).collect()
}

/// How many prompts the summary shows per evaluation.
const SAMPLES_SHOWN: usize = 4;

/// The first and the last evaluation's samples as tables (the first
/// [`SAMPLES_SHOWN`] prompts, texts clipped; every sample is in `path`).
fn print_samples(path: &std::path::Path) {
    if !path.exists() {
        return;
    }
    let lines = match read_samples(path) {
        Ok(lines) => lines,
        Err(e) => return eprintln!("samples: {e:#}"),
    };
    let mut steps: Vec<u64> = lines.iter().map(|l| l.step).collect();
    steps.dedup();
    let shown: Vec<u64> = match steps.as_slice() {
        [] => return,
        [only] => vec![*only],
        [first, .., last] => vec![*first, *last],
    };
    for step in shown {
        let at: Vec<&SampleLine> = lines.iter().filter(|l| l.step == step).collect();
        eprintln!(
            "samples at step {step} ({} of {}; all in {}):",
            at.len().min(SAMPLES_SHOWN),
            at.len(),
            path.display()
        );
        eprintln!(
            "  {:<24} {:<24} {:>8}  {:<24} {:>8} {:>9} {:>7}",
            "prompt", "policy", "reward", "reference", "reward", "log-ratio", "KL"
        );
        for line in at.iter().take(SAMPLES_SHOWN) {
            let s = &line.sample;
            eprintln!(
                "  {:<24} {:<24} {:>8.4}  {:<24} {:>8.4} {:>9.3} {:>7.3}",
                clip(&s.prompt, 24),
                clip(&s.completion, 24),
                s.reward,
                clip(&s.reference_completion, 24),
                s.reference_reward,
                s.log_ratio,
                s.kl
            );
        }
    }
}

fn print_summary(summary: &RunSummary, run_dir: &std::path::Path) {
    eprintln!(
        "done: {} steps in {:.1} s ({:.2} steps/s, {:.0} tokens/s, peak memory {} MiB)",
        summary.steps_this_run,
        summary.elapsed_s,
        summary.steps_per_s,
        summary.tokens_per_s,
        summary.peak_memory_mib.map_or("?".into(), |m| format!("{m:.0}"))
    );
    eprintln!("metrics: {0}/metrics.jsonl, chart: {0}/metrics.svg, checkpoints: {0}/checkpoint-*", run_dir.display());
}

/// Runs `daa train`.
pub fn run(args: &TrainArgs) -> Result<()> {
    if args.nnodes != 1 && args.nproc_per_node.is_none() {
        anyhow::bail!("--nnodes needs --nproc-per-node: the ranks to start on this node");
    }
    if let Some(nproc_per_node) = args.nproc_per_node.filter(|&n| n * args.nnodes != 1) {
        #[cfg(unix)]
        {
            let plan = crate::launcher::NodePlan {
                nproc_per_node,
                nnodes: args.nnodes,
                node_rank: args.node_rank,
                master_addr: args.master_addr.clone(),
                master_port: args.master_port,
            };
            return crate::launcher::launch(&plan, &crate::launcher::forwarded_args(&LAUNCHER_FLAGS));
        }
        #[cfg(not(unix))]
        anyhow::bail!(
            "--nproc-per-node {nproc_per_node}: daa's launcher needs a POSIX system; start the ranks with torchrun"
        );
    }
    let mut overrides = args.overrides.clone();
    let shorthands = [
        ("model.path", args.model.as_deref().map(quoted)),
        ("data.path", args.data.as_deref().map(quoted)),
        ("train.output_dir", args.out.as_deref().map(quoted)),
        ("model.backend", args.backend.map(|b| quoted(b.as_str()))),
        ("train.max_steps", args.max_steps.map(|n| n.to_string())),
        ("data.strict", args.strict.then(|| "true".to_string())),
    ];
    overrides.extend(shorthands.into_iter().filter_map(|(k, v)| v.map(|v| format!("{k}={v}"))));
    let config = TrainConfig::load(args.config.as_deref(), &overrides)?;
    let k = config.monitor.top_k;
    let mut progress = TrainProgress::new(k);
    // SIGTERM / SIGINT: finish the step, checkpoint, exit 128 + signal.
    daa_train::run::interrupt::install()?;
    let outcome = train(config, args.resume.clone(), &mut progress)?;
    progress.finish();
    // Of several ranks, rank 0 reports; the others wrote nothing to report.
    if outcome.rank > 0 {
        return Ok(());
    }
    let records = read_metrics(&outcome.run_dir.join("metrics.jsonl"))?;
    let title = format!(
        "daa train: {} (top-{k} statistics of held-out chosen completions; sampled figures on held-out prompts)",
        outcome.run_dir.display()
    );
    let svg = line_charts(&eval_series(&records), &title)?;
    daa_core::io::write_bytes_atomic(&outcome.run_dir.join("metrics.svg"), svg.as_bytes())?;
    print_summary(&outcome.summary, &outcome.run_dir);
    print_monitoring(&records);
    print_samples(&outcome.run_dir.join("samples.jsonl"));
    Ok(())
}
