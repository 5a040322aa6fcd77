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

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use daa_core::preference::{PairLogps, PreferenceLossParams, pair_loss};
use daa_core::{Backend as _, Cpu, HostTensor, TokenStatsParams, TokenStatsRow};
use serde::{Deserialize, Serialize};

use crate::batch::SequencePair;
use crate::error::{ModelError, read_vec};
use crate::fused_head::{FusedHead, chunk_rows_or};
use crate::model::CausalLm;
use crate::objective::{row_sums, scored_hidden};
use crate::score::{PairScore, pair_batch};

/// One evaluation's figures. The serde names are the metric names of
/// `metrics.jsonl` (and the only place they are spelled).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Mean loss over held-out pairs (TRL's name; `eval/loss` before).
    #[serde(rename = "eval_loss", alias = "eval/loss")]
    pub loss: f64,
    /// Fraction of pairs whose chosen reward exceeds the rejected one
    /// (TRL's name; `eval/rewards_accuracy` before).
    #[serde(rename = "eval_rewards/accuracies", alias = "eval/rewards_accuracy")]
    pub accuracy: f64,
    /// Mean reward margin (TRL's name; `eval/rewards_margin` before).
    #[serde(rename = "eval_rewards/margins", alias = "eval/rewards_margin")]
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
/// `SampleReport`) that charts and summaries show: its title, how to read
/// it, whether its largest value over a run means something, and its
/// standard error where the report has one.
#[derive(Debug, Clone, Copy)]
pub struct Figure<R> {
    /// Title for people.
    pub title: &'static str,
    /// The value in a report (NaN where a record lacks it).
    pub value: fn(&R) -> f64,
    /// Whether summaries show the run's largest value (`peak`): the best win
    /// probability or gold reward, the top of an indicator; not for figures
    /// whose maximum says nothing (loss, KL, length).
    pub peak: bool,
    /// The value's standard error, where the report has one.
    pub standard_error: Option<fn(&R) -> Option<f64>>,
}

impl<R> Figure<R> {
    /// A figure without a meaningful peak or a standard error.
    pub const fn new(title: &'static str, value: fn(&R) -> f64) -> Self {
        Self { title, value, peak: false, standard_error: None }
    }

    /// The same, its largest value shown in summaries.
    pub const fn with_peak(self) -> Self {
        Self { peak: true, ..self }
    }

    /// The same, with its standard error.
    pub const fn with_standard_error(self, standard_error: fn(&R) -> Option<f64>) -> Self {
        Self { standard_error: Some(standard_error), ..self }
    }
}

/// A figure of [`EvalReport`].
pub type EvalFigure = Figure<EvalReport>;

impl EvalReport {
    /// The figures people watch, in the order charts and tables show them.
    pub const FIGURES: [EvalFigure; 8] = [
        EvalFigure::new("loss", |r| r.loss),
        EvalFigure::new("reward accuracy", |r| r.accuracy),
        EvalFigure::new("chosen log-lik / token", |r| r.chosen_token_loglik),
        EvalFigure::new("rejected log-lik / token", |r| r.rejected_token_loglik),
        EvalFigure::new("reward margin", |r| r.margin),
        EvalFigure::new("top-k entropy", |r| r.topk_entropy).with_peak(),
        EvalFigure::new("top-k mass", |r| r.topk_mass).with_peak(),
        EvalFigure::new("entropy (nats)", |r| r.entropy),
    ];
}

/// Sums of the per-row statistics over completion positions.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StatsSums {
    /// `Σ H(q_r)` (base `b`).
    pub topk_entropy: f64,
    /// `Σ M_k(p_r)`.
    pub topk_mass: f64,
    /// `Σ H(p_r)` (nats).
    pub entropy: f64,
    /// Rows summed.
    pub rows: usize,
}

impl StatsSums {
    /// Adds the rows of a `token_stats` result (`[rows, 6]`, downloaded).
    pub fn add_rows(&mut self, stats: &HostTensor) -> Result<(), ModelError> {
        for row in TokenStatsRow::rows_of(stats)? {
            self.topk_entropy += f64::from(row.topk_entropy);
            self.topk_mass += f64::from(row.topk_mass);
            self.entropy += f64::from(row.entropy);
            self.rows += 1;
        }
        Ok(())
    }

    /// The statistics of `logits` (`[rows, V]`, each row predicting
    /// `targets[row]`) on daa-core's CPU backend, added.
    pub fn add_on_cpu(
        &mut self,
        cpu: &Cpu,
        logits: &HostTensor,
        targets: &HostTensor,
        params: &TokenStatsParams,
    ) -> Result<(), ModelError> {
        let out = cpu.token_stats(&cpu.upload(logits)?, &cpu.upload(targets)?, None, params)?;
        self.add_rows(&cpu.download(&out)?)
    }
}

/// The logits of one batch's chosen completion positions, for the statistics.
#[derive(Debug, Clone)]
pub struct ChosenLogits {
    /// `[rows, V]` f32.
    pub logits: HostTensor,
    /// `[rows]`: the token each row predicts.
    pub targets: HostTensor,
}

impl ChosenLogits {
    /// The chosen rows of one chunk of the head's logits (`[C, V]`, f32),
    /// copied to the host: the chunk starts at scored position `start`, the
    /// batch's first `chosen` scored positions are the chosen sequences'
    /// (they come first), `targets` are every scored position's targets.
    /// `None` when the chunk holds no chosen position.
    pub fn of_chunk<B: Backend>(
        logits: &Tensor<B, 2>,
        start: usize,
        chosen: usize,
        targets: &[u32],
    ) -> Result<Option<Self>, ModelError> {
        let [len, vocab] = logits.dims();
        let take = chosen.saturating_sub(start).min(len);
        if take == 0 {
            return Ok(None);
        }
        let values: Vec<f32> = read_vec(logits.clone().narrow(0, 0, take), "chosen completion logits")?;
        let targets: Vec<i64> = targets[start..start + take].iter().map(|&t| i64::from(t)).collect();
        Ok(Some(Self {
            logits: HostTensor::from_f32(values, &[take, vocab])?,
            targets: HostTensor::from_i64(targets, &[take])?,
        }))
    }
}

/// Likelihood and loss sums of a held-out pass, before the statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HeldOutSums {
    loss: f64,
    accuracy: f64,
    margin: f64,
    chosen_logp: f64,
    rejected_logp: f64,
    chosen_tokens: usize,
    rejected_tokens: usize,
    pairs: usize,
}

impl HeldOutSums {
    /// The report, with the statistics' sums over the same pass.
    pub fn report(&self, stats: &StatsSums) -> EvalReport {
        let pairs_n = self.pairs.max(1) as f64;
        let rows_n = stats.rows.max(1) as f64;
        EvalReport {
            loss: self.loss / pairs_n,
            accuracy: self.accuracy / pairs_n,
            margin: self.margin / pairs_n,
            chosen_token_loglik: self.chosen_logp / self.chosen_tokens.max(1) as f64,
            rejected_token_loglik: self.rejected_logp / self.rejected_tokens.max(1) as f64,
            topk_entropy: stats.topk_entropy / rows_n,
            topk_mass: stats.topk_mass / rows_n,
            entropy: stats.entropy / rows_n,
        }
    }
}

impl HeldOutSums {
    /// Every field summed over the ranks of `collective`, with the
    /// statistics' sums (every rank must call it; each gets the same sums).
    pub fn sum_over_ranks(
        &mut self,
        stats: &mut StatsSums,
        collective: &mut dyn crate::distributed::Collective,
    ) -> Result<(), ModelError> {
        let mut values = [
            self.loss,
            self.accuracy,
            self.margin,
            self.chosen_logp,
            self.rejected_logp,
            self.chosen_tokens as f64,
            self.rejected_tokens as f64,
            self.pairs as f64,
            stats.topk_entropy,
            stats.topk_mass,
            stats.entropy,
            stats.rows as f64,
        ];
        collective.all_reduce_sum_f64(&mut values)?;
        let [loss, accuracy, margin, chosen_logp, rejected_logp, chosen_tokens, rejected_tokens, pairs, h, m, e, rows] =
            values;
        *self = HeldOutSums {
            loss,
            accuracy,
            margin,
            chosen_logp,
            rejected_logp,
            chosen_tokens: chosen_tokens as usize,
            rejected_tokens: rejected_tokens as usize,
            pairs: pairs as usize,
        };
        *stats = StatsSums { topk_entropy: h, topk_mass: m, entropy: e, rows: rows as usize };
        Ok(())
    }
}

/// How a pass over pairs is cut into work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassBatching {
    /// Pairs per forward pass.
    pub pairs_per_pass: usize,
    /// Token id of padding.
    pub pad_id: u32,
    /// Positions per chunk of the fused head (0 = [`crate::fused_head::chunk_rows`]
    /// of the vocabulary).
    pub head_chunk_rows: usize,
}

/// Scores `pairs` against their reference scores, cut into forward passes
/// and head chunks as `batching` says, and hands the chosen completion
/// logits to `on_chosen` (which computes the statistics, on whatever backend
/// it likes), one chunk of the fused head ([`crate::fused_head`]) at a time.
pub fn held_out_pass<B: Backend>(
    model: &CausalLm<B>,
    pairs: &[&SequencePair],
    reference: &[PairScore],
    loss: &PreferenceLossParams,
    batching: PassBatching,
    on_chosen: &mut dyn FnMut(ChosenLogits) -> Result<(), ModelError>,
) -> Result<HeldOutSums, ModelError> {
    let PassBatching { pairs_per_pass: batch, pad_id, head_chunk_rows } = batching;
    if pairs.len() != reference.len() {
        return Err(ModelError::Batch(format!("{} pairs but {} reference scores", pairs.len(), reference.len())));
    }
    let device = model.embed.weight.device();
    let head = FusedHead::of_model(model).with_chunk_rows(chunk_rows_or::<B>(
        head_chunk_rows,
        model.config().vocab_size,
        &device,
    ));
    let mut sums = HeldOutSums { pairs: pairs.len(), ..HeldOutSums::default() };
    for (chunk, refs) in pairs.chunks(batch.max(1)).zip(reference.chunks(batch.max(1))) {
        let tokens = pair_batch(chunk, pad_id, model.config().vocab_size)?;
        let (hidden, positions) = scored_hidden(model, &tokens, &device)?;
        let n = chunk.len();
        // The chosen sequences are the batch's first `n` rows: their
        // completion positions come first among the scored ones. The fused
        // head hands over its chunks of logits; the chosen rows of each go
        // to `on_chosen`, so no more than a chunk is ever copied.
        let chosen_rows = positions.count_in_first_rows(n);
        let token_logps = head.token_logps(&hidden, &positions.target_index::<B>(&device), &mut |start, logits| {
            match ChosenLogits::of_chunk(logits, start, chosen_rows, &positions.targets)? {
                Some(chosen) => on_chosen(chosen),
                None => Ok(()),
            }
        })?;
        let values: Vec<f64> = read_vec(row_sums(token_logps, &positions), "held-out log-probabilities")?;
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
            sums.loss += out.loss;
            sums.accuracy += out.accuracy;
            sums.margin += out.margin;
            sums.chosen_logp += x.policy_chosen;
            sums.rejected_logp += x.policy_rejected;
            sums.chosen_tokens += r.chosen_tokens;
            sums.rejected_tokens += r.rejected_tokens;
        }
    }
    Ok(sums)
}

/// Evaluates `model` on `pairs` against their reference scores, `batch`
/// pairs per forward pass, the statistics on daa-core's CPU backend.
pub fn evaluate<B: Backend>(
    model: &CausalLm<B>,
    pairs: &[&SequencePair],
    reference: &[PairScore],
    loss: &PreferenceLossParams,
    stats: &TokenStatsParams,
    batch: usize,
    pad_id: u32,
) -> Result<EvalReport, ModelError> {
    evaluate_on_ranks(model, pairs, reference, (loss, stats), (batch, pad_id), None)
}

/// [`evaluate`] split over the ranks of `collective`: each scores its
/// contiguous slice of the pairs, the sums are added over the ranks, and
/// every rank gets the same report (equal to one process's up to the order
/// of the sums).
pub fn evaluate_on_ranks<B: Backend>(
    model: &CausalLm<B>,
    pairs: &[&SequencePair],
    reference: &[PairScore],
    (loss, stats): (&PreferenceLossParams, &TokenStatsParams),
    (batch, pad_id): (usize, u32),
    collective: Option<&mut dyn crate::distributed::Collective>,
) -> Result<EvalReport, ModelError> {
    if pairs.len() != reference.len() {
        return Err(ModelError::Batch(format!("{} pairs but {} reference scores", pairs.len(), reference.len())));
    }
    let cpu = Cpu::new();
    let mut totals = StatsSums::default();
    let batching = PassBatching { pairs_per_pass: batch, pad_id, head_chunk_rows: 0 };
    let slice = match &collective {
        Some(c) => crate::distributed::rank_slice(pairs.len(), c.rank(), c.world_size()),
        None => 0..pairs.len(),
    };
    let mut sums = held_out_pass(model, &pairs[slice.clone()], &reference[slice], loss, batching, &mut |chosen| {
        totals.add_on_cpu(&cpu, &chosen.logits, &chosen.targets, stats)
    })?;
    if let Some(collective) = collective {
        sums.sum_over_ranks(&mut totals, collective)?;
    }
    Ok(sums.report(&totals))
}
