//! `daa train`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use daa_train::ComputeBackend;
use daa_train::EvalRecord;
use daa_train::eval::EvalReport;
use daa_train::records::{MetricsRecord, MonitorEvent};
use daa_train::run::metrics::read_metrics;
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
    /// Shorthand for --set model.path=DIR.
    #[arg(long)]
    model: Option<String>,
    /// Shorthand for --set data.path=FILE.
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
}

fn quoted(s: &str) -> String {
    format!("{:?}", s)
}

/// The evaluation series of a run's records, one per [`EvalReport::FIGURES`]
/// entry, then one per [`SampleReport::FIGURES`] entry when the run sampled.
pub fn eval_series(records: &[MetricsRecord]) -> Vec<Series> {
    let evals: Vec<&EvalRecord> = records.iter().filter_map(MetricsRecord::eval).collect();
    let teacher_forced = EvalReport::FIGURES.iter().map(|figure| Series {
        title: figure.title.to_string(),
        points: evals.iter().map(|r| (r.step as f64, (figure.value)(&r.report))).collect(),
    });
    let sampled = SampleReport::FIGURES.iter().map(|figure| Series {
        title: figure.title.to_string(),
        points: evals.iter().filter_map(|r| Some((r.step as f64, (figure.value)(r.samples.as_ref()?)))).collect(),
    });
    teacher_forced.chain(sampled).filter(|s| !s.points.is_empty()).collect()
}

/// Where the sampled figures peaked and what the monitor decided.
fn print_monitoring(records: &[MetricsRecord]) {
    let evals: Vec<(u64, SampleReport)> =
        records.iter().filter_map(MetricsRecord::eval).filter_map(|r| Some((r.step, r.samples?))).collect();
    if let (Some(first), Some(last)) = (evals.first(), evals.last()) {
        eprintln!("{:<30} {:>10} {:>10} {:>10}", "samples (held-out prompts)", "first", "last", "peak");
        for figure in SampleReport::FIGURES {
            let peak = evals.iter().map(|(_, r)| (figure.value)(r)).fold(f64::NEG_INFINITY, f64::max);
            let peak = if figure.peak { format!("{peak:.4}") } else { "—".to_string() };
            eprintln!(
                "{:<30} {:>10.4} {:>10.4} {:>10}",
                figure.title,
                (figure.value)(&first.1),
                (figure.value)(&last.1),
                peak
            );
        }
        if let (Some(first_se), Some(last_se)) = (first.1.kl_se, last.1.kl_se) {
            eprintln!("{:<30} {:>10.4} {:>10.4} {:>10}", "  standard error of KL", first_se, last_se, "—");
        }
        let (step, peak) =
            evals.iter().fold((0, f64::NEG_INFINITY), |b, (s, r)| if r.win_prob > b.1 { (*s, r.win_prob) } else { b });
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

fn print_summary(summary: &RunSummary, run_dir: &std::path::Path) {
    eprintln!(
        "done: {} steps in {:.1} s ({:.2} steps/s, {:.0} tokens/s, peak memory {} MiB)",
        summary.steps_this_run,
        summary.elapsed_s,
        summary.steps_per_s,
        summary.tokens_per_s,
        summary.peak_memory_mib.map_or("?".into(), |m| format!("{m:.0}"))
    );
    eprintln!("{:<28} {:>10} {:>10}", "held-out", "first", "last");
    for figure in EvalReport::FIGURES {
        let value = |r: &Option<daa_train::EvalRecord>| {
            r.as_ref().map_or("-".to_string(), |r| format!("{:.4}", (figure.value)(&r.report)))
        };
        eprintln!("{:<28} {:>10} {:>10}", figure.title, value(&summary.first_eval), value(&summary.last_eval));
    }
    eprintln!("metrics: {0}/metrics.jsonl, chart: {0}/metrics.svg, checkpoints: {0}/checkpoint-*", run_dir.display());
}

/// Runs `daa train`.
pub fn run(args: &TrainArgs) -> Result<()> {
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
    let outcome = train(config, args.resume.clone(), &mut progress)?;
    progress.finish();
    let records = read_metrics(&outcome.run_dir.join("metrics.jsonl"))?;
    let title = format!(
        "daa train: {} (top-{k} statistics of held-out chosen completions; sampled figures on held-out prompts)",
        outcome.run_dir.display()
    );
    let svg = line_charts(&eval_series(&records), &title)?;
    daa_core::io::write_bytes_atomic(&outcome.run_dir.join("metrics.svg"), svg.as_bytes())?;
    print_summary(&outcome.summary, &outcome.run_dir);
    print_monitoring(&records);
    Ok(())
}
