//! The ranks of one run: `daa train` started by `daa train
//! --nproc-per-node N`, torchrun, srun or `mpirun -n N` runs as N processes
//! that step together (data parallel, optionally with sharded
//! optimizer state: `train.sharding`). Rank 0 writes what the run leaves
//! (metrics, checkpoints' model files, summaries); every rank writes its
//! slice of sharded optimizer state. Before anything loads the ranks check
//! that they run the same daa with the same configuration and share the
//! run folder; after preparing, that they hold the same data. A rank that
//! differs is named and every rank stops.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::config::{CollectiveChoice, ShardWithin, TrainConfig};
use crate::distributed::{Collective, DataParallel, LaunchEnv, ShardGroups, TcpRank};

/// This process's place among the run's ranks, and their collective.
#[derive(Debug)]
pub(crate) struct RunRanks {
    collective: Option<Box<dyn Collective>>,
}

impl RunRanks {
    /// One process (no launcher's variables, or a world of one).
    pub fn single() -> Self {
        Self { collective: None }
    }

    /// The ranks a launcher started, from the environment: through MPI
    /// (feature `mpi`) when `mpirun` started this process, else over TCP.
    pub fn from_env(config: &TrainConfig) -> Result<Self> {
        let launch = LaunchEnv::from_env().map_err(anyhow::Error::msg)?;
        let Some(launch) = launch.filter(|l| l.world_size > 1) else { return Ok(Self::single()) };
        let timeout = Duration::from_secs_f64(config.train.collective_timeout);
        let host = Self::connect(&launch, timeout)?;
        let nccl = match config.train.collective {
            CollectiveChoice::Auto => config.model.backend == crate::backend::ComputeBackend::Cuda,
            CollectiveChoice::Nccl => true,
            CollectiveChoice::Host => false,
        };
        if !nccl {
            return Ok(host);
        }
        host.over_nccl(device_of_this_rank(config)?, timeout)
    }

    /// The same ranks exchanging through NCCL on GPU `device`, meeting
    /// through this host collective.
    #[cfg(all(feature = "cuda", unix))]
    fn over_nccl(self, device: usize, timeout: Duration) -> Result<Self> {
        let Some(host) = self.collective else { return Ok(self) };
        let rank = host.rank();
        let nccl = crate::distributed::NcclRank::connect(host, device, timeout)
            .with_context(|| format!("rank {rank}: joining the NCCL communicator on GPU {device}"))?
            .end_on_signal(super::interrupt::unanswered);
        Ok(Self { collective: Some(Box::new(nccl)) })
    }

    #[cfg(not(all(feature = "cuda", unix)))]
    fn over_nccl(self, _device: usize, _timeout: Duration) -> Result<Self> {
        bail!("`train.collective` = \"nccl\": this daa was built without the CUDA backend (--features train-cuda)")
    }

    /// Connects this rank: through MPI when `mpirun` started it and daa
    /// has the `mpi` feature, else over TCP at the launcher's rendezvous
    /// address (`MASTER_ADDR`, `MASTER_PORT`).
    fn connect(launch: &LaunchEnv, timeout: Duration) -> Result<Self> {
        #[cfg(feature = "mpi")]
        if launch.launcher == crate::distributed::Launcher::OpenMpi {
            return Self::connect_mpi(launch, timeout);
        }
        let Some((host, port)) = launch.rendezvous() else {
            bail!(
                "rank {} of {} ({:?}): set MASTER_ADDR and MASTER_PORT (rank 0's host, which every rank can reach, \
                 and a free port) so the ranks can meet{}",
                launch.rank,
                launch.world_size,
                launch.launcher,
                if cfg!(feature = "mpi") { "" } else { " (this daa was built without the `mpi` feature)" }
            );
        };
        let identity = concat!("daa ", env!("CARGO_PKG_VERSION"));
        let collective = TcpRank::connect(launch.rank, launch.world_size, (&host, port), identity, timeout)
            .with_context(|| {
                format!("rank {} of {}: meeting the other ranks at {host}:{port}", launch.rank, launch.world_size)
            })?;
        Ok(Self { collective: Some(Box::new(collective)) })
    }

    #[cfg(feature = "mpi")]
    fn connect_mpi(launch: &LaunchEnv, timeout: Duration) -> Result<Self> {
        use crate::distributed::MpiRank;
        let collective = MpiRank::init(timeout)?.end_on_signal(super::interrupt::unanswered);
        if (collective.rank(), collective.world_size()) != (launch.rank, launch.world_size) {
            bail!(
                "MPI says rank {} of {}, the launcher's variables rank {} of {}",
                collective.rank(),
                collective.world_size(),
                launch.rank,
                launch.world_size
            );
        }
        Ok(Self { collective: Some(Box::new(collective)) })
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.collective.as_ref().map_or(0, |c| c.rank())
    }

    /// Ranks in the run.
    pub fn world_size(&self) -> usize {
        self.collective.as_ref().map_or(1, |c| c.world_size())
    }

    /// Ranks on this node: the launcher's `LOCAL_WORLD_SIZE` (1 for one
    /// process, or where the launcher does not say).
    pub fn local_world_size(&self) -> usize {
        match self.world_size() {
            1 => 1,
            _ => LaunchEnv::from_env().ok().flatten().map_or(1, |l| l.local_world_size),
        }
    }

    /// Whether this rank writes the run's files.
    pub fn is_first(&self) -> bool {
        self.rank() == 0
    }

    /// Every rank's `value` is rank 0's, or the run stops naming the ranks
    /// whose `what` differs (every rank must call it).
    pub fn agree(&mut self, what: &str, value: &str) -> Result<()> {
        let Some(c) = &mut self.collective else { return Ok(()) };
        let mut first = value.as_bytes().to_vec();
        c.broadcast_bytes(0, &mut first)?;
        let mut differs = vec![0f64; c.world_size()];
        differs[c.rank()] = f64::from(u8::from(first != value.as_bytes()));
        c.all_reduce_sum_f64(&mut differs)?;
        let ranks: Vec<String> =
            differs.iter().enumerate().filter(|(_, d)| **d > 0.0).map(|(r, _)| r.to_string()).collect();
        if ranks.is_empty() {
            return Ok(());
        }
        let mine =
            if first == value.as_bytes() { String::new() } else { format!(" (this rank's: {})", excerpt(value)) };
        bail!(
            "{what} of rank(s) {} differs from rank 0's ({}){mine}: every rank must run the same daa on the same inputs",
            ranks.join(", "),
            excerpt(&String::from_utf8_lossy(&first))
        )
    }

    /// Runs `work` on rank 0 first and on the others after it succeeded
    /// (what writes shared caches or files); rank 0's failure stops all.
    pub fn first_then_others<T>(&mut self, what: &str, mut work: impl FnMut() -> Result<T>) -> Result<T> {
        let Some(c) = &mut self.collective else { return work() };
        let first = c.rank() == 0;
        let result = if first { Some(work()) } else { None };
        let mut failed = vec![u8::from(result.as_ref().is_some_and(|r| r.is_err()))];
        c.broadcast_bytes(0, &mut failed)?;
        if failed.first() == Some(&1) {
            return match result {
                Some(Err(e)) => Err(e),
                _ => bail!("{what}: rank 0 failed (its error says why)"),
            };
        }
        match result {
            Some(done) => done,
            None => work(),
        }
    }

    /// Whether every rank sees the run folder rank 0 created: rank 0 writes
    /// a token into it, every rank reads it back and compares it with the
    /// token rank 0 sent.
    pub fn check_shared_folder(&mut self, run_dir: &Path) -> Result<()> {
        let Some(c) = &mut self.collective else { return Ok(()) };
        let token_path = run_dir.join(".daa-ranks");
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let mut token = format!("{}:{nanos}", std::process::id()).into_bytes();
        let written = match c.rank() {
            0 => std::fs::write(&token_path, &token).with_context(|| format!("{}: cannot write", token_path.display())),
            _ => Ok(()),
        };
        if written.is_err() {
            token.clear();
        }
        c.broadcast_bytes(0, &mut token)?;
        written?;
        if token.is_empty() {
            bail!("rank 0 could not write into the run folder {}", run_dir.display());
        }
        let seen = std::fs::read(&token_path).unwrap_or_default();
        let what =
            format!("the run folder {} (a token rank 0 wrote into it, as this rank reads it)", run_dir.display());
        let mine = if seen == token { "the same" } else { "another folder" };
        self.agree(&what, mine)?;
        // Every rank has read it (the agreement waited for all).
        if self.is_first() {
            let _ = std::fs::remove_file(&token_path);
        }
        Ok(())
    }

    /// HSDP's groups when `train.shard_within = "node"`: the ranks of this
    /// node (`GROUP_RANK`, else SLURM's `SLURM_NODEID`, else
    /// `rank / LOCAL_WORLD_SIZE`) and the ranks
    /// holding the same slice, one per node. Every rank must call it; nodes
    /// with different numbers of ranks are refused.
    pub fn shard_groups(&mut self, config: &TrainConfig) -> Result<Option<ShardGroups>> {
        let Some(c) = &mut self.collective else { return Ok(None) };
        if config.train.shard_within != ShardWithin::Node {
            return Ok(None);
        }
        let launch = LaunchEnv::from_env().map_err(anyhow::Error::msg)?.context("HSDP without a launcher")?;
        let var = |name: &str| std::env::var(name).ok().and_then(|v| v.trim().parse::<usize>().ok());
        let node = var("GROUP_RANK").or_else(|| var("SLURM_NODEID")).unwrap_or(c.rank() / launch.local_world_size);
        let mut nodes = vec![0f64; c.world_size()];
        nodes[c.rank()] = node as f64;
        c.all_reduce_sum_f64(&mut nodes)?;
        let mut per_node = std::collections::BTreeMap::<usize, usize>::new();
        nodes.iter().for_each(|&n| *per_node.entry(n as usize).or_default() += 1);
        if per_node.values().any(|&n| n != per_node.values().next().copied().unwrap_or(0)) {
            bail!("train.shard_within = \"node\" needs as many ranks on every node: ranks per node {per_node:?}");
        }
        let shard = c.split(node).context("splitting the ranks by node")?;
        // Replicas: the ranks at the same place of every node's group.
        let replicas = c.split(shard.rank()).context("splitting the ranks by their place in the node")?;
        Ok(Some(ShardGroups { shard, replicas }))
    }

    /// The collective, for the trainer (data parallelism), if several ranks.
    pub fn reducer(&mut self) -> Option<DataParallel<Box<dyn Collective>>> {
        self.collective.take().map(DataParallel::new)
    }
}

/// The first 200 characters of `text`, for an error.
fn excerpt(text: &str) -> String {
    let cut: String = text.chars().take(200).collect();
    if cut.len() < text.len() { format!("{cut}…") } else { cut }
}

/// The GPU this rank trains on: `model.device` plus the launcher's local
/// rank (rank `r` of a node on GPU `r` with the default `model.device = 0`);
/// `model.device` for one process and on the CPU.
pub(crate) fn device_of_this_rank(config: &TrainConfig) -> Result<usize> {
    let launch = LaunchEnv::from_env().map_err(anyhow::Error::msg)?;
    let local = launch.filter(|l| l.world_size > 1).map_or(0, |l| l.local_rank);
    Ok(match config.model.backend {
        crate::backend::ComputeBackend::Cpu => config.model.device,
        _ => config.model.device + local,
    })
}

/// Fault injection for tests and failure drills: when the environment
/// variable `var` is `R:S` and this is rank `R` at step `S`, the process
/// exits at once with status 3 (as a crashed rank would), saying so.
/// Variables: `DAA_FAULT_EXIT_AT_STEP` (before step `S` is computed) and
/// `DAA_FAULT_EXIT_IN_CHECKPOINT` (while the checkpoint of step `S` is
/// being written, after its folder was prepared).
pub(crate) fn injected_exit(var: &str, rank: usize, step: u64) {
    let Ok(value) = std::env::var(var) else { return };
    let parsed = value.split_once(':').and_then(|(r, s)| Some((r.parse::<usize>().ok()?, s.parse::<u64>().ok()?)));
    if parsed == Some((rank, step)) {
        eprintln!("rank {rank}: exiting at step {step} ({var}={value}: fault injection)");
        std::process::exit(3);
    }
}
