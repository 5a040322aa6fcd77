//! Ranks as processes started by `mpirun` (Open MPI; feature `mpi`): the
//! CPU's multi-process collective, what the distributed tests run through
//! with real processes.
//!
//! Every blocking call has a deadline: a watchdog thread ends the process,
//! naming the operation and how long it waited, when a collective has not
//! returned in time (MPI cannot cancel one); `mpirun` then ends the other
//! ranks and names the one that exited. Sums are MPI's `MPI_SUM`: its order
//! is the library's (exact for two ranks; with more, within f32 rounding of
//! the rank-ordered sum), and every rank gets the same bits.

use std::time::Duration;

use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives, Root};

use super::collective::{Collective, CollectiveError, SignalCheck};
use super::watchdog::Watchdog;

/// This process's rank in `MPI_COMM_WORLD`.
pub struct MpiRank {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    watchdog: Watchdog,
    /// MPI is finalised when the last rank object of the process goes:
    /// the last field, so the communicator is freed before (fields drop in
    /// order).
    _universe: std::sync::Arc<Universe>,
}

impl std::fmt::Debug for MpiRank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MpiRank {{ rank: {}, world: {} }}", self.rank, self.size)
    }
}

// SAFETY: MPI is initialised with `Threading::Serialized` (checked in
// `init`): any one thread at a time may call it, and `&mut self` on every
// collective serialises the calls; the watchdog thread never calls MPI.
unsafe impl Send for MpiRank {}

impl MpiRank {
    /// Initialises MPI (once per process) and starts the watchdog with
    /// deadline `timeout` per collective.
    pub fn init(timeout: Duration) -> Result<Self, CollectiveError> {
        let transport = |message: String| CollectiveError::Transport { operation: "MPI_Init", message };
        let (universe, threading) = mpi::initialize_with_threading(mpi::Threading::Serialized)
            .ok_or_else(|| transport("MPI was initialised already in this process".into()))?;
        if !matches!(threading, mpi::Threading::Serialized | mpi::Threading::Multiple) {
            return Err(transport(format!("this MPI offers {threading:?} threading; daa needs Serialized")));
        }
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        let watchdog = Watchdog::start("MPI", rank, size, timeout)
            .map_err(|e| transport(format!("cannot start the watchdog thread: {e}")))?;
        Ok(Self { _universe: std::sync::Arc::new(universe), world, rank, size, watchdog })
    }

    /// Ends the process (status `128 + signal`) when `check` reports a
    /// signal while a collective has waited 5 s: the process was asked to
    /// stop and its peers are not answering.
    pub fn end_on_signal(self, check: SignalCheck) -> Self {
        self.watchdog.end_on_signal(check);
        self
    }

    /// Runs `f` with the watchdog watching `operation`.
    fn watched<T>(&mut self, operation: &'static str, f: impl FnOnce(&SimpleCommunicator) -> T) -> T {
        let world = &self.world;
        self.watchdog.watched(operation, || f(world))
    }
}

impl Collective for MpiRank {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.size
    }

    fn all_reduce_sum_f32(&mut self, values: &mut [f32]) -> Result<(), CollectiveError> {
        let mut sums = vec![0f32; values.len()];
        self.watched("all_reduce", |w| w.all_reduce_into(&values[..], &mut sums[..], SystemOperation::sum()));
        values.copy_from_slice(&sums);
        Ok(())
    }

    fn all_reduce_sum_f64(&mut self, values: &mut [f64]) -> Result<(), CollectiveError> {
        let mut sums = vec![0f64; values.len()];
        self.watched("all_reduce", |w| w.all_reduce_into(&values[..], &mut sums[..], SystemOperation::sum()));
        values.copy_from_slice(&sums);
        Ok(())
    }

    fn reduce_scatter_sum_f32(&mut self, input: &[f32], output: &mut [f32]) -> Result<(), CollectiveError> {
        CollectiveError::expect_len("reduce_scatter", self.rank, input.len(), output.len() * self.size)?;
        self.watched("reduce_scatter", |w| w.reduce_scatter_block_into(input, output, SystemOperation::sum()));
        Ok(())
    }

    fn all_gather_f32(&mut self, input: &[f32], output: &mut [f32]) -> Result<(), CollectiveError> {
        CollectiveError::expect_len("all_gather", self.rank, output.len(), input.len() * self.size)?;
        self.watched("all_gather", |w| w.all_gather_into(input, output));
        Ok(())
    }

    fn broadcast_bytes(&mut self, root: usize, bytes: &mut Vec<u8>) -> Result<(), CollectiveError> {
        let root = i32::try_from(root).map_err(|_| CollectiveError::Transport {
            operation: "broadcast",
            message: format!("root {root} is not a rank"),
        })?;
        let mut len = bytes.len() as u64;
        self.watched("broadcast", |w| w.process_at_rank(root).broadcast_into(&mut len));
        bytes.resize(len as usize, 0);
        self.watched("broadcast", |w| w.process_at_rank(root).broadcast_into(&mut bytes[..]));
        Ok(())
    }

    fn barrier(&mut self) -> Result<(), CollectiveError> {
        self.watched("barrier", |w| w.barrier());
        Ok(())
    }

    fn split(&mut self, color: usize) -> Result<Box<dyn Collective>, CollectiveError> {
        let transport = |message: String| CollectiveError::Transport { operation: "split", message };
        let value = i32::try_from(color).map_err(|_| transport(format!("color {color} is too large")))?;
        let group = self
            .watched("split", |w| w.split_by_color(mpi::topology::Color::with_value(value)))
            .ok_or_else(|| transport("MPI_Comm_split gave this rank no group".into()))?;
        let (rank, size) = (group.rank() as usize, group.size() as usize);
        let timeout = self.watchdog.timeout();
        let watchdog = Watchdog::start("MPI", rank, size, timeout)
            .map_err(|e| transport(format!("cannot start the watchdog thread: {e}")))?;
        watchdog.inherit_signal_check(&self.watchdog);
        Ok(Box::new(MpiRank { _universe: self._universe.clone(), world: group, rank, size, watchdog }))
    }
}
