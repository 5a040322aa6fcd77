//! One evaluation of a run and what follows from it: the teacher-forced
//! figures on the held-out pairs, the policy's own samples (with
//! `[monitor.samples]`), the record in `metrics.jsonl`, and the monitor's
//! reaction — events, the `best-indicator/` checkpoint, the objective from
//! the next step on, an early stop.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use daa_core::TokenStatsParams;
use daa_core::controllers::NllReason;
use daa_core::io::write_bytes_atomic;
use daa_core::preference::PreferenceLossParams;

use super::checkpoints::replace_dir;
use super::config::TrainConfig;
use super::metrics::{MetricsLog, read_metrics};
use super::observer::RunObserver;
use super::prepare::Prepared;
use super::samples::{SampleEvaluation, sample_evaluation};
use crate::batch::SequencePair;
use crate::checkpoint::save_model;
use crate::eval::EvalReport;
use crate::model::CausalLm;
use crate::monitor::{Coefficients, IndicatorMonitor, MonitorDecision};
use crate::records::{EvalRecord, EventRecord, MetricsRecord, MonitorEvent};
use crate::score::PairScore;
use crate::trainer::Trainer;

/// A run's evaluations (module documentation).
pub(crate) struct Evaluation<'a, B: AutodiffBackend> {
    pairs: Vec<&'a SequencePair>,
    reference: &'a [PairScore],
    stats: TokenStatsParams,
    batch: usize,
    prepared: &'a Prepared,
    best_indicator_dir: PathBuf,
    indicators: IndicatorMonitor,
    samples: Option<SampleEvaluation<B::InnerBackend>>,
    best_indicator_step: Option<u64>,
    last: Option<EvalReport>,
}

impl<'a, B: AutodiffBackend> Evaluation<'a, B> {
    /// The evaluations of the run `config` describes, on the prepared
    /// held-out pairs (`reference`: their reference scores), whose configured
    /// objective is `loss`; builds the indicators' monitor and, with
    /// `[monitor.samples]`, the sample evaluation (judged by the gold reward or
    /// the prepared reward model; the reference policy from
    /// `frozen_reference` when the run keeps one, else loaded; its samples
    /// drawn once).
    pub fn new(
        config: &TrainConfig,
        prepared: &'a Prepared,
        reference: &'a [PairScore],
        frozen_reference: Option<CausalLm<B::InnerBackend>>,
        loss: PreferenceLossParams,
        device: &B::Device,
        observer: &mut dyn RunObserver,
    ) -> Result<Self> {
        let mut indicators = IndicatorMonitor::new(
            config.monitor.turning.detector(),
            config.adaptive_config()?,
            loss,
            config.loss.nll_normalisation,
            config.monitor.early_stop,
        )?;
        if let Some(rule) = config.direction_aware_config()? {
            indicators = indicators.with_direction_aware(rule)?;
        }
        if let Some(floor) = &config.monitor.entropy_floor {
            indicators =
                indicators.with_entropy_floor(floor.controller(), config.monitor.top_k, config.monitor.entropy_base)?;
        }
        let samples = match config.samples() {
            None => None,
            Some(s) => Some(sample_evaluation(config, s, prepared, frozen_reference, device)?),
        };
        if let Some(samples) = &samples {
            let reward = samples.competitor_reward();
            observer.note(&format!("sample evaluation: the reference policy's samples score {reward:.4} on average"));
        }
        Ok(Self {
            pairs: prepared.eval.iter().map(|p| &p.pair).collect(),
            reference,
            stats: config.monitor.stats_params(),
            batch: config.monitor.eval_batch_size,
            prepared,
            best_indicator_dir: config.output_dir().join("best-indicator"),
            indicators,
            samples,
            best_indicator_step: None,
            last: None,
        })
    }

    /// A resumed run's monitor reads the evaluations already in `metrics`,
    /// and the trainer takes the objective they led to.
    pub fn catch_up(&mut self, metrics: &MetricsLog, trainer: &mut Trainer<B>) -> Result<()> {
        for record in read_metrics(metrics.path())?.iter().filter_map(MetricsRecord::eval) {
            let decision = self.indicators.observe(record.step, &record.report, record.samples.as_ref())?;
            Self::act(&decision, trainer)?;
        }
        Ok(())
    }

    /// The coefficients the next steps use.
    pub fn coefficients(&self) -> Coefficients {
        self.indicators.coefficients()
    }

    /// This invocation's latest teacher-forced figures.
    pub fn last_report(&self) -> Option<&EvalReport> {
        self.last.as_ref()
    }

    /// Evaluates after `step` steps, logs, acts; returns whether the run
    /// must stop.
    pub fn run(
        &mut self,
        trainer: &mut Trainer<B>,
        step: u64,
        metrics: &mut MetricsLog,
        observer: &mut dyn RunObserver,
    ) -> Result<bool> {
        let context = || format!("evaluation after step {step}");
        // Split over the ranks of a run of several (each scores its slice).
        let report =
            trainer.evaluate_on_ranks(&self.pairs, self.reference, &self.stats, self.batch).with_context(context)?;
        // The sample evaluation (generation, judging) split over the ranks,
        // each its slice of the prompts: every rank gets the same figures,
        // so every rank's monitor decides alike; rank 0 writes the samples.
        let first = trainer.collective().is_none_or(|c| c.rank() == 0);
        let sampled = match self.samples.as_mut() {
            Some(s) => {
                let policy = trainer.gathered_valid_model().with_context(context)?;
                Some(s.report(&policy, self.prepared, trainer.collective()).with_context(context)?)
            }
            None => None,
        };
        let samples = sampled.as_ref().map(|s| s.report);
        let record = EvalRecord { step, report, samples };
        metrics.write(&MetricsRecord::Eval(record))?;
        if let Some(sampled) = sampled.as_ref().filter(|_| first) {
            metrics.write_samples(step, &sampled.samples, &mut |line| observer.note(line))?;
        }
        observer.evaluated(&record);
        self.last = Some(report);
        let decision = self.indicators.observe(step, &record.report, record.samples.as_ref())?;
        for &event in &decision.events {
            metrics.write(&MetricsRecord::Event(EventRecord { step, event }))?;
            if let MonitorEvent::TurningPoint { indicator, peak_step, .. } = event {
                observer.note(&format!("step {step}: {} turned (smoothed peak at step {peak_step})", indicator.name()));
            }
        }
        if decision.keep_best {
            self.keep_best(trainer, step)?;
        }
        if let Some(reason) = decision.nll_reason.filter(|r| *r != NllReason::Hold) {
            let weight = decision.loss.and_then(|l| l.nll).map_or(0.0, |n| n.weight);
            observer.note(&format!("step {step}: NLL weight {weight:.3} ({})", reason.describe()));
        }
        Self::act(&decision, trainer)?;
        Ok(decision.stop)
    }

    /// The objective and the entropy floor from the next step on, as the
    /// regularisers decided.
    fn act(decision: &MonitorDecision, trainer: &mut Trainer<B>) -> Result<()> {
        if let Some(loss) = decision.loss {
            trainer.set_loss(loss)?;
        }
        if let Some(floor) = decision.entropy_floor {
            trainer.set_entropy_floor(Some(floor))?;
        }
        Ok(())
    }

    /// Saves the policy after `step` steps as `best-indicator/`.
    fn keep_best(&mut self, trainer: &mut Trainer<B>, step: u64) -> Result<()> {
        // Every rank takes part where the master weights are sharded; rank 0 writes.
        if let Some(policy) = trainer.master_model_on_first()? {
            let model_dir = &self.prepared.model_dir;
            replace_dir(&self.best_indicator_dir, |dir: &Path| -> Result<()> {
                save_model(&policy, dir, model_dir)?;
                write_bytes_atomic(&dir.join("step.json"), serde_json::json!({ "step": step }).to_string().as_bytes())?;
                Ok(())
            })?;
        }
        self.best_indicator_step = Some(step);
        Ok(())
    }

    /// Logs the early stop after `step` steps.
    pub fn log_early_stop(&self, step: u64, metrics: &mut MetricsLog, observer: &mut dyn RunObserver) -> Result<()> {
        let event = MonitorEvent::EarlyStop { best_indicator_step: self.best_indicator_step };
        metrics.write(&MetricsRecord::Event(EventRecord { step, event }))?;
        observer.note(&format!(
            "early stop at step {step}: an indicator turned; best-indicator/ holds step {}",
            self.best_indicator_step.map_or("none".to_string(), |s| s.to_string())
        ));
        Ok(())
    }
}
