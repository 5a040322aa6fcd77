//! GPU backends for tests: opened once per test process; without a device a
//! test prints `skipped: <why>` and passes, unless `DAA_REQUIRE_GPU=1`.

/// Whether a missing device for `backend` fails the tests:
/// `DAA_REQUIRE_GPU=1` requires every GPU backend, `DAA_REQUIRE_GPU=wgpu`
/// (a comma-separated list) only those named.
pub fn gpu_required(backend: &str) -> bool {
    std::env::var("DAA_REQUIRE_GPU").is_ok_and(|v| v == "1" || v.split(',').any(|b| b.trim() == backend))
}

/// Reports a missing device: a skip, or a failure when it is required.
pub fn skip(backend: &str, why: &str) {
    assert!(!gpu_required(backend), "{backend}: no device and DAA_REQUIRE_GPU requires it: {why}");
    println!("skipped: {backend}: {why}");
}

/// The shared wgpu backend, or `None` (after reporting the skip).
#[cfg(feature = "wgpu")]
pub fn wgpu_backend() -> Option<daa_core::Wgpu> {
    use std::sync::OnceLock;
    static BACKEND: OnceLock<Result<daa_core::Wgpu, String>> = OnceLock::new();
    match BACKEND.get_or_init(|| daa_core::Wgpu::new().map_err(|e| e.to_string())) {
        Ok(backend) => Some(backend.clone()),
        Err(why) => {
            skip("wgpu", why);
            None
        }
    }
}

/// The shared CUDA backend on device 0, or `None` (after reporting the skip).
#[cfg(feature = "cuda")]
pub fn cuda_backend() -> Option<daa_core::Cuda> {
    use std::sync::OnceLock;
    static BACKEND: OnceLock<Result<daa_core::Cuda, String>> = OnceLock::new();
    match BACKEND.get_or_init(|| daa_core::Cuda::new(0).map_err(|e| e.to_string())) {
        Ok(backend) => Some(backend.clone()),
        Err(why) => {
            skip("cuda", why);
            None
        }
    }
}
