//! `daa train`: the run's configuration, orchestration, metrics and
//! checkpoints (feature `io`). The optimizer step is [`crate::Trainer`]'s.

pub mod config;
mod memory_check;
pub mod metrics;
mod monitoring;
mod prepare;
pub mod process;
mod run;
pub mod state;

pub use config::{LossSection, ReferenceMode, TrainConfig};
pub use prepare::{Prepared, prepare, prepare_with};
pub use run::{RunObserver, RunOutcome, RunSummary, Silent, train};
