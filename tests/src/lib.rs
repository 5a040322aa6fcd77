//! Shared fixtures for daa's tests and benchmarks: deterministic random
//! logits, the cross-backend test macro and tolerance checks.

pub mod fixtures;
pub mod gpu;
pub mod tolerance;

/// Runs one test body on every compiled backend.
///
/// `backend_cases!(fn_name)` expands `fn fn_name<B: Backend>(backend: &B)`
/// into a module with one `#[test]` per backend (`reference`, `cpu`,
/// `cpu_one_thread`, and the GPU backends when their features are on). GPU
/// tests print `skipped: <why>` and pass when no device is present, unless
/// `DAA_REQUIRE_GPU=1`.
#[macro_export]
macro_rules! backend_cases {
    ($($case:ident),* $(,)?) => {
        $(
            mod $case {
                #[test]
                fn reference() {
                    super::$case(&daa_core::Reference);
                }
                #[test]
                fn cpu() {
                    super::$case(&daa_core::Cpu::new());
                }
                #[test]
                fn cpu_one_thread() {
                    super::$case(&daa_core::Cpu::with_threads(1).expect("one thread"));
                }
                #[cfg(feature = "cuda")]
                #[test]
                fn cuda() {
                    if let Some(backend) = $crate::gpu::cuda_backend() {
                        super::$case(&backend);
                    }
                }
                #[cfg(feature = "wgpu")]
                #[test]
                fn wgpu() {
                    if let Some(backend) = $crate::gpu::wgpu_backend() {
                        super::$case(&backend);
                    }
                }
            }
        )*
    };
}
