//! The per-operation benchmark (`daa_benches::ops`): forward and forward +
//! backward of attention, RMSNorm, RoPE, SwiGLU and a linear layer, and
//! one AdamW update, fused and unfused, on burn's CPU backend, with 1 and
//! 2 threads (each thread count in a process of its own), beside PyTorch's
//! own paths on the same sizes with `--torch PYTHON`
//! (`scripts/torch_ops_baseline.py`: `scaled_dot_product_attention`,
//! `rms_norm`, the fused AdamW). Prints a table and writes
//! `target/daa-bench/ops.{md,json}`.
//!
//! ```text
//! cargo xtask bench --ops [--torch] [--threads 1,2] [--repeats N]
//! fused_ops [--threads LIST] [--repeats N] [--torch PYTHON]
//! fused_ops --child --threads N --repeats N
//! ```

use std::process::Command;

use anyhow::{Context, Result};
use daa_benches::children::{last_json_line, manifest_dir, target_dir, value, with_threads};
use daa_benches::ops::{OpTime, measure_all};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let repeats: usize = value(&args, "--repeats").unwrap_or("5").parse().context("--repeats")?;
    let threads: Vec<usize> = value(&args, "--threads")
        .unwrap_or("1,2")
        .split(',')
        .map(|t| t.parse().with_context(|| format!("--threads {t}")))
        .collect::<Result<_>>()?;
    if args.iter().any(|a| a == "--child") {
        let rows = measure_all(threads[0], repeats);
        println!("{}", serde_json::to_string(&rows)?);
        return Ok(());
    }
    let mut rows: Vec<OpTime> = Vec::new();
    for &t in &threads {
        eprintln!("daa, {t} thread(s):");
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.args(["--child", "--threads", &t.to_string(), "--repeats", &repeats.to_string()]);
        rows.extend(last_json_line::<Vec<OpTime>>(with_threads(&mut cmd, t), "the daa measurement", true)?);
        if let Some(python) = value(&args, "--torch") {
            eprintln!("PyTorch, {t} thread(s):");
            let script = manifest_dir().join("../scripts/torch_ops_baseline.py");
            let mut cmd = Command::new(python);
            cmd.arg(script).args(["--threads", &t.to_string(), "--repeats", &repeats.to_string()]);
            rows.extend(last_json_line::<Vec<OpTime>>(with_threads(&mut cmd, t), "the PyTorch baseline", true)?);
        }
    }
    let table = table(&rows);
    println!("{table}");
    let out_dir = target_dir().join("daa-bench");
    std::fs::create_dir_all(&out_dir)?;
    std::fs::write(out_dir.join("ops.md"), &table)?;
    std::fs::write(out_dir.join("ops.json"), serde_json::to_string_pretty(&rows)?)?;
    eprintln!("written: {}", out_dir.join("ops.md").display());
    Ok(())
}

/// One markdown row per operation and thread count: milliseconds forward /
/// forward + backward per variant, and fused against PyTorch.
fn table(rows: &[OpTime]) -> String {
    let mut out = String::from(
        "| operation | threads | daa fused (fwd / fwd+bwd, ms) | daa unfused | PyTorch | fused / unfused | fused / PyTorch |\n\
         |---|---|---|---|---|---|---|\n",
    );
    let mut keys: Vec<(String, usize)> = Vec::new();
    for r in rows {
        if !keys.contains(&(r.op.clone(), r.threads)) {
            keys.push((r.op.clone(), r.threads));
        }
    }
    for (op, threads) in keys {
        let find = |variants: &[&str]| {
            rows.iter().find(|r| r.op == op && r.threads == threads && variants.contains(&r.variant.as_str()))
        };
        let cell = |r: Option<&OpTime>| match r {
            Some(r) => format!("{:.2} / {:.2}", r.forward_s * 1e3, r.step_s * 1e3),
            None => "–".into(),
        };
        let ratio = |a: Option<&OpTime>, b: Option<&OpTime>| match (a, b) {
            (Some(a), Some(b)) if b.step_s > 0.0 => format!("{:.2}×", a.step_s / b.step_s),
            _ => "–".into(),
        };
        let (fused, unfused, torch) = (find(&["daa-fused", "daa"]), find(&["daa-unfused"]), find(&["torch"]));
        out += &format!(
            "| {op} | {threads} | {} | {} | {} | {} | {} |\n",
            cell(fused),
            cell(unfused),
            cell(torch),
            ratio(fused, unfused),
            ratio(fused, torch)
        );
    }
    out
}
