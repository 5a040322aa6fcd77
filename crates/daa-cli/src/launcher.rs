//! `daa train --nproc-per-node N [--nnodes M --node-rank R --master-addr
//! HOST --master-port P]`: starts this node's N ranks of the same `daa
//! train` command and supervises them, as torchrun does. Rank `R·N + i` is
//! the node's `i`-th process (GPU `i`); the ranks meet over TCP at
//! `HOST:P` (rank 0's node). On one node without `--master-port` a free
//! port is taken.
//!
//! When a rank exits abnormally the launcher names it (rank, host, pid,
//! exit status or signal), sends the others SIGTERM and, after 30 s,
//! SIGKILL. A SIGINT or SIGTERM to the launcher is passed on to every rank
//! (SIGHUP as SIGTERM; they finish the step, checkpoint together and exit
//! `128 + signal`); the launcher then exits with rank 0's status. The ranks
//! run in a process group of their own, so a terminal's Ctrl-C reaches them
//! once, through the launcher; on Linux they receive SIGTERM if the
//! launcher itself dies (`PR_SET_PDEATHSIG`). POSIX systems only.

use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How long ranks may take to stop after one failed, before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// torchrun's default rendezvous port, for several nodes.
const DEFAULT_PORT: u16 = 29500;

/// Where this node's ranks belong.
#[derive(Debug, Clone)]
pub struct NodePlan {
    /// Ranks on this node.
    pub nproc_per_node: usize,
    /// Nodes in the run.
    pub nnodes: usize,
    /// This node, `0..nnodes`.
    pub node_rank: usize,
    /// Rank 0's host, which every node reaches.
    pub master_addr: Option<String>,
    /// The port ranks meet at on rank 0's host.
    pub master_port: Option<u16>,
}

impl NodePlan {
    /// Ranks in the run.
    pub fn world_size(&self) -> usize {
        self.nproc_per_node * self.nnodes
    }

    fn checked(&self) -> Result<(String, u16)> {
        if self.nproc_per_node == 0 || self.nnodes == 0 {
            bail!("--nproc-per-node and --nnodes must be at least 1");
        }
        if self.node_rank >= self.nnodes {
            bail!("--node-rank {} is not a node of --nnodes {}", self.node_rank, self.nnodes);
        }
        let launched = daa_train::distributed::LaunchEnv::from_env().map_err(anyhow::Error::msg)?;
        if let Some(launch) =
            launched.filter(|l| l.launcher != daa_train::distributed::Launcher::Slurm && l.world_size > 1)
        {
            bail!(
                "--nproc-per-node: this process is already rank {} of {} started by {:?}",
                launch.rank,
                launch.world_size,
                launch.launcher
            );
        }
        let host = match (&self.master_addr, self.nnodes) {
            (Some(host), _) => host.clone(),
            (None, 1) => "127.0.0.1".to_string(),
            (None, _) => {
                bail!("--nnodes {} needs --master-addr: the host of node 0, which every node reaches", self.nnodes)
            }
        };
        let port = match (self.master_port, self.nnodes) {
            (Some(port), _) => port,
            (None, 1) => std::net::TcpListener::bind(("127.0.0.1", 0))
                .and_then(|l| l.local_addr())
                .context("finding a free port for the ranks to meet at")?
                .port(),
            (None, _) => DEFAULT_PORT,
        };
        Ok((host, port))
    }
}

/// One rank's process.
struct RankProcess {
    rank: usize,
    child: Child,
    status: Option<ExitStatus>,
}

/// Starts this node's ranks of `daa train args…` and waits for them.
pub fn launch(plan: &NodePlan, args: &[OsString]) -> Result<()> {
    let (host, port) = plan.checked()?;
    let exe = std::env::current_exe().context("finding this daa executable")?;
    let world = plan.world_size();
    let first = plan.node_rank * plan.nproc_per_node;
    eprintln!(
        "starting ranks {first}..{} of {world} on {} (node {} of {}); they meet at {host}:{port}",
        first + plan.nproc_per_node - 1,
        hostname(),
        plan.node_rank,
        plan.nnodes
    );
    let signals = SignalRelay::install()?;
    let mut ranks: Vec<RankProcess> = Vec::with_capacity(plan.nproc_per_node);
    // One thread per rank waits for its end without reaping it: the ends
    // arrive in the order they happened (the first rank to fail is named,
    // not a peer it took along), and a pid stays this process's child, safe
    // to signal, until the supervisor reaps it.
    let (ended, ends) = std::sync::mpsc::channel::<(usize, std::io::Result<()>)>();
    for local in 0..plan.nproc_per_node {
        let rank = first + local;
        let mut command = Command::new(&exe);
        command
            .args(args)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_RANK", local.to_string())
            .env("LOCAL_WORLD_SIZE", plan.nproc_per_node.to_string())
            .env("GROUP_RANK", plan.node_rank.to_string())
            .env("MASTER_ADDR", &host)
            .env("MASTER_PORT", port.to_string())
            .env("DAA_RENDEZVOUS_PORT", port.to_string());
        command.process_group(0);
        // The ranks end with the launcher, however it ends (Linux).
        #[cfg(target_os = "linux")]
        // SAFETY: prctl is async-signal-safe and touches no memory of the child.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        match command.spawn() {
            Ok(child) => {
                let pid = child.id();
                ranks.push(RankProcess { rank, child, status: None });
                let ended = ended.clone();
                std::thread::spawn(move || ended.send((local, wait_without_reaping(pid))));
            }
            Err(e) => {
                send(&ranks, libc::SIGKILL);
                return Err(e).with_context(|| format!("starting rank {rank}: {}", exe.display()));
            }
        }
    }
    supervise(&mut ranks, &ends, &signals)
}

/// Returns once process `pid` (a child) has ended, leaving it unreaped.
fn wait_without_reaping(pid: u32) -> std::io::Result<()> {
    let pid = libc::id_t::try_from(pid).map_err(|_| std::io::Error::other(format!("pid {pid}")))?;
    loop {
        // SAFETY: waitid fills `info`, a zeroed siginfo_t this frame owns.
        let status = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT)
        };
        if status == 0 {
            return Ok(());
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Waits for every rank; the first to fail ends the others.
fn supervise(
    ranks: &mut [RankProcess],
    ends: &std::sync::mpsc::Receiver<(usize, std::io::Result<()>)>,
    signals: &SignalRelay,
) -> Result<()> {
    let mut failure: Option<String> = None;
    let mut stopping_since: Option<Instant> = None;
    let mut forwarded: Option<i32> = None;
    while ranks.iter().any(|p| p.status.is_none()) {
        if let Some(signal) = signals.take() {
            eprintln!("passing {} on to the ranks", daa_train::run::interrupt::signal_name(signal));
            send(ranks, signal);
            forwarded = Some(signal);
        }
        if stopping_since.is_some_and(|since| since.elapsed() > STOP_GRACE) {
            for process in ranks.iter().filter(|p| p.status.is_none()) {
                let pid = process.child.id();
                eprintln!("rank {} (pid {pid}) did not stop within {STOP_GRACE:?}: killing it", process.rank);
            }
            send(ranks, libc::SIGKILL);
            stopping_since = None;
        }
        let index = match ends.recv_timeout(Duration::from_millis(50)) {
            Ok((index, ended)) => {
                ended.context("waiting for the ranks")?;
                index
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => bail!("lost track of the ranks"),
        };
        let process = &mut ranks[index];
        // It has ended: this reaps it.
        let status = process.child.wait().context("waiting for the ranks")?;
        process.status = Some(status);
        if status.success() || failure.is_some() || forwarded.is_some() {
            continue;
        }
        let what =
            format!("rank {} (host {}, pid {}) {}", process.rank, hostname(), process.child.id(), describe(status));
        eprintln!("error: {what}; stopping the other ranks");
        failure = Some(what);
        stopping_since = Some(Instant::now());
        send(ranks, libc::SIGTERM);
    }
    if let Some(what) = failure {
        bail!("{what}: the run stopped (each rank's own error is above)");
    }
    if forwarded.is_some() {
        // Rank 0 said where its checkpoint is; its status is the run's.
        let code = ranks.iter().find(|p| p.rank == 0).and_then(|p| p.status?.code()).unwrap_or(1);
        std::process::exit(code);
    }
    Ok(())
}

/// Sends `signal` to every rank not yet reaped.
fn send(ranks: &[RankProcess], signal: i32) {
    for process in ranks.iter().filter(|p| p.status.is_none()) {
        if let Ok(pid) = libc::pid_t::try_from(process.child.id()) {
            // SAFETY: kill(2) touches no memory of this process; the pid is
            // a child it has not reaped, so not another process's.
            unsafe { libc::kill(pid, signal) };
        }
    }
}

/// How a rank ended, in words.
fn describe(status: ExitStatus) -> String {
    if let Some(signal) = status.signal() {
        return format!("was killed by signal {signal} ({})", daa_train::run::interrupt::signal_name(signal));
    }
    match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => format!("ended ({status})"),
    }
}

/// This machine's name, for the error that names a rank.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "this host".to_string())
}

/// SIGINT, SIGTERM and SIGHUP to the launcher, held for passing on (SIGHUP
/// as SIGTERM: a lost terminal or SSH connection stops the ranks cleanly).
struct SignalRelay {
    pending: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl SignalRelay {
    fn install() -> Result<Self> {
        let pending = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for (signal, passed) in
            [(libc::SIGINT, libc::SIGINT), (libc::SIGTERM, libc::SIGTERM), (libc::SIGHUP, libc::SIGTERM)]
        {
            signal_hook::flag::register_usize(signal, pending.clone(), passed as usize)
                .context("installing the launcher's signal handler")?;
        }
        Ok(Self { pending })
    }

    /// The signal to pass on since the last call, if any.
    fn take(&self) -> Option<i32> {
        match self.pending.swap(0, std::sync::atomic::Ordering::SeqCst) {
            0 => None,
            signal => i32::try_from(signal).ok(),
        }
    }
}

/// This command's arguments without the launcher's own flags.
pub fn forwarded_args(flags: &[&str]) -> Vec<OsString> {
    let mut forwarded = Vec::new();
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy();
        if flags.contains(&text.as_ref()) {
            args.next();
        } else if !flags.iter().any(|flag| text.starts_with(&format!("{flag}="))) {
            forwarded.push(arg);
        }
    }
    forwarded
}
