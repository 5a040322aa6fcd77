//! Held-out evaluation: likelihoods, the loss, and the over-optimisation
//! signals of the paper computed by daa-core's `token_stats`.
//!
//! Over the completion tokens of the chosen replies (rows `r` of the
//! next-token distributions `p_r` that predict them):
//! - `eval/topk_entropy`: mean over rows of `H(q_r)`, `q_r` = `p_r`
//!   restricted to its top `k` tokens and renormalised (base `b`, bits by default);
//! - `eval/topk_mass`: mean of `M_k(p_r) = Σ_{top k} p_r`;
//! - `eval/entropy`: mean full entropy `H(p_r)` in nats.
//!
//! Likelihoods: `eval/chosen_token_loglik = Σ_pairs π_w / Σ_pairs n_w` (mean
//! log-probability per chosen completion token, nats), same for rejected.

use anyhow::{Context, Result};
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use daa_core::preference::{PairLogps, PreferenceLossParams, pair_loss};
use daa_core::{Backend as _, Cpu, HostTensor, TokenStatsParams, TokenStatsRow};
use serde::Serialize;

use crate::data::EncodedPair;
use crate::model::CausalLm;
use crate::objective::sequence_logps;
use crate::scores::{PairScore, pair_batch};

/// One evaluation's figures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EvalReport {
    /// Mean loss over held-out pairs.
    #[serde(rename = "eval/loss")]
    pub loss: f64,
    /// Fraction of pairs whose chosen reward exceeds the rejected one.
    #[serde(rename = "eval/rewards_accuracy")]
    pub accuracy: f64,
    /// Mean reward margin.
    #[serde(rename = "eval/rewards_margin")]
    pub margin: f64,
    /// Mean log-probability per chosen completion token (nats).
    #[serde(rename = "eval/chosen_token_loglik")]
    pub chosen_token_loglik: f64,
    /// Mean log-probability per rejected completion token (nats).
    #[serde(rename = "eval/rejected_token_loglik")]
    pub rejected_token_loglik: f64,
    /// Mean top-k entropy over chosen completion positions (base `b`).
    #[serde(rename = "eval/topk_entropy")]
    pub topk_entropy: f64,
    /// Mean top-k probability mass over chosen completion positions.
    #[serde(rename = "eval/topk_mass")]
    pub topk_mass: f64,
    /// Mean full entropy over chosen completion positions (nats).
    #[serde(rename = "eval/entropy")]
    pub entropy: f64,
}

/// Statistics of the rows of `logits` (`[len, V]` of one chosen sequence)
/// that predict completion tokens, summed: (top-k entropy, mass, entropy, rows).
fn sequence_stats<B: Backend>(
    logits: Tensor<B, 2>,
    pair: &EncodedPair,
    params: &TokenStatsParams,
    cpu: &Cpu,
) -> Result<(f64, f64, f64, usize)> {
    let seq = &pair.chosen;
    let start = seq.completion_start - 1;
    let rows = seq.ids.len() - 1 - start;
    let [_, vocab] = logits.dims();
    let device = logits.device();
    let picked = logits.select(
        0,
        Tensor::<B, 1, Int>::from_data(
            TensorData::new((start..start + rows).map(|r| r as i64).collect::<Vec<_>>(), [rows]),
            &device,
        ),
    );
    let values: Vec<f32> = picked.into_data().convert::<f32>().into_vec::<f32>().unwrap_or_default();
    let targets: Vec<i64> = seq.ids[start + 1..].iter().map(|&t| i64::from(t)).collect();
    let logits = HostTensor::from_f32(values, &[rows, vocab])?;
    let targets = HostTensor::from_i64(targets, &[rows])?;
    let out = cpu.token_stats(&cpu.upload(&logits)?, &cpu.upload(&targets)?, None, params)?;
    let mut sums = (0.0, 0.0, 0.0, 0);
    for row in TokenStatsRow::rows_of(&cpu.download(&out)?)? {
        sums.0 += f64::from(row.topk_entropy);
        sums.1 += f64::from(row.topk_mass);
        sums.2 += f64::from(row.entropy);
        sums.3 += 1;
    }
    Ok(sums)
}

/// Evaluates `model` on `pairs` against their reference scores.
pub fn evaluate<B: Backend>(
    model: &CausalLm<B>,
    pairs: &[EncodedPair],
    reference: &[PairScore],
    loss: &PreferenceLossParams,
    stats: &TokenStatsParams,
    batch: usize,
    pad_id: u32,
) -> Result<EvalReport> {
    let device = model.devices().into_iter().next().context("the model has no device")?;
    let cpu = Cpu::new();
    let (mut loss_sum, mut acc_sum, mut margin_sum) = (0.0, 0.0, 0.0);
    let (mut chosen_logp, mut rejected_logp, mut chosen_n, mut rejected_n) = (0.0, 0.0, 0usize, 0usize);
    let (mut topk_entropy, mut topk_mass, mut entropy, mut rows) = (0.0, 0.0, 0.0, 0usize);
    for (chunk, refs) in pairs.chunks(batch.max(1)).zip(reference.chunks(batch.max(1))) {
        let batch_pairs: Vec<&EncodedPair> = chunk.iter().collect();
        let tokens = pair_batch(&batch_pairs, pad_id, model.config().vocab_size)?;
        let logits = model.forward(tokens.input::<B>(&device));
        let (targets, weights) = tokens.targets::<B>(&device);
        let values = sequence_logps(logits.clone(), targets, weights)
            .into_data()
            .convert::<f64>()
            .into_vec::<f64>()
            .unwrap_or_default();
        let n = chunk.len();
        let [_, len, vocab] = logits.dims();
        for (i, (pair, r)) in chunk.iter().zip(refs).enumerate() {
            let x = PairLogps {
                policy_chosen: values[i],
                policy_rejected: values[n + i],
                reference_chosen: r.chosen,
                reference_rejected: r.rejected,
                chosen_tokens: r.chosen_tokens as f64,
                rejected_tokens: r.rejected_tokens as f64,
            };
            let out = pair_loss(&x, loss);
            loss_sum += out.loss;
            acc_sum += out.accuracy;
            margin_sum += out.margin;
            chosen_logp += x.policy_chosen;
            rejected_logp += x.policy_rejected;
            chosen_n += r.chosen_tokens;
            rejected_n += r.rejected_tokens;
            let row_logits = logits.clone().narrow(0, i, 1).reshape([len, vocab]);
            let (h, m, e, k) = sequence_stats(row_logits, pair, stats, &cpu)?;
            topk_entropy += h;
            topk_mass += m;
            entropy += e;
            rows += k;
        }
    }
    let pairs_n = pairs.len().max(1) as f64;
    let rows_n = rows.max(1) as f64;
    Ok(EvalReport {
        loss: loss_sum / pairs_n,
        accuracy: acc_sum / pairs_n,
        margin: margin_sum / pairs_n,
        chosen_token_loglik: chosen_logp / chosen_n.max(1) as f64,
        rejected_token_loglik: rejected_logp / rejected_n.max(1) as f64,
        topk_entropy: topk_entropy / rows_n,
        topk_mass: topk_mass / rows_n,
        entropy: entropy / rows_n,
    })
}
