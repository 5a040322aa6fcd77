//! The operations ranks exchange values through.

use std::time::Duration;

/// Reports a signal the process received while its ranks have not agreed
/// to stop (`daa_train::run::interrupt::unanswered`): a rank signalled while
/// its peers do not answer stops waiting for them (MPI, NCCL).
pub type SignalCheck = fn() -> Option<i32>;

/// A collective that did not complete.
#[derive(Debug, thiserror::Error)]
pub enum CollectiveError {
    /// Not every rank arrived within the deadline.
    #[error(
        "{operation}: rank {rank} of {world} waited {waited:?} for rank(s) {missing:?}, which did not arrive \
         (train.collective_timeout)"
    )]
    Timeout {
        /// The operation (`all_reduce`, `barrier`, …).
        operation: &'static str,
        /// This rank.
        rank: usize,
        /// Ranks in the group.
        world: usize,
        /// How long this rank waited.
        waited: Duration,
        /// The ranks that had not arrived.
        missing: Vec<usize>,
    },
    /// Ranks called the same operation with different lengths.
    #[error("{operation}: rank {rank} has {len} values, rank {other_rank} has {other_len}")]
    LengthMismatch {
        /// The operation.
        operation: &'static str,
        /// A rank and its length.
        rank: usize,
        /// Its length.
        len: usize,
        /// Another rank and its length.
        other_rank: usize,
        /// Its length.
        other_len: usize,
    },
    /// A rank left the group (its process or thread ended).
    #[error("{operation}: rank {rank} left the group")]
    RankLeft {
        /// The operation.
        operation: &'static str,
        /// The rank that left.
        rank: usize,
    },
    /// The transport failed.
    #[error("{operation}: {message}")]
    Transport {
        /// The operation.
        operation: &'static str,
        /// What failed.
        message: String,
    },
}

impl CollectiveError {
    /// `Ok` when this rank's buffer holds `expected` values, else the
    /// length mismatch naming `operation` and the rank.
    pub(super) fn expect_len(operation: &'static str, rank: usize, len: usize, expected: usize) -> Result<(), Self> {
        if len == expected {
            return Ok(());
        }
        Err(CollectiveError::LengthMismatch { operation, rank, len, other_rank: rank, other_len: expected })
    }
}

/// What ranks exchange. Every implementation sums in rank order
/// (`((x₀ + x₁) + x₂) + …`), so every rank holds the same bits, and the sum
/// of two ranks' gradients equals one rank's accumulation of the same two
/// micro-batches.
pub trait Collective: Send + std::fmt::Debug {
    /// This rank, `0..world_size()`.
    fn rank(&self) -> usize;

    /// Ranks in the group.
    fn world_size(&self) -> usize;

    /// `values ← Σ_ranks values` (f32, summed in rank order).
    fn all_reduce_sum_f32(&mut self, values: &mut [f32]) -> Result<(), CollectiveError>;

    /// `values ← Σ_ranks values` (f64, summed in rank order).
    fn all_reduce_sum_f64(&mut self, values: &mut [f64]) -> Result<(), CollectiveError>;

    /// `output ← (Σ_ranks input)[rank·n .. (rank+1)·n]` with `n =
    /// output.len()` and `input.len() = n · world_size()`.
    fn reduce_scatter_sum_f32(&mut self, input: &[f32], output: &mut [f32]) -> Result<(), CollectiveError>;

    /// `output[r·n .. (r+1)·n] ← rank r's input` with `n = input.len()`.
    fn all_gather_f32(&mut self, input: &[f32], output: &mut [f32]) -> Result<(), CollectiveError>;

    /// Every rank's `bytes` become `root`'s.
    fn broadcast_bytes(&mut self, root: usize, bytes: &mut Vec<u8>) -> Result<(), CollectiveError>;

    /// Returns once every rank has called it.
    fn barrier(&mut self) -> Result<(), CollectiveError>;

    /// The ranks that give the same `color` as this one, as a group of
    /// their own (ranked in this group's order): every rank must call it.
    /// The group and this one may be used in turn, in the same order on
    /// every rank.
    fn split(&mut self, color: usize) -> Result<Box<dyn Collective>, CollectiveError>;
}

/// Every rank's color (what [`Collective::split`] groups by), exchanged.
pub(super) fn colors(collective: &mut dyn Collective, color: usize) -> Result<Vec<usize>, CollectiveError> {
    let mut all = vec![0f64; collective.world_size()];
    all[collective.rank()] = color as f64;
    collective.all_reduce_sum_f64(&mut all)?;
    Ok(all.into_iter().map(|c| c as usize).collect())
}

impl<C: Collective + ?Sized> Collective for Box<C> {
    fn rank(&self) -> usize {
        (**self).rank()
    }

    fn world_size(&self) -> usize {
        (**self).world_size()
    }

    fn all_reduce_sum_f32(&mut self, values: &mut [f32]) -> Result<(), CollectiveError> {
        (**self).all_reduce_sum_f32(values)
    }

    fn all_reduce_sum_f64(&mut self, values: &mut [f64]) -> Result<(), CollectiveError> {
        (**self).all_reduce_sum_f64(values)
    }

    fn reduce_scatter_sum_f32(&mut self, input: &[f32], output: &mut [f32]) -> Result<(), CollectiveError> {
        (**self).reduce_scatter_sum_f32(input, output)
    }

    fn all_gather_f32(&mut self, input: &[f32], output: &mut [f32]) -> Result<(), CollectiveError> {
        (**self).all_gather_f32(input, output)
    }

    fn broadcast_bytes(&mut self, root: usize, bytes: &mut Vec<u8>) -> Result<(), CollectiveError> {
        (**self).broadcast_bytes(root, bytes)
    }

    fn barrier(&mut self) -> Result<(), CollectiveError> {
        (**self).barrier()
    }

    fn split(&mut self, color: usize) -> Result<Box<dyn Collective>, CollectiveError> {
        (**self).split(color)
    }
}
