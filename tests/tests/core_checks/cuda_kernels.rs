//! CUDA without a GPU: every kernel compiles to PTX with NVRTC 12 and 13
//! (CI installs the PyPI wheels nvidia-cuda-nvrtc-cu12 and nvidia-cuda-nvrtc
//! 13.0), and a missing driver is a clear error, never a panic.

use daa_core::cuda::kernels::{ENTRY_POINTS, compile_ptx, nvrtc_available};
use daa_core::cuda::libraries::{CudaLibrary, link_under_bare_name, nvrtc_version};

/// NVRTC is required when `DAA_REQUIRE_NVRTC=1` (CI) or a CUDA GPU is required.
fn nvrtc_or_skip() -> bool {
    if nvrtc_available() {
        return true;
    }
    let required = std::env::var("DAA_REQUIRE_NVRTC").is_ok_and(|v| v == "1") || daa_tests::gpu::gpu_required("cuda");
    assert!(!required, "NVRTC is required but libnvrtc could not be loaded (LD_LIBRARY_PATH?)");
    println!("skipped: cuda kernels: NVRTC not found");
    false
}

#[test]
fn every_cuda_kernel_compiles_to_ptx() {
    if !nvrtc_or_skip() {
        return;
    }
    let (major, minor) = nvrtc_version().expect("NVRTC loaded");
    println!("NVRTC {major}.{minor}");
    if let Ok(expected) = std::env::var("DAA_EXPECT_NVRTC_MAJOR") {
        assert_eq!(major.to_string(), expected, "the NVRTC loaded is not the one this run was started for");
    }
    for arch in ["compute_80", "compute_90"] {
        let ptx = compile_ptx(arch).unwrap_or_else(|e| panic!("{e}"));
        let text = ptx.to_src();
        for entry in ENTRY_POINTS {
            assert!(text.contains(&format!(".entry {entry}(")), "{arch}: PTX has no entry point {entry}");
        }
    }
}

/// Every NVRTC named in `DAA_NVRTC_LIBS` (folders holding `libnvrtc.so.N`:
/// CI names the cu12 and the CUDA 13 wheel) compiles the kernels: this test
/// binary runs the PTX test again in a child process whose `LD_LIBRARY_PATH`
/// holds only that NVRTC, linked under the name cudarc opens (as `daa` does
/// on a CUDA 13 machine), and which checks the version it loaded.
#[test]
fn every_installed_nvrtc_compiles_the_kernels() {
    let Some(folders) = std::env::var_os("DAA_NVRTC_LIBS") else {
        assert!(std::env::var("DAA_REQUIRE_NVRTC").is_err(), "DAA_REQUIRE_NVRTC=1 needs DAA_NVRTC_LIBS too");
        println!("skipped: DAA_NVRTC_LIBS names no NVRTC folders");
        return;
    };
    let links = tempfile::tempdir().unwrap();
    for (i, folder) in std::env::split_paths(&folders).enumerate() {
        let file = CudaLibrary::Nvrtc.versioned_files(std::slice::from_ref(&folder)).into_iter().next();
        let file = file.unwrap_or_else(|| panic!("{}: no libnvrtc.so.N in this folder", folder.display()));
        let major = file.file_name().unwrap().to_string_lossy().trim_start_matches("libnvrtc.so.").to_string();
        let link_dir = links.path().join(i.to_string());
        link_under_bare_name(&link_dir, CudaLibrary::Nvrtc, &file).unwrap();
        let library_path = std::env::join_paths([link_dir, folder.clone()]).unwrap();
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "cuda_kernels::every_cuda_kernel_compiles_to_ptx", "--nocapture"])
            .env("LD_LIBRARY_PATH", library_path)
            .env("DAA_EXPECT_NVRTC_MAJOR", &major)
            .env("DAA_REQUIRE_NVRTC", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("1 passed"),
            "NVRTC {major} from {}:\n{stdout}\n{}",
            folder.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        println!("{}", stdout.lines().find(|l| l.starts_with("NVRTC")).unwrap_or("NVRTC ?"));
    }
}

#[test]
fn every_cuda_source_is_compiled_and_names_its_twin() {
    let dir = daa_tests::manifest_dir().join("../shaders/cuda");
    let source = daa_core::cuda::kernels::source();
    let wgsl = daa_tests::manifest_dir().join("../shaders/wgsl");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(source.contains(&text), "{} is not part of the compiled source", path.display());
        assert!(
            text.starts_with("// ") && text.contains("twin"),
            "{} must start with a header naming its twins",
            path.display()
        );
        // Kernel files share stems with their WGSL twins.
        if path.extension().is_some_and(|e| e == "cu") {
            let stem = path.file_stem().unwrap().to_string_lossy().to_string();
            assert!(wgsl.join(format!("{stem}.wgsl")).exists(), "shaders/wgsl/{stem}.wgsl is missing");
        }
    }
}

#[test]
fn a_missing_driver_is_a_clear_error() {
    match daa_core::Cuda::new(0) {
        Ok(cuda) => println!("CUDA device present: {}", cuda.describe()),
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.contains("CUDA driver not found")
                    || message.contains("NVRTC not found")
                    || message.contains("cannot open CUDA device"),
                "{message}"
            );
            assert!(message.contains("cuda backend"), "{message}");
        }
    }
}

/// `scripts/gpu-check.sh run` on a machine without an NVIDIA GPU stops at
/// once with a message that says so (before unpacking or running anything).
#[test]
fn the_gpu_check_fails_fast_without_a_gpu() {
    let has_gpu = std::process::Command::new("nvidia-smi").arg("-L").output().is_ok_and(|o| o.status.success());
    if has_gpu {
        println!("skipped: this machine has an NVIDIA GPU");
        return;
    }
    let script = daa_tests::manifest_dir().join("../scripts/gpu-check.sh");
    let started = std::time::Instant::now();
    let output = std::process::Command::new("bash").arg(&script).arg("run").output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("no NVIDIA GPU here"), "{stderr}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "took {:?}", started.elapsed());
    let usage = std::process::Command::new("bash").arg(&script).output().unwrap();
    assert_eq!(usage.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&usage.stderr).contains("usage: scripts/gpu-check.sh build|run"));
}
