//! burn backends chosen at run time: `cpu` (burn's Flex backend, always
//! built), `wgpu` and `cuda` (cargo features of the same names). GPU
//! availability is checked before burn touches the device, so a missing
//! driver is an error message, not a panic on a device thread.
//!
//! Code generic over the backend ([`BackendTask::run`]) is compiled once per
//! backend this build includes; keep such tasks few and put the work in
//! generic library functions they call.

use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

/// Where the trainer computes (`model.backend`, `--backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum ComputeBackend {
    /// burn's Flex backend on the CPU (multi-threaded, SIMD, f32/bf16/f16).
    #[default]
    Cpu,
    /// burn's wgpu backend (Vulkan, Metal, DX12, WebGPU); feature `wgpu`.
    Wgpu,
    /// burn's CUDA backend (NVIDIA GPUs); feature `cuda`.
    Cuda,
}

impl ComputeBackend {
    /// The name users write.
    pub fn as_str(self) -> &'static str {
        match self {
            ComputeBackend::Cpu => "cpu",
            ComputeBackend::Wgpu => "wgpu",
            ComputeBackend::Cuda => "cuda",
        }
    }

    /// Whether this build includes the backend.
    pub fn is_compiled(self) -> bool {
        match self {
            ComputeBackend::Cpu => true,
            ComputeBackend::Wgpu => cfg!(feature = "wgpu"),
            ComputeBackend::Cuda => cfg!(feature = "cuda"),
        }
    }
}

impl std::fmt::Display for ComputeBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The CPU backend with autodiff: burn's Flex (pure Rust; the `gemm`
/// crate's kernels, SIMD element-wise passes, rayon threads, reshapes of
/// contiguous tensors as views). On the trainer benchmark's 25 M shape it
/// runs a DPO step in 15.8 s where burn's ndarray backend takes 25.0 s
/// (2 threads; docs/performance.md).
pub type CpuBackend = Autodiff<Flex>;

/// A backend that cannot run here, and what to do instead.
#[derive(Debug, thiserror::Error)]
#[error("backend {backend}: {message}")]
pub struct BackendUnavailable {
    /// The backend asked for.
    pub backend: ComputeBackend,
    /// Why, with a hint.
    pub message: String,
}

/// Work that runs on whichever backend the user chose.
pub trait BackendTask {
    /// What the work returns.
    type Output;
    /// Its error.
    type Error: From<BackendUnavailable>;
    /// Runs on backend `B` and `device`.
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Self::Output, Self::Error>;
}

/// Runs `task` on `backend`, device `ordinal` (GPU backends).
#[cfg(not(target_arch = "wasm32"))]
pub fn with_compute_backend<T: BackendTask>(
    backend: ComputeBackend,
    ordinal: usize,
    task: T,
) -> Result<T::Output, T::Error> {
    let unavailable = |message: String| T::Error::from(BackendUnavailable { backend, message });
    let _ = ordinal;
    match backend {
        ComputeBackend::Cpu => task.run::<CpuBackend>(burn::backend::flex::FlexDevice),
        #[cfg(feature = "wgpu")]
        ComputeBackend::Wgpu => {
            // daa-core opens an adapter the same way burn will: its error is the clear one.
            daa_core::Wgpu::new()
                .map_err(|e| unavailable(format!("{e}; use --backend cpu (model.backend = \"cpu\")")))?;
            let device = if ordinal == 0 {
                burn::backend::wgpu::WgpuDevice::DefaultDevice
            } else {
                burn::backend::wgpu::WgpuDevice::DiscreteGpu(ordinal)
            };
            configure_gpu_caches();
            task.run::<Autodiff<burn::backend::Wgpu>>(device)
        }
        #[cfg(feature = "cuda")]
        ComputeBackend::Cuda => {
            if !daa_core::cuda::driver_present() {
                return Err(unavailable(
                    "CUDA driver not found (libcuda.so could not be loaded; no NVIDIA driver on this machine); use \
                     model.backend = \"cpu\" or \"wgpu\""
                        .into(),
                ));
            }
            // burn's CUDA backend compiles with NVRTC against the toolkit's
            // headers; cudarc and cubecl panic without them.
            if !daa_core::cuda::kernels::nvrtc_available() {
                return Err(unavailable(daa_core::cuda::libraries::nvrtc_missing_message()));
            }
            if daa_core::cuda::libraries::toolkit_headers().is_none() {
                return Err(unavailable(
                    "CUDA headers not found: burn's CUDA backend compiles its kernels against the toolkit's \
                     include/cuda_runtime.h; set CUDA_PATH to a CUDA toolkit (or install one in /usr/local/cuda)"
                        .into(),
                ));
            }
            configure_gpu_caches();
            task.run::<Autodiff<burn::backend::Cuda>>(burn::backend::cuda::CudaDevice::new(ordinal))
        }
        #[allow(unreachable_patterns)]
        other => Err(unavailable(format!(
            "not compiled into this build, which trains on {}; rebuild with the `{other}` feature of daa-train \
             (the daa command: `cargo xtask train --features train-{other}`, or `cargo build --release -p daa-cli \
             --features train-{other}`)",
            [ComputeBackend::Cpu, ComputeBackend::Wgpu, ComputeBackend::Cuda]
                .into_iter()
                .filter(|b| b.is_compiled())
                .map(ComputeBackend::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Where burn's GPU backends keep compiled kernels and autotune results
/// across processes: `$DAA_GPU_CACHE`, else `$XDG_CACHE_HOME/daa/gpu`, else
/// `~/.cache/daa/gpu`.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub fn gpu_cache_dir() -> std::path::PathBuf {
    use std::path::PathBuf;
    if let Some(dir) = std::env::var_os("DAA_GPU_CACHE") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache.join("daa/gpu")
}

/// Configures CubeCL (the kernels of burn's GPU backends) once, before the
/// first device is opened: compiled kernels cached on disk (CubeCL's
/// compilation cache is off by default, so every process compiled every
/// kernel with NVRTC again: PTX is kept, the driver's own JIT cache keeps
/// the machine code), autotune results cached in the same folder
/// ([`gpu_cache_dir`]), and the autotune level from `DAA_AUTOTUNE_LEVEL`
/// (`minimal`, `balanced` (default), `extensive`, `full`: how many matrix
/// product candidates burn compiles and times per new shape; CubeCL's own
/// `CUBECL_AUTOTUNE_LEVEL` and `CUBECL_DEBUG_LOG` apply too). A
/// `cubecl.toml` or `burn.toml` above the working folder wins: then nothing
/// is set.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub fn configure_gpu_caches() {
    use cubecl_runtime::config::autotune::AutotuneLevel;
    use cubecl_runtime::config::cache::CacheConfig;
    use cubecl_runtime::config::{CubeClRuntimeConfig, RuntimeConfig};
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let user_file = std::env::current_dir().ok().is_some_and(|cwd| {
            cwd.ancestors().any(|dir| {
                ["cubecl.toml", "CubeCL.toml", "burn.toml", "Burn.toml"].iter().any(|f| dir.join(f).is_file())
            })
        });
        if user_file {
            return; // the user's file configures CubeCL
        }
        let root = gpu_cache_dir();
        // CubeCL's own variables (CUBECL_DEBUG_LOG, CUBECL_AUTOTUNE_LEVEL) still apply.
        let mut config = CubeClRuntimeConfig::default().override_from_env();
        config.compilation.cache = Some(CacheConfig::File(root.clone()));
        config.autotune.cache = CacheConfig::File(root);
        match std::env::var("DAA_AUTOTUNE_LEVEL").as_deref() {
            Ok("minimal" | "0") => config.autotune.level = AutotuneLevel::Minimal,
            Ok("balanced" | "1") => config.autotune.level = AutotuneLevel::Balanced,
            Ok("extensive" | "2") => config.autotune.level = AutotuneLevel::Extensive,
            Ok("full" | "3") => config.autotune.level = AutotuneLevel::Full,
            _ => {}
        }
        // Under one lock: a device opened meanwhile keeps its configuration
        // (`set` would panic on a second configuration).
        let mut slot = CubeClRuntimeConfig::storage().lock();
        if slot.is_none() {
            *slot = Some(std::sync::Arc::new(config));
        }
    });
}
