//! From hidden states to the training objective.
//!
//! Per-token log-probabilities `ℓ_{i,t} = log softmax(z_{i,t})[x_{i,t+1}]`
//! are needed only where `x_{i,t+1}` is a completion token, so the output
//! head is applied at those positions alone ([`CompletionLogits`]); a
//! sequence's score is `π_i = Σ_t ℓ_{i,t}` over them. The preference loss
//! itself comes from daa-core's catalog ([`daa_core::preference::pair_loss`]),
//! which returns the loss and `∂L/∂π` per pair. The trainer backpropagates
//! the surrogate `S = Σ_i (∂L̄/∂π_i)·π_i` with the weights held constant:
//! `∇_θ S = ∇_θ L̄` (chain rule), so every catalog loss trains without a
//! second implementation.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{IndexingUpdateOp, Tensor, TensorData};
use daa_core::preference::{PairLogps, PairLoss, PreferenceLossParams, pair_loss, validate_pair};

use crate::batch::{ScoredPositions, TokenBatch};
use crate::error::{ModelError, read_vec};
use crate::fused_head::FusedHead;
use crate::model::CausalLm;

/// Logits `z` `[N, V]` at the `N` positions of a batch that predict
/// completion tokens, row by row, and where those positions are.
#[derive(Debug, Clone)]
pub struct CompletionLogits<B: Backend> {
    /// `[N, V]`.
    pub logits: Tensor<B, 2>,
    /// The positions, their targets and rows.
    pub positions: ScoredPositions,
}

impl<B: Backend> CompletionLogits<B> {
    /// Runs `model` on `batch` (rows laid out as it says) and applies the
    /// head at the scored positions only.
    pub fn of(model: &CausalLm<B>, batch: &TokenBatch, device: &B::Device) -> Result<Self, ModelError> {
        let (hidden, positions) = scored_hidden(model, batch, device)?;
        Ok(Self { logits: model.head(hidden), positions })
    }

    /// `ℓ` at every scored position, `[N]`.
    pub fn token_logps(&self) -> Tensor<B, 1> {
        let n = self.positions.count();
        let device = self.logits.device();
        let targets = self.positions.target_index::<B>(&device).reshape([n, 1]);
        log_softmax(self.logits.clone(), 1).gather(1, targets).reshape([n])
    }

    /// `π_i = Σ_t ℓ_{i,t}` of every row, `[rows]`.
    pub fn sequence_logps(&self) -> Tensor<B, 1> {
        row_sums(self.token_logps(), &self.positions)
    }
}

/// `π_i = Σ_t ℓ_{i,t}` of every row from the per-position `ℓ` `[N]`, `[rows]`.
pub fn row_sums<B: Backend>(token_logps: Tensor<B, 1>, positions: &ScoredPositions) -> Tensor<B, 1> {
    let device = token_logps.device();
    Tensor::zeros([positions.rows], &device).select_assign(
        0,
        positions.row_index::<B>(&device),
        token_logps,
        IndexingUpdateOp::Add,
    )
}

/// Hidden states `[N, d]` of `batch`'s scored positions under `model` (rows
/// laid out as the batch says), and where they are.
pub fn scored_hidden<B: Backend>(
    model: &CausalLm<B>,
    batch: &TokenBatch,
    device: &B::Device,
) -> Result<(Tensor<B, 2>, ScoredPositions), ModelError> {
    let hidden = model.hidden(batch.input::<B>(device), &batch.positions, None)?;
    let [rows, len, d] = hidden.dims();
    let positions = batch.scored_positions();
    Ok((hidden.reshape([rows * len, d]).select(0, positions.flat_index::<B>(device)), positions))
}

/// `π_i` of every row of `batch` under `model`, `[rows]`, through the fused
/// head ([`crate::fused_head`]: no `[N × V]` logits; differentiable on an
/// autodiff backend like the unfused [`CompletionLogits::sequence_logps`]).
pub fn sequence_logps<B: Backend>(
    model: &CausalLm<B>,
    batch: &TokenBatch,
    device: &B::Device,
) -> Result<Tensor<B, 1>, ModelError> {
    let (hidden, positions) = scored_hidden(model, batch, device)?;
    let targets = positions.target_index::<B>(device);
    let token_logps = FusedHead::of_model(model).token_logps(&hidden, &targets, &mut |_, _| Ok(()))?;
    Ok(row_sums(token_logps, &positions))
}

/// What one batch of pairs contributes to the objective.
#[derive(Debug)]
pub struct PairObjective<B: Backend> {
    /// `S = Σ_i w_i π_i`; its gradient is the gradient of the mean loss.
    pub surrogate: Tensor<B, 1>,
    /// The inputs of every pair (policy, reference, token counts).
    pub inputs: Vec<PairLogps>,
    /// The loss, gradient and rewards of every pair.
    pub losses: Vec<PairLoss>,
}

/// The losses of a batch of pairs and the weights `w_i = ∂L̄/∂π_i` of its
/// sequences (chosen first, then rejected).
#[derive(Debug, Clone)]
pub struct PairWeights {
    /// `w`, `[2P]`.
    pub weights: Vec<f32>,
    /// The inputs of every pair (policy, reference, token counts).
    pub inputs: Vec<PairLogps>,
    /// The loss, gradient and rewards of every pair.
    pub losses: Vec<PairLoss>,
}

/// Reads the policy scores `[2P]` (chosen first, then rejected), evaluates
/// the loss of every pair against `reference` and `tokens` (`(chosen,
/// rejected)` per pair) and builds the surrogate, divided by `normaliser`
/// (the number of pairs in the optimizer step).
pub fn pair_objective<B: Backend>(
    policy: Tensor<B, 1>,
    reference: &[(f64, f64)],
    tokens: &[(f64, f64)],
    params: &PreferenceLossParams,
    normaliser: f64,
) -> Result<PairObjective<B>, ModelError> {
    let values: Vec<f64> = read_vec(policy.clone(), "policy log-probabilities")?;
    let PairWeights { weights, inputs, losses } = pair_weights(&values, reference, tokens, params, normaliser)?;
    let n = weights.len();
    let weights = Tensor::<B, 1>::from_data(TensorData::new(weights, [n]), &policy.device());
    Ok(PairObjective { surrogate: (policy * weights).sum(), inputs, losses })
}

/// The loss of every pair from the policy scores `values` `[2P]` (chosen
/// first, then rejected) against `reference` and `tokens`, and the weights
/// `w_i = (∂L/∂π_i) / normaliser`.
pub fn pair_weights(
    values: &[f64],
    reference: &[(f64, f64)],
    tokens: &[(f64, f64)],
    params: &PreferenceLossParams,
    normaliser: f64,
) -> Result<PairWeights, ModelError> {
    let pairs = reference.len();
    if values.len() != 2 * pairs || tokens.len() != pairs {
        return Err(ModelError::Batch(format!(
            "{} sequence scores, {} token counts for {pairs} pairs (need chosen then rejected)",
            values.len(),
            tokens.len()
        )));
    }
    let mut inputs = Vec::with_capacity(pairs);
    let mut losses = Vec::with_capacity(pairs);
    let mut weights = vec![0f32; 2 * pairs];
    for p in 0..pairs {
        let x = PairLogps {
            policy_chosen: values[p],
            policy_rejected: values[pairs + p],
            reference_chosen: reference[p].0,
            reference_rejected: reference[p].1,
            chosen_tokens: tokens[p].0,
            rejected_tokens: tokens[p].1,
        };
        validate_pair(p, &x, params)?;
        let loss = pair_loss(&x, params);
        weights[p] = (loss.grad_policy_chosen / normaliser) as f32;
        weights[pairs + p] = (loss.grad_policy_rejected / normaliser) as f32;
        inputs.push(x);
        losses.push(loss);
    }
    Ok(PairWeights { weights, inputs, losses })
}
