//! `cargo xtask`: project automation. Orchestration only; no library logic.
//!
//! - `cargo xtask bench [FILTER]`: runs the criterion benchmarks (release
//!   build) and prints a GB/s table beside the read bandwidth of the same run
//!   (plus `target/daa-bench/token_stats.{md,svg}`); `--quick` runs `daa
//!   bench` with the debug `daa` instead (no second build).
//! - `cargo xtask bench --trainer [--quick] [--torch]`: times a DPO step and
//!   a scoring pass of the trainer (plus `target/daa-bench/trainer.{md,svg}`),
//!   beside PyTorch + transformers with `--torch`.
//! - `cargo xtask train [--release] [DAA TRAIN ARGS…]`: builds and runs
//!   `daa train` (the over-optimisation testbed without arguments).
//! - `cargo xtask experiment [--release] [DAA EXPERIMENT ARGS…]`: builds and
//!   runs `daa experiment` (a sweep on the testbed and its report).
//! - `cargo xtask web [--no-serve | --test] [--port N] [--run FILE]`: builds
//!   the browser demo into `web/pkg/` and serves `web/` on 127.0.0.1.
//! - `cargo xtask fuzz [TARGET] [--time S] [--engine auto|libfuzzer|random]`:
//!   fuzzes the parsers of user files (crates/daa-fuzz).

mod bench;
mod fuzz;
mod train;
mod web;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};
use clap::Parser;

/// daa's project automation.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", version, about)]
enum Task {
    /// The criterion benchmarks of the kernels (a GB/s table and chart), or
    /// with --trainer the trainer benchmark (a DPO step beside PyTorch).
    Bench(bench::BenchArgs),
    /// Builds the `daa` command and runs `daa train` (the testbed without arguments).
    Train(train::RunArgs),
    /// Builds the `daa` command and runs `daa experiment` (a testbed sweep and its report).
    Experiment(train::RunArgs),
    /// Builds the browser demo into web/pkg/ and serves web/ on 127.0.0.1 (or tests it).
    Web(web::WebArgs),
    /// Fuzzes the parsers of user files (libFuzzer, or the stable randomised engine).
    Fuzz(fuzz::FuzzArgs),
}

/// `cargo` as the one running the xtask found it (`$CARGO`), or from `PATH`.
fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// The workspace's root folder: the parent of xtask's manifest folder, as
/// `cargo run` sets it when the task starts (the path compiled in may be
/// another clone's when clones share a target folder), else as compiled.
fn workspace_root() -> Result<PathBuf> {
    let manifest =
        std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    Ok(manifest.parent().context("workspace root")?.to_path_buf())
}

/// Where cargo builds, as `cargo metadata` says (`CARGO_TARGET_DIR`, a
/// configured target folder, or `target/` of the workspace).
fn target_dir() -> Result<PathBuf> {
    let out = cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(workspace_root()?)
        .output()
        .context("running cargo metadata")?;
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).context("parsing cargo metadata")?;
    let dir = meta["target_directory"].as_str().context("cargo metadata has no target_directory")?;
    Ok(PathBuf::from(dir))
}

fn main() -> Result<()> {
    match Task::parse() {
        Task::Bench(args) => bench::run(&args),
        Task::Train(args) => train::build_and_run("train", &args),
        Task::Experiment(args) => train::build_and_run("experiment", &args),
        Task::Web(args) => web::run(&args),
        Task::Fuzz(args) => fuzz::run(&args),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent_and_passes_daa_arguments_through() {
        Task::command().debug_assert();
        let Task::Train(args) =
            Task::parse_from(["xtask", "train", "--release", "--config", "configs/tiny.toml", "--set", "a.b=1"])
        else {
            panic!("not train")
        };
        assert!(args.release);
        assert_eq!(args.daa_args, ["--config", "configs/tiny.toml", "--set", "a.b=1"]);
        // A `--` after daa's first argument stays among daa's (build_and_run drops it).
        let Task::Train(args) = Task::parse_from(["xtask", "train", "--config", "a.toml", "--", "--set", "b=1"]) else {
            panic!("not train")
        };
        assert_eq!(args.daa_args, ["--config", "a.toml", "--", "--set", "b=1"]);
        let Task::Train(args) = Task::parse_from(["xtask", "train", "--", "--config", "configs/tiny.toml"]) else {
            panic!("not train")
        };
        assert!(!args.release && args.features.is_none());
        assert_eq!(args.daa_args, ["--config", "configs/tiny.toml"]);
        let Task::Bench(args) = Task::parse_from(["xtask", "bench", "--trainer", "--quick", "--shapes", "tiny"]) else {
            panic!("not bench")
        };
        assert!(args.trainer && args.quick);
        assert_eq!(args.shapes.as_deref(), Some("tiny"));
        // Trainer options without --trainer, and filters with --quick, are refused, not ignored.
        assert!(Task::try_parse_from(["xtask", "bench", "--shapes", "tiny"]).is_err());
        assert!(Task::try_parse_from(["xtask", "bench", "--quick", "cpu-2threads"]).is_err());
        assert!(Task::try_parse_from(["xtask", "web", "--port", "eighty"]).is_err());
    }
}
