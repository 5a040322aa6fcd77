//! The specification backend: plain Rust, f64 accumulation, obviously correct.
//! It is the specification every other backend is judged against.

use std::cmp::Ordering;

use crate::backend::Backend;
use crate::error::Result;
use crate::logits::{LogitsRef, RowFault, check_rows, first_bad_logit, read_grad_logprob};
use crate::preference::{PAIR_OUTPUT_COLUMNS, PairLogps, PreferenceLossParams, pair_loss, read_pairs};
use crate::segment::{SegmentReduction, read_offsets, read_weights, values_layout};
use crate::tensor::HostTensor;
use crate::token_stats::{TOKEN_STATS_COLUMNS, TokenStatsParams, topk_summary};

/// The specification backend (host memory, single thread, f64).
#[derive(Debug, Clone, Copy, Default)]
pub struct Specification;

/// `log Σ exp(x)` in f64, or the fault that prevents it.
pub(crate) fn spec_lse(x: &[f64]) -> Result<f64, RowFault> {
    if let Some(fault) = first_bad_logit(x.iter().map(|&v| v as f32)) {
        return Err(fault);
    }
    let max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return Err(RowFault::Empty);
    }
    Ok(max + x.iter().map(|&v| (v - max).exp()).sum::<f64>().ln())
}

/// The five statistics of one row, straight from the definitions in
/// [`crate::token_stats`]: softmax in f64, full entropy over every token,
/// top-k by a partial sort.
pub(crate) fn spec_row_stats(x: &[f64], target: usize, params: &TokenStatsParams) -> Result<[f64; 5], RowFault> {
    let lse = spec_lse(x)?;
    let entropy: f64 = -x
        .iter()
        .map(|&v| {
            let log_p = v - lse;
            let p = log_p.exp();
            if p > 0.0 { p * log_p } else { 0.0 }
        })
        .sum::<f64>();
    let mut sorted = x.to_vec();
    let descending = |a: &f64, b: &f64| -> Ordering { b.total_cmp(a) };
    if params.k < sorted.len() {
        sorted.select_nth_unstable_by(params.k - 1, descending);
    }
    sorted.truncate(params.k);
    let (mass, topk_entropy, topk_entropy_raw) = topk_summary(sorted.iter().copied(), lse, params.entropy_base);
    Ok([x[target] - lse, entropy.max(0.0), mass, topk_entropy, topk_entropy_raw])
}

impl Backend for Specification {
    type Tensor = HostTensor;

    fn name(&self) -> &'static str {
        "spec"
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
        let view = LogitsRef::of(logits)?;
        let mut out = vec![0f32; shape.rows * TOKEN_STATS_COLUMNS];
        for (row, target) in rows.targets.iter().enumerate() {
            let Some(target) = *target else { continue };
            let x = view.row_f64(row, shape.vocab);
            let stats = spec_row_stats(&x, target as usize, params).map_err(|f| f.at_row(row))?;
            let dst = &mut out[row * TOKEN_STATS_COLUMNS..(row + 1) * TOKEN_STATS_COLUMNS];
            for (d, s) in dst.iter_mut().zip(stats) {
                *d = s as f32;
            }
            dst[TOKEN_STATS_COLUMNS - 1] = 1.0;
        }
        HostTensor::from_f32(out, &[shape.rows, TOKEN_STATS_COLUMNS])
    }

    fn segment_reduce(
        &self,
        values: &HostTensor,
        offsets: &HostTensor,
        weights: Option<&HostTensor>,
    ) -> Result<SegmentReduction<HostTensor>> {
        let (n, c) = values_layout(values.shape())?;
        let v = values.to_f64_vec("values")?;
        let offsets = read_offsets(offsets, n)?;
        let weights = read_weights(weights, n)?;
        let segments = offsets.len() - 1;
        let (mut sums, mut counts, mut means) =
            (vec![0f64; segments * c], vec![0f64; segments], vec![0f64; segments * c]);
        for s in 0..segments {
            for i in offsets[s]..offsets[s + 1] {
                let w = weights.as_ref().map_or(1.0, |w| w[i]);
                if w == 0.0 {
                    continue;
                }
                counts[s] += w;
                for col in 0..c {
                    sums[s * c + col] += w * v[i * c + col];
                }
            }
            if counts[s] > 0.0 {
                for col in 0..c {
                    means[s * c + col] = sums[s * c + col] / counts[s];
                }
            }
        }
        Ok(SegmentReduction {
            sums: HostTensor::from_f64(sums, &[segments, c])?,
            counts: HostTensor::from_f64(counts, &[segments])?,
            means: HostTensor::from_f64(means, &[segments, c])?,
        })
    }

    fn preference_loss(&self, pairs: &HostTensor, params: &PreferenceLossParams) -> Result<HostTensor> {
        preference_loss_host(pairs, params, |inputs| inputs.iter().map(|x| pair_loss(x, params).to_columns()).collect())
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
        let view = LogitsRef::of(logits)?;
        let mut out = vec![0f32; shape.rows * shape.vocab];
        for (row, target) in rows.targets.iter().enumerate() {
            let Some(target) = *target else { continue };
            let x = view.row_f64(row, shape.vocab);
            let lse = spec_lse(&x).map_err(|f| f.at_row(row))?;
            let dst = &mut out[row * shape.vocab..(row + 1) * shape.vocab];
            for (j, (d, &v)) in dst.iter_mut().zip(&x).enumerate() {
                let onehot = if j == target as usize { 1.0 } else { 0.0 };
                *d = (g[row] * (onehot - (v - lse).exp())) as f32;
            }
        }
        HostTensor::from_f32(out, logits.shape())
    }

    fn logits_backward_in_place(
        &self,
        logits: &mut HostTensor,
        targets: &HostTensor,
        mask: Option<&HostTensor>,
        grad_logprob: &HostTensor,
    ) -> Result<()> {
        let grad = self.logits_backward(logits, targets, mask, grad_logprob)?;
        *logits = crate::tensor::cast_f32_like(&grad, logits.dtype())?;
        Ok(())
    }
}

/// Validates a `[P, 6]` pairs tensor, runs `compute` on the parsed pairs and
/// packs its rows into a `[P, 7]` f64 tensor. Shared by the CPU backends.
pub(crate) fn preference_loss_host(
    pairs: &HostTensor,
    params: &PreferenceLossParams,
    compute: impl FnOnce(&[PairLogps]) -> Vec<[f64; PAIR_OUTPUT_COLUMNS]>,
) -> Result<HostTensor> {
    let inputs = read_pairs(pairs, params)?;
    let out: Vec<f64> = compute(&inputs).into_iter().flatten().collect();
    HostTensor::from_f64(out, &[inputs.len(), PAIR_OUTPUT_COLUMNS])
}
