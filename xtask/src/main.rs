//! `cargo xtask`: project automation. Orchestration only; no library logic.
//!
//! - `cargo xtask bench [--quick] [FILTER]`: runs the criterion benchmarks and
//!   prints a GB/s table (plus `target/daa-bench/token_stats.{md,svg}`).
//! - `cargo xtask bench --trainer [--quick] [--torch]`: times a DPO step and
//!   a scoring pass of the trainer (plus `target/daa-bench/trainer.{md,svg}`),
//!   beside PyTorch + transformers with `--torch`.
//! - `cargo xtask train [--release] [DAA TRAIN ARGS…]`: builds and runs
//!   `daa train` (the over-optimisation testbed without arguments).
//! - `cargo xtask experiment [--release] [DAA EXPERIMENT ARGS…]`: builds and
//!   runs `daa experiment` (a sweep on the testbed and its report).
//! - `cargo xtask web [--no-serve] [--port N] [--run FILE]`: builds the
//!   browser demo into `web/pkg/` and serves `web/` on 127.0.0.1.

mod bench;
mod train;
mod web;

use anyhow::{Result, bail};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("bench") => bench::run(&args[1..]),
        Some("train") => train::run(&args[1..]),
        Some("experiment") => train::experiment(&args[1..]),
        Some("web") => web::run(&args[1..]),
        Some("-h" | "--help") | None => {
            println!("usage: cargo xtask bench [--quick] [FILTER]");
            println!(
                "       cargo xtask bench --trainer [--quick] [--torch] [--shapes tiny,5m,25m] [--threads 1,2] [--repeats N]"
            );
            println!("       cargo xtask train [--release] [--features train-wgpu,train-cuda] [DAA TRAIN ARGS…]");
            println!("       cargo xtask experiment [--release] [--preset small|paper] [--out DIR] [--jobs N]");
            println!("       cargo xtask web [--no-serve] [--port N] [--run FILE]");
            Ok(())
        }
        Some(other) => bail!("unknown xtask `{other}`; available: bench, train, experiment, web"),
    }
}
