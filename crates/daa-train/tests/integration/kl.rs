//! `KL(π‖π_ref)` on a model small enough to enumerate every completion: a
//! vocabulary of 3 tokens, token 2 the stop token, at most 2 generated
//! tokens, so the completions of a prompt are `[2]`, and `[a, b]` for
//! `a ∈ {0, 1}`, `b ∈ {0, 1, 2}`: seven in all, with probabilities
//! `π(y|x) = Π_t π(y_t | x, y_<t)` that sum to 1. Their exact divergence
//! `Σ_y π(y) log(π(y)/π_ref(y))` is the yardstick for
//! - the per-token form averaged over every completion weighted by `π(y)`
//!   (equal by the chain rule, to f32 rounding), and the sequence form the
//!   same way;
//! - both estimators on samples drawn from `π` at temperature 1 (within four
//!   standard errors, the seeds fixed);
//! - a policy against itself (exactly 0), and no negative per-token sum.

use burn::backend::NdArray;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use daa_core::kl::{kl_from_token_sums, mean_with_standard_error};
use daa_core::sampling::SamplingParams;
use daa_train::batch::Sequence;
use daa_train::generate::{GenerationConfig, GenerationRequest, generate_in_batches, request_seed};
use daa_train::model::tiny_configs::llama_config;
use daa_train::model::{CausalLm, ModelConfig, RandomWeights};
use daa_train::policy_kl::sample_kl;

type B = NdArray<f32>;
const VOCAB: usize = 3;
const STOP: u32 = 2;
const PROMPT: [u32; 2] = [0, 1];
/// |a − b| ≤ CHUNKING·(1 + |b|) between sums computed in head chunks of
/// different sizes (f32 products rounded by shape).
const CHUNKING: f64 = 2e-4;

fn model(seed: u64, std: f32) -> CausalLm<B> {
    let config = ModelConfig::from_json(&llama_config(VOCAB, 16, 1).to_string()).unwrap();
    CausalLm::from_weights(&config, &mut RandomWeights { seed, std }, &Default::default()).unwrap()
}

/// `log p(·|ids)` of the next token, f64.
fn next_logprobs(model: &CausalLm<B>, ids: &[u32]) -> Vec<f64> {
    let data: Vec<i64> = ids.iter().map(|&t| i64::from(t)).collect();
    let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(data, [1, ids.len()]), &Default::default());
    let logits = model.forward(tokens).unwrap().narrow(1, ids.len() - 1, 1);
    let values: Vec<f32> = log_softmax(logits, 2).into_data().into_vec().unwrap();
    values.iter().map(|&v| f64::from(v)).collect()
}

/// Every completion of [`PROMPT`] and its `log π(y|x)`.
fn completions(model: &CausalLm<B>) -> Vec<(Vec<u32>, f64)> {
    let first = next_logprobs(model, &PROMPT);
    let mut out = vec![(vec![STOP], first[STOP as usize])];
    for a in 0..STOP {
        let prefix: Vec<u32> = PROMPT.iter().copied().chain([a]).collect();
        let second = next_logprobs(model, &prefix);
        for b in 0..VOCAB as u32 {
            out.push((vec![a, b], first[a as usize] + second[b as usize]));
        }
    }
    out
}

fn sequence(completion: &[u32]) -> Sequence {
    Sequence { ids: PROMPT.iter().chain(completion).copied().collect(), completion_start: PROMPT.len() }
}

#[test]
fn estimators_agree_with_the_exact_kl_over_every_completion() {
    let (policy, reference) = (model(11, 0.8), model(12, 0.8));
    let exact_policy = completions(&policy);
    let exact_reference = completions(&reference);
    let total: f64 = exact_policy.iter().map(|(_, lp)| lp.exp()).sum();
    assert!((total - 1.0).abs() < 1e-5, "the seven completions carry all the probability: {total}");
    let exact: f64 = exact_policy.iter().zip(&exact_reference).map(|((_, lp), (_, lq))| lp.exp() * (lp - lq)).sum();
    assert!(exact > 0.05, "two random models should differ: KL {exact}");

    // The per-token form over every completion, weighted by π(y).
    let sequences: Vec<Sequence> = exact_policy.iter().map(|(y, _)| sequence(y)).collect();
    let per_sample = sample_kl(&policy, &reference, &sequences, 3, 0, 0).unwrap();
    let weighted =
        |f: &dyn Fn(usize) -> f64| -> f64 { exact_policy.iter().enumerate().map(|(i, (_, lp))| lp.exp() * f(i)).sum() };
    let token_form = weighted(&|i| per_sample[i].token_kl);
    let sequence_form = weighted(&|i| per_sample[i].log_ratio);
    assert!((token_form - exact).abs() < 1e-5 * (1.0 + exact), "per-token {token_form} vs exact {exact}");
    assert!((sequence_form - exact).abs() < 1e-5 * (1.0 + exact), "sequence {sequence_form} vs exact {exact}");
    for (s, ((y, lp), (_, lq))) in per_sample.iter().zip(exact_policy.iter().zip(&exact_reference)) {
        assert!((s.log_ratio - (lp - lq)).abs() < 1e-5, "{y:?}: log-ratio {} vs {}", s.log_ratio, lp - lq);
        assert!(s.token_kl >= 0.0 && s.positions == y.len(), "{y:?}: {s:?}");
    }

    // Both estimators on samples drawn from π at temperature 1.
    let n = 400;
    let requests: Vec<GenerationRequest> =
        (0..n).map(|i| GenerationRequest { prompt: &PROMPT, seed: request_seed(5, i, 0) }).collect();
    let config = GenerationConfig {
        sampling: SamplingParams { temperature: 1.0, top_p: 1.0 },
        max_new_tokens: 2,
        stop_tokens: vec![STOP],
        topk_stats: None,
    };
    let drawn = generate_in_batches(&policy, &requests, 64, &config, &Default::default(), &mut |_| {}).unwrap();
    let sequences: Vec<Sequence> = drawn.iter().map(|g| sequence(&g.tokens)).collect();
    let per_sample = sample_kl(&policy, &reference, &sequences, 64, 0, 0).unwrap();
    let token = kl_from_token_sums(&per_sample.iter().map(|s| s.token_kl).collect::<Vec<_>>()).unwrap();
    let seq =
        mean_with_standard_error(&per_sample.iter().map(|s| s.log_ratio).collect::<Vec<_>>(), "log-ratio").unwrap();
    for (name, e) in [("per-token", token), ("sequence", seq)] {
        assert!((e.mean - exact).abs() <= 4.0 * e.standard_error.unwrap(), "{name}: {e:?} vs exact {exact}");
    }
    assert!(token.standard_error < seq.standard_error, "per-token SE {token:?} vs sequence SE {seq:?}");
    // Head chunks of one position give the same sums as whole batches, up to
    // f32 rounding: burn's CPU products round differently with the matrix's
    // shape (2.5e-5 seen here; decode.rs documents 1.6e-4 on log-probabilities).
    let by_position = sample_kl(&policy, &reference, &sequences, 64, 0, 1).unwrap();
    let close = |x: f64, y: f64| (x - y).abs() <= CHUNKING * (1.0 + y.abs());
    for (a, b) in per_sample.iter().zip(&by_position) {
        assert!(close(a.token_kl, b.token_kl) && close(a.log_ratio, b.log_ratio), "{a:?} {b:?}");
        assert_eq!(a.positions, b.positions);
    }
    println!("exact KL {exact:.5}; per-token {token:?}; sequence {seq:?}");
}

#[test]
fn a_policy_against_itself_is_zero_and_sums_are_never_negative() {
    let policy = model(21, 0.8);
    let sequences: Vec<Sequence> = completions(&policy).iter().map(|(y, _)| sequence(y)).collect();
    for s in sample_kl(&policy, &policy, &sequences, 2, 0, 0).unwrap() {
        assert_eq!((s.token_kl, s.log_ratio), (0.0, 0.0), "{s:?}");
    }
    // A reference that forbids nothing but is far away: large, finite, positive.
    let far = model(22, 3.0);
    for s in sample_kl(&policy, &far, &sequences, 7, 0, 2).unwrap() {
        assert!(s.token_kl.is_finite() && s.token_kl >= 0.0, "{s:?}");
    }
    // Mismatched vocabularies are named.
    let other = CausalLm::<B>::from_weights(
        &ModelConfig::from_json(&llama_config(5, 16, 1).to_string()).unwrap(),
        &mut RandomWeights { seed: 1, std: 0.5 },
        &Default::default(),
    )
    .unwrap();
    let err = sample_kl(&policy, &other, &sequences, 2, 0, 0).unwrap_err().to_string();
    assert!(err.contains("3 tokens") && err.contains("5"), "{err}");
}
