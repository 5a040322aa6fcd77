//! daa's trainer: Direct Alignment Algorithms on burn, with over-optimisation
//! monitoring through daa-core's `token_stats`.
//!
//! The model, the objective and the optimizer (modules [`model`],
//! [`objective`], [`optim`], [`batch`]) touch no files or threads and build for
//! `wasm32-unknown-unknown`; everything else needs the `cli` feature.

pub mod batch;
pub mod error;
pub mod model;
pub mod objective;
pub mod optim;
pub mod rng;

pub use error::ModelError;

#[cfg(feature = "cli")]
pub mod atomic_write;
#[cfg(feature = "cli")]
pub mod backends;
#[cfg(feature = "cli")]
pub mod checkpoint;
#[cfg(feature = "cli")]
pub mod data;
#[cfg(feature = "cli")]
pub mod scores;
#[cfg(feature = "cli")]
pub mod tiny;
#[cfg(feature = "cli")]
pub mod train;
