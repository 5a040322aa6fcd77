//! The optimizer steps of one invocation of a run: each step's pairs from
//! the [`BatchSchedule`], the step, its record, and after it whatever the
//! [`Cadence`] says is due — an evaluation (which may stop the run early)
//! and a checkpoint — and, when SIGTERM or SIGINT arrived during it, a
//! complete checkpoint and [`Interrupted`] ([`super::interrupt`]).

use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::backend::AutodiffBackend;
use daa_core::TokenStatsParams;

use super::checkpoints::{checkpoint_dir, save_trainer};
use super::config::TrainConfig;
use super::evaluation::Evaluation;
use super::interrupt::{self, Interrupted};
use super::metrics::MetricsLog;
use super::observer::RunObserver;
use super::prepare::Prepared;
use super::summary::LoopTotals;
use crate::records::MetricsRecord;
use crate::schedule::{BatchSchedule, Cadence};
use crate::score::PairScore;
use crate::trainer::Trainer;

/// What the loop steps through (module documentation).
pub(crate) struct StepLoop<'a> {
    /// The run's configuration (saved with every checkpoint).
    pub config: &'a TrainConfig,
    /// The training pairs and the initial checkpoint's folder.
    pub prepared: &'a Prepared,
    /// One reference score per training pair, when cached.
    pub reference: Option<&'a [PairScore]>,
    /// Which pairs each step takes.
    pub schedule: BatchSchedule,
    /// When to evaluate, save and collect step statistics; where to end.
    pub cadence: Cadence,
    /// Steps of the whole schedule.
    pub total_steps: u64,
    /// The top-k statistics' settings.
    pub stats: TokenStatsParams,
}

impl StepLoop<'_> {
    /// Runs the steps after `start_step` to the cadence's last step (or an
    /// early stop), evaluating first when the run starts from step 0.
    pub fn run<B: AutodiffBackend>(
        mut self,
        start_step: u64,
        trainer: &mut Trainer<B>,
        evaluation: &mut Evaluation<'_, B>,
        metrics: &mut MetricsLog,
        observer: &mut dyn RunObserver,
    ) -> Result<LoopTotals> {
        if start_step == 0 && evaluation.run(trainer, 0, metrics, observer)? {
            bail!("monitor.early_stop: a turning point before the first step (patience must be at least 1)");
        }
        observer.training(start_step, self.cadence.last_step());
        let started = Instant::now();
        let mut tokens = 0usize;
        let run_dir = self.config.output_dir();
        for step in start_step..self.cadence.last_step() {
            let pairs = self.schedule.step_pairs(step, &self.prepared.train, self.reference)?;
            let coefficients = evaluation.coefficients();
            let batch_stats = self.cadence.step_stats_due(step + 1).then_some(&self.stats);
            let record = trainer.step_with_stats(&pairs, batch_stats).with_context(|| format!("step {}", step + 1))?;
            tokens += record.tokens;
            let done = record.step;
            let train_record = self.schedule.train_record(record, started.elapsed().as_secs_f64(), coefficients);
            metrics.write(&MetricsRecord::Train(train_record))?;
            let stop = self.cadence.eval_due(done) && evaluation.run(trainer, done, metrics, observer)?;
            observer.stepped(&train_record, evaluation.last_report());
            if stop {
                evaluation.log_early_stop(done, metrics, observer)?;
                self.cadence.stop_after(done);
            }
            if self.cadence.checkpoint_due(done) {
                let position = (done, self.total_steps);
                save_trainer(&run_dir, trainer, self.config, position, &self.prepared.model_dir)?;
            }
            if stop {
                break;
            }
            if let Some(signal) = interrupt::requested() {
                let checkpoint = if self.cadence.checkpoint_due(done) {
                    checkpoint_dir(&run_dir, done)
                } else {
                    let position = (done, self.total_steps);
                    save_trainer(&run_dir, trainer, self.config, position, &self.prepared.model_dir)?
                };
                return Err(Interrupted { signal, step: done, run_dir, checkpoint }.into());
            }
        }
        Ok(LoopTotals {
            start_step,
            last_step: self.cadence.last_step(),
            elapsed_s: started.elapsed().as_secs_f64(),
            tokens,
        })
    }
}
