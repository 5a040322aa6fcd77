//! `daa-fuzz`: the seed corpus, replays, and randomised runs on the stable
//! toolchain (`cargo xtask fuzz` calls it; see the crate documentation).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use daa_fuzz::{TARGETS, Target, engine, seeds, target};

const USAGE: &str = "usage:
  daa-fuzz seeds DIR                      write the seed corpus under DIR/<target>/
  daa-fuzz replay TARGET FILE|DIR...      run inputs once (exit 1 if any fails)
  daa-fuzz run TARGET --time S [--seed N] --artifacts DIR CORPUS_DIR...
                                          randomised mutations of the corpus for S seconds
  daa-fuzz list                           the targets";

fn files(paths: &[PathBuf]) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("{}: cannot list", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.extension().is_none_or(|e| e != "txt"))
                .collect();
            entries.sort();
            for file in entries {
                let bytes = std::fs::read(&file).with_context(|| format!("{}: cannot read", file.display()))?;
                out.push((file, bytes));
            }
        } else if path.exists() {
            out.push((path.clone(), std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?));
        }
    }
    Ok(out)
}

fn named(name: &str) -> Result<Target> {
    target(name).with_context(|| {
        let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
        format!("no fuzz target `{name}` (targets: {})", names.join(", "))
    })
}

fn replay(target: Target, paths: &[PathBuf]) -> Result<bool> {
    let inputs = files(paths)?;
    let mut ok = true;
    for (path, bytes) in &inputs {
        match engine::execute(target, bytes) {
            Ok(verdict) => println!("{}: {verdict:?}", path.display()),
            Err(message) => {
                eprintln!("{}: FAILED: {message}", path.display());
                ok = false;
            }
        }
    }
    println!("{}: {} inputs replayed, {}", target.name, inputs.len(), if ok { "all passed" } else { "some FAILED" });
    Ok(ok)
}

fn run(args: &[String]) -> Result<bool> {
    let (mut time, mut seed, mut artifacts, mut corpus) = (None, 1u64, None, Vec::new());
    let mut i = 1;
    while i < args.len() {
        let value = || args.get(i + 1).with_context(|| format!("`{}` needs a value", args[i]));
        match args[i].as_str() {
            "--time" => time = Some(value()?.parse::<f64>().context("--time: seconds")?),
            "--seed" => seed = value()?.parse().context("--seed: a number")?,
            "--artifacts" => artifacts = Some(PathBuf::from(value()?)),
            dir => {
                corpus.push(PathBuf::from(dir));
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    let target = named(&args[0])?;
    let time = Duration::from_secs_f64(time.context("--time S is required")?);
    let artifacts = artifacts.context("--artifacts DIR is required")?;
    let inputs: Vec<Vec<u8>> = files(&corpus)?.into_iter().map(|(_, b)| b).collect();
    let report = engine::run(target, &inputs, time, seed, &artifacts, 10);
    println!(
        "{}: {} executions in {:.0} s ({:.0}/s) from {} corpus inputs, slowest {:.3} s, {} failures",
        target.name,
        report.executions,
        time.as_secs_f64(),
        report.executions as f64 / time.as_secs_f64(),
        inputs.len(),
        report.slowest.as_secs_f64(),
        report.failures.len()
    );
    for failure in &report.failures {
        let message = std::fs::read_to_string(failure.with_extension("txt")).unwrap_or_default();
        eprintln!("{}: {message}", failure.display());
    }
    Ok(report.failures.is_empty())
}

fn main_result(args: &[String]) -> Result<bool> {
    match args.first().map(String::as_str) {
        Some("seeds") => {
            let dir = Path::new(args.get(1).context(USAGE)?);
            println!("{} seed inputs written under {}", seeds::write_seeds(dir)?, dir.display());
            Ok(true)
        }
        Some("replay") if args.len() >= 3 => {
            replay(named(&args[1])?, &args[2..].iter().map(PathBuf::from).collect::<Vec<_>>())
        }
        Some("run") if args.len() >= 2 => run(&args[1..]),
        Some("list") => {
            for t in TARGETS {
                println!("{:<14} {}", t.name, t.about);
            }
            Ok(true)
        }
        _ => bail!("{USAGE}"),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match main_result(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("daa-fuzz: {e:#}");
            ExitCode::from(2)
        }
    }
}
