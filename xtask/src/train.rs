//! `cargo xtask train [--release] [--features LIST] [DAA TRAIN ARGS…]`:
//! builds the `daa` command (showing cargo's progress; `--features
//! train-cuda` or `train-wgpu` for GPU training) and runs `daa train` with
//! the other arguments; `daa` checks the configuration. With no arguments:
//! the over-optimisation testbed (configs/testbed.toml, no download; the
//! built-in tiny run is `--config configs/tiny.toml`).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// `cargo xtask train`.
pub fn run(args: &[String]) -> Result<()> {
    build_and_run("train", args)
}

/// `cargo xtask experiment [--release] [DAA EXPERIMENT ARGS…]`: the same
/// build, then `daa experiment`.
pub fn experiment(args: &[String]) -> Result<()> {
    build_and_run("experiment", args)
}

fn build_and_run(subcommand: &str, args: &[String]) -> Result<()> {
    let (mut release, mut features, mut passthrough) = (false, None, Vec::new());
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--release" => release = true,
            "--features" => features = Some(iter.next().context("--features needs a list (train-wgpu,train-cuda)")?),
            "--" => {}
            _ => passthrough.push(arg),
        }
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().context("workspace root")?.to_path_buf();
    // The package alone: a newcomer's first build compiles only what `daa`
    // needs. (`--features train-wgpu` gives the features `cargo test
    // --workspace` builds with, so after the tests burn is not built again.)
    let mut build = Command::new(&cargo);
    build.current_dir(&root).args(["build", "--package", "daa-cli", "--bin", "daa"]);
    if release {
        build.arg("--release");
    }
    if let Some(features) = features {
        build.args(["--features", features]);
    }
    eprintln!("building daa ({}; the first build takes a while)", if release { "release" } else { "debug" });
    let status = build.status().context("running cargo build")?;
    if !status.success() {
        bail!("building daa failed ({status})");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let binary = target.join(if release { "release" } else { "debug" }).join("daa");
    let status = Command::new(&binary)
        .arg(subcommand)
        .args(passthrough)
        .status()
        .with_context(|| format!("running {}", binary.display()))?;
    if !status.success() {
        bail!("daa {subcommand} failed ({status})");
    }
    Ok(())
}
