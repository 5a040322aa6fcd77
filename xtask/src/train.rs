//! `cargo xtask train [--release] [--config FILE] [DAA TRAIN ARGS…]`: builds
//! `daa` with the backend the configuration asks for and runs `daa train`.
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
    let features = match backend.as_str() {
        "cpu" => "cli",
        "wgpu" => "cli,wgpu",
        "cuda" => "cli,cuda",
        other => bail!("model.backend `{other}`: expected cpu, wgpu or cuda"),
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command.args(["run", "--quiet", "-p", "daa-train", "--bin", "daa", "--features", features]);
    if release {
        command.arg("--release");
    }
    command.arg("--").arg("train").args(&passthrough);
    let status = command.status().context("running cargo")?;
    if !status.success() {
        bail!("daa train failed ({status})");
    }
    Ok(())
}
