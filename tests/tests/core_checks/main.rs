//! daa-core's checks, in one test binary: every fast backend against the
//! f64 specification (`backend_agreement`, `wgpu_backend`), the
//! specification against hand derivations and finite differences (`losses`,
//! `specification_by_hand`, `token_stats_properties`), and the kernel
//! sources compiled without a GPU (`cuda_kernels`, `wgsl_validation`).

mod backend_agreement;
#[cfg(feature = "cuda")]
mod cuda_kernels;
mod losses;
mod specification_by_hand;
mod token_stats_properties;
#[cfg(feature = "wgpu")]
mod wgpu_backend;
mod wgsl_validation;
