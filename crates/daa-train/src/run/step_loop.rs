//! The optimizer steps of one invocation of a run: each step's pairs from
//! the [`BatchSchedule`], the step, its record, and after it whatever the
//! [`Cadence`] says is due — an evaluation (which may stop the run early)
//! and a checkpoint — and, when SIGTERM or SIGINT arrived during it, a
//! complete checkpoint and [`Interrupted`] ([`super::interrupt`]). A step
//! whose log-probability or gradient is not finite is not applied: the run
//! stops naming the step, the quantity and the pairs' data rows (or, with
//! `train.skip_nonfinite = N`, skips up to N such steps, each reported).

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::backend::AutodiffBackend;
use daa_core::TokenStatsParams;

use super::checkpoints::{checkpoint_dir, find_checkpoint, save_trainer};
use super::config::TrainConfig;
use super::evaluation::Evaluation;
use super::interrupt::{self, Interrupted};
use super::metrics::MetricsLog;
use super::observer::RunObserver;
use super::prepare::Prepared;
use super::summary::LoopTotals;
use crate::distributed::rank_slice;
use crate::error::ModelError;
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
    /// This rank and the number of ranks: each steps on its contiguous
    /// slice of every step's pairs.
    pub rank: (usize, usize),
}

/// Where the run can continue from: the latest complete checkpoint, if any.
fn last_checkpoint(run_dir: &Path) -> String {
    match find_checkpoint(run_dir) {
        Ok(dir) => format!("the last complete checkpoint is {} (--resume {})", dir.display(), run_dir.display()),
        Err(_) => "no checkpoint was saved before it".into(),
    }
}

/// The signal that asked the run to stop, if one did: on several ranks,
/// the first rank's that received one (all of them then checkpoint and stop
/// after the same step, whichever rank the signal reached).
fn agreed_interrupt<B: AutodiffBackend>(trainer: &mut Trainer<B>) -> Result<Option<i32>> {
    let mine = interrupt::requested();
    let Some(collective) = trainer.collective().filter(|c| c.world_size() > 1) else { return Ok(mine) };
    let mut signals = vec![0f64; collective.world_size()];
    signals[collective.rank()] = f64::from(mine.unwrap_or(0));
    collective.all_reduce_sum_f64(&mut signals).context("agreeing whether a rank was signalled to stop")?;
    let agreed = signals.iter().find(|s| **s > 0.0).map(|s| *s as i32);
    if agreed.is_some() {
        interrupt::mark_agreed();
    }
    Ok(agreed)
}

impl StepLoop<'_> {
    /// Names a non-finite step: its number, what was not finite, and the
    /// data rows of the pairs concerned (the pair whose log-probability was
    /// not finite, or every pair of the step for the gradient).
    /// `offset`: where this rank's slice starts in the step's pairs.
    fn non_finite(&mut self, step: u64, error: &ModelError, offset: usize) -> String {
        let indices = self.schedule.indices(step).to_vec();
        let row = |i: usize| self.prepared.train[i].row;
        let (what, rows): (String, Vec<usize>) = match error {
            ModelError::NonFiniteScore { pair, chosen, rejected } => (
                format!("the policy's log-probability is not finite (chosen {chosen}, rejected {rejected})"),
                indices.get(offset + *pair).map(|&i| row(i)).into_iter().collect(),
            ),
            other => (other.to_string(), indices.iter().map(|&i| row(i)).collect()),
        };
        format!("step {}: {what}; pairs at {}", step + 1, self.prepared.data_rows.describe_rows(&rows))
    }

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
        let mut skipped = 0u64;
        for step in start_step..self.cadence.last_step() {
            let pairs = self.schedule.step_pairs(step, &self.prepared.train, self.reference)?;
            let (rank, world) = self.rank;
            super::ranks::injected_exit("DAA_FAULT_EXIT_AT_STEP", rank, step + 1);
            let slice = rank_slice(pairs.len(), rank, world);
            let offset = slice.start;
            let pairs = &pairs[slice];
            let coefficients = evaluation.coefficients();
            let batch_stats = self.cadence.step_stats_due(step + 1).then_some(&self.stats);
            let record = match trainer.step_with_stats(pairs, batch_stats) {
                Ok(record) => Some(record),
                Err(e @ (ModelError::NonFiniteScore { .. } | ModelError::NonFiniteStep { .. })) => {
                    let what = self.non_finite(step, &e, offset);
                    if skipped >= self.config.train.skip_nonfinite {
                        bail!("{what}; {}", last_checkpoint(&run_dir));
                    }
                    skipped += 1;
                    trainer.skip_step();
                    observer.note(&format!(
                        "{what}: skipped ({skipped} of train.skip_nonfinite = {})",
                        self.config.train.skip_nonfinite
                    ));
                    None
                }
                Err(e) => return Err(e).with_context(|| format!("step {}", step + 1)),
            };
            let done = step + 1;
            let train_record = record.map(|record| {
                tokens += record.tokens;
                self.schedule.train_record(record, started.elapsed().as_secs_f64(), coefficients)
            });
            if let Some(r) = &train_record {
                metrics.write(&MetricsRecord::Train(*r))?;
            }
            let stop = self.cadence.eval_due(done) && evaluation.run(trainer, done, metrics, observer)?;
            if let Some(r) = &train_record {
                observer.stepped(r, evaluation.last_report());
            }
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
            if let Some(signal) = agreed_interrupt(trainer)? {
                let checkpoint = if self.cadence.checkpoint_due(done) {
                    checkpoint_dir(&run_dir, done)
                } else {
                    let position = (done, self.total_steps);
                    save_trainer(&run_dir, trainer, self.config, position, &self.prepared.model_dir)?
                };
                return Err(Interrupted { signal, step: done, run_dir, checkpoint }.into());
            }
        }
        if skipped > 0 {
            observer.note(&format!("{skipped} step(s) with a non-finite value were skipped (not applied)"));
        }
        Ok(LoopTotals {
            start_step,
            last_step: self.cadence.last_step(),
            elapsed_s: started.elapsed().as_secs_f64(),
            tokens,
        })
    }
}
