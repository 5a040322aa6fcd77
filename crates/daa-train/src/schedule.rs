//! A run's timetable, without files: which pairs each optimizer step trains
//! on, and after which steps the run evaluates, saves and collects its
//! step's own statistics. `daa train` and the browser demo's `Session` both
//! follow it, so the same seed gives the same batches in either.
//!
//! Epoch `e` visits the pairs in the order of a seeded permutation
//! `permutation(n, seed, e)`; step `s` (0-based: `s` steps are done) takes
//! `batch_size` consecutive entries of its epoch's order from offset
//! `(s mod S)·batch_size`, where `S = ⌈n / batch_size⌉` steps make an epoch
//! (the epoch's last batch can be short). With `d` steps done the run has
//! completed `d / S` epochs.

use crate::batch::SequencePair;
use crate::error::ModelError;
use crate::monitor::Coefficients;
use crate::records::TrainRecord;
use crate::rng::permutation;
use crate::score::PairScore;
use crate::trainer::{StepPair, StepRecord};

/// Which pairs each step trains on (module documentation).
#[derive(Debug, Clone)]
pub struct BatchSchedule {
    pairs: usize,
    batch_size: usize,
    seed: u64,
    /// The permutation of the epoch last asked for.
    order: Option<(u64, Vec<usize>)>,
}

impl BatchSchedule {
    /// The schedule of `pairs` training pairs, `batch_size` per step, in the
    /// order of `seed`. Errors when either count is 0.
    pub fn new(pairs: usize, batch_size: usize, seed: u64) -> Result<Self, ModelError> {
        if pairs == 0 || batch_size == 0 {
            return Err(ModelError::Batch(format!(
                "a schedule needs at least one training pair and one pair per step (found {pairs} pairs, \
                 {batch_size} per step)"
            )));
        }
        Ok(Self { pairs, batch_size, seed, order: None })
    }

    /// `S = ⌈n / batch_size⌉`: optimizer steps per epoch.
    pub fn steps_per_epoch(&self) -> u64 {
        self.pairs.div_ceil(self.batch_size) as u64
    }

    /// Epochs completed after `done` steps (fractional).
    pub fn epochs_done(&self, done: u64) -> f64 {
        done as f64 / self.steps_per_epoch() as f64
    }

    /// Indices (into the training pairs) of the step after `done` steps.
    pub fn indices(&mut self, done: u64) -> &[usize] {
        let per_epoch = self.steps_per_epoch();
        let epoch = done / per_epoch;
        if self.order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            self.order = Some((epoch, permutation(self.pairs, self.seed, epoch)));
        }
        let order = self.order.as_ref().map(|(_, o)| o.as_slice()).unwrap_or_default();
        let offset = ((done % per_epoch) as usize) * self.batch_size;
        &order[offset..(offset + self.batch_size).min(order.len())]
    }

    /// The step after `done` steps as the trainer takes it: the pairs at
    /// [`Self::indices`], each with its reference scores when `reference`
    /// holds one per pair (else the trainer's frozen reference scores them).
    /// Errors when `pairs` or `reference` does not hold one entry per
    /// training pair.
    pub fn step_pairs<'a, P: AsRef<SequencePair>>(
        &mut self,
        done: u64,
        pairs: &'a [P],
        reference: Option<&[PairScore]>,
    ) -> Result<Vec<StepPair<'a>>, ModelError> {
        let expected = self.pairs;
        let count = |what: &str, found: usize| {
            ModelError::Batch(format!("the schedule has {expected} training pairs, but {found} {what} were given"))
        };
        if pairs.len() != expected {
            return Err(count("pairs", pairs.len()));
        }
        if let Some(scores) = reference.filter(|s| s.len() != expected) {
            return Err(count("reference scores", scores.len()));
        }
        Ok(self
            .indices(done)
            .iter()
            .map(|&i| StepPair { sequences: pairs[i].as_ref(), reference: reference.map(|scores| scores[i]) })
            .collect())
    }

    /// The `metrics.jsonl` record of a finished step: the trainer's record,
    /// the epochs done, the seconds since the run (or its resumption)
    /// started and the coefficients the step used.
    pub fn train_record(&self, step: StepRecord, elapsed_s: f64, coefficients: Coefficients) -> TrainRecord {
        TrainRecord {
            epoch: self.epochs_done(step.step),
            step,
            elapsed_s,
            nll_weight: coefficients.nll_weight,
            beta: coefficients.beta,
            floor_multiplier: coefficients.floor_multiplier,
        }
    }
}

/// After which steps a run evaluates, saves a checkpoint and records its
/// step's own statistics, and where it ends.
///
/// With `d` steps done: evaluate when `d mod eval_every = 0` (so before the
/// first step too) or `d` is the last step; save when `checkpoint_every > 0`
/// and `d mod checkpoint_every = 0`, or `d` is the last step; step statistics
/// when `stats_every > 0` and `d mod stats_every = 0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
    eval_every: u64,
    checkpoint_every: u64,
    stats_every: u64,
    last_step: u64,
}

impl Cadence {
    /// A cadence ending after `last_step` steps; `checkpoint_every` and
    /// `stats_every` 0 turn those off. Errors when `eval_every` is 0.
    pub fn new(eval_every: u64, checkpoint_every: u64, stats_every: u64, last_step: u64) -> Result<Self, ModelError> {
        if eval_every == 0 {
            return Err(ModelError::Batch("evaluations every 0 steps: the interval must be at least 1".into()));
        }
        Ok(Self { eval_every, checkpoint_every, stats_every, last_step })
    }

    /// The step the run ends after.
    pub fn last_step(&self) -> u64 {
        self.last_step
    }

    /// Ends the run after `done` steps (early stopping).
    pub fn stop_after(&mut self, done: u64) {
        self.last_step = done;
    }

    /// Whether `done` is the last step (or past it).
    pub fn is_last(&self, done: u64) -> bool {
        done >= self.last_step
    }

    /// Whether the run evaluates after `done` steps.
    pub fn eval_due(&self, done: u64) -> bool {
        done.is_multiple_of(self.eval_every) || self.is_last(done)
    }

    /// Whether the run saves a checkpoint after `done` steps.
    pub fn checkpoint_due(&self, done: u64) -> bool {
        (self.checkpoint_every > 0 && done.is_multiple_of(self.checkpoint_every)) || self.is_last(done)
    }

    /// Whether the step that ends with `done` steps done records its own
    /// batch's top-k statistics.
    pub fn step_stats_due(&self, done: u64) -> bool {
        self.stats_every > 0 && done.is_multiple_of(self.stats_every)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::permutation;

    #[test]
    fn steps_walk_each_epochs_permutation_in_batches() {
        // 10 pairs, 4 per step: S = 3 steps per epoch, the third takes 2 pairs.
        let mut schedule = BatchSchedule::new(10, 4, 7).unwrap();
        assert_eq!(schedule.steps_per_epoch(), 3);
        for epoch in 0..3u64 {
            let order = permutation(10, 7, epoch);
            let mut seen = Vec::new();
            for s in 0..3 {
                seen.extend_from_slice(schedule.indices(epoch * 3 + s));
            }
            assert_eq!(seen, order, "epoch {epoch}");
        }
        assert_eq!(schedule.indices(2).len(), 2);
        // Asking for an earlier epoch again gives its order again.
        assert_eq!(schedule.indices(0), &permutation(10, 7, 0)[..4]);
        assert_eq!(schedule.epochs_done(4), 4.0 / 3.0);
    }

    #[test]
    fn empty_schedules_and_miscounted_inputs_are_errors() {
        assert!(BatchSchedule::new(0, 4, 1).is_err());
        assert!(BatchSchedule::new(4, 0, 1).is_err());
        let mut schedule = BatchSchedule::new(3, 2, 1).unwrap();
        let pairs: Vec<SequencePair> = Vec::new();
        let err = schedule.step_pairs(0, &pairs, None).unwrap_err().to_string();
        assert!(err.contains("3 training pairs") && err.contains("0 pairs"), "{err}");
        assert!(Cadence::new(0, 0, 0, 5).is_err());
    }

    #[test]
    fn the_cadence_evaluates_first_every_interval_and_last() {
        let mut cadence = Cadence::new(4, 6, 3, 10).unwrap();
        let evals: Vec<u64> = (0..=10).filter(|&d| cadence.eval_due(d)).collect();
        assert_eq!(evals, [0, 4, 8, 10]);
        let saves: Vec<u64> = (1..=10).filter(|&d| cadence.checkpoint_due(d)).collect();
        assert_eq!(saves, [6, 10]);
        let stats: Vec<u64> = (1..=10).filter(|&d| cadence.step_stats_due(d)).collect();
        assert_eq!(stats, [3, 6, 9]);
        cadence.stop_after(5);
        assert!(cadence.eval_due(5) && cadence.checkpoint_due(5) && cadence.is_last(5));
        let never = Cadence::new(4, 0, 0, 10).unwrap();
        assert!(!(1..10).any(|d| never.checkpoint_due(d) || never.step_stats_due(d)));
    }
}
