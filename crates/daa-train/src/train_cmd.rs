//! `daa train`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use daa_train::train::{TrainConfig, train};

/// Arguments of `daa train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// TOML configuration (see configs/); the built-in tiny run when absent.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a field: --set train.lr=1e-6 (repeatable).
    #[arg(long = "set", value_name = "SECTION.FIELD=VALUE")]
    overrides: Vec<String>,
    /// Checkpoint folder, or run folder (its latest checkpoint), to continue from.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Shorthand for --set model.path=DIR.
    #[arg(long)]
    model: Option<String>,
    /// Shorthand for --set data.path=FILE.
    #[arg(long)]
    data: Option<String>,
    /// Shorthand for --set train.output_dir=DIR.
    #[arg(long)]
    out: Option<String>,
    /// Shorthand for --set model.backend=NAME (cpu, wgpu, cuda).
    #[arg(long)]
    backend: Option<String>,
    /// Shorthand for --set train.max_steps=N.
    #[arg(long)]
    max_steps: Option<u64>,
    /// Shorthand for --set data.strict=true: stop at the first bad row.
    #[arg(long)]
    strict: bool,
}

fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Runs `daa train`.
pub fn run(args: &TrainArgs) -> Result<()> {
    let mut overrides = args.overrides.clone();
    let shorthands = [
        ("model.path", args.model.as_deref().map(quoted)),
        ("data.path", args.data.as_deref().map(quoted)),
        ("train.output_dir", args.out.as_deref().map(quoted)),
        ("model.backend", args.backend.as_deref().map(quoted)),
        ("train.max_steps", args.max_steps.map(|n| n.to_string())),
        ("data.strict", args.strict.then(|| "true".to_string())),
    ];
    overrides.extend(shorthands.into_iter().filter_map(|(k, v)| v.map(|v| format!("{k}={v}"))));
    let config = TrainConfig::load(args.config.as_deref(), &overrides)?;
    train(config, args.resume.clone())?;
    Ok(())
}
