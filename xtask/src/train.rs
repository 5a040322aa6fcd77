//! `cargo xtask train [--release] [--features LIST] [DAA TRAIN ARGS…]`:
//! builds the `daa` command (showing cargo's progress; `--features
//! train-cuda` or `train-wgpu` for GPU training) and runs `daa train` with
//! the other arguments; `daa` checks the configuration. With no arguments:
//! the over-optimisation testbed (configs/testbed.toml, no download; the
//! built-in tiny run is `--config configs/tiny.toml`). `cargo xtask
//! experiment` builds the same and runs `daa experiment`.

use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Args;

/// What `cargo xtask train` and `cargo xtask experiment` take.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Build with the release profile (faster training, a longer build).
    #[arg(long)]
    pub release: bool,
    /// Cargo features of the daa command (train-wgpu, train-cuda).
    #[arg(long)]
    pub features: Option<String>,
    /// Arguments for the daa subcommand (after the options above).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "DAA ARGS")]
    pub daa_args: Vec<String>,
}

/// Builds `daa` and runs `daa <subcommand> <daa_args>`.
pub fn build_and_run(subcommand: &str, args: &RunArgs) -> Result<()> {
    let root = crate::workspace_root()?;
    // The package alone: a newcomer's first build compiles only what `daa`
    // needs. (`--features train-wgpu,mpi` gives the features `cargo test
    // --workspace` builds with, so after the tests nothing is built again.)
    let mut build = crate::cargo();
    build.current_dir(&root).args(["build", "--package", "daa-cli", "--bin", "daa"]);
    if args.release {
        build.arg("--release");
    }
    if let Some(features) = &args.features {
        build.args(["--features", features]);
    }
    eprintln!("building daa ({}; the first build takes a while)", if args.release { "release" } else { "debug" });
    let status = build.status().context("running cargo build")?;
    if !status.success() {
        bail!("building daa failed ({status})");
    }
    let binary = crate::target_dir()?.join(if args.release { "release" } else { "debug" }).join("daa");
    // A `--` left among daa's arguments (`--config X -- --set …`) separated
    // xtask's options from daa's before; daa takes them without it.
    let status = Command::new(&binary)
        .arg(subcommand)
        .args(args.daa_args.iter().filter(|a| *a != "--"))
        .status()
        .with_context(|| format!("running {}", binary.display()))?;
    if !status.success() {
        bail!("daa {subcommand} failed ({status})");
    }
    Ok(())
}
