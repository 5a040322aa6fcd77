//! The memory-saving paths give what the plain ones give: the fused head
//! (log-probabilities, `∂S/∂hidden`, `∂S/∂W`, the top-k statistics) against
//! autodiff through the full logits, on vocabularies that are not multiples
//! of anything and chunk boundaries everywhere; and every combination of
//! fused head and activation checkpointing against one autodiff graph, for
//! a Llama model (own head) and a Command R one (tied head, logit scale).

use std::collections::HashMap;

use burn::backend::{Autodiff, NdArray};
use burn::module::ParamId;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use daa_core::preference::{NllNormalisation, NllTerm, PreferenceLoss, PreferenceLossParams};
use daa_core::{Cpu, HostTensor, TokenStatsParams};
use daa_tests::fixtures::SplitMix64;
use daa_tests::tolerance::{Tolerance, assert_close};
use daa_train::backward::{MemoryOptions, weighted_backward};
use daa_train::batch::{Sequence, SequencePair, TokenBatch};
use daa_train::entropy_floor::FloorTerm;
use daa_train::eval::{PassBatching, StatsSums, held_out_pass};
use daa_train::fused_head::FusedHead;
use daa_train::model::tiny_configs::{cohere_config, llama_config};
use daa_train::model::{CausalLm, ModelConfig, ParamKind, RandomWeights};
use daa_train::optim::{AdamWConfig, GradAccumulator, LrSchedule};
use daa_train::score::{PairScore, score_pairs};
use daa_train::{ReferencePolicy, StepPair, Trainer, TrainerOptions};

type AD = Autodiff<NdArray<f32>>;
type Inner = NdArray<f32>;

/// Fused vs unfused head: the same f32 products, summed in other orders
/// (a chunk's matrix product, the scatter of `G`); measured differences are
/// below 1e-6 relative.
const FUSED_HEAD: Tolerance = Tolerance { name: "fused head vs autodiff through full logits", abs: 1e-5, rel: 1e-5 };

/// Gradients of a whole model, any memory option vs one graph, relative to
/// the largest entry of each parameter's gradient. Measured: fused head
/// ≤ 1.2e-5, checkpointing ≤ 6.5e-5. The floor of f32 rounding: the plain
/// path with the batch's rows reversed differs from itself by 1.25e-5; and
/// burn's ndarray backend rounds some operations differently when a buffer
/// is not shared (in place), so a block's forward without a graph differs
/// from the same block under autodiff by ~5e-5 relative (measured on these
/// models). A lost or doubled block gradient is an O(1) difference.
const WHOLE_MODEL: f64 = 5e-4;

/// Values computed through a checkpointed forward (π, a step's loss, norm
/// and statistics) against one graph: the in-place rounding above, which
/// also varies with how rayon's threads are busy (seen while other tests run
/// in parallel: π of the 3-block Llama 1.25e-5 relative off, a gradient norm
/// 2.4e-5).
const CHECKPOINTED: Tolerance =
    Tolerance { name: "through a checkpointed forward (ndarray's in-place rounding)", abs: 1e-5, rel: 1e-4 };

/// [`CHECKPOINTED`] where `memory` checkpoints, else [`FUSED_HEAD`].
fn tolerance_of(memory: &MemoryOptions) -> Tolerance {
    if memory.activation_checkpointing { CHECKPOINTED } else { FUSED_HEAD }
}

fn normal(rows: usize, cols: usize, std: f64, rng: &mut SplitMix64) -> Tensor<Inner, 2> {
    let values: Vec<f32> = (0..rows * cols).map(|_| (rng.normal() * std) as f32).collect();
    Tensor::from_data(TensorData::new(values, [rows, cols]), &Default::default())
}

fn f64s<const D: usize>(t: Tensor<Inner, D>) -> Vec<f64> {
    t.into_data().convert::<f64>().into_vec().unwrap()
}

#[test]
fn fused_head_equals_autodiff_through_full_logits() {
    // (positions, vocabulary, width, logit scale, weight std): odd sizes, a
    // single position, Cohere's scale, and logits in the thousands.
    let cases = [
        (1, 37, 8, 1.0, 1.0),
        (7, 101, 16, 0.5, 1.0),
        (13, 257, 8, 1.0, 1.0),
        (64, 65, 4, 0.0625, 1.0),
        (65, 63, 8, 1.0, 0.5),
        (5, 33, 8, 1.0, 400.0),
    ];
    let mut rng = SplitMix64::new(7);
    for (n, vocab, d, scale, std) in cases {
        let hidden = normal(n, d, 1.0, &mut rng);
        let weight = normal(vocab, d, std, &mut rng);
        let targets: Vec<i64> = (0..n).map(|_| rng.below(vocab) as i64).collect();
        let coefficients: Vec<f32> = (0..n).map(|_| (rng.uniform() * 2.0 - 1.0) as f32).collect();
        let device = Default::default();
        let y = Tensor::<Inner, 1, Int>::from_data(TensorData::new(targets.clone(), [n]), &device);
        let c = Tensor::<Inner, 1>::from_data(TensorData::new(coefficients.clone(), [n]), &device);

        // Unfused: autodiff through the whole [n, V] logits.
        let h = Tensor::<AD, 2>::from_inner(hidden.clone()).require_grad();
        let w = Tensor::<AD, 2>::from_inner(weight.clone()).require_grad();
        let z = h.clone().matmul(w.clone().transpose()).mul_scalar(scale);
        let y_ad = Tensor::<AD, 1, Int>::from_data(TensorData::new(targets.clone(), [n]), &device);
        let ell = log_softmax(z, 1).gather(1, y_ad.reshape([n, 1])).reshape([n]);
        let c_ad = Tensor::<AD, 1>::from_inner(c.clone());
        let grads = (ell.clone() * c_ad).sum().backward();
        let want_ell = f64s(ell.inner());
        let want_gh = f64s(h.grad(&grads).unwrap());
        let want_gw = f64s(w.grad(&grads).unwrap());
        assert!(want_ell.iter().all(|v| v.is_finite()), "case {n}×{vocab}: unfused ℓ not finite");

        for chunk in [1, 3, 7, 64, 1000] {
            let head = FusedHead::new(weight.clone(), scale, chunk);
            let mut starts = Vec::new();
            let ell = head
                .token_logps(&hidden, &y, &mut |start, logits| {
                    let [len, v] = logits.dims();
                    assert_eq!(v, vocab);
                    assert_eq!(len, chunk.min(n - start));
                    starts.push(start);
                    Ok(())
                })
                .unwrap();
            let (gh, gw, _) = head.backward(&hidden, &y, &c, None, true);
            let gw = gw.expect("asked for ∂S/∂W");
            let what = format!("{n} positions × V {vocab}, scale {scale}, std {std}, chunks of {chunk}");
            assert_eq!(starts, (0..n).step_by(chunk).collect::<Vec<_>>(), "{what}: chunk starts");
            assert_close(&f64s(ell), &want_ell, FUSED_HEAD, &format!("{what}: ℓ"));
            let scale_h = want_gh.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
            let scale_w = want_gw.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
            let rel = |v: Vec<f64>, s: f64| v.into_iter().map(|x| x / s).collect::<Vec<_>>();
            assert_close(
                &rel(f64s(gh), scale_h),
                &rel(want_gh.clone(), scale_h),
                FUSED_HEAD,
                &format!("{what}: ∂S/∂h (÷ max {scale_h:.3e})"),
            );
            assert_close(
                &rel(f64s(gw), scale_w),
                &rel(want_gw.clone(), scale_w),
                FUSED_HEAD,
                &format!("{what}: ∂S/∂W (÷ max {scale_w:.3e})"),
            );
        }
    }
}

#[test]
fn fused_head_chunks_give_the_statistics_of_the_whole_logits() {
    let (n, vocab, d) = (65, 131, 8);
    let mut rng = SplitMix64::new(3);
    let hidden = normal(n, d, 1.0, &mut rng);
    let weight = normal(vocab, d, 1.5, &mut rng);
    let targets: Vec<i64> = (0..n).map(|_| rng.below(vocab) as i64).collect();
    let device = Default::default();
    let y = Tensor::<Inner, 1, Int>::from_data(TensorData::new(targets.clone(), [n]), &device);
    let cpu = Cpu::new();
    let params = TokenStatsParams { k: 10, entropy_base: 2.0 };
    let whole = hidden.clone().matmul(weight.clone().transpose());
    let mut want = StatsSums::default();
    want.add_on_cpu(
        &cpu,
        &HostTensor::from_f32(whole.into_data().into_vec().unwrap(), &[n, vocab]).unwrap(),
        &HostTensor::from_i64(targets.clone(), &[n]).unwrap(),
        &params,
    )
    .unwrap();
    let mut got = StatsSums::default();
    FusedHead::new(weight, 1.0, 8)
        .token_logps(&hidden, &y, &mut |start, logits| {
            let [len, _] = logits.dims();
            got.add_on_cpu(
                &cpu,
                &HostTensor::from_f32(logits.clone().into_data().into_vec().unwrap(), &[len, vocab]).unwrap(),
                &HostTensor::from_i64(targets[start..start + len].to_vec(), &[len]).unwrap(),
                &params,
            )
        })
        .unwrap();
    assert_eq!(got.rows, n);
    assert_close(
        &[got.topk_entropy, got.topk_mass, got.entropy],
        &[want.topk_entropy, want.topk_mass, want.entropy],
        FUSED_HEAD,
        "statistics summed over chunks of 8 vs over the whole logits",
    );
}

pub(crate) fn sequence(p: &[u32], c: &[u32]) -> Sequence {
    Sequence { ids: p.iter().chain(c).copied().collect(), completion_start: p.len() }
}

/// Pairs of different lengths (padding in every batch), tokens below 61.
pub(crate) fn pairs() -> Vec<SequencePair> {
    (0..5u32)
        .map(|i| SequencePair {
            chosen: sequence(&[1, 2 + i, 3, 4 + i % 2], &[10 + i, 20, 30 + i % 3, 5 + i]),
            rejected: sequence(&[1, 2 + i, 3, 4 + i % 2], &[40 - i, 50 + i % 5]),
        })
        .collect()
}

const VOCAB: usize = 61;

fn model(config: &serde_json::Value) -> CausalLm<AD> {
    random_model(config, 5, 0.2)
}

/// A trainer of [`model`]`(config)` with `loss` and `memory`: AdamW's
/// defaults, rate 1e-3 after one warm-up step, 2 pairs per micro-batch.
fn trainer(config: &serde_json::Value, loss: PreferenceLossParams, memory: MemoryOptions) -> Trainer<AD> {
    let options = TrainerOptions {
        loss,
        optimizer: AdamWConfig::default(),
        schedule: LrSchedule { peak: 1e-3, warmup: 1, total: 10, final_fraction: 0.1 },
        micro_batch_size: 2,
        pad_id: 0,
        memory,
        precision: daa_train::Precision::F32,
    };
    Trainer::new(model(config), options, ReferencePolicy::Given).unwrap()
}

/// `pairs` with their reference scores, as a step takes them.
fn step_pairs<'a>(pairs: &'a [SequencePair], reference: &[PairScore]) -> Vec<StepPair<'a>> {
    pairs.iter().zip(reference).map(|(p, r)| StepPair { sequences: p, reference: Some(*r) }).collect()
}

/// A model of `config` with weights `N(0, std²)` from `seed`, on any backend.
fn random_model<B: burn::tensor::backend::Backend>(config: &serde_json::Value, seed: u64, std: f32) -> CausalLm<B> {
    let config = ModelConfig::from_json(&config.to_string()).unwrap();
    CausalLm::from_weights(&config, &mut RandomWeights { seed, std }, &Default::default()).unwrap()
}

/// Each parameter's name and gradient, in the model's visiting order.
type NamedGradients = Vec<(String, Vec<f64>)>;

/// `∇ Σ_i w_i π_i` by parameter name, and the `π` the pass saw.
fn gradients(
    model: &CausalLm<AD>,
    batch: &TokenBatch,
    memory: MemoryOptions,
    weights: &[f32],
) -> (Vec<f64>, NamedGradients) {
    let (policy, named, _) = gradients_with_floor(model, batch, memory, weights, None);
    (policy, named)
}

/// [`gradients`] of `Σ_i w_i π_i + F` with the entropy floor term `F`, and `F`.
fn gradients_with_floor(
    model: &CausalLm<AD>,
    batch: &TokenBatch,
    memory: MemoryOptions,
    weights: &[f32],
    floor: Option<&FloorTerm>,
) -> (Vec<f64>, NamedGradients, f64) {
    let mut acc = GradAccumulator::<Inner>::default();
    let mut seen = Vec::new();
    let floor_value = weighted_backward(
        model,
        batch,
        &memory,
        &mut |policy| {
            seen = policy.to_vec();
            Ok(weights.to_vec())
        },
        &mut |_, _| Ok(()),
        floor,
        &mut acc,
    )
    .unwrap();
    let mut by_id: HashMap<ParamId, Vec<f64>> =
        acc.gradients_mut().map(|(id, g)| (id, g.clone().into_data().convert::<f64>().into_vec().unwrap())).collect();
    let mut named = Vec::new();
    model.visit_weights(&mut |name: &str, p: ParamKind<'_, AD>| {
        let g = by_id.remove(&p.id()).unwrap_or_else(|| panic!("{name}: no gradient with {memory:?}"));
        named.push((name.to_string(), g));
    });
    assert!(by_id.is_empty(), "gradients of parameters the model does not visit");
    (seen, named, floor_value)
}

#[test]
fn every_memory_option_gives_the_gradient_of_one_graph() {
    let pairs = pairs();
    let sequences: Vec<&Sequence> = pairs.iter().flat_map(|p| [&p.chosen, &p.rejected]).collect();
    let batch = TokenBatch::new(&sequences, 0, VOCAB).unwrap();
    let weights: Vec<f32> =
        (0..sequences.len()).map(|i| if i % 3 == 0 { -0.7 } else { 0.4 + 0.1 * i as f32 }).collect();
    let plain = MemoryOptions { fused_head: false, head_chunk_rows: 0, activation_checkpointing: false };
    let variants = [
        MemoryOptions { fused_head: true, head_chunk_rows: 0, activation_checkpointing: false },
        MemoryOptions { fused_head: true, head_chunk_rows: 5, activation_checkpointing: false },
        MemoryOptions { fused_head: false, head_chunk_rows: 0, activation_checkpointing: true },
        MemoryOptions { fused_head: true, head_chunk_rows: 7, activation_checkpointing: true },
    ];
    // The top-k entropy floor term joins the surrogate in every variant; its
    // floor lies above some positions' top-10 entropy and below others'.
    let floor = FloorTerm { coefficient: 0.05, floor: 3.3, k: 10, entropy_base: 2.0 };
    for (family, config) in [("llama", llama_config(VOCAB, 32, 3)), ("cohere", cohere_config(VOCAB, 32, 2))] {
        let model = model(&config);
        let (_, without_floor) = gradients(&model, &batch, plain, &weights);
        let (want_policy, want, want_floor) = gradients_with_floor(&model, &batch, plain, &weights, Some(&floor));
        assert!(want_floor > 0.0, "{family}: the floor is active somewhere ({want_floor})");
        let moved = want.iter().zip(&without_floor).any(|((_, a), (_, b))| a.iter().zip(b).any(|(x, y)| x != y));
        assert!(moved, "{family}: the floor term changes the gradient");
        for memory in variants {
            let (policy, got, floor_value) = gradients_with_floor(&model, &batch, memory, &weights, Some(&floor));
            let what = format!("{family}, {memory:?}");
            // F is computed from the logits of the (checkpointed) forward: π's tolerance.
            assert_close(&[floor_value], &[want_floor], tolerance_of(&memory), &format!("{what}: F"));
            assert_close(&policy, &want_policy, tolerance_of(&memory), &format!("{what}: π"));
            let mut worst = 0f64;
            for ((name, g), (_, w)) in got.iter().zip(&want) {
                let scale = w.iter().fold(0f64, |m, v| m.max(v.abs()));
                assert!(scale > 0.0, "{what}: {name} has an all-zero gradient");
                let diff = g.iter().zip(w).fold(0f64, |m, (a, b)| m.max((a - b).abs())) / scale;
                assert!(diff <= WHOLE_MODEL, "{what}: {name}: largest difference {diff:.3e} of the largest entry");
                worst = worst.max(diff);
            }
            println!("{what}: largest gradient difference {worst:.2e} of each parameter's largest entry");
        }
    }
}

#[test]
fn trainer_steps_agree_with_and_without_the_memory_options() {
    let pairs = pairs();
    let initial: CausalLm<Inner> = random_model(&cohere_config(VOCAB, 32, 2), 5, 0.2);
    let refs: Vec<&SequencePair> = pairs.iter().collect();
    let reference: Vec<PairScore> = score_pairs(&initial, &refs, 2, 0, &mut |_| {}).unwrap();
    let loss = PreferenceLossParams {
        loss: PreferenceLoss::Ipo { tau: 0.1 },
        nll: Some(NllTerm { weight: 0.2, normalisation: NllNormalisation::Mean }),
    };
    let run = |memory: MemoryOptions| {
        let mut trainer = trainer(&cohere_config(VOCAB, 32, 2), loss, memory);
        let record = trainer.step(&step_pairs(&pairs, &reference)).unwrap();
        let nll = trainer.nll_step(&[&pairs[0].chosen, &pairs[1].chosen, &pairs[2].rejected]).unwrap();
        (record, nll)
    };
    let (want, want_nll) =
        run(MemoryOptions { fused_head: false, head_chunk_rows: 0, activation_checkpointing: false });
    let (got, got_nll) = run(MemoryOptions { fused_head: true, head_chunk_rows: 3, activation_checkpointing: true });
    assert_close(
        &[got.loss, got.grad_norm, got.chosen_logps, got.rejected_logps, got.margin],
        &[want.loss, want.grad_norm, want.chosen_logps, want.rejected_logps, want.margin],
        CHECKPOINTED,
        "a preference step, fused head + checkpointing vs plain",
    );
    // The second step starts from weights one AdamW update apart by rounding only.
    assert_close(
        &[got_nll.loss, got_nll.grad_norm],
        &[want_nll.loss, want_nll.grad_norm],
        Tolerance { name: "after one AdamW step", abs: 1e-4, rel: 1e-4 },
        "an NLL step, fused head + checkpointing vs plain",
    );
}

#[test]
fn evaluation_in_small_head_chunks_equals_one_chunk() {
    let pairs = pairs();
    let refs: Vec<&SequencePair> = pairs.iter().collect();
    let model: CausalLm<Inner> = random_model(&llama_config(VOCAB, 32, 2), 9, 0.3);
    let reference: Vec<PairScore> = score_pairs(&model, &refs, 2, 0, &mut |_| {}).unwrap();
    let loss = PreferenceLossParams { loss: PreferenceLoss::Dpo { beta: 0.1, label_smoothing: 0.0 }, nll: None };
    let cpu = Cpu::new();
    let params = TokenStatsParams { k: 5, entropy_base: 2.0 };
    let pass = |chunk: usize| {
        let mut stats = StatsSums::default();
        let batching = PassBatching { pairs_per_pass: 3, pad_id: 0, head_chunk_rows: chunk };
        let sums = held_out_pass(&model, &refs, &reference, &loss, batching, &mut |c| {
            stats.add_on_cpu(&cpu, &c.logits, &c.targets, &params)
        })
        .unwrap();
        (sums.report(&stats), stats.rows)
    };
    let chosen_tokens: usize = pairs.iter().map(|p| p.chosen.completion_len()).sum();
    let (whole, rows) = pass(0);
    assert_eq!(rows, chosen_tokens, "one statistics row per chosen completion token");
    for chunk in [1, 3, 4, 7] {
        let (chunked, rows) = pass(chunk);
        assert_eq!(rows, chosen_tokens, "chunks of {chunk}: one statistics row per chosen completion token");
        let fields = |r: &daa_train::eval::EvalReport| {
            [r.loss, r.chosen_token_loglik, r.rejected_token_loglik, r.topk_entropy, r.topk_mass, r.entropy]
        };
        assert_close(&fields(&chunked), &fields(&whole), FUSED_HEAD, &format!("held-out pass in chunks of {chunk}"));
    }
}

#[test]
fn a_steps_own_statistics_equal_the_evaluation_of_its_batch_and_leave_the_step_unchanged() {
    let pairs = pairs();
    let refs: Vec<&SequencePair> = pairs.iter().collect();
    let initial: CausalLm<Inner> = random_model(&llama_config(VOCAB, 32, 2), 5, 0.2);
    let reference: Vec<PairScore> = score_pairs(&initial, &refs, 2, 0, &mut |_| {}).unwrap();
    let params = TokenStatsParams { k: 5, entropy_base: 2.0 };
    let loss = PreferenceLossParams { loss: PreferenceLoss::Dpo { beta: 0.1, label_smoothing: 0.0 }, nll: None };
    // The held-out evaluation of the same pairs by the same (initial) model.
    let held_out = daa_train::eval::evaluate(&initial, &refs, &reference, &loss, &params, 3, 0).unwrap();
    let step = step_pairs(&pairs, &reference);
    // TRL's logits/chosen and logits/rejected by hand: each sequence's full
    // logits, summed over the positions predicting its completion and over
    // the vocabulary, divided by V times the completion tokens.
    let mean_logit = |side: fn(&SequencePair) -> &Sequence| {
        let (mut sum, mut count) = (0.0f64, 0usize);
        for pair in &pairs {
            let s = side(pair);
            let ids: Vec<i64> = s.ids.iter().map(|&t| t as i64).collect();
            let tokens =
                Tensor::<Inner, 2, Int>::from_data(TensorData::new(ids, [1, s.ids.len()]), &Default::default());
            let logits: Vec<f32> = initial.forward(tokens).unwrap().into_data().into_vec().unwrap();
            for t in s.completion_start - 1..s.ids.len() - 1 {
                sum += logits[t * VOCAB..(t + 1) * VOCAB].iter().map(|&z| z as f64).sum::<f64>();
                count += 1;
            }
        }
        sum / (count * VOCAB) as f64
    };
    let by_hand = [mean_logit(|p| &p.chosen), mean_logit(|p| &p.rejected)];
    for memory in [
        MemoryOptions { fused_head: false, head_chunk_rows: 0, activation_checkpointing: false },
        MemoryOptions { fused_head: true, head_chunk_rows: 0, activation_checkpointing: false },
        MemoryOptions { fused_head: true, head_chunk_rows: 4, activation_checkpointing: true },
    ] {
        let config = llama_config(VOCAB, 32, 2);
        let plain = trainer(&config, loss, memory).step(&step).unwrap();
        let with_stats = trainer(&config, loss, memory).step_with_stats(&step, Some(&params)).unwrap();
        assert_eq!(plain.topk_entropy, None);
        assert_close(
            &[plain.chosen_logits.unwrap(), plain.rejected_logits.unwrap()],
            &by_hand,
            tolerance_of(&memory),
            &format!("{memory:?}: logits/chosen and logits/rejected vs the full logits"),
        );
        let got = [with_stats.topk_entropy.unwrap(), with_stats.topk_mass.unwrap(), with_stats.entropy.unwrap()];
        assert_close(
            &got,
            &[held_out.topk_entropy, held_out.topk_mass, held_out.entropy],
            tolerance_of(&memory),
            &format!("{memory:?}: the step's statistics vs the evaluation of its pairs"),
        );
        assert_close(
            &[with_stats.loss, with_stats.grad_norm],
            &[plain.loss, plain.grad_norm],
            tolerance_of(&memory),
            &format!("{memory:?}: the step with statistics vs without"),
        );
    }
}
