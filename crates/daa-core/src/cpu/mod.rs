//! The fast CPU backend: one pass per logits row with an online log-sum-exp
//! and a small top-k heap, vectorised for the processor at run time, rows in
//! parallel with rayon. Extra memory is O(threads · (k + block)), never O(rows · V).

mod lanes;
mod row;
mod topk;

use std::sync::{Arc, Mutex, OnceLock};

use half::{bf16, f16};
use rayon::prelude::*;

use crate::backend::Backend;
use crate::error::{DaaError, Result};
use crate::logits::{LogitsRef, RowFault, check_rows, read_grad_logprob};
use crate::preference::{PreferenceLossParams, pair_loss};
use crate::segment::{SegmentReduction, read_offsets, read_weights, values_layout};
use crate::specification::preference_loss_host;
use crate::tensor::{HostTensor, TensorData};
use crate::token_stats::{TOKEN_STATS_COLUMNS, TokenStatsParams, topk_summary};
use row::{LogitElement, RowScratch, backward_in_place, backward_into, row_sums};

/// Instruction set the CPU kernels were dispatched to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimdLevel {
    /// AVX-512 F/VL/BW with FMA.
    Avx512,
    /// AVX2 with FMA.
    Avx2,
    /// Whatever the compile target guarantees (SSE2 on x86-64, NEON on aarch64).
    Portable,
}

/// The instruction set the fast kernels use on this processor, detected once.
///
/// AVX2 is the default even where AVX-512 exists: on the Xeon (Sapphire/Emerald
/// Rapids) these kernels were tuned on, the 256-bit build reads 12 GB/s with two
/// threads against 9.4 GB/s for the 512-bit one (wider registers lower the
/// clock and the loop has no 512-bit-only instruction to gain from). Set
/// `DAA_CPU_SIMD=avx512` to opt in (Zen 4/5 may gain), or `portable` / `avx2`
/// to compare.
pub fn simd_level() -> SimdLevel {
    static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let cap = std::env::var("DAA_CPU_SIMD").unwrap_or_default();
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("bmi2");
            let avx512 = avx2
                && std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512vl")
                && std::is_x86_feature_detected!("avx512bw");
            match cap.as_str() {
                "portable" => SimdLevel::Portable,
                "avx512" if avx512 => SimdLevel::Avx512,
                _ if avx2 => SimdLevel::Avx2,
                _ => SimdLevel::Portable,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = cap;
            SimdLevel::Portable
        }
    })
}

/// The fast CPU backend. Tensors live in host memory ([`HostTensor`]), so
/// upload and download share the data without copying.
#[derive(Debug, Clone, Default)]
pub struct Cpu {
    pool: Option<Arc<rayon::ThreadPool>>,
}

impl Cpu {
    /// Runs on rayon's global thread pool (all cores, or `RAYON_NUM_THREADS`).
    pub fn new() -> Self {
        Self { pool: None }
    }

    /// Runs on a dedicated pool of `threads` threads.
    pub fn with_threads(threads: usize) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().map_err(|e| DaaError::Device {
            backend: "cpu",
            message: format!("cannot start {threads} threads: {e}"),
        })?;
        Ok(Self { pool: Some(Arc::new(pool)) })
    }

    /// Number of threads the kernels run on.
    pub fn threads(&self) -> usize {
        self.pool.as_ref().map_or_else(rayon::current_num_threads, |p| p.current_num_threads())
    }

    /// Reads every value of `data` once, split over this backend's threads,
    /// and returns their sum (`Σ x_i`, f32 partial sums in 16 lanes, then
    /// f64): about the fastest pass a kernel that reads its input once can
    /// make, so kernel throughput is reported as a fraction of this pass's
    /// bytes per second measured in the same run (`daa bench`, the criterion
    /// benchmarks).
    pub fn read_once(&self, data: &[f32]) -> f64 {
        const LANES: usize = 16;
        let per_task = (data.len() / (4 * self.threads()).max(1)).max(1 << 16);
        let sum_chunk = |chunk: &[f32]| {
            let mut acc = [0f32; LANES];
            let body = chunk.chunks_exact(LANES);
            let tail: f64 = body.remainder().iter().map(|&v| f64::from(v)).sum();
            for values in body {
                for (a, v) in acc.iter_mut().zip(values) {
                    *a += v;
                }
            }
            acc.iter().map(|&a| f64::from(a)).sum::<f64>() + tail
        };
        self.install(|| data.par_chunks(per_task).map(sum_chunk).sum())
    }

    fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(pool) => pool.install(f),
            None => f(),
        }
    }
}

/// Keeps the fault of the lowest row, so errors do not depend on thread timing.
#[derive(Debug, Default)]
struct FirstFault(Mutex<Option<(usize, RowFault)>>);

impl FirstFault {
    fn record(&self, row: usize, fault: RowFault) {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none_or(|(r, _)| row < r) {
            *slot = Some((row, fault));
        }
    }

    fn into_result(self) -> Result<()> {
        match self.0.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some((row, fault)) => Err(fault.at_row(row)),
            None => Ok(()),
        }
    }
}

fn token_stats_rows<E: LogitElement>(
    logits: &[E],
    vocab: usize,
    targets: &[Option<u32>],
    params: &TokenStatsParams,
    out: &mut [f32],
) -> Result<()> {
    let faults = FirstFault::default();
    out.par_chunks_mut(TOKEN_STATS_COLUMNS).enumerate().for_each_init(RowScratch::default, |scratch, (row, dst)| {
        let Some(target) = targets[row] else { return };
        let (x, following) = logits[row * vocab..].split_at(vocab);
        scratch.top.reset(params.k);
        match row_sums(x, following, scratch) {
            Ok(sums) => {
                let ln_z = sums.sum_exp.ln();
                let lse = f64::from(sums.max) + ln_z;
                let entropy = (ln_z - sums.sum_exp_shift / sums.sum_exp).max(0.0);
                let top = scratch.top.values().iter().map(|&v| f64::from(v));
                let (mass, topk_entropy, topk_raw) = topk_summary(top, lse, params.entropy_base);
                let target_logprob = (f64::from(x[target as usize].widen()) - f64::from(sums.max)) - ln_z;
                dst.copy_from_slice(&[
                    target_logprob as f32,
                    entropy as f32,
                    mass as f32,
                    topk_entropy as f32,
                    topk_raw as f32,
                    1.0,
                ]);
            }
            Err(fault) => faults.record(row, fault),
        }
    });
    faults.into_result()
}

/// Writes the logits gradient of every row into `out` (zeros for masked rows).
fn backward_into_rows<E: LogitElement>(
    logits: &[E],
    vocab: usize,
    targets: &[Option<u32>],
    grad: &[f64],
    out: &mut [f32],
) -> Result<()> {
    let faults = FirstFault::default();
    out.par_chunks_mut(vocab).enumerate().for_each_init(RowScratch::default, |scratch, (row, dst)| {
        let (x, following) = logits[row * vocab..].split_at(vocab);
        let Some(target) = targets[row] else { return };
        scratch.top.reset(0);
        match row_sums(x, following, scratch) {
            Ok(sums) => backward_into(x, dst, target as usize, sums, grad[row] as f32, scratch),
            Err(fault) => faults.record(row, fault),
        }
    });
    faults.into_result()
}

/// Overwrites every row of `logits` with its gradient (zeros for masked rows).
fn backward_in_place_rows<E: LogitElement>(
    logits: &mut [E],
    vocab: usize,
    targets: &[Option<u32>],
    grad: &[f64],
) -> Result<()> {
    let faults = FirstFault::default();
    logits.par_chunks_mut(vocab).enumerate().for_each_init(RowScratch::default, |scratch, (row, x)| {
        let Some(target) = targets[row] else {
            x.fill(E::ZERO);
            return;
        };
        scratch.top.reset(0);
        match row_sums::<E>(x, &[], scratch) {
            Ok(sums) => backward_in_place(x, target as usize, sums, grad[row] as f32, scratch),
            Err(fault) => faults.record(row, fault),
        }
    });
    faults.into_result()
}

impl Backend for Cpu {
    type Tensor = HostTensor;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn upload(&self, host: &HostTensor) -> Result<HostTensor> {
        Ok(host.clone())
    }

    fn download(&self, tensor: &HostTensor) -> Result<HostTensor> {
        Ok(tensor.clone())
    }

    fn token_stats(
        &self,
        logits: &HostTensor,
        targets: &HostTensor,
        mask: Option<&HostTensor>,
        params: &TokenStatsParams,
    ) -> Result<HostTensor> {
        let (shape, rows) = check_rows(logits, targets, mask)?;
        params.validate(shape.vocab)?;
        let mut out = vec![0f32; shape.rows * TOKEN_STATS_COLUMNS];
        let t = &rows.targets;
        self.install(|| match LogitsRef::of(logits)? {
            LogitsRef::F32(v) => token_stats_rows::<f32>(v, shape.vocab, t, params, &mut out),
            LogitsRef::F16(v) => token_stats_rows::<f16>(v, shape.vocab, t, params, &mut out),
            LogitsRef::BF16(v) => token_stats_rows::<bf16>(v, shape.vocab, t, params, &mut out),
        })?;
        HostTensor::from_f32(out, &[shape.rows, TOKEN_STATS_COLUMNS])
    }

    fn segment_reduce(
        &self,
        values: &HostTensor,
        offsets: &HostTensor,
        weights: Option<&HostTensor>,
    ) -> Result<SegmentReduction<HostTensor>> {
        let (n, c) = values_layout(values.shape())?;
        let v = values.to_f32_vec("values")?;
        let offsets = read_offsets(offsets, n)?;
        let weights = read_weights(weights, n)?;
        let segments = offsets.len() - 1;
        let per_segment: Vec<(f64, Vec<f64>)> = self.install(|| {
            (0..segments)
                .into_par_iter()
                .map(|s| {
                    let mut sums = vec![0f64; c];
                    let mut count = 0f64;
                    for i in offsets[s]..offsets[s + 1] {
                        let w = weights.as_ref().map_or(1.0, |w| w[i]);
                        if w != 0.0 {
                            count += w;
                            for (acc, &x) in sums.iter_mut().zip(&v[i * c..(i + 1) * c]) {
                                *acc += w * f64::from(x);
                            }
                        }
                    }
                    (count, sums)
                })
                .collect()
        });
        let counts: Vec<f32> = per_segment.iter().map(|(n, _)| *n as f32).collect();
        let sums: Vec<f32> = per_segment.iter().flat_map(|(_, s)| s.iter().map(|&x| x as f32)).collect();
        let means: Vec<f32> = per_segment
            .iter()
            .flat_map(|(n, s)| s.iter().map(move |&x| if *n > 0.0 { (x / n) as f32 } else { 0.0 }))
            .collect();
        Ok(SegmentReduction {
            sums: HostTensor::from_f32(sums, &[segments, c])?,
            counts: HostTensor::from_f32(counts, &[segments])?,
            means: HostTensor::from_f32(means, &[segments, c])?,
        })
    }

    fn preference_loss(&self, pairs: &HostTensor, params: &PreferenceLossParams) -> Result<HostTensor> {
        preference_loss_host(pairs, params, |inputs| {
            self.install(|| inputs.par_iter().map(|x| pair_loss(x, params).to_columns()).collect())
        })
    }

    fn logits_backward(
        &self,
        logits: &HostTensor,
        targets: &HostTensor,
        mask: Option<&HostTensor>,
        grad_logprob: &HostTensor,
    ) -> Result<HostTensor> {
        let (shape, rows) = check_rows(logits, targets, mask)?;
        let g = read_grad_logprob(grad_logprob, shape.rows)?;
        let mut out = vec![0f32; shape.rows * shape.vocab];
        let t = &rows.targets;
        self.install(|| match LogitsRef::of(logits)? {
            LogitsRef::F32(v) => backward_into_rows::<f32>(v, shape.vocab, t, &g, &mut out),
            LogitsRef::F16(v) => backward_into_rows::<f16>(v, shape.vocab, t, &g, &mut out),
            LogitsRef::BF16(v) => backward_into_rows::<bf16>(v, shape.vocab, t, &g, &mut out),
        })?;
        HostTensor::from_f32(out, logits.shape())
    }

    fn logits_backward_in_place(
        &self,
        logits: &mut HostTensor,
        targets: &HostTensor,
        mask: Option<&HostTensor>,
        grad_logprob: &HostTensor,
    ) -> Result<()> {
        let (shape, rows) = check_rows(logits, targets, mask)?;
        let g = read_grad_logprob(grad_logprob, shape.rows)?;
        let t = &rows.targets;
        self.install(|| match logits.data_mut() {
            TensorData::F32(v) => backward_in_place_rows::<f32>(v.make_mut(), shape.vocab, t, &g),
            TensorData::F16(v) => backward_in_place_rows::<f16>(v.make_mut(), shape.vocab, t, &g),
            TensorData::BF16(v) => backward_in_place_rows::<bf16>(v.make_mut(), shape.vocab, t, &g),
            other => Err(DaaError::DType { tensor: "logits", actual: other.dtype(), expected: "f32, f16 or bf16" }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Cpu;

    #[test]
    fn reading_once_sums_every_value_whatever_the_threads() {
        // 0..200_003 (not a multiple of the 16 lanes nor of the tasks): the sum
        // n(n − 1)/2 is exact in the f64 total and in each f32 lane's partial
        // sums of integers below 2^24.
        let n = 200_003usize;
        let data: Vec<f32> = (0..n).map(|i| (i % 1000) as f32).collect();
        let want: f64 = data.iter().map(|&v| f64::from(v)).sum();
        for threads in [1, 2, 3] {
            assert_eq!(Cpu::with_threads(threads).unwrap().read_once(&data), want, "{threads} threads");
        }
        assert_eq!(Cpu::new().read_once(&[]), 0.0);
    }
}
