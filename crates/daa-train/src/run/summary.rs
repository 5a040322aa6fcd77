//! What a finished run leaves: `summary.json` (throughput and the first and
//! last evaluations) and the [`RunOutcome`] its caller gets.

use std::path::{Path, PathBuf};

use anyhow::Result;
use daa_core::io::write_bytes_atomic;
use serde::{Deserialize, Serialize};

use super::metrics::read_metrics;
use super::process::memory_mib;
use crate::backend::ComputeBackend;
use crate::records::EvalRecord;

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
    /// This process's rank (0 for one process): only rank 0 wrote the run's
    /// files and reports them.
    pub rank: usize,
}

/// What this invocation's training loop did, for the summary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct LoopTotals {
    /// The step the invocation started after.
    pub start_step: u64,
    /// The step it ended after (earlier than planned on an early stop).
    pub last_step: u64,
    /// Seconds of the loop.
    pub elapsed_s: f64,
    /// Policy tokens trained on.
    pub tokens: usize,
}

impl RunSummary {
    /// Writes `summary.json` of the run in `run_dir` from this invocation's
    /// totals and the whole run's `metrics.jsonl` (`metrics`).
    pub(crate) fn write(
        run_dir: &Path,
        metrics: &Path,
        totals: LoopTotals,
        total_steps: u64,
        backend: ComputeBackend,
    ) -> Result<Self> {
        let summary = Self::of(metrics, totals, total_steps, backend)?;
        write_bytes_atomic(&run_dir.join("summary.json"), serde_json::to_string_pretty(&summary)?.as_bytes())?;
        Ok(summary)
    }

    /// The summary [`Self::write`] writes, not written (ranks other than 0).
    pub(crate) fn of(metrics: &Path, totals: LoopTotals, total_steps: u64, backend: ComputeBackend) -> Result<Self> {
        let evals: Vec<EvalRecord> = read_metrics(metrics)?.iter().filter_map(|r| r.eval().copied()).collect();
        let steps_run = totals.last_step.saturating_sub(totals.start_step);
        let elapsed = totals.elapsed_s.max(1e-9);
        let summary = RunSummary {
            steps: totals.last_step,
            steps_this_run: steps_run,
            total_steps,
            elapsed_s: totals.elapsed_s,
            steps_per_s: steps_run as f64 / elapsed,
            tokens_per_s: totals.tokens as f64 / elapsed,
            peak_memory_mib: memory_mib("VmHWM"),
            backend,
            first_eval: evals.first().copied(),
            last_eval: evals.last().copied(),
        };
        Ok(summary)
    }
}
