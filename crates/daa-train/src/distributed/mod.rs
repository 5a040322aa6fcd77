//! Training over several processes or devices (ranks): the collective
//! operations ranks exchange values through ([`Collective`]), an in-process
//! implementation over threads for tests ([`ThreadRank`]), data parallelism
//! through the trainer's reduction point ([`DataParallel`]), processes
//! started by `mpirun` (`MpiRank`, feature `mpi`), processes exchanging
//! over TCP (torchrun, srun, `daa train --nproc-per-node`; [`TcpRank`]), where a rank's
//! pairs come from in the global batch ([`rank_slice`]), and the rank a
//! launcher (torchrun, SLURM's srun, mpirun) gave this process
//! ([`LaunchEnv`]).
//!
//! Every collective sums in rank order, so every rank holds bit-identical
//! results, and two ranks summing their micro-batch gradients give exactly
//! what one rank accumulating the same two micro-batches gives.

mod collective;
mod data_parallel;
mod flat_layout;
mod launch_env;
#[cfg(feature = "mpi")]
mod mpi_rank;
#[cfg(all(feature = "cuda", unix))]
mod nccl_rank;
pub mod parameter_units;
mod step_gather;
#[cfg(not(target_arch = "wasm32"))]
mod tcp_rank;
#[cfg(not(target_arch = "wasm32"))]
mod tcp_rendezvous;
mod threads;
mod unit_slice;
#[cfg(any(feature = "mpi", all(feature = "cuda", unix)))]
mod watchdog;
mod zero;

pub use crate::plan::Sharding;
pub use collective::{Collective, CollectiveError, SignalCheck};
pub use data_parallel::{DataParallel, rank_slice};
pub use flat_layout::{FlatEntry, FlatLayout, Segment};
pub use launch_env::{LaunchEnv, Launcher};
#[cfg(feature = "mpi")]
pub use mpi_rank::MpiRank;
#[cfg(all(feature = "cuda", unix))]
pub use nccl_rank::NcclRank;
pub use step_gather::StepFigures;
#[cfg(not(target_arch = "wasm32"))]
pub use tcp_rank::TcpRank;
pub use threads::ThreadRank;
pub use zero::{Gathered, MomentSlice, ShardGroups, ZeroState, ZeroStep};
