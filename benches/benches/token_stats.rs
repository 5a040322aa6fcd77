//! `token_stats` throughput: the f64 specification, the fast CPU backend and
//! the GPU backends, in bytes of logits read per second, beside the memory
//! read bandwidth of the same run (`read-…` rows). `cargo xtask bench`
//! prints the GB/s table.

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use daa_core::{Backend, Cpu, HostTensor, Specification, TokenStatsParams};
use daa_tests::fixtures::{lm_logits, token_stats_inputs};

const ROWS: usize = 2048;
/// The specification sorts and works in f64: a few rows give its rate.
const SPEC_ROWS: usize = 64;
const VOCABS: [usize; 3] = [32_000, 128_256, 256_000];
const KS: [usize; 2] = [10, 100];

fn bench_backend<B: Backend<Tensor = HostTensor>>(c: &mut Criterion, name: &str, backend: &B, rows: usize, bf16: bool) {
    let mut group = c.benchmark_group("token_stats");
    group.sampling_mode(SamplingMode::Flat).sample_size(10).warm_up_time(Duration::from_millis(500));
    for vocab in VOCABS {
        let (logits, targets) = token_stats_inputs(rows, vocab, 7);
        let logits = if bf16 {
            let v: Vec<half::bf16> =
                logits.as_f32("logits").unwrap().iter().map(|&x| half::bf16::from_f32(x)).collect();
            HostTensor::from_bf16(v, &[rows, vocab]).unwrap()
        } else {
            logits
        };
        let bytes_per_logit = if bf16 { 2 } else { 4 };
        group.throughput(Throughput::Bytes((rows * vocab * bytes_per_logit) as u64));
        for k in KS {
            let params = TokenStatsParams { k, entropy_base: 2.0 };
            let dtype = if bf16 { "bf16" } else { "f32" };
            let id = BenchmarkId::new(format!("{name}/{dtype}/rows={rows}"), format!("V={vocab}/k={k}"));
            group.bench_with_input(id, &params, |b, params| {
                b.iter(|| backend.token_stats(&logits, &targets, None, params).expect("token_stats"))
            });
        }
    }
    group.finish();
}

/// GPU rows: logits uploaded once; each iteration enqueues `token_stats` and
/// downloads its small output, which waits for the GPU (an explicit
/// synchronisation, so asynchronous work is timed honestly).
fn bench_wgpu(c: &mut Criterion) {
    let gpu = match daa_core::Wgpu::new() {
        Ok(gpu) => gpu,
        Err(e) => {
            eprintln!("skipped: wgpu benchmarks: {e}");
            return;
        }
    };
    let adapter = gpu.adapter().name.clone();
    eprintln!("wgpu adapter: {adapter}");
    let mut group = c.benchmark_group("token_stats");
    group.sampling_mode(SamplingMode::Flat).sample_size(10).warm_up_time(Duration::from_millis(500));
    for vocab in VOCABS {
        let rows = ROWS;
        let (logits, targets) = token_stats_inputs(rows, vocab, 7);
        group.throughput(Throughput::Bytes((rows * vocab * 4) as u64));
        let (logits, targets) = (gpu.upload(&logits).unwrap(), gpu.upload(&targets).unwrap());
        for k in KS {
            let params = TokenStatsParams { k, entropy_base: 2.0 };
            let id = BenchmarkId::new(format!("wgpu/f32/rows={rows}"), format!("V={vocab}/k={k}"));
            group.bench_with_input(id, &params, |b, params| {
                b.iter_custom(|iterations| {
                    let start = Instant::now();
                    for _ in 0..iterations {
                        let out = gpu.token_stats(&logits, &targets, None, params).expect("token_stats");
                        gpu.download(&out).expect("download");
                    }
                    start.elapsed()
                })
            });
        }
    }
    group.finish();
}

/// CUDA rows (when a GPU is present): f32 and bf16 logits uploaded once; each
/// iteration launches `token_stats` and synchronises the stream.
fn bench_cuda(c: &mut Criterion) {
    let gpu = match daa_core::Cuda::new(0) {
        Ok(gpu) => gpu,
        Err(e) => {
            eprintln!("skipped: cuda benchmarks: {e}");
            return;
        }
    };
    eprintln!("cuda device: {}", gpu.describe());
    let mut group = c.benchmark_group("token_stats");
    group.sampling_mode(SamplingMode::Flat).sample_size(10).warm_up_time(Duration::from_millis(500));
    for vocab in VOCABS {
        let rows = ROWS;
        let (logits, targets) = token_stats_inputs(rows, vocab, 7);
        let bf16: Vec<half::bf16> = logits.as_f32("logits").unwrap().iter().map(|&x| half::bf16::from_f32(x)).collect();
        let bf16 = HostTensor::from_bf16(bf16, &[rows, vocab]).unwrap();
        let targets = gpu.upload(&targets).unwrap();
        for (dtype, host, bytes) in [("f32", &logits, 4), ("bf16", &bf16, 2)] {
            group.throughput(Throughput::Bytes((rows * vocab * bytes) as u64));
            let device = gpu.upload(host).unwrap();
            for k in KS {
                let params = TokenStatsParams { k, entropy_base: 2.0 };
                let id = BenchmarkId::new(format!("cuda/{dtype}/rows={rows}"), format!("V={vocab}/k={k}"));
                group.bench_with_input(id, &params, |b, params| {
                    b.iter_custom(|iterations| {
                        gpu.synchronize().expect("synchronize");
                        let start = Instant::now();
                        for _ in 0..iterations {
                            gpu.token_stats(&device, &targets, None, params).expect("token_stats");
                        }
                        gpu.synchronize().expect("synchronize");
                        start.elapsed()
                    })
                });
            }
        }
    }
    // The GPU's yardstick in the same run: a device-to-device copy as large
    // as the largest f32 logits, counted read + write (a `read-` row, so
    // `cargo xtask bench` lists and draws it beside the CPU's read rows).
    let vocab = VOCABS[VOCABS.len() - 1];
    let bytes = ROWS * vocab * 4;
    group.throughput(Throughput::Bytes(2 * bytes as u64));
    let id = BenchmarkId::new(format!("read-cuda-copy/f32/rows={ROWS}"), format!("V={vocab}"));
    group.bench_function(id, |b| {
        b.iter_custom(|iterations| {
            let gbps = gpu.copy_bandwidth_gbps(bytes, iterations as usize).expect("copy on the GPU");
            Duration::from_secs_f64((2 * bytes) as f64 * iterations as f64 / gbps / 1e9)
        })
    });
    group.finish();
}

/// The memory read bandwidth of the same run, the ceiling of a kernel that
/// reads its input once: `Cpu::read_once` over the largest `[ROWS, V]` f32
/// logits with `threads` threads.
fn bench_read(c: &mut Criterion, threads: usize) {
    let vocab = VOCABS[VOCABS.len() - 1];
    let logits = lm_logits(ROWS, vocab, 2.0, 7);
    let cpu = Cpu::with_threads(threads).unwrap();
    let mut group = c.benchmark_group("token_stats");
    group.sampling_mode(SamplingMode::Flat).sample_size(10).warm_up_time(Duration::from_millis(500));
    group.throughput(Throughput::Bytes((logits.len() * 4) as u64));
    let name = format!("read-{threads}thread{}/f32/rows={ROWS}", if threads == 1 { "" } else { "s" });
    group.bench_function(BenchmarkId::new(name, format!("V={vocab}")), |b| b.iter(|| cpu.read_once(&logits)));
    group.finish();
}

fn token_stats(c: &mut Criterion) {
    let only =
        std::env::var("DAA_BENCH_BACKENDS").unwrap_or_else(|_| "read1,read2,cpu2,cpu1,cpu2-bf16,spec,wgpu,cuda".into());
    let wanted = |name: &str| only.split(',').any(|w| w.trim() == name);
    for (row, threads) in [("read1", 1), ("read2", 2)] {
        if wanted(row) {
            bench_read(c, threads);
        }
    }
    if wanted("cpu2") {
        bench_backend(c, "cpu-2threads", &Cpu::with_threads(2).unwrap(), ROWS, false);
    }
    if wanted("cpu1") {
        bench_backend(c, "cpu-1thread", &Cpu::with_threads(1).unwrap(), ROWS, false);
    }
    if wanted("cpu2-bf16") {
        bench_backend(c, "cpu-2threads", &Cpu::with_threads(2).unwrap(), ROWS, true);
    }
    if wanted("spec") {
        bench_backend(c, "spec", &Specification, SPEC_ROWS, false);
    }
    if wanted("wgpu") {
        bench_wgpu(c);
    }
    if wanted("cuda") {
        bench_cuda(c);
    }
}

criterion_group!(benches, token_stats);
criterion_main!(benches);
