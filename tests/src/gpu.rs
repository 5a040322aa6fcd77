//! GPU backends for tests: opened once per test process; without a device a
//! test prints `skipped: <why>` and passes, unless `DAA_REQUIRE_GPU=1`.

/// Whether a missing GPU fails the tests.
pub fn gpu_required() -> bool {
    std::env::var("DAA_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

/// Reports a missing device: a skip, or a failure under `DAA_REQUIRE_GPU=1`.
pub fn skip(backend: &str, why: &str) {
    assert!(!gpu_required(), "{backend}: no device and DAA_REQUIRE_GPU=1: {why}");
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
