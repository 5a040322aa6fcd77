//! What the benchmark binaries share about the processes they start: the
//! thread count a child gets, its last JSON line, and where results go.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The value after `flag` on the command line.
pub fn value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).map(String::as_str)
}

/// `cmd` with every thread pool a child may start (rayon, gemm, BLAS, OpenMP, MKL) set to `threads`.
pub fn with_threads(cmd: &mut Command, threads: usize) -> &mut Command {
    for var in ["RAYON_NUM_THREADS", "MATMUL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"]
    {
        cmd.env(var, threads.to_string());
    }
    cmd
}

/// Runs `cmd` and reads its last line that starts with `{` or `[` as `T`.
/// With `echo_stderr` the child's standard error (its progress) is printed
/// as it came; otherwise a failure's message carries it.
pub fn last_json_line<T: serde::de::DeserializeOwned>(cmd: &mut Command, what: &str, echo_stderr: bool) -> Result<T> {
    let out = cmd.output().with_context(|| format!("starting {what}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if echo_stderr {
        eprint!("{stderr}");
    }
    if !out.status.success() {
        if echo_stderr {
            bail!("{what} failed ({})", out.status);
        }
        bail!("{what} failed ({}): {}", out.status, stderr.trim());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{') || l.starts_with('['))
        .with_context(|| format!("{what} printed no result"))?;
    serde_json::from_str(line).with_context(|| format!("{what}: reading `{line}`"))
}

/// `CARGO_TARGET_DIR`, or the workspace's `target/`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().parent().unwrap_or(Path::new(".")).join("target"))
}

/// This package's folder: the `CARGO_MANIFEST_DIR` cargo sets when it runs
/// the benchmark (the path compiled in may be another clone's when clones
/// share a target folder), else the one compiled in.
pub fn manifest_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()))
}
