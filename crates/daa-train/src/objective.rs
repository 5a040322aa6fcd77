//! From logits to the training objective.
//!
//! Per-token log-probabilities `ℓ_{i,t} = log softmax(z_{i,t})[x_{i,t+1}]`;
//! a sequence's score is `π_i = Σ_t m_{i,t+1} ℓ_{i,t}` over its completion
//! tokens (`m` = 1 on completion tokens). The preference loss itself comes from
//! daa-core's catalog ([`daa_core::preference::pair_loss`]), which returns the
//! loss and `∂L/∂π` per pair. The trainer backpropagates the surrogate
//! `S = Σ_i (∂L̄/∂π_i)·π_i` with the weights held constant: `∇_θ S = ∇_θ L̄`
//! (chain rule), so every catalog loss trains without a second implementation.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use daa_core::preference::{PairLogps, PairLoss, PreferenceLossParams, pair_loss, validate_pair};

use crate::error::ModelError;

/// `ℓ_{i,t}·m_{i,t+1}`, `[rows, len − 1]`, from logits `[rows, len, V]`.
pub fn token_logps<B: Backend>(
    logits: Tensor<B, 3>,
    targets: Tensor<B, 2, Int>,
    weights: Tensor<B, 2>,
) -> Tensor<B, 2> {
    let [rows, len, _] = logits.dims();
    let logp = log_softmax(logits.narrow(1, 0, len - 1), 2);
    let picked: Tensor<B, 2> = logp.gather(2, targets.unsqueeze_dim(2)).reshape([rows, len - 1]);
    picked * weights
}

/// `π_i = Σ_t ℓ_{i,t}·m_{i,t+1}`, `[rows]`.
pub fn sequence_logps<B: Backend>(
    logits: Tensor<B, 3>,
    targets: Tensor<B, 2, Int>,
    weights: Tensor<B, 2>,
) -> Tensor<B, 1> {
    let [rows, _, _] = logits.dims();
    token_logps(logits, targets, weights).sum_dim(1).reshape([rows])
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
    let pairs = reference.len();
    let values: Vec<f64> = policy.clone().into_data().convert::<f64>().into_vec::<f64>().unwrap_or_default();
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
    let weights = Tensor::<B, 1>::from_data(TensorData::new(weights, [2 * pairs]), &policy.device());
    Ok(PairObjective { surrogate: (policy * weights).sum(), inputs, losses })
}
