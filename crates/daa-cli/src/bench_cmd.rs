//! `daa bench`: how fast `token_stats` runs on this machine, beside how fast
//! the same machine reads memory, measured in the same run.
//!
//! For each backend, vocabulary `V` and `k`: `[rows, V]` f32 logits shaped
//! like a language model's (daa-core's `synthetic`, the inputs of the
//! criterion benchmarks too), one untimed call (kernels compiled, pages
//! touched), then `repeats` timed calls, each ending with the result on the
//! host. Throughput is `rows · V · 4` bytes over the median time. The CPU
//! rows are also given as a fraction of `Cpu::read_once` with the same
//! threads over the largest logits: the bytes per second of a pass that
//! only reads, the ceiling of a kernel that reads its input once.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use daa_core::io::write_bytes_atomic;
use daa_core::synthetic::{lm_logits, token_stats_inputs};
use daa_core::{Backend, Cpu, HostTensor, Specification, TokenStatsParams};

use crate::backend_choice::BackendName;
use crate::plot::throughput_bars;

/// Rows the specification backend gets (it sorts and works in f64: a few
/// rows give its rate).
const SPEC_ROWS: usize = 64;

/// Arguments of `daa bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Backends to time: cpu, spec, wgpu, cuda. A GPU backend without a
    /// device is skipped with a note.
    #[arg(long, value_delimiter = ',', default_values = ["cpu", "cuda"])]
    pub backends: Vec<BackendName>,
    /// Thread counts of the cpu backend (default: 1 and all cores).
    #[arg(long, value_delimiter = ',')]
    pub threads: Vec<usize>,
    /// Vocabulary sizes.
    #[arg(long, value_delimiter = ',', default_values_t = [32_000, 128_256, 256_000])]
    pub vocab: Vec<usize>,
    /// Top-k sizes.
    #[arg(long, value_delimiter = ',', default_values_t = [10, 100])]
    pub k: Vec<usize>,
    /// Logits rows per call (the specification takes at most 64).
    #[arg(long, default_value_t = 2048)]
    pub rows: usize,
    /// Timed calls per measurement (after one untimed call); the median counts.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Also write the table (Markdown) here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Draw the throughputs and the read bandwidths (SVG) here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// One timed configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    /// Backend and threads, e.g. `cpu, 2 threads`.
    pub backend: String,
    /// Logits rows.
    pub rows: usize,
    /// Vocabulary.
    pub vocab: usize,
    /// Top-k.
    pub k: usize,
    /// Median seconds per call.
    pub seconds: f64,
    /// Bytes of logits read per second.
    pub gbps: f64,
    /// The memory bandwidth this row is a fraction of, measured in the same
    /// run: the read bandwidth of the same threads (CPU rows), the device's
    /// copy bandwidth, read + write bytes (CUDA rows).
    pub read_gbps: Option<f64>,
}

/// `daa bench`.
pub fn run(args: &BenchArgs) -> Result<()> {
    if args.rows == 0 || args.repeats == 0 || args.vocab.contains(&0) || args.k.contains(&0) {
        bail!("--rows, --repeats, --vocab and --k must be at least 1");
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut threads = if args.threads.is_empty() { vec![1, cores] } else { args.threads.clone() };
    threads.sort_unstable();
    threads.dedup();
    if threads.contains(&0) {
        bail!("--threads must be at least 1");
    }
    let cpus: Vec<(usize, f64)> =
        if args.backends.contains(&BackendName::Cpu) { read_bandwidth(args, &threads)? } else { Vec::new() };
    let mut rows = Vec::new();
    for &vocab in &args.vocab {
        rows.extend(time_vocabulary(args, vocab, &cpus)?);
    }
    // Grouped by backend (threads), then vocabulary and k, as the table reads.
    rows.sort_by(|a, b| (&a.backend, a.vocab, a.k).cmp(&(&b.backend, b.vocab, b.k)));
    if rows.is_empty() {
        bail!("no backend could be timed (see the notes above)");
    }
    let table = markdown_table(&rows);
    println!("{table}");
    if let Some(path) = &args.out {
        write_bytes_atomic(path, table.as_bytes())?;
    }
    if let Some(path) = &args.plot {
        write_bytes_atomic(path, throughput_bars(&rows)?.as_bytes())?;
    }
    Ok(())
}

/// `(threads, read GB/s)` of each thread count: [`Cpu::read_once`] over the
/// largest logits (beyond every cache), measured before the kernels, one
/// input in memory at a time.
fn read_bandwidth(args: &BenchArgs, threads: &[usize]) -> Result<Vec<(usize, f64)>> {
    let largest = *args.vocab.iter().max().context("--vocab needs at least one size")?;
    let data = lm_logits(args.rows, largest, 2.0, 7);
    let mut out = Vec::new();
    for &t in threads {
        let cpu = Cpu::with_threads(t)?;
        let read = median_seconds(args.repeats, || {
            std::hint::black_box(cpu.read_once(&data));
            Ok(())
        })?;
        out.push((t, (data.len() * 4) as f64 / read / 1e9));
    }
    Ok(out)
}

/// Every backend's measurements at vocabulary `vocab` (`cpus`: the CPU
/// thread counts and their read bandwidths). A GPU backend without a device
/// is skipped with a note.
fn time_vocabulary(args: &BenchArgs, vocab: usize, cpus: &[(usize, f64)]) -> Result<Vec<Measurement>> {
    let (logits, ids) = token_stats_inputs(args.rows, vocab, 7);
    let mut rows = Vec::new();
    for backend in &args.backends {
        match backend {
            BackendName::Cpu => {
                for &(t, read) in cpus {
                    let name = format!("cpu, {t} thread{}", if t == 1 { "" } else { "s" });
                    rows.extend(time_backend(&Cpu::with_threads(t)?, &name, &logits, &ids, args, Some(read))?);
                }
            }
            BackendName::Spec => {
                let (l, t) = first_rows(&logits, &ids, SPEC_ROWS)?;
                rows.extend(time_backend(&Specification, "spec (f64)", &l, &t, args, None)?);
            }
            #[cfg(feature = "wgpu")]
            BackendName::Wgpu => match daa_core::Wgpu::new() {
                Ok(gpu) => {
                    let name = format!("wgpu ({})", gpu.adapter().name);
                    rows.extend(time_backend(&gpu, &name, &logits, &ids, args, None)?);
                }
                Err(e) => eprintln!("skipped: wgpu: {e}"),
            },
            #[cfg(feature = "cuda")]
            BackendName::Cuda => match daa_core::Cuda::new(0) {
                Ok(gpu) => {
                    let name = format!("cuda ({})", gpu.describe());
                    // The yardstick: a device-to-device copy of 1 GiB, before the kernel's timings.
                    let copy = gpu.copy_bandwidth_gbps(1 << 30, args.repeats.max(3))?;
                    rows.extend(time_backend(&gpu, &name, &logits, &ids, args, Some(copy))?);
                }
                Err(e) => eprintln!("skipped: cuda: {e}"),
            },
            #[allow(unreachable_patterns)]
            other => eprintln!("skipped: {other:?}: not compiled into this build of daa"),
        }
    }
    Ok(rows)
}

/// The first `rows` rows of an input (for the slow specification backend).
fn first_rows(logits: &HostTensor, ids: &HostTensor, rows: usize) -> Result<(HostTensor, HostTensor)> {
    let (rows, vocab) = (rows.min(logits.shape()[0]), logits.shape()[1]);
    let l = HostTensor::from_f32(logits.as_f32("logits")?[..rows * vocab].to_vec(), &[rows, vocab])?;
    let t = HostTensor::from_i64(ids.to_i64_vec("targets")?[..rows].to_vec(), &[rows])?;
    Ok((l, t))
}

/// Times `token_stats` on `backend` for `[rows, V]` `logits` and every k ≤ V.
fn time_backend<B: Backend>(
    backend: &B,
    name: &str,
    logits: &HostTensor,
    ids: &HostTensor,
    args: &BenchArgs,
    read_gbps: Option<f64>,
) -> Result<Vec<Measurement>> {
    let (rows, vocab) = (logits.shape()[0], logits.shape()[1]);
    let (l, t) = (backend.upload(logits)?, backend.upload(ids)?);
    let mut out = Vec::new();
    for &k in args.k.iter().filter(|&&k| k <= vocab) {
        let params = TokenStatsParams { k, entropy_base: 2.0 };
        let seconds = median_seconds(args.repeats, || {
            backend.download(&backend.token_stats(&l, &t, None, &params)?)?;
            Ok(())
        })
        .with_context(|| format!("{name}: V = {vocab}, k = {k}"))?;
        let gbps = (rows * vocab * 4) as f64 / seconds / 1e9;
        out.push(Measurement { backend: name.to_string(), rows, vocab, k, seconds, gbps, read_gbps });
    }
    Ok(out)
}

/// One untimed call, then the median of `repeats` timed ones, in seconds
/// (the mean of the middle two for an even count).
fn median_seconds(repeats: usize, mut call: impl FnMut() -> Result<()>) -> Result<f64> {
    call()?;
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let started = Instant::now();
        call()?;
        times.push(started.elapsed().as_secs_f64());
    }
    Ok(median(&mut times))
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 { values[middle] } else { (values[middle - 1] + values[middle]) / 2.0 }
}

/// The bandwidth each row group is compared with (CPU: read; CUDA: copy),
/// once per backend name, in order.
pub fn read_bandwidths(rows: &[Measurement]) -> Vec<(&str, f64)> {
    let mut reads: Vec<(&str, f64)> = rows.iter().filter_map(|r| Some((r.backend.as_str(), r.read_gbps?))).collect();
    reads.dedup_by(|a, b| a.0 == b.0);
    reads
}

/// The results as a Markdown table, the read bandwidths above it.
pub fn markdown_table(rows: &[Measurement]) -> String {
    let reads = read_bandwidths(rows);
    let mut s = String::from("token_stats throughput (daa bench)\n\n");
    if !reads.is_empty() {
        let listed: Vec<String> = reads.iter().map(|(b, g)| format!("{b}: {g:.1} GB/s")).collect();
        s += &format!(
            "memory bandwidth measured in this run (CPU: read; GPU: device copy, read + write): {}\n\n",
            listed.join("; ")
        );
    }
    s += "| backend | rows | V | k | ms per call | GB/s | of measured bandwidth |\n|---|---|---|---|---|---|---|\n";
    for r in rows {
        let fraction = r.read_gbps.map_or("—".to_string(), |read| format!("{:.0} %", 100.0 * r.gbps / read));
        s += &format!(
            "| {} | {} | {} | {} | {:.1} | {:.2} | {} |\n",
            r.backend,
            r.rows,
            r.vocab,
            r.k,
            r.seconds * 1e3,
            r.gbps,
            fraction
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_gives_each_cpu_row_as_a_fraction_of_its_read_bandwidth() {
        let row = |backend: &str, gbps: f64, read: Option<f64>| Measurement {
            backend: backend.into(),
            rows: 2048,
            vocab: 32_000,
            k: 10,
            seconds: 2048.0 * 32_000.0 * 4.0 / gbps / 1e9,
            gbps,
            read_gbps: read,
        };
        let table = markdown_table(&[
            row("cpu, 1 thread", 6.0, Some(12.0)),
            row("cuda (H200)", 900.0, Some(3600.0)),
            row("wgpu (llvmpipe)", 3.0, None),
        ]);
        assert!(
            table.contains("in this run (CPU: read; GPU: device copy, read + write): cpu, 1 thread: 12.0 GB/s; cuda (H200): 3600.0 GB/s"),
            "{table}"
        );
        assert!(table.contains("| cpu, 1 thread | 2048 | 32000 | 10 | 43.7 | 6.00 | 50 % |"), "{table}");
        assert!(table.contains("| cuda (H200) | 2048 | 32000 | 10 | 0.3 | 900.00 | 25 % |"), "{table}");
        assert!(table.contains("| wgpu (llvmpipe) | 2048 | 32000 | 10 | 87.4 | 3.00 | — |"), "{table}");
    }

    #[test]
    fn the_median_of_the_timed_calls_counts_and_errors_pass_through() {
        let mut calls = 0;
        median_seconds(3, || {
            calls += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(calls, 4, "one untimed call and three timed ones");
        assert!(median_seconds(3, || bail!("device lost")).is_err());
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
