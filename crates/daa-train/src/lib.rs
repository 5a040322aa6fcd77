//! daa's trainer: Direct Alignment Algorithms on burn, with over-optimisation
//! monitoring through daa-core's `token_stats`.
//!
//! Without features the library has the model ([`model`]: a decoder with a
//! key/value cache), the objective ([`objective`], [`score`]), the optimizer
//! ([`optim`]), one training step for every host ([`Trainer`]), held-out
//! evaluation ([`eval`]) and sampling with the key/value cache
//! ([`generate`]), and the parts of a run that `daa train` and the browser
//! demo share: the timetable of batches, evaluations and checkpoints
//! ([`schedule`]) and the reaction to the indicators ([`monitor`]). No
//! files, no threads: it builds for `wasm32-unknown-unknown`. Feature `io` adds checkpoints, tokenizers,
//! datasets, the reference cache and whole runs ([`run`]); `wgpu` and
//! `cuda` add burn's GPU backends ([`backend`]).

pub mod backend;
pub mod backward;
pub mod batch;
pub mod distributed;
pub mod entropy_floor;
pub mod error;
pub mod eval;
pub mod fused;
pub mod fused_head;
pub mod generate;
pub mod judge;
pub mod model;
pub mod monitor;
pub mod objective;
pub mod optim;
pub mod plan;
pub mod policy_kl;
pub mod precision;
pub mod records;
pub mod rng;
pub mod sample_eval;
pub mod schedule;
pub mod score;
pub mod testbed;
pub mod trainer;

pub use backend::ComputeBackend;
pub use error::ModelError;
pub use eval::EvalReport;
pub use precision::Precision;
pub use records::{EvalRecord, MetricsRecord, TrainRecord};
pub use trainer::{
    GradientReducer, NllStepRecord, ReferencePolicy, SingleRank, StepPair, StepRecord, Trainer, TrainerOptions,
};

#[cfg(feature = "io")]
pub mod checkpoint;
#[cfg(feature = "io")]
pub mod data;
#[cfg(feature = "io")]
pub mod hub;
#[cfg(feature = "io")]
pub mod peft;
#[cfg(feature = "io")]
pub mod reference_cache;
#[cfg(feature = "io")]
pub mod reward_model;
#[cfg(feature = "io")]
pub mod run;
#[cfg(feature = "io")]
pub mod shards;
#[cfg(feature = "io")]
pub mod tiny_run;
