//! `--backend` and `--threads` of the daa-core commands (`daa stats`,
//! `daa loss`): which of daa-core's backends computes.

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use daa_core::{Cpu, Specification};

/// Which daa-core backend computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendName {
    /// Fast CPU backend (vectorised, multi-threaded).
    Cpu,
    /// The specification (f64, single thread): what the others are tested against.
    #[value(alias = "reference")]
    Spec,
    /// WGSL kernels through wgpu (Vulkan, Metal, DX12).
    Wgpu,
    /// CUDA kernels (NVIDIA GPUs; device 0).
    Cuda,
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

/// A daa-core backend ready to run, for code generic over `daa_core::Backend`.
#[derive(Debug)]
pub enum ChosenBackend {
    /// Fast CPU.
    Cpu(Cpu),
    /// The f64 specification.
    Spec(Specification),
    /// wgpu.
    #[cfg(feature = "wgpu")]
    Wgpu(daa_core::Wgpu),
    /// CUDA.
    #[cfg(feature = "cuda")]
    Cuda(daa_core::Cuda),
}

impl BackendArgs {
    /// The backend's name as users pass it.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            BackendName::Cpu => "cpu",
            BackendName::Spec => "spec",
            BackendName::Wgpu => "wgpu",
            BackendName::Cuda => "cuda",
        }
    }

    /// Builds the chosen backend.
    pub fn build(&self) -> Result<ChosenBackend> {
        Ok(match self.backend {
            BackendName::Cpu => ChosenBackend::Cpu(match self.threads {
                Some(n) if n >= 1 => Cpu::with_threads(n)?,
                Some(_) => anyhow::bail!("--threads must be at least 1"),
                None => Cpu::new(),
            }),
            BackendName::Spec => ChosenBackend::Spec(Specification),
            #[cfg(feature = "wgpu")]
            BackendName::Wgpu => {
                let gpu = daa_core::Wgpu::new()?;
                let a = gpu.adapter();
                eprintln!("wgpu adapter: {} ({}, {})", a.name, a.backend, a.device_type);
                ChosenBackend::Wgpu(gpu)
            }
            #[cfg(feature = "cuda")]
            BackendName::Cuda => {
                let gpu = daa_core::Cuda::new(0)?;
                eprintln!("cuda device: {}", gpu.describe());
                ChosenBackend::Cuda(gpu)
            }
            #[allow(unreachable_patterns)]
            other => bail!(
                "--backend {}: not compiled into this build of daa (rebuild with `--features {}`)",
                self.backend_name(),
                match other {
                    BackendName::Cuda => "cuda",
                    _ => "wgpu",
                }
            ),
        })
    }
}

/// Runs `$body` with `$b` bound to the concrete daa-core backend of a
/// [`ChosenBackend`] (each arm compiles `$body` for one backend type).
#[macro_export]
macro_rules! with_kernel_backend {
    ($backend:expr, |$b:ident| $body:expr) => {
        match $backend {
            $crate::backend_choice::ChosenBackend::Cpu($b) => $body,
            $crate::backend_choice::ChosenBackend::Spec($b) => $body,
            #[cfg(feature = "wgpu")]
            $crate::backend_choice::ChosenBackend::Wgpu($b) => $body,
            #[cfg(feature = "cuda")]
            $crate::backend_choice::ChosenBackend::Cuda($b) => $body,
        }
    };
}
