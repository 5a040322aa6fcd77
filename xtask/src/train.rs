//! `cargo xtask train [--release] [DAA TRAIN ARGS…]`: builds the `daa`
//! command (showing cargo's progress) and runs `daa train` with the
//! arguments; `daa` checks the configuration. With no arguments: the built-in
//! tiny run (configs/tiny.toml, no download).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

pub fn run(args: &[String]) -> Result<()> {
    let release = args.iter().any(|a| a == "--release");
    let passthrough: Vec<&String> = args.iter().filter(|a| *a != "--release" && *a != "--").collect();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().context("workspace root")?.to_path_buf();
    // The same package and features `cargo test --workspace` builds `daa` with,
    // so the two commands share one build of burn.
    let mut build = Command::new(&cargo);
    build.current_dir(&root).args(["build", "--package", "daa-cli", "--bin", "daa"]);
    if release {
        build.arg("--release");
    }
    eprintln!("building daa ({}; the first build takes a while)", if release { "release" } else { "debug" });
    let status = build.status().context("running cargo build")?;
    if !status.success() {
        bail!("building daa failed ({status})");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let binary = target.join(if release { "release" } else { "debug" }).join("daa");
    let status = Command::new(&binary)
        .arg("train")
        .args(passthrough)
        .status()
        .with_context(|| format!("running {}", binary.display()))?;
    if !status.success() {
        bail!("daa train failed ({status})");
    }
    Ok(())
}
