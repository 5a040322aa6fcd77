//! The records of a run's `metrics.jsonl`, typed: what the trainer writes,
//! what charts, summaries and the browser's run viewer read. Field names
//! live on [`StepRecord`] and [`EvalReport`] alone.

use serde::{Deserialize, Serialize};

use crate::eval::EvalReport;
use crate::trainer::StepRecord;

/// One line of `metrics.jsonl`, tagged by `"type"`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum MetricsRecord {
    /// After every optimizer step.
    Train(TrainRecord),
    /// After every held-out evaluation (step 0, every `eval_every`, the end).
    Eval(EvalRecord),
}

impl MetricsRecord {
    /// The optimizer step the record belongs to.
    pub fn step(&self) -> u64 {
        match self {
            MetricsRecord::Train(r) => r.step.step,
            MetricsRecord::Eval(r) => r.step,
        }
    }

    /// The evaluation, for eval records.
    pub fn eval(&self) -> Option<&EvalRecord> {
        match self {
            MetricsRecord::Eval(r) => Some(r),
            MetricsRecord::Train(_) => None,
        }
    }
}

/// A training step as logged: the trainer's [`StepRecord`] plus where the run is.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainRecord {
    /// What the step did.
    #[serde(flatten)]
    pub step: StepRecord,
    /// Epochs completed (fractional).
    pub epoch: f64,
    /// Seconds since the run (or its resumption) started.
    pub elapsed_s: f64,
}

/// A held-out evaluation after `step` optimizer steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Optimizer steps completed.
    pub step: u64,
    /// The figures.
    #[serde(flatten)]
    pub report: EvalReport,
}
