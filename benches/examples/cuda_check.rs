//! The GPU check's CUDA half (run by `scripts/gpu-check.sh run`): device copy
//! bandwidth, then `token_stats` throughput for V ∈ {32000, 128256, 256000},
//! k ∈ {10, 100}, 8192 rows, f32 and bf16, each with an agreement spot check
//! against the CPU backend. Prints a markdown table.

use std::time::Instant;

use daa_core::{Backend, Cpu, Cuda, HostTensor, TokenStatsParams};
use daa_tests::fixtures::token_stats_inputs;
use daa_tests::tolerance::{TOKEN_STATS_GPU, assert_close};

const ROWS: usize = 8192;
const CHECK_ROWS: usize = 64;
const ITERATIONS: usize = 10;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    daa_core::cuda::libraries::relaunch_with_linked_libraries();
    if std::env::args().any(|a| a == "--environment") {
        println!("{}", daa_core::cuda::libraries::report());
        return Ok(());
    }
    let cuda = Cuda::new(0)?;
    let copy = cuda.copy_bandwidth_gbps(4 << 30, 10)?;
    println!("device: {}", cuda.describe());
    println!("device-to-device copy: {copy:.0} GB/s (read + write); 80% of it, read-only: {:.0} GB/s\n", 0.8 * copy);
    println!("| dtype | V | k | rows | ms/iter | GB/s read | % of copy | max |Δ| vs cpu |");
    println!("|---|---|---|---|---|---|---|---|");
    let cpu = Cpu::new();
    for vocab in [32_000usize, 128_256, 256_000] {
        let (logits, targets) = token_stats_inputs(ROWS, vocab, 3);
        for dtype in ["f32", "bf16"] {
            let host = if dtype == "bf16" {
                let v: Vec<half::bf16> = logits.as_f32("logits")?.iter().map(|&x| half::bf16::from_f32(x)).collect();
                HostTensor::from_bf16(v, &[ROWS, vocab])?
            } else {
                logits.clone()
            };
            let bytes = ROWS * vocab * if dtype == "bf16" { 2 } else { 4 };
            let (device_logits, device_targets) = (cuda.upload(&host)?, cuda.upload(&targets)?);
            for k in [10usize, 100] {
                let params = TokenStatsParams { k, entropy_base: 2.0 };
                // Warm-up (compiles the kernels once) and agreement on the first rows.
                let out = cuda.download(&cuda.token_stats(&device_logits, &device_targets, None, &params)?)?;
                let got = out.to_f64_vec("out")?;
                let head = HostTensor::from_f32(
                    host.to_f32_vec("logits")?[..CHECK_ROWS * vocab].to_vec(),
                    &[CHECK_ROWS, vocab],
                )?;
                let head = if dtype == "bf16" {
                    HostTensor::from_bf16(
                        head.as_f32("h")?.iter().map(|&x| half::bf16::from_f32(x)).collect::<Vec<_>>(),
                        &[CHECK_ROWS, vocab],
                    )?
                } else {
                    head
                };
                let head_targets =
                    HostTensor::from_i64(targets.to_i64_vec("t")?[..CHECK_ROWS].to_vec(), &[CHECK_ROWS])?;
                let want = cpu.token_stats(&head, &head_targets, None, &params)?.to_f64_vec("want")?;
                let n = want.len();
                assert_close(&got[..n], &want, TOKEN_STATS_GPU, &format!("cuda {dtype} V={vocab} k={k}"));
                let max_diff = got[..n].iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
                cuda.synchronize()?;
                let start = Instant::now();
                for _ in 0..ITERATIONS {
                    let _out = cuda.token_stats(&device_logits, &device_targets, None, &params)?;
                }
                cuda.synchronize()?;
                let seconds = start.elapsed().as_secs_f64() / ITERATIONS as f64;
                let gbps = bytes as f64 / seconds / 1e9;
                println!(
                    "| {dtype} | {vocab} | {k} | {ROWS} | {:.3} | {gbps:.0} | {:.0}% | {max_diff:.1e} |",
                    seconds * 1e3,
                    100.0 * gbps / copy
                );
            }
        }
    }
    Ok(())
}
