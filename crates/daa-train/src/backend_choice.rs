//! `--backend` and `--threads`, shared by the subcommands.

use anyhow::Result;
use clap::{Args, ValueEnum};
use daa_core::{Cpu, Reference};

/// Which daa-core backend computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendName {
    /// Fast CPU backend (vectorised, multi-threaded).
    Cpu,
    /// Reference backend (f64, single thread; the specification).
    Reference,
}

/// Backend options.
#[derive(Debug, Clone, Args)]
pub struct BackendArgs {
    /// Backend that computes.
    #[arg(long, value_enum, default_value = "cpu")]
    pub backend: BackendName,
    /// Threads for the cpu backend (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// A backend ready to run, for code generic over `daa_core::Backend` with host tensors.
#[derive(Debug)]
pub enum HostBackend {
    /// Fast CPU.
    Cpu(Cpu),
    /// Reference.
    Reference(Reference),
}

impl BackendArgs {
    /// The backend's name as users pass it.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            BackendName::Cpu => "cpu",
            BackendName::Reference => "reference",
        }
    }

    /// Builds the chosen backend.
    pub fn build(&self) -> Result<HostBackend> {
        Ok(match self.backend {
            BackendName::Cpu => HostBackend::Cpu(match self.threads {
                Some(n) if n >= 1 => Cpu::with_threads(n)?,
                Some(_) => anyhow::bail!("--threads must be at least 1"),
                None => Cpu::new(),
            }),
            BackendName::Reference => HostBackend::Reference(Reference),
        })
    }
}

/// Runs `$body` with `$b` bound to the concrete backend.
#[macro_export]
macro_rules! with_backend {
    ($backend:expr, |$b:ident| $body:expr) => {
        match $backend {
            $crate::backend_choice::HostBackend::Cpu($b) => $body,
            $crate::backend_choice::HostBackend::Reference($b) => $body,
        }
    };
}
