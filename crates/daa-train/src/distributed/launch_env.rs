//! The rank a launcher gave this process, read from the environment the way
//! each launcher writes it.

/// Who started this process as one rank of several.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// `torchrun` (and `daa train --nproc-per-node`): `RANK`, `WORLD_SIZE`,
    /// `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`.
    Torchrun,
    /// SLURM's `srun`: `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`,
    /// `SLURM_NTASKS_PER_NODE` (the rendezvous address from `MASTER_ADDR`).
    Slurm,
    /// Open MPI's `mpirun`: `OMPI_COMM_WORLD_RANK`, `_SIZE`, `_LOCAL_RANK`,
    /// `_LOCAL_SIZE`.
    OpenMpi,
}

/// One rank's place: global rank and world size, rank and ranks on this
/// node (the GPU is the local rank), and the rendezvous address when given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchEnv {
    /// Which launcher's variables were read.
    pub launcher: Launcher,
    /// Global rank, `0..world_size`.
    pub rank: usize,
    /// Ranks in the run.
    pub world_size: usize,
    /// Rank on this node: the GPU ordinal.
    pub local_rank: usize,
    /// Ranks on this node.
    pub local_world_size: usize,
    /// `MASTER_ADDR:MASTER_PORT`, when both are set.
    pub master: Option<(String, u16)>,
    /// `DAA_RENDEZVOUS_PORT`, when set: the port daa's ranks meet at.
    pub rendezvous_port: Option<u16>,
}

impl LaunchEnv {
    /// This process's place, from its environment: `Ok(None)` when no
    /// launcher's variables are set (one process), an error naming the
    /// variable when they are set but wrong.
    pub fn from_env() -> Result<Option<Self>, String> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`Self::from_env`] over any variable lookup (tests).
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, String> {
        let number = |name: &str| -> Result<Option<usize>, String> {
            var(name)
                .map(|v| v.trim().parse::<usize>().map_err(|_| format!("{name}={v:?} is not a non-negative integer")))
                .transpose()
        };
        let (launcher, names) = if var("RANK").is_some() || var("WORLD_SIZE").is_some() {
            (Launcher::Torchrun, ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"])
        } else if var("OMPI_COMM_WORLD_RANK").is_some() {
            (
                Launcher::OpenMpi,
                [
                    "OMPI_COMM_WORLD_RANK",
                    "OMPI_COMM_WORLD_SIZE",
                    "OMPI_COMM_WORLD_LOCAL_RANK",
                    "OMPI_COMM_WORLD_LOCAL_SIZE",
                ],
            )
        } else if var("SLURM_PROCID").is_some() && var("SLURM_NTASKS").is_some() {
            (Launcher::Slurm, ["SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE"])
        } else {
            return Ok(None);
        };
        let [rank_var, world_var, local_var, local_world_var] = names;
        let rank = number(rank_var)?.ok_or_else(|| format!("{world_var} is set but {rank_var} is not"))?;
        let world_size = number(world_var)?.ok_or_else(|| format!("{rank_var} is set but {world_var} is not"))?;
        if world_size == 0 || rank >= world_size {
            return Err(format!("{rank_var}={rank} is not a rank of {world_var}={world_size}"));
        }
        let local_rank = number(local_var)?.unwrap_or(0);
        // SLURM writes e.g. "4" or "4(x2)" per node; the first count serves.
        let local_world_size = match var(local_world_var) {
            Some(v) => v
                .split(['(', ','])
                .next()
                .and_then(|n| n.trim().parse::<usize>().ok())
                .ok_or_else(|| format!("{local_world_var}={v:?} is not a count"))?,
            None => world_size,
        };
        if local_rank >= local_world_size {
            return Err(format!("{local_var}={local_rank} is not a rank of {local_world_var}={local_world_size}"));
        }
        let master = match (var("MASTER_ADDR"), number("MASTER_PORT")?) {
            (Some(addr), Some(port)) => {
                Some((addr, u16::try_from(port).map_err(|_| format!("MASTER_PORT={port} is not a port"))?))
            }
            _ => None,
        };
        let rendezvous_port = number("DAA_RENDEZVOUS_PORT")?
            .map(|port| u16::try_from(port).map_err(|_| format!("DAA_RENDEZVOUS_PORT={port} is not a port")))
            .transpose()?;
        Ok(Some(Self { launcher, rank, world_size, local_rank, local_world_size, master, rendezvous_port }))
    }

    /// Where daa's ranks meet over TCP (rank 0 listens there): `MASTER_ADDR`
    /// with `DAA_RENDEZVOUS_PORT` when set, else with `MASTER_PORT + 1`
    /// under torchrun (whose own store listens on `MASTER_PORT`), else
    /// with `MASTER_PORT`. `None` without `MASTER_ADDR` and a port.
    pub fn rendezvous(&self) -> Option<(String, u16)> {
        let (host, port) = self.master.clone()?;
        let port = match (self.rendezvous_port, self.launcher) {
            (Some(port), _) => port,
            (None, Launcher::Torchrun) => port.checked_add(1)?,
            (None, _) => port,
        };
        Some((host, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<Option<LaunchEnv>, String> {
        let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        LaunchEnv::from_lookup(|name| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    }

    #[test]
    fn each_launcher_is_recognised() {
        assert_eq!(env(&[]).unwrap(), None);
        let torchrun = env(&[
            ("RANK", "5"),
            ("WORLD_SIZE", "16"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "8"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "29500"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            torchrun,
            LaunchEnv {
                launcher: Launcher::Torchrun,
                rank: 5,
                world_size: 16,
                local_rank: 1,
                local_world_size: 8,
                master: Some(("node0".into(), 29500)),
                rendezvous_port: None,
            }
        );
        // torchrun's store holds MASTER_PORT: daa's ranks meet on the next port.
        assert_eq!(torchrun.rendezvous(), Some(("node0".into(), 29501)));
        let slurm = env(&[
            ("SLURM_PROCID", "3"),
            ("SLURM_NTASKS", "4"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_NTASKS_PER_NODE", "2(x2)"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((slurm.launcher, slurm.rank, slurm.local_rank, slurm.local_world_size), (Launcher::Slurm, 3, 1, 2));
        let own = env(&[
            ("RANK", "1"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", "29400"),
            ("DAA_RENDEZVOUS_PORT", "29400"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(own.rendezvous(), Some(("127.0.0.1".into(), 29400)));
        let mpi = env(&[
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((mpi.launcher, mpi.rank, mpi.world_size, mpi.master), (Launcher::OpenMpi, 1, 2, None));
    }

    #[test]
    fn wrong_values_name_the_variable() {
        let err = env(&[("RANK", "2"), ("WORLD_SIZE", "2")]).unwrap_err();
        assert!(err.contains("RANK=2 is not a rank of WORLD_SIZE=2"), "{err}");
        let err = env(&[("RANK", "x"), ("WORLD_SIZE", "2")]).unwrap_err();
        assert!(err.contains("RANK=\"x\""), "{err}");
        let err = env(&[("WORLD_SIZE", "2")]).unwrap_err();
        assert!(err.contains("RANK is not"), "{err}");
        let err =
            env(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "a"), ("MASTER_PORT", "70000")]).unwrap_err();
        assert!(err.contains("MASTER_PORT=70000"), "{err}");
    }
}
