//! `cargo xtask bench`: run criterion, then read its JSON estimates and print
//! achieved bandwidth next to the read bandwidth measured in the same run.
//! `--quick` instead runs `daa bench` with the `daa` binary `cargo xtask
//! train` builds (no second build). The trainer benchmark's options need
//! `--trainer`.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::train::{RunArgs, build_and_run};
use serde_json::Value;

/// One benchmark's result.
#[derive(Debug)]
struct Row {
    /// criterion's function id, e.g. `cpu-2threads/f32/rows=2048`.
    function: String,
    /// criterion's parameter, e.g. `V=128256/k=10`.
    parameter: String,
    /// Mean time per iteration, seconds.
    seconds: f64,
    /// Bytes of logits read per iteration.
    bytes: f64,
}

impl Row {
    fn gbps(&self) -> f64 {
        self.bytes / self.seconds / 1e9
    }
}

/// What `cargo xtask bench` takes.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Kernels: `daa bench` (fast CPU rows, CUDA where a GPU is) with the
    /// debug `daa` binary instead of criterion's release build; with
    /// --trainer, the tiny and 5 M shapes with 3 repetitions.
    #[arg(long)]
    pub quick: bool,
    /// The trainer benchmark (a DPO step and a scoring pass) instead of the kernels.
    #[arg(long)]
    pub trainer: bool,
    /// The per-operation benchmark (forward and backward of attention,
    /// RMSNorm, RoPE, SwiGLU, a linear layer; an AdamW update), fused and
    /// unfused (`benches/fused_ops.rs`).
    #[arg(long, conflicts_with_all = ["trainer", "quick"])]
    pub ops: bool,
    /// Trainer and --ops: also time PyTorch (+ transformers for the trainer) on
    /// the same inputs (installed into a virtual environment outside the clone).
    #[arg(long)]
    pub torch: bool,
    /// Trainer: burn's CPU backend, `flex` (what `daa train` uses) or `ndarray`.
    #[arg(long, requires = "trainer")]
    pub backend: Option<String>,
    /// Trainer: burn's ndarray backend on the system's OpenBLAS.
    #[arg(long, requires = "trainer")]
    pub blas: bool,
    /// Trainer: `f32` or `bf16`.
    #[arg(long, requires = "trainer")]
    pub precision: Option<String>,
    /// Trainer: activation checkpointing.
    #[arg(long, requires = "trainer")]
    pub checkpointing: bool,
    /// Trainer: LoRA of this rank on every linear layer (α = 2r) instead of full training.
    #[arg(long, requires = "trainer", value_name = "RANK")]
    pub lora: Option<u32>,
    /// Trainer: model shapes, e.g. `tiny,5m,25m`.
    #[arg(long, requires = "trainer")]
    pub shapes: Option<String>,
    /// Trainer and --ops: thread counts, e.g. `1,2`.
    #[arg(long)]
    pub threads: Option<String>,
    /// Trainer and --ops: timed repetitions per measurement.
    #[arg(long)]
    pub repeats: Option<u32>,
    /// Kernels: criterion filters (benchmark ids to run; not with --quick).
    #[arg(conflicts_with_all = ["trainer", "quick", "ops"])]
    pub filter: Vec<String>,
}

/// `cargo xtask bench`.
pub fn run(args: &BenchArgs) -> Result<()> {
    if args.trainer {
        return trainer(args);
    }
    if args.ops {
        return ops(args);
    }
    if args.torch || args.threads.is_some() || args.repeats.is_some() {
        bail!("--torch, --threads and --repeats go with --trainer or --ops");
    }
    let target = crate::target_dir()?;
    let out_dir = target.join("daa-bench");
    std::fs::create_dir_all(&out_dir)?;
    if args.quick {
        // The fast CPU rows and a real GPU's rows, not the specification nor
        // wgpu (lavapipe on a machine without a GPU: minutes per row), from
        // the debug `daa` of `cargo xtask train`, whose kernels (daa-core)
        // are optimised like the dependencies (Cargo.toml's profile.dev).
        let out = |name: &str| out_dir.join(name).display().to_string();
        let daa_args = ["--backends", "cpu,cuda", "--out", &out("token_stats.md"), "--plot", &out("token_stats.svg")];
        let run = RunArgs { release: false, features: None, daa_args: daa_args.map(String::from).to_vec() };
        build_and_run("bench", &run)?;
        println!("written: {} and token_stats.svg", out_dir.join("token_stats.md").display());
        return Ok(());
    }
    let mut cmd = crate::cargo();
    cmd.args(["bench", "-p", "daa-benches", "--bench", "token_stats", "--"]).args(&args.filter);
    let started = std::time::SystemTime::now();
    let status = cmd.status().context("running cargo bench")?;
    if !status.success() {
        bail!("cargo bench failed ({status})");
    }
    // Only this run's results: criterion keeps every benchmark it ever ran.
    let rows = read_criterion(&target.join("criterion").join("token_stats"), started)?;
    if rows.is_empty() {
        bail!("no criterion results under {}", target.join("criterion").display());
    }
    let table = markdown_table(&rows);
    println!("\n{table}");
    std::fs::write(out_dir.join("token_stats.md"), &table)?;
    std::fs::write(out_dir.join("token_stats.svg"), bar_chart(&rows))?;
    println!("written: {} and token_stats.svg", out_dir.join("token_stats.md").display());
    Ok(())
}

/// `cargo xtask bench --ops [--torch] [--threads LIST] [--repeats N]`: the
/// per-operation benchmark (`benches/benches/fused_ops.rs`), with PyTorch's
/// paths beside (`scripts/torch_ops_baseline.py`, in the trainer
/// benchmark's virtual environment).
fn ops(args: &BenchArgs) -> Result<()> {
    let mut cmd = crate::cargo();
    cmd.args(["bench", "-p", "daa-benches", "--bench", "fused_ops", "--"]);
    if let Some(threads) = &args.threads {
        cmd.args(["--threads", threads]);
    }
    if let Some(repeats) = args.repeats {
        cmd.args(["--repeats", &repeats.to_string()]);
    }
    if args.torch {
        cmd.arg("--torch").arg(torch_python()?);
    }
    let status = cmd.status().context("running cargo bench")?;
    if !status.success() {
        bail!("the per-operation benchmark failed ({status})");
    }
    Ok(())
}

/// The PyTorch baseline's Python, its virtual environment installed first when missing.
fn torch_python() -> Result<std::path::PathBuf> {
    let root = crate::workspace_root()?;
    let script = root.join("scripts/torch_dpo_baseline.py");
    let status = Command::new("python3")
        .arg(&script)
        .args(["--install", "--setup-only"])
        .status()
        .context("running python3 (the PyTorch baseline needs Python 3)")?;
    if !status.success() {
        bail!("installing the PyTorch baseline failed ({status}); see {}", script.display());
    }
    let venv = std::env::var("DAA_TORCH_VENV").unwrap_or_else(|_| "/var/tmp/daa-torch-venv".into());
    Ok(Path::new(&venv).join("bin/python"))
}

/// `cargo xtask bench --trainer [--quick] [--torch] [--backend flex|ndarray] [--blas] [--precision f32|bf16] [--checkpointing] [--lora RANK] [--shapes LIST] [--threads LIST] [--repeats N]`:
/// the trainer benchmark (`benches/benches/trainer_step.rs`); `--quick` is
/// the tiny and 5 M shapes with 3 repetitions; `--backend` picks burn's CPU
/// backend (Flex, what `daa train` uses, by default; ndarray, the browser
/// demo's); `--blas` times ndarray on the system's OpenBLAS; `--torch` also times
/// PyTorch + transformers on the same checkpoints and batches, installing
/// them first into a virtual environment outside the clone.
fn trainer(args: &BenchArgs) -> Result<()> {
    let mut cmd = crate::cargo();
    cmd.args(["bench", "-p", "daa-benches", "--bench", "trainer_step"]);
    if args.blas {
        cmd.args(["--features", "blas"]);
    }
    cmd.arg("--");
    let backend = args.backend.as_deref().or(args.blas.then_some("ndarray"));
    let quick = |value: &'static str| args.quick.then_some(value.to_string());
    let options = [
        ("--backend", backend.map(str::to_string)),
        ("--precision", args.precision.clone()),
        ("--shapes", args.shapes.clone().or_else(|| quick("tiny,5m"))),
        ("--threads", args.threads.clone()),
        ("--repeats", args.repeats.map(|n| n.to_string()).or_else(|| quick("3"))),
        ("--lora", args.lora.map(|r| r.to_string())),
    ];
    for (flag, value) in options {
        if let Some(value) = value {
            cmd.args([flag, &value]);
        }
    }
    if args.checkpointing {
        cmd.arg("--checkpointing");
    }
    if args.torch && args.lora.is_some() {
        bail!(
            "--torch with --lora: the PyTorch baseline trains every weight; compare LoRA steps with daa's full steps"
        );
    }
    if args.torch {
        cmd.arg("--torch").arg(torch_python()?);
    }
    let status = cmd.status().context("running cargo bench")?;
    if !status.success() {
        bail!("the trainer benchmark failed ({status})");
    }
    Ok(())
}

/// Reads every `<function>/<parameter>/new/{benchmark,estimates}.json` under
/// `group` written since `since`.
fn read_criterion(group: &Path, since: std::time::SystemTime) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let mut stack = vec![group.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n == "new") {
                    let fresh = std::fs::metadata(path.join("estimates.json"))
                        .and_then(|m| m.modified())
                        .is_ok_and(|modified| modified >= since);
                    if fresh && let Some(row) = read_one(&path)? {
                        rows.push(row);
                    }
                } else if path.file_name().is_some_and(|n| n != "base" && n != "report" && n != "change") {
                    stack.push(path);
                }
            }
        }
    }
    // Backend, then vocabulary and k in numeric order.
    let numbers =
        |r: &Row| -> Vec<u64> { r.parameter.split('/').filter_map(|p| p.split('=').nth(1)?.parse().ok()).collect() };
    rows.sort_by(|a, b| (&a.function, numbers(a)).cmp(&(&b.function, numbers(b))));
    Ok(rows)
}

fn read_one(new_dir: &Path) -> Result<Option<Row>> {
    let read = |name: &str| -> Result<Option<Value>> {
        match std::fs::read(new_dir.join(name)) {
            Ok(bytes) => {
                Ok(Some(serde_json::from_slice(&bytes).with_context(|| format!("{}", new_dir.join(name).display()))?))
            }
            Err(_) => Ok(None),
        }
    };
    let (Some(bench), Some(est)) = (read("benchmark.json")?, read("estimates.json")?) else { return Ok(None) };
    let bytes = bench["throughput"]["Bytes"].as_f64().or_else(|| bench["throughput"]["BytesDecimal"].as_f64());
    let (Some(bytes), Some(ns)) = (bytes, est["mean"]["point_estimate"].as_f64()) else { return Ok(None) };
    Ok(Some(Row {
        function: bench["function_id"].as_str().unwrap_or("?").to_string(),
        parameter: bench["value_str"].as_str().unwrap_or("?").to_string(),
        seconds: ns * 1e-9,
        bytes,
    }))
}

impl Row {
    /// Whether the row is the read bandwidth (`read-1thread`, `read-2threads`), not a kernel.
    fn is_read(&self) -> bool {
        self.function.starts_with("read-")
    }

    /// The backend part of the function id (`cpu-2threads`, `read-1thread`).
    fn backend(&self) -> &str {
        self.function.split('/').next().unwrap_or("?")
    }
}

/// The read bandwidths measured in this run, as a sentence.
fn read_note(rows: &[Row]) -> String {
    let reads: Vec<String> =
        rows.iter().filter(|r| r.is_read()).map(|r| format!("{} {:.1} GB/s", r.backend(), r.gbps())).collect();
    if reads.is_empty() {
        "the read bandwidth was not measured in this run (DAA_BENCH_BACKENDS without read1, read2)".into()
    } else {
        format!(
            "memory bandwidth measured in this run (CPU: read; CUDA: device copy, read + write): {}",
            reads.join(", ")
        )
    }
}

fn markdown_table(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "token_stats throughput ({})\n", read_note(rows));
    let _ = writeln!(s, "| backend | dtype | rows | V | k | ms/iter | GB/s |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    for r in rows {
        let f: Vec<&str> = r.function.split('/').collect();
        let p: Vec<&str> = r.parameter.split('/').collect();
        let field =
            |parts: &[&str], key: &str| parts.iter().find_map(|x| x.strip_prefix(key)).unwrap_or("?").to_string();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.1} | {:.2} |",
            f.first().unwrap_or(&"?"),
            f.get(1).unwrap_or(&"?"),
            field(&f, "rows="),
            field(&p, "V="),
            if r.is_read() { "—".to_string() } else { field(&p, "k=") },
            r.seconds * 1e3,
            r.gbps()
        );
    }
    s
}

/// A horizontal bar chart of GB/s, one bar per kernel benchmark, with the
/// read bandwidths measured in the same run as reference lines.
fn bar_chart(all: &[Row]) -> String {
    let (bar_h, label_w, chart_w) = (18.0, 330.0, 520.0);
    let (reads, rows): (Vec<&Row>, Vec<&Row>) = all.iter().partition(|r| r.is_read());
    let max = all.iter().map(Row::gbps).fold(1.0f64, f64::max) * 1.05;
    let height = 90.0 + bar_h * rows.len() as f64 + 15.0 * reads.len() as f64;
    let x = |gbps: f64| label_w + chart_w * gbps / max;
    let mut s = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{}' height='{height}' font-family='sans-serif' font-size='11'>\n",
        label_w + chart_w + 110.0
    );
    let _ = writeln!(s, "<rect width='100%' height='100%' fill='white'/>");
    let _ = writeln!(s, "<text x='10' y='20' font-size='14'>daa token_stats: GB/s of logits read</text>");
    for (i, r) in rows.iter().enumerate() {
        let y = 40.0 + bar_h * i as f64;
        let colour = if r.function.starts_with("spec") {
            "#999"
        } else if r.function.contains("1thread") {
            "#6a9fd8"
        } else {
            "#1f5fa8"
        };
        let _ = writeln!(
            s,
            "<text x='{}' y='{}' text-anchor='end'>{} {}</text>",
            label_w - 6.0,
            y + 13.0,
            r.function,
            r.parameter
        );
        let _ = writeln!(
            s,
            "<rect x='{label_w}' y='{}' width='{:.1}' height='{}' fill='{colour}'/>",
            y + 2.0,
            x(r.gbps()) - label_w,
            bar_h - 4.0
        );
        let _ = writeln!(s, "<text x='{:.1}' y='{}'>{:.2}</text>", x(r.gbps()) + 4.0, y + 13.0, r.gbps());
    }
    let bottom = 40.0 + bar_h * rows.len() as f64;
    for (i, read) in reads.iter().enumerate() {
        let (gbps, label) = (read.gbps(), format!("{} ({:.1} GB/s)", read.backend(), read.gbps()));
        let bottom = bottom + 15.0 * i as f64;
        let _ = writeln!(
            s,
            "<line x1='{0:.1}' x2='{0:.1}' y1='30' y2='{bottom}' stroke='#c33' stroke-dasharray='4 3'/>",
            x(gbps)
        );
        let _ = writeln!(
            s,
            "<text x='{:.1}' y='{}' fill='#c33' text-anchor='middle'>{label}</text>",
            x(gbps),
            bottom + 15.0
        );
    }
    s.push_str("</svg>\n");
    s
}
