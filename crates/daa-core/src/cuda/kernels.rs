//! CUDA kernel sources, embedded from `shaders/cuda/`, compiled at run time
//! with NVRTC for the device's architecture, once per context.

use crate::error::{DaaError, Result};

const ROW_COMMON: &str = include_str!("../../../../shaders/cuda/row_common.cuh");
const TOKEN_STATS: &str = include_str!("../../../../shaders/cuda/token_stats.cu");
const LOGITS_BACKWARD: &str = include_str!("../../../../shaders/cuda/logits_backward.cu");
const SEGMENT_REDUCE: &str = include_str!("../../../../shaders/cuda/segment_reduce.cu");
const PREFERENCE_LOSS: &str = include_str!("../../../../shaders/cuda/preference_loss.cu");

/// Every entry point of the compiled module.
pub const ENTRY_POINTS: [&str; 10] = [
    "token_stats_f32",
    "token_stats_f32_vec4",
    "token_stats_bf16",
    "token_stats_bf16_vec8",
    "token_stats_f16",
    "token_stats_f16_vec8",
    "logits_backward_f32",
    "logits_backward_bf16",
    "segment_reduce",
    "preference_loss",
];

/// The whole CUDA source: shared row helpers, then one file per concern.
pub fn source() -> String {
    [ROW_COMMON, TOKEN_STATS, LOGITS_BACKWARD, SEGMENT_REDUCE, PREFERENCE_LOSS].join("\n")
}

pub(crate) fn cuda_error(message: impl Into<String>) -> DaaError {
    DaaError::Device { backend: "cuda", message: message.into() }
}

/// Whether NVRTC can be loaded under one of cudarc's names (the CUDA
/// toolkit, or a PyPI wheel's `lib/` on `LD_LIBRARY_PATH`; a CUDA 13 wheel
/// needs the link of [`super::libraries::link_directory`]).
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to dlopen the library by its known names.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Compiles every kernel to PTX for a virtual architecture such as
/// `compute_90`. Needs NVRTC only, no GPU: CI uses it to catch kernel
/// syntax errors on machines without CUDA devices.
pub fn compile_ptx(arch: &str) -> Result<cudarc::nvrtc::Ptx> {
    if !nvrtc_available() {
        return Err(cuda_error(super::libraries::nvrtc_missing_message()));
    }
    let options = cudarc::nvrtc::CompileOptions {
        options: vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()],
        name: Some("daa_kernels.cu".into()),
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(source(), options)
        .map_err(|e| cuda_error(format!("NVRTC failed for {arch}: {e}")))
}
