//! `cargo xtask fuzz [TARGET] [--time S] [--engine auto|libfuzzer|random]`:
//! fuzzes one target of crates/daa-fuzz (or each in turn) for S seconds.
//!
//! - `libfuzzer`: coverage-guided, through `cargo +nightly fuzz` (the `fuzz/`
//!   package; AddressSanitizer, debug assertions, release optimisation). The
//!   corpus it grows is kept in `<target dir>/fuzz-corpus/<target>` between
//!   runs, the committed seeds `fuzz/corpus/<target>` and regressions
//!   `fuzz/regressions/<target>` are read beside it; crashes land in
//!   `fuzz/artifacts/<target>/`.
//! - `random`: the randomised mutation engine of daa-fuzz on the stable
//!   toolchain (no coverage feedback; what CI runs), over the seeds and
//!   regressions, with the `daa-fuzz` binary of the test build's features
//!   (`cargo build --workspace --all-targets`: after `cargo test
//!   --workspace`, only the benches to build).
//! - `auto` (default): libFuzzer when `cargo fuzz` and a nightly toolchain
//!   are installed, else random.
//!
//! The browser's run viewer reads `metrics.jsonl` and `samples.jsonl` in
//! JavaScript: targets `metrics_viewer` and `samples_viewer` run
//! `web/tests/metrics.fuzz.mjs` and `web/tests/samples.fuzz.mjs`
//! (fast-check, property runs, whatever the engine).
//!
//! Every run appends a line to `<target dir>/fuzz-log.jsonl` (target,
//! engine, seconds, executions, coverage, failures).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use serde_json::json;

/// The targets, as crates/daa-fuzz lists them (checked by a test there).
pub const TARGETS: [&str; 9] = [
    "safetensors",
    "checkpoint",
    "tokenizer",
    "rows_jsonl",
    "rows_parquet",
    "train_config",
    "chat_template",
    "loss_lines",
    "metrics",
];

/// The JavaScript targets (not in daa-fuzz): the run viewer's readers of
/// `metrics.jsonl` and `samples.jsonl`, and their fast-check scripts in web/tests.
pub const VIEWER_TARGETS: [(&str, &str); 2] =
    [("metrics_viewer", "metrics.fuzz.mjs"), ("samples_viewer", "samples.fuzz.mjs")];

/// The fast-check script of a viewer target.
fn viewer_script(target: &str) -> Option<&'static str> {
    VIEWER_TARGETS.iter().find(|(name, _)| *name == target).map(|(_, script)| *script)
}

/// Which fuzzing engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Engine {
    /// libFuzzer when cargo-fuzz and nightly are installed, else random.
    Auto,
    /// Coverage-guided libFuzzer (`cargo +nightly fuzz`).
    Libfuzzer,
    /// The randomised mutation engine on the stable toolchain.
    Random,
}

/// What `cargo xtask fuzz` takes.
#[derive(Debug, Args)]
pub struct FuzzArgs {
    /// One target (all of them, one after another, without).
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(TARGETS.iter().chain(VIEWER_TARGETS.iter().map(|(t, _)| t))))]
    pub target: Option<String>,
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    pub time: u64,
    /// Which engine.
    #[arg(long, value_enum, default_value_t = Engine::Auto)]
    pub engine: Engine,
    /// libFuzzer: parallel jobs per target (each one core).
    #[arg(long, default_value_t = 1)]
    pub jobs: u32,
}

fn libfuzzer_available() -> bool {
    let ok = |cmd: &mut Command| cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    ok(Command::new("cargo").args(["+nightly", "fuzz", "--version"]))
}

/// One target's outcome.
struct Outcome {
    executions: Option<u64>,
    coverage: Option<String>,
    failed: bool,
}

fn run_libfuzzer(root: &Path, target: &str, args: &FuzzArgs, target_dir: &Path) -> Result<Outcome> {
    let corpus = target_dir.join("fuzz-corpus").join(target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("{}: cannot create", corpus.display()))?;
    let artifacts = root.join("fuzz/artifacts").join(target);
    std::fs::create_dir_all(&artifacts).with_context(|| format!("{}: cannot create", artifacts.display()))?;
    let mut command = Command::new("cargo");
    command
        .current_dir(root.join("fuzz"))
        .env("CARGO_TARGET_DIR", target_dir.join("fuzz"))
        .args(["+nightly", "fuzz", "run", "-O", "--debug-assertions", target])
        .arg(&corpus)
        .arg(root.join("fuzz/corpus").join(target));
    let regressions = root.join("fuzz/regressions").join(target);
    if regressions.is_dir() {
        command.arg(&regressions);
    }
    command.arg("--").args([
        format!("-max_total_time={}", args.time),
        "-print_final_stats=1".into(),
        "-rss_limit_mb=4096".into(),
        "-timeout=30".into(),
        format!("-artifact_prefix={}/", artifacts.display()),
    ]);
    if args.jobs > 1 {
        command.args([format!("-jobs={}", args.jobs), format!("-workers={}", args.jobs)]);
    }
    let output = command.stderr(Stdio::piped()).output().context("running cargo fuzz")?;
    let log = String::from_utf8_lossy(&output.stderr);
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    for line in tail.iter().rev() {
        eprintln!("{line}");
    }
    let stat = |key: &str| {
        log.lines().rev().find_map(|l| l.strip_prefix(key).map(|v| v.trim().trim_start_matches(':').trim().to_string()))
    };
    let coverage = log.lines().rev().find(|l| l.contains(" cov: ")).map(|l| {
        let at = l.find("cov:").unwrap_or(0);
        l[at..].split_whitespace().take(6).collect::<Vec<_>>().join(" ")
    });
    Ok(Outcome {
        executions: stat("stat::number_of_executed_units").and_then(|v| v.parse().ok()),
        coverage,
        failed: !output.status.success(),
    })
}

fn run_viewer(root: &Path, script: &str, args: &FuzzArgs) -> Result<Outcome> {
    let tests = crate::web::node_packages(root)?;
    let output = Command::new("node")
        .current_dir(&tests)
        .args([script, "--time"])
        .arg(args.time.to_string())
        .stderr(Stdio::inherit())
        .output()
        .context("running node (scripts/setup.sh --web installs it)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    print!("{text}");
    let executions = text.split_whitespace().nth(1).and_then(|n| n.parse().ok());
    Ok(Outcome { executions, coverage: None, failed: !output.status.success() })
}

/// Builds the daa-fuzz binary with the features of the test build: every
/// target of the workspace, so dev-dependencies take part in feature
/// unification as in `cargo test --workspace` (a binary alone would build
/// burn's stack again with other features). After CI's test and bench
/// builds, nothing is built. Its path.
fn build_random_engine(root: &Path, target_dir: &Path) -> Result<PathBuf> {
    let status = Command::new("cargo")
        .current_dir(root)
        .args(["build", "--quiet", "--workspace", "--all-targets"])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("building daa-fuzz failed ({status})");
    }
    Ok(target_dir.join("debug").join("daa-fuzz"))
}

fn run_random(root: &Path, engine: &Path, target: &str, args: &FuzzArgs) -> Result<Outcome> {
    let output = Command::new(engine)
        .args(["run", target, "--time"])
        .arg(args.time.to_string())
        .arg("--artifacts")
        .arg(root.join("fuzz/artifacts"))
        .arg(root.join("fuzz/corpus").join(target))
        .arg(root.join("fuzz/regressions").join(target))
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", engine.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    print!("{text}");
    let executions = text.split_whitespace().nth(1).and_then(|n| n.parse().ok());
    Ok(Outcome { executions, coverage: None, failed: !output.status.success() })
}

/// Runs the fuzz targets.
pub fn run(args: &FuzzArgs) -> Result<()> {
    let root = crate::workspace_root()?;
    let target_dir = crate::target_dir()?;
    let engine = match args.engine {
        Engine::Auto if libfuzzer_available() => Engine::Libfuzzer,
        Engine::Auto => {
            eprintln!("cargo-fuzz or a nightly toolchain is missing: the randomised engine (stable) runs instead");
            Engine::Random
        }
        Engine::Libfuzzer if !libfuzzer_available() => {
            bail!(
                "libFuzzer needs `cargo install cargo-fuzz` and a nightly toolchain (`rustup toolchain install nightly`)"
            )
        }
        other => other,
    };
    let targets: Vec<&str> = match &args.target {
        Some(t) => vec![t.as_str()],
        None => TARGETS.iter().copied().chain(VIEWER_TARGETS.iter().map(|(t, _)| *t)).collect(),
    };
    let random_engine = match engine {
        Engine::Random if targets.iter().any(|t| viewer_script(t).is_none()) => {
            Some(build_random_engine(&root, &target_dir)?)
        }
        _ => None,
    };
    let mut failed = Vec::new();
    let mut log = String::new();
    for target in targets {
        eprintln!("fuzzing {target} for {} s", args.time);
        let started = Instant::now();
        let (outcome, used) = match engine {
            _ if let Some(script) = viewer_script(target) => (run_viewer(&root, script, args)?, "fast-check"),
            Engine::Libfuzzer => (run_libfuzzer(&root, target, args, &target_dir)?, "libfuzzer"),
            _ => {
                let engine = random_engine.as_deref().context("the random engine was not built")?;
                (run_random(&root, engine, target, args)?, "random")
            }
        };
        let seconds = started.elapsed().as_secs_f64();
        if outcome.failed {
            failed.push(target);
        }
        let line = json!({
            "target": target, "engine": used, "seconds": seconds.round(),
            "jobs": if engine == Engine::Libfuzzer { args.jobs } else { 1 },
            "executions": outcome.executions, "coverage": outcome.coverage, "failed": outcome.failed,
            "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        });
        log.push_str(&format!("{line}\n"));
    }
    append(&target_dir.join("fuzz-log.jsonl"), &log)?;
    if !failed.is_empty() {
        bail!("fuzzing found failures in {} (inputs under fuzz/artifacts/)", failed.join(", "));
    }
    Ok(())
}

fn append(path: &PathBuf, text: &str) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("{}: cannot open", path.display()))?;
    file.write_all(text.as_bytes()).with_context(|| format!("{}: cannot write", path.display()))
}
