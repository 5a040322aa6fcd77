//! Ranks on NVIDIA GPUs exchanging through NCCL (feature `cuda`): NVLink
//! inside a node, InfiniBand or sockets between nodes, as PyTorch's DDP and
//! FSDP do. The ranks first meet through a host collective (TCP or MPI),
//! over which rank 0 sends NCCL's unique id; every rank then joins the
//! communicator on its GPU (`model.device` + local rank: NCCL refuses one
//! GPU twice in a communicator).
//!
//! The [`Collective`] trait takes host slices (the trainer reads gradients
//! back in 64 MiB groups), so each operation copies its values to a device
//! buffer, runs the NCCL collective on a stream of its own and copies the
//! result back: the values cross PCIe twice, the exchange itself runs at
//! NVLink's bandwidth. Sums are NCCL's (ring or tree order: exact for two
//! ranks; with more, within f32 rounding of the rank-ordered sum), the same
//! bits on every rank. Byte broadcasts and barriers go through the host
//! collective. NCCL cannot cancel a collective: a watchdog thread ends the
//! process at `train.collective_timeout`, naming the operation, and the
//! launcher ends the other ranks.
//!
//! Not yet: collectives on the gradients where they live (burn-CUDA
//! buffers, no host copies), bf16 exchange, and overlap with the backward
//! pass. Compile-checked here; `scripts/gpu-check.sh` runs it on a GPU.

use std::sync::Arc;
use std::time::Duration;

use cudarc::driver::{CudaContext, CudaStream, DeviceRepr, ValidAsZeroBits};
use cudarc::nccl::{Comm, Id, NcclType, ReduceOp};

use super::collective::{Collective, CollectiveError, SignalCheck};
use super::watchdog::Watchdog;

/// Bytes of NCCL's unique id.
const ID_BYTES: usize = 128;

/// This process's rank in an NCCL communicator, on one GPU.
pub struct NcclRank {
    comm: Comm,
    stream: Arc<CudaStream>,
    host: Box<dyn Collective>,
    watchdog: Watchdog,
    device: usize,
}

impl std::fmt::Debug for NcclRank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NcclRank {{ rank: {}, world: {} }}", self.comm.rank(), self.comm.world_size())
    }
}

// SAFETY: an NCCL communicator may be used from any thread as long as no two
// threads use it at once; every use goes through `&mut self` (or `&self`
// within one such call), and the watchdog thread never touches it.
unsafe impl Send for NcclRank {}

fn transport(operation: &'static str, message: impl std::fmt::Display) -> CollectiveError {
    CollectiveError::Transport { operation, message: message.to_string() }
}

impl NcclRank {
    /// Joins the NCCL communicator of the ranks of `host` on GPU `device`:
    /// rank 0 makes the unique id and sends it through `host`. Fails with
    /// a message naming what is missing when NCCL does not load.
    pub fn connect(mut host: Box<dyn Collective>, device: usize, timeout: Duration) -> Result<Self, CollectiveError> {
        const OP: &str = "ncclCommInitRank";
        let (rank, world) = (host.rank(), host.world_size());
        if daa_core::cuda::libraries::CudaLibrary::Nccl.loadable_as().is_none() {
            return Err(transport(
                OP,
                format!(
                    "NCCL does not load (libnccl.so, or libnccl.so.2 from the nvidia-nccl-cu12/cu13 wheel or a CUDA \
                     install, which daa links under that name): {}; or set train.collective = \"host\"",
                    daa_core::cuda::libraries::report().replace('\n', "; ")
                ),
            ));
        }
        let context = CudaContext::new(device).map_err(|e| transport(OP, format!("GPU {device}: {e:?}")))?;
        let stream = context.new_stream().map_err(|e| transport(OP, format!("GPU {device}: a stream: {e:?}")))?;
        // Rank 0 makes the id; an empty message tells the others it failed.
        let mut id_bytes = match rank {
            0 => Id::new().map(|id| id.internal().iter().map(|&c| c as u8).collect()).unwrap_or_default(),
            _ => Vec::new(),
        };
        host.broadcast_bytes(0, &mut id_bytes)?;
        let internal: [std::ffi::c_char; ID_BYTES] = id_bytes
            .iter()
            .map(|&b| b as std::ffi::c_char)
            .collect::<Vec<_>>()
            .try_into()
            .map_err(|_| transport(OP, "rank 0 could not make NCCL's unique id (ncclGetUniqueId failed there)"))?;
        let watchdog =
            Watchdog::start("NCCL", rank, world, timeout).map_err(|e| transport(OP, format!("the watchdog: {e}")))?;
        let comm = watchdog
            .watched(OP, || Comm::from_rank(stream.clone(), rank, world, Id::uninit(internal)))
            .map_err(|e| transport(OP, format!("rank {rank} of {world} on GPU {device}: {e:?}")))?;
        Ok(Self { comm, stream, host, watchdog, device })
    }

    /// Ends the process (status `128 + signal`) when `check` reports a
    /// signal while a collective has waited 5 s.
    pub fn end_on_signal(self, check: SignalCheck) -> Self {
        self.watchdog.end_on_signal(check);
        self
    }

    /// Copies `input` to the GPU, runs `exchange` on it and a device buffer
    /// of `output.len()` values, and copies that buffer back into `output`.
    fn staged<T: DeviceRepr + ValidAsZeroBits + NcclType>(
        &mut self,
        operation: &'static str,
        input: &[T],
        output: &mut [T],
        exchange: impl FnOnce(&Comm, &cudarc::driver::CudaSlice<T>, &mut cudarc::driver::CudaSlice<T>) -> Result<(), String>,
    ) -> Result<(), CollectiveError> {
        let (stream, comm) = (&self.stream, &self.comm);
        self.watchdog
            .watched(operation, || -> Result<(), String> {
                let send = stream.clone_htod(input).map_err(|e| format!("to the GPU: {e:?}"))?;
                let mut receive = stream.alloc_zeros::<T>(output.len()).map_err(|e| format!("GPU memory: {e:?}"))?;
                exchange(comm, &send, &mut receive)?;
                stream.memcpy_dtoh(&receive, output).map_err(|e| format!("from the GPU: {e:?}"))?;
                stream.synchronize().map_err(|e| format!("synchronising: {e:?}"))
            })
            .map_err(|message| transport(operation, message))
    }

    fn all_reduce<T: DeviceRepr + ValidAsZeroBits + NcclType + Copy>(
        &mut self,
        values: &mut [T],
    ) -> Result<(), CollectiveError> {
        if values.is_empty() {
            return Ok(());
        }
        let input = values.to_vec();
        self.staged("all_reduce", &input, values, |comm, send, receive| {
            comm.all_reduce(send, receive, &ReduceOp::Sum).map(drop).map_err(|e| format!("ncclAllReduce: {e:?}"))
        })
    }
}

impl Collective for NcclRank {
    fn rank(&self) -> usize {
        self.comm.rank()
    }

    fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    fn all_reduce_sum_f32(&mut self, values: &mut [f32]) -> Result<(), CollectiveError> {
        self.all_reduce(values)
    }

    fn all_reduce_sum_f64(&mut self, values: &mut [f64]) -> Result<(), CollectiveError> {
        self.all_reduce(values)
    }

    fn reduce_scatter_sum_f32(&mut self, input: &[f32], output: &mut [f32]) -> Result<(), CollectiveError> {
        let world = self.world_size();
        CollectiveError::expect_len("reduce_scatter", self.rank(), input.len(), output.len() * world)?;
        if output.is_empty() {
            return Ok(());
        }
        self.staged("reduce_scatter", input, output, |comm, send, receive| {
            comm.reduce_scatter(send, receive, &ReduceOp::Sum)
                .map(drop)
                .map_err(|e| format!("ncclReduceScatter: {e:?}"))
        })
    }

    fn all_gather_f32(&mut self, input: &[f32], output: &mut [f32]) -> Result<(), CollectiveError> {
        let world = self.world_size();
        CollectiveError::expect_len("all_gather", self.rank(), output.len(), input.len() * world)?;
        if input.is_empty() {
            return Ok(());
        }
        self.staged("all_gather", input, output, |comm, send, receive| {
            comm.all_gather(send, receive).map(drop).map_err(|e| format!("ncclAllGather: {e:?}"))
        })
    }

    fn broadcast_bytes(&mut self, root: usize, bytes: &mut Vec<u8>) -> Result<(), CollectiveError> {
        self.host.broadcast_bytes(root, bytes)
    }

    fn barrier(&mut self) -> Result<(), CollectiveError> {
        self.host.barrier()
    }

    /// A communicator of its own for the group (its rank 0 makes the id
    /// and sends it over the host collective's group).
    fn split(&mut self, color: usize) -> Result<Box<dyn Collective>, CollectiveError> {
        let host = self.host.split(color)?;
        let group = NcclRank::connect(host, self.device, self.watchdog.timeout())?;
        group.watchdog.inherit_signal_check(&self.watchdog);
        Ok(Box::new(group))
    }
}
