//! The records of a run's `metrics.jsonl`, typed: what the trainer writes,
//! what charts, summaries and the browser's run viewer read. Field names
//! live on [`StepRecord`] and [`EvalReport`] alone.

use serde::{Deserialize, Serialize};

use daa_core::monitor::{Indicator, TurningPoint};

use crate::eval::EvalReport;
use crate::sample_eval::SampleReport;
use crate::trainer::StepRecord;

/// One line of `metrics.jsonl`, tagged by `"type"`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum MetricsRecord {
    /// After every optimizer step.
    Train(TrainRecord),
    /// After every held-out evaluation (step 0, every `eval_every`, the end).
    Eval(EvalRecord),
    /// Something the monitor decided: a turning point, an early stop.
    Event(EventRecord),
}

impl MetricsRecord {
    /// The optimizer step the record belongs to.
    pub fn step(&self) -> u64 {
        match self {
            MetricsRecord::Train(r) => r.step.step,
            MetricsRecord::Eval(r) => r.step,
            MetricsRecord::Event(r) => r.step,
        }
    }

    /// The evaluation, for eval records.
    pub fn eval(&self) -> Option<&EvalRecord> {
        match self {
            MetricsRecord::Eval(r) => Some(r),
            MetricsRecord::Train(_) | MetricsRecord::Event(_) => None,
        }
    }

    /// The event, for event records.
    pub fn event(&self) -> Option<&EventRecord> {
        match self {
            MetricsRecord::Event(r) => Some(r),
            MetricsRecord::Train(_) | MetricsRecord::Eval(_) => None,
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
    /// The NLL weight λ the step used, when the adaptive regulariser runs.
    #[serde(rename = "train/nll_weight", default, skip_serializing_if = "Option::is_none")]
    pub nll_weight: Option<f64>,
    /// β the step used, when the adaptive regulariser adapts it.
    #[serde(rename = "train/beta", default, skip_serializing_if = "Option::is_none")]
    pub beta: Option<f64>,
    /// The top-k entropy floor's multiplier μ the step used, when the floor is on.
    #[serde(rename = "train/entropy_floor_mu", default, skip_serializing_if = "Option::is_none")]
    pub floor_multiplier: Option<f64>,
}

/// A held-out evaluation after `step` optimizer steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Optimizer steps completed.
    pub step: u64,
    /// The teacher-forced figures.
    #[serde(flatten)]
    pub report: EvalReport,
    /// The figures of the policy's own samples, when the run has a judge.
    #[serde(flatten)]
    pub samples: Option<SampleReport>,
}

/// What the monitor decided at an evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Optimizer steps completed when it was decided.
    pub step: u64,
    /// What happened.
    #[serde(flatten)]
    pub event: MonitorEvent,
}

/// The monitor's decisions, tagged by `"event"`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event")]
pub enum MonitorEvent {
    /// An indicator's turning point was confirmed (daa-core's
    /// `TurningPointDetector`).
    #[serde(rename = "eval/turning_point")]
    TurningPoint {
        /// `topk_entropy` or `topk_mass`.
        indicator: Indicator,
        /// Step of the smoothed peak (the last healthy evaluation by this indicator).
        peak_step: u64,
        /// The smoothed peak.
        peak_value: f64,
        /// The smoothed value at confirmation.
        value: f64,
    },
    /// `monitor.early_stop` ended the run here.
    #[serde(rename = "train/early_stop")]
    EarlyStop {
        /// Step of the checkpoint kept in `best-indicator/`.
        best_indicator_step: Option<u64>,
    },
}

impl MonitorEvent {
    /// The event of a confirmed turning point.
    pub fn turning_point(t: &TurningPoint) -> Self {
        MonitorEvent::TurningPoint {
            indicator: t.indicator,
            peak_step: t.peak_step,
            peak_value: t.peak_value,
            value: t.value,
        }
    }
}
