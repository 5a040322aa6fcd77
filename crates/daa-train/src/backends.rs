//! burn backends chosen at run time: `cpu` (burn's ndarray backend, always
//! built), `wgpu` and `cuda` (when compiled in). GPU availability is checked
//! before burn touches the device, so a missing driver is an error message,
//! not a panic on a device thread.

use anyhow::{Result, bail};
use burn::backend::{Autodiff, NdArray};
use burn::tensor::backend::AutodiffBackend;

/// Work that runs on whichever backend the user chose.
pub trait BackendTask {
    /// What the work returns.
    type Output;
    /// Runs on backend `B` and `device`.
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Self::Output>;
}

/// The CPU backend: ndarray (multi-threaded, SIMD), f32.
pub type CpuBackend = Autodiff<NdArray<f32>>;

/// Backend names this build accepts.
pub fn compiled_backends() -> Vec<&'static str> {
    let mut names = vec!["cpu"];
    if cfg!(feature = "wgpu") {
        names.push("wgpu");
    }
    if cfg!(feature = "cuda") {
        names.push("cuda");
    }
    names
}

/// Runs `task` on backend `name` (`cpu`, `wgpu`, `cuda`), device `ordinal`.
pub fn with_backend<T: BackendTask>(name: &str, ordinal: usize, task: T) -> Result<T::Output> {
    match name {
        "cpu" => task.run::<CpuBackend>(burn::backend::ndarray::NdArrayDevice::Cpu),
        #[cfg(feature = "wgpu")]
        "wgpu" => {
            // daa-core opens an adapter the same way burn will: its error is the clear one.
            daa_core::Wgpu::new()
                .map_err(|e| anyhow::anyhow!("backend wgpu: {e}; use --backend cpu (model.backend = \"cpu\")"))?;
            let device = if ordinal == 0 {
                burn::backend::wgpu::WgpuDevice::DefaultDevice
            } else {
                burn::backend::wgpu::WgpuDevice::DiscreteGpu(ordinal)
            };
            task.run::<Autodiff<burn::backend::Wgpu>>(device)
        }
        #[cfg(feature = "cuda")]
        "cuda" => {
            if !daa_core::cuda::driver_present() {
                bail!(
                    "backend cuda: CUDA driver not found (libcuda.so could not be loaded; no NVIDIA driver on this \
                     machine); use model.backend = \"cpu\" or \"wgpu\""
                );
            }
            task.run::<Autodiff<burn::backend::Cuda>>(burn::backend::cuda::CudaDevice::new(ordinal))
        }
        other => {
            bail!("backend `{other}` is not available in this build (available: {})", compiled_backends().join(", "))
        }
    }
}
