//! Shared fixtures for daa's tests and benchmarks: deterministic random
//! logits, the cross-backend test macro and tolerance checks.

pub mod fixtures;
pub mod gpu;
pub mod metrics;
pub mod tolerance;

/// Runs one test body on every compiled fast backend, or on every backend.
///
/// `backend_cases!(fn_name, …)` expands each `fn fn_name<B: Backend>(backend: &B)`
/// into a module with one `#[test]` per fast backend (`cpu`,
/// `cpu_one_thread`, and the GPU backends when their features are on): for
/// bodies that compare the backend with the f64 specification, which would
/// only compare the specification with itself. `backend_cases!(with_spec:
/// fn_name, …)` adds a `spec` test, for bodies that check something every
/// backend must do (errors, invariants). GPU tests print `skipped: <why>`
/// and pass when no device is present, unless `DAA_REQUIRE_GPU` names them.
#[macro_export]
macro_rules! backend_cases {
    (with_spec: $($case:ident),* $(,)?) => {
        $(
            mod $case {
                #[test]
                fn spec() {
                    super::$case(&daa_core::Specification);
                }
                $crate::backend_cases!(@fast $case);
            }
        )*
    };
    ($($case:ident),* $(,)?) => {
        $(
            mod $case {
                $crate::backend_cases!(@fast $case);
            }
        )*
    };
    (@fast $case:ident) => {
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
    };
}

/// This package's folder: the `CARGO_MANIFEST_DIR` cargo sets when it runs
/// the test (the path compiled in may be another clone's when clones share a
/// target folder), else the one compiled in.
pub fn manifest_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
}
