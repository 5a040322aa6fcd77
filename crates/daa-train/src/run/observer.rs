//! What a run reports as it goes, for people: `daa train` draws progress
//! bars from it, tests and libraries pass [`Silent`].

use crate::eval::EvalReport;
use crate::records::{EvalRecord, TrainRecord};

/// What a run reports as it goes. Every method has a do-nothing default;
/// `daa train` draws progress bars from them.
pub trait RunObserver {
    /// A line for people: the data read, where reference scores came from,
    /// the model and schedule.
    fn note(&mut self, _line: &str) {}
    /// Reference scoring: `done` of `total` pairs.
    fn scoring(&mut self, _done: usize, _total: usize) {}
    /// Training starts after `start` of `last` steps.
    fn training(&mut self, _start: u64, _last: u64) {}
    /// A step finished; `last_eval` is the latest evaluation.
    fn stepped(&mut self, _record: &TrainRecord, _last_eval: Option<&EvalReport>) {}
    /// An evaluation finished.
    fn evaluated(&mut self, _record: &EvalRecord) {}
}

/// Reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl RunObserver for Silent {}
