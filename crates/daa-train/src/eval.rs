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

use burn::tensor::backend::Backend;
use daa_core::preference::{PairLogps, PreferenceLossParams, pair_loss};
use daa_core::{Backend as _, Cpu, HostTensor, TokenStatsParams, TokenStatsRow};
use serde::{Deserialize, Serialize};

use crate::batch::SequencePair;
use crate::error::{ModelError, read_vec};
use crate::model::CausalLm;
use crate::objective::CompletionLogits;
use crate::score::{PairScore, pair_batch};

/// One evaluation's figures. The serde names are the metric names of
/// `metrics.jsonl` (and the only place they are spelled).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
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

/// A figure of a report (`R`: [`EvalReport`], the sampled figures'
/// `SampleReport`) that charts and summaries show: its title and how to read it.
#[derive(Debug, Clone, Copy)]
pub struct Figure<R> {
    /// Title for people.
    pub title: &'static str,
    /// The value in a report.
    pub value: fn(&R) -> f64,
}

/// A figure of [`EvalReport`].
pub type EvalFigure = Figure<EvalReport>;

impl EvalReport {
    /// The figures people watch, in the order charts and tables show them.
    pub const FIGURES: [EvalFigure; 8] = [
        EvalFigure { title: "loss", value: |r| r.loss },
        EvalFigure { title: "reward accuracy", value: |r| r.accuracy },
        EvalFigure { title: "chosen log-lik / token", value: |r| r.chosen_token_loglik },
        EvalFigure { title: "rejected log-lik / token", value: |r| r.rejected_token_loglik },
        EvalFigure { title: "reward margin", value: |r| r.margin },
        EvalFigure { title: "top-k entropy", value: |r| r.topk_entropy },
        EvalFigure { title: "top-k mass", value: |r| r.topk_mass },
        EvalFigure { title: "entropy (nats)", value: |r| r.entropy },
    ];
}

/// Sums of the statistics over the rows of `logits` (`[rows, V]`, each row
/// predicting `targets[row]`): (top-k entropy, mass, entropy, rows).
fn stats_sums(
    logits: Vec<f32>,
    targets: &[u32],
    vocab: usize,
    params: &TokenStatsParams,
    cpu: &Cpu,
) -> Result<(f64, f64, f64, usize), ModelError> {
    let rows = targets.len();
    let logits = HostTensor::from_f32(logits, &[rows, vocab])?;
    let targets = HostTensor::from_i64(targets.iter().map(|&t| i64::from(t)).collect::<Vec<_>>(), &[rows])?;
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

/// Evaluates `model` on `pairs` against their reference scores, `batch`
/// pairs per forward pass.
pub fn evaluate<B: Backend>(
    model: &CausalLm<B>,
    pairs: &[&SequencePair],
    reference: &[PairScore],
    loss: &PreferenceLossParams,
    stats: &TokenStatsParams,
    batch: usize,
    pad_id: u32,
) -> Result<EvalReport, ModelError> {
    if pairs.len() != reference.len() {
        return Err(ModelError::Batch(format!("{} pairs but {} reference scores", pairs.len(), reference.len())));
    }
    let device = model.embed.weight.device();
    let cpu = Cpu::new();
    let (mut loss_sum, mut acc_sum, mut margin_sum) = (0.0, 0.0, 0.0);
    let (mut chosen_logp, mut rejected_logp, mut chosen_n, mut rejected_n) = (0.0, 0.0, 0usize, 0usize);
    let (mut topk_entropy, mut topk_mass, mut entropy, mut rows) = (0.0, 0.0, 0.0, 0usize);
    for (chunk, refs) in pairs.chunks(batch.max(1)).zip(reference.chunks(batch.max(1))) {
        let tokens = pair_batch(chunk, pad_id, model.config().vocab_size)?;
        let completion = CompletionLogits::of(model, &tokens, &device)?;
        let values: Vec<f64> = read_vec(completion.sequence_logps(), "held-out log-probabilities")?;
        let n = chunk.len();
        for (i, r) in refs.iter().enumerate() {
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
        }
        // The chosen sequences are the batch's first `n` rows: their
        // completion positions come first among the scored ones.
        let chosen_rows = completion.positions.count_in_first_rows(n);
        let [_, vocab] = completion.logits.dims();
        let logits: Vec<f32> = read_vec(completion.logits.narrow(0, 0, chosen_rows), "held-out logits")?;
        let (h, m, e, k) = stats_sums(logits, &completion.positions.targets[..chosen_rows], vocab, stats, &cpu)?;
        topk_entropy += h;
        topk_mass += m;
        entropy += e;
        rows += k;
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
