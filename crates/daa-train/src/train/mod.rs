//! `daa train`: the training run, its configuration, evaluation, metrics and
//! checkpoints.

pub mod chart;
pub mod config;
pub mod eval;
pub mod metrics;
mod prepare;
mod run;
pub mod state;

pub use config::TrainConfig;
pub use prepare::{Prepared, prepare};
pub use run::{RunOutcome, train};
