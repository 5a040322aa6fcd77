//! A policy judged on a prompt split after training: several samples per
//! prompt against several of the reference's, per-prompt outcomes kept.
//!
//! For prompt `x_i` with the policy's samples `y_{i,1} … y_{i,k}` and the
//! reference policy's `c_{i,1} … c_{i,m}` (drawn once per testbed), the
//! gold rewards `r` ([`super::task`]) give the per-prompt figures
//!
//! ```text
//! w_i = (1/(k·m)) Σ_a Σ_b σ(r(x_i, y_{i,a}) − r(x_i, c_{i,b}))   win probability
//! g_i = (1/k) Σ_a r(x_i, y_{i,a})                                 gold reward
//! ```
//!
//! whose means over prompts are the split's `P_win` and gold reward; kept
//! per prompt so that intervals can resample prompts within seeds
//! (`daa_core::intervals::hierarchical_bootstrap`). The policy's draws use
//! the same seeds at every checkpoint and in every arm of a testbed (common
//! random numbers: differences between checkpoints and arms are not
//! differences between draws).

use burn::tensor::backend::Backend;
use daa_core::sampling::SamplingParams;
use serde::{Deserialize, Serialize};

use super::byte_chat::{self, END};
use super::splits::SplitPrompt;
use super::task::gold_reward;
use crate::error::ModelError;
use crate::generate::{FinishReason, GenerationConfig, GenerationRequest, generate_in_batches, request_seed};
use crate::model::CausalLm;

/// XORed into the seed for the reference's draws: a stream of its own.
const REFERENCE_STREAM: u64 = 0x2EF0_0000_C0FF_EE11;

/// How a split is sampled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitEvalSettings {
    /// `k`: the policy's samples per prompt (and `m`, the reference's).
    pub samples_per_prompt: usize,
    /// Temperature and nucleus (the run's sample evaluation's).
    pub sampling: SamplingParams,
    /// Longest completion.
    pub max_new_tokens: usize,
    /// Sequences per forward pass.
    pub batch_size: usize,
    /// Seed of the draws.
    pub seed: u64,
}

/// Per-prompt outcomes of one split (module documentation).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SplitOutcomes {
    /// `w_i` per prompt.
    pub win_prob: Vec<f64>,
    /// `g_i` per prompt.
    pub gold_reward: Vec<f64>,
}

impl SplitOutcomes {
    /// The split's win probability: the mean of `w_i`.
    pub fn mean_win_prob(&self) -> f64 {
        mean(&self.win_prob)
    }

    /// The split's gold reward: the mean of `g_i`.
    pub fn mean_gold_reward(&self) -> f64 {
        mean(&self.gold_reward)
    }
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() { f64::NAN } else { values.iter().sum::<f64>() / values.len() as f64 }
}

/// The gold rewards of `settings.samples_per_prompt` samples of `model` per
/// prompt, from the stream `seed`.
fn draw_rewards<B: Backend>(
    model: &CausalLm<B>,
    prompts: &[SplitPrompt],
    settings: &SplitEvalSettings,
    seed: u64,
) -> Result<Vec<Vec<f64>>, ModelError> {
    let k = settings.samples_per_prompt.max(1);
    let config = GenerationConfig {
        sampling: settings.sampling,
        max_new_tokens: settings.max_new_tokens,
        stop_tokens: vec![END],
        topk_stats: None,
    };
    let ids: Vec<Vec<u32>> = prompts.iter().map(|(_, c)| byte_chat::prompt_ids(&c.to_text())).collect();
    let requests: Vec<GenerationRequest> = prompts
        .iter()
        .zip(&ids)
        .flat_map(|((index, _), ids)| {
            (0..k).map(move |s| GenerationRequest { prompt: ids, seed: request_seed(seed, *index as usize, s) })
        })
        .collect();
    let device = model.embed.weight.device();
    let samples = generate_in_batches(model, &requests, settings.batch_size.max(1), &config, &device, &mut |_| {})?;
    Ok(prompts
        .iter()
        .zip(samples.chunks(k))
        .map(|((_, c), drawn)| {
            drawn
                .iter()
                .map(|g| gold_reward(c, &byte_chat::decode(&g.tokens), g.finish == FinishReason::Stop))
                .collect()
        })
        .collect())
}

/// The reference policy's rewards on a split (drawn once per testbed).
pub fn reference_rewards<B: Backend>(
    reference: &CausalLm<B>,
    prompts: &[SplitPrompt],
    settings: &SplitEvalSettings,
) -> Result<Vec<Vec<f64>>, ModelError> {
    draw_rewards(reference, prompts, settings, settings.seed ^ REFERENCE_STREAM)
}

/// Samples `policy` on `prompts` and compares with the reference's rewards
/// (one list per prompt, from [`reference_rewards`]).
pub fn evaluate_split<B: Backend>(
    policy: &CausalLm<B>,
    prompts: &[SplitPrompt],
    reference: &[Vec<f64>],
    settings: &SplitEvalSettings,
) -> Result<SplitOutcomes, ModelError> {
    if reference.len() != prompts.len() {
        return Err(ModelError::Batch(format!(
            "split evaluation: {} prompts but the reference's rewards of {}",
            prompts.len(),
            reference.len()
        )));
    }
    let policy = draw_rewards(policy, prompts, settings, settings.seed)?;
    Ok(outcomes(&policy, reference))
}

/// `w_i` and `g_i` (module documentation) from each prompt's policy and
/// reference rewards.
pub fn outcomes(policy: &[Vec<f64>], reference: &[Vec<f64>]) -> SplitOutcomes {
    let sigmoid = |z: f64| 1.0 / (1.0 + (-z).exp());
    let (win_prob, gold_reward) = policy
        .iter()
        .zip(reference)
        .map(|(ys, cs)| {
            let pairs = (ys.len() * cs.len()).max(1) as f64;
            let w = ys.iter().flat_map(|y| cs.iter().map(move |c| sigmoid(y - c))).sum::<f64>() / pairs;
            (w, mean(ys))
        })
        .unzip();
    SplitOutcomes { win_prob, gold_reward }
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;

    use super::*;
    use crate::model::RandomWeights;
    use crate::testbed::spec::TestbedSpec;
    use crate::testbed::splits::test_prompts;
    use crate::testbed::stages::model_config;

    #[test]
    fn outcomes_by_hand() {
        // Prompt 1: policy rewards (1, 0) against the reference's (0, 0):
        // σ(1) twice and σ(0) twice → (2·0.7310586 + 1)/4; gold ½.
        let o = outcomes(&[vec![1.0, 0.0], vec![0.5]], &[vec![0.0, 0.0], vec![0.5, -0.5]]);
        let s1 = 1.0 / (1.0 + (-1.0f64).exp());
        assert!((o.win_prob[0] - (2.0 * s1 + 1.0) / 4.0).abs() < 1e-15);
        assert!((o.win_prob[1] - (0.5 + s1) / 2.0).abs() < 1e-15);
        assert_eq!(o.gold_reward, vec![0.5, 0.5]);
        assert!((o.mean_win_prob() - (o.win_prob[0] + o.win_prob[1]) / 2.0).abs() < 1e-15);
    }

    #[test]
    fn a_policy_against_itself_wins_half_and_draws_repeat() {
        let spec = TestbedSpec { hidden_size: 16, layers: 1, ..TestbedSpec::default() };
        let config = model_config(&spec).unwrap();
        let model =
            CausalLm::<Flex>::from_weights(&config, &mut RandomWeights { seed: 1, std: 0.5 }, &Default::default())
                .unwrap();
        let prompts = test_prompts(&spec, 6);
        let settings = SplitEvalSettings {
            samples_per_prompt: 3,
            sampling: SamplingParams { temperature: 1.0, top_p: 1.0 },
            max_new_tokens: spec.max_new_tokens,
            batch_size: 4,
            seed: 9,
        };
        let reference = reference_rewards(&model, &prompts, &settings).unwrap();
        assert_eq!(reference.len(), 6);
        assert!(reference.iter().all(|r| r.len() == 3 && r.iter().all(|x| x.is_finite() && *x <= 1.0)));
        let a = evaluate_split(&model, &prompts, &reference, &settings).unwrap();
        let b = evaluate_split(&model, &prompts, &reference, &settings).unwrap();
        assert_eq!(a, b, "the same seeds at every call");
        // The policy's stream differs from the reference's: not the same draws.
        let own = draw_rewards(&model, &prompts, &settings, settings.seed).unwrap();
        assert_ne!(own, reference);
        assert!(a.win_prob.iter().all(|w| (0.0..=1.0).contains(w)));
        assert!(evaluate_split(&model, &prompts[..2], &reference, &settings).is_err());
    }
}
