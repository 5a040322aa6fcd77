//! `cargo xtask train [--release] [--config FILE] [DAA TRAIN ARGS…]`: builds
//! `daa` (every backend is compiled in; the configuration's `model.backend`
//! is checked here) and runs `daa train`.
//! With no arguments: the built-in tiny run (configs/tiny.toml, no download).

use std::process::Command;

use anyhow::{Context, Result, bail};

/// The `model.backend` a configuration file names (`cpu` when absent).
fn configured_backend(path: &str) -> Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{path}: cannot read"))?;
    let mut in_model = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_model = line == "[model]";
        } else if in_model && let Some(value) = line.strip_prefix("backend") {
            let value = value.trim_start().trim_start_matches('=').trim();
            return Ok(value.split('#').next().unwrap_or("").trim().trim_matches('"').to_string());
        }
    }
    Ok("cpu".into())
}

pub fn run(args: &[String]) -> Result<()> {
    let mut release = false;
    let mut passthrough = Vec::new();
    let mut backend = "cpu".to_string();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--release" => release = true,
            "--" => {}
            "--config" => {
                let path = iter.next().context("--config needs a file")?;
                backend = configured_backend(path)?;
                passthrough.extend(["--config".to_string(), path.clone()]);
            }
            "--backend" => {
                let name = iter.next().context("--backend needs a name")?;
                backend = name.clone();
                passthrough.extend(["--backend".to_string(), name.clone()]);
            }
            _ => passthrough.push(arg.clone()),
        }
    }
    if !matches!(backend.as_str(), "cpu" | "wgpu" | "cuda") {
        bail!("model.backend `{backend}`: expected cpu, wgpu or cuda");
    }
    // daa's default features build every backend (cpu, wgpu, cuda; the GPU ones
    // load their drivers at run time). Building what `cargo test --workspace`
    // builds (all targets: dev-dependencies change the features of shared
    // crates such as burn's) makes the two commands share one build instead of
    // compiling burn twice.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("workspace root")?.to_path_buf();
    let mut build = Command::new(&cargo);
    build.current_dir(&root).args(["build", "--quiet", "--workspace", "--all-targets"]);
    if release {
        build.arg("--release");
    }
    let status = build.status().context("running cargo build")?;
    if !status.success() {
        bail!("building daa failed ({status})");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), std::path::PathBuf::from);
    let binary = target.join(if release { "release" } else { "debug" }).join("daa");
    let status = Command::new(&binary)
        .arg("train")
        .args(&passthrough)
        .status()
        .with_context(|| format!("running {}", binary.display()))?;
    if !status.success() {
        bail!("daa train failed ({status})");
    }
    Ok(())
}
