//! `Trainer::step` with the library alone (no `io` feature: what the browser
//! builds): the loss falls on a fixed batch, micro-batches accumulate to the
//! same step as one pass, and the data-parallel reduction point is used —
//! by two ranks (threads with an in-process all-reduce) holding different
//! numbers of pairs and tokens, which step as one rank holding them all.

use burn::backend::{Autodiff, NdArray};
use daa_core::TokenStatsParams;
use daa_core::preference::{NllNormalisation, NllTerm, PreferenceLoss, PreferenceLossParams};
use daa_train::batch::{Sequence, SequencePair};
use daa_train::distributed::{Collective, DataParallel, ThreadRank};
use daa_train::model::tiny_configs::llama_config;
use daa_train::model::{CausalLm, ModelConfig, RandomWeights};
use daa_train::optim::{AdamWConfig, GradAccumulator, LrSchedule};
use daa_train::score::{PairScore, score_pairs};
use daa_train::{GradientReducer, ModelError, ReferencePolicy, StepPair, StepRecord, Trainer, TrainerOptions};

type AD = Autodiff<NdArray<f32>>;
const VOCAB: usize = 64;

fn model() -> CausalLm<AD> {
    let config = ModelConfig::from_json(&llama_config(VOCAB, 32, 2).to_string()).unwrap();
    CausalLm::from_weights(&config, &mut RandomWeights { seed: 11, std: 0.1 }, &Default::default()).unwrap()
}

/// Prompt `p` then completion `c`, as token ids below [`VOCAB`].
fn sequence(p: &[u32], c: &[u32]) -> Sequence {
    Sequence { ids: p.iter().chain(c).copied().collect(), completion_start: p.len() }
}

fn pairs() -> Vec<SequencePair> {
    (0..6u32)
        .map(|i| SequencePair {
            chosen: sequence(&[1, 2 + i, 3], &[10 + i, 20, 30 + i % 3]),
            rejected: sequence(&[1, 2 + i, 3], &[40 - i, 50 + i % 5]),
        })
        .collect()
}

fn options(micro_batch_size: usize) -> TrainerOptions {
    options_with(micro_batch_size, AdamWConfig::default())
}

fn options_with(micro_batch_size: usize, optimizer: AdamWConfig) -> TrainerOptions {
    TrainerOptions {
        loss: PreferenceLossParams {
            loss: PreferenceLoss::Dpo { beta: 0.5, label_smoothing: 0.0 },
            nll: Some(NllTerm { weight: 0.1, normalisation: NllNormalisation::Mean }),
        },
        optimizer,
        schedule: LrSchedule { peak: 1e-2, warmup: 1, total: 20, final_fraction: 0.1 },
        micro_batch_size,
        pad_id: 0,
        memory: daa_train::backward::MemoryOptions::default(),
        precision: daa_train::Precision::F32,
    }
}

/// Reference scores of the initial model (what `daa train` caches).
fn reference(pairs: &[SequencePair]) -> Vec<PairScore> {
    let initial: CausalLm<NdArray<f32>> = {
        let config = ModelConfig::from_json(&llama_config(VOCAB, 32, 2).to_string()).unwrap();
        CausalLm::from_weights(&config, &mut RandomWeights { seed: 11, std: 0.1 }, &Default::default()).unwrap()
    };
    score_pairs(&initial, &pairs.iter().collect::<Vec<_>>(), 4, 0, &mut |_| {}).unwrap()
}

fn step_pairs<'a>(pairs: &'a [SequencePair], reference: &[PairScore]) -> Vec<StepPair<'a>> {
    pairs.iter().zip(reference).map(|(p, r)| StepPair { sequences: p, reference: Some(*r) }).collect()
}

#[test]
fn trainer_steps_lower_the_loss_on_a_fixed_batch() {
    let pairs = pairs();
    let reference = reference(&pairs);
    let mut trainer = Trainer::new(model(), options(4), ReferencePolicy::Given).unwrap();
    let held: Vec<&SequencePair> = pairs.iter().collect();
    let stats = TokenStatsParams { k: 10, entropy_base: 2.0 };
    let before = trainer.evaluate(&held, &reference, &stats, 3).unwrap();
    let mut records = Vec::new();
    for _ in 0..8 {
        records.push(trainer.step(&step_pairs(&pairs, &reference)).unwrap());
    }
    let after = trainer.evaluate(&held, &reference, &stats, 3).unwrap();
    // DPO starts at ln 2 (policy = reference) plus the NLL term.
    assert!((records[0].loss - before.loss).abs() < 1e-5, "{} vs {}", records[0].loss, before.loss);
    assert!(records[7].loss < records[0].loss - 0.05, "loss {} → {}", records[0].loss, records[7].loss);
    assert!(after.loss < before.loss - 0.05, "held-out loss {} → {}", before.loss, after.loss);
    assert!(after.accuracy > before.accuracy, "accuracy {} → {}", before.accuracy, after.accuracy);
    assert_eq!(trainer.completed_steps(), 8);
    assert_eq!(records.iter().map(|r| r.step).collect::<Vec<_>>(), (1..=8).collect::<Vec<_>>());
    assert_eq!(records[0].pairs, 6);
    assert_eq!(records[0].tokens, pairs.iter().map(|p| p.chosen.ids.len() + p.rejected.ids.len()).sum::<usize>());
    assert!((records[0].lr - 1e-2).abs() < 1e-12, "warm-up of one step reaches the peak");
    assert!((0.0..=10f64.log2()).contains(&after.topk_entropy) && (0.0..=1.0).contains(&after.topk_mass));
}

/// The weights of a model, flattened in visiting order.
fn weights(model: &CausalLm<AD>) -> Vec<f32> {
    let mut out = Vec::new();
    model.visit_weights(&mut |name, p| out.extend(p.to_file_f32(name).unwrap()));
    out
}

fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Two ranks holding the same pairs: the all-reduce doubles each gradient.
#[derive(Debug, Default)]
struct TwoIdenticalRanks {
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl GradientReducer<NdArray<f32>> for TwoIdenticalRanks {
    fn world_size(&self) -> usize {
        2
    }
    fn sum_counts(&mut self, counts: &mut [f64]) -> Result<(), ModelError> {
        counts.iter_mut().for_each(|c| *c *= 2.0);
        Ok(())
    }
    fn reduce(&mut self, gradients: &mut GradAccumulator<NdArray<f32>>) -> Result<(), ModelError> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        for (_, g) in gradients.gradients_mut() {
            *g = g.clone().mul_scalar(2.0);
        }
        Ok(())
    }
}

#[test]
fn micro_batches_and_the_reduction_point_give_the_same_step() {
    let pairs = pairs();
    let reference = reference(&pairs);
    // A large ε makes AdamW's first step smooth in the gradient (ĝ/(|ĝ| + ε)),
    // so rounding noise of the summation order cannot flip a tiny component.
    let smooth = AdamWConfig { eps: 1e-3, ..AdamWConfig::default() };
    let step = |micro: usize, reducer: Option<TwoIdenticalRanks>| {
        let mut trainer = Trainer::new(model(), options_with(micro, smooth), ReferencePolicy::Given).unwrap();
        if let Some(r) = reducer {
            trainer = trainer.with_reducer(Box::new(r));
        }
        let record = trainer.step(&step_pairs(&pairs, &reference)).unwrap();
        (record, weights(trainer.model()))
    };
    let (whole, w_whole) = step(6, None);
    let (micro, w_micro) = step(4, None);
    // Batches of other shapes round differently (measured: loss 5e-6, gradient
    // norm 1e-5 relative, weights 3.6e-6 after a step of lr 1e-2); a wrong
    // normaliser or a lost micro-batch would move them by tens of percent.
    let close = |a: &StepRecord, b: &StepRecord| {
        (a.loss - b.loss).abs() < 1e-5 * (1.0 + a.loss.abs()) && (a.grad_norm - b.grad_norm).abs() < 1e-4 * a.grad_norm
    };
    assert!(close(&whole, &micro), "{whole:?} vs {micro:?}");
    assert!(max_difference(&w_whole, &w_micro) < 2e-5, "{}", max_difference(&w_whole, &w_micro));
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (ranks, w_ranks) = step(4, Some(TwoIdenticalRanks { calls: calls.clone() }));
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1, "the reducer runs once per step");
    assert!(close(&whole, &ranks), "{whole:?} vs {ranks:?}");
    assert!(max_difference(&w_whole, &w_ranks) < 2e-5, "{}", max_difference(&w_whole, &w_ranks));
    // A moved weight: the step did something.
    assert!(max_difference(&w_whole, &weights(&model())) > 1e-4);
}

#[test]
fn a_frozen_reference_scores_micro_batches_and_missing_references_are_errors() {
    let pairs = pairs();
    let reference = reference(&pairs);
    let mut given = Trainer::new(model(), options(4), ReferencePolicy::Given).unwrap();
    let frozen_model: CausalLm<NdArray<f32>> = {
        let config = ModelConfig::from_json(&llama_config(VOCAB, 32, 2).to_string()).unwrap();
        CausalLm::from_weights(&config, &mut RandomWeights { seed: 11, std: 0.1 }, &Default::default()).unwrap()
    };
    let mut frozen = Trainer::new(model(), options(4), ReferencePolicy::Frozen(Box::new(frozen_model))).unwrap();
    let a = given.step(&step_pairs(&pairs, &reference)).unwrap();
    let without: Vec<StepPair<'_>> = pairs.iter().map(|p| StepPair { sequences: p, reference: None }).collect();
    let b = frozen.step(&without).unwrap();
    let same =
        (a.loss - b.loss).abs() < 1e-5 * (1.0 + a.loss.abs()) && (a.grad_norm - b.grad_norm).abs() < 1e-4 * a.grad_norm;
    assert!(same, "{a:?} vs {b:?}");
    let e = given.step(&without).unwrap_err().to_string();
    assert!(e.contains("pair 0 of the step has no reference"), "{e}");
    assert!(given.step(&[]).unwrap_err().to_string().contains("at least one pair"));
}

#[test]
fn supervised_steps_report_the_mean_token_nll_and_lower_it() {
    let pairs = pairs();
    let sequences: Vec<&Sequence> = pairs.iter().map(|p| &p.chosen).collect();
    let scored: usize = sequences.iter().map(|s| s.completion_len()).sum();
    // The reported loss is −Σπ / Σn under the model before the step.
    let initial = reference(&pairs);
    let want = -initial.iter().map(|s| s.chosen).sum::<f64>() / scored as f64;
    let mut trainer = Trainer::new(model(), options(2), ReferencePolicy::Given).unwrap();
    let first = trainer.nll_step(&sequences).unwrap();
    assert!((first.loss - want).abs() < 1e-4 * want.abs(), "{} vs {want}", first.loss);
    assert_eq!((first.step, first.sequences), (1, 6));
    assert!(first.grad_norm > 0.0 && first.grad_norm.is_finite());
    let mut last = first;
    for _ in 0..10 {
        last = trainer.nll_step(&sequences).unwrap();
    }
    assert!(last.loss < 0.5 * first.loss, "NLL {} → {}", first.loss, last.loss);
    // Micro-batches of 2·2 sequences and one pass of all six give the same step.
    let mut whole = Trainer::new(model(), options(3), ReferencePolicy::Given).unwrap();
    let mut split = Trainer::new(model(), options(1), ReferencePolicy::Given).unwrap();
    let (a, b) = (whole.nll_step(&sequences).unwrap(), split.nll_step(&sequences).unwrap());
    assert!((a.loss - b.loss).abs() < 1e-5 * a.loss && (a.grad_norm - b.grad_norm).abs() < 1e-4 * a.grad_norm);
    assert!(trainer.nll_step(&[]).is_err());
}

#[test]
fn ranks_with_different_pairs_and_tokens_step_as_one_rank_holding_them_all() {
    let pairs: Vec<SequencePair> = pairs()
        .into_iter()
        .enumerate()
        .map(|(i, mut p)| {
            // Completions of different lengths: the ranks' token counts differ too.
            p.chosen.ids.extend((0..i as u32).map(|t| 5 + t));
            p
        })
        .collect();
    let reference = reference(&pairs);
    let smooth = AdamWConfig { eps: 1e-3, ..AdamWConfig::default() };
    // Rank 0 holds 2 pairs, rank 1 the other 4.
    let slices = [0..2, 2..6];
    let one = |step: &dyn Fn(&mut Trainer<AD>) -> f64| {
        let mut trainer = Trainer::new(model(), options_with(2, smooth), ReferencePolicy::Given).unwrap();
        let norm = step(&mut trainer);
        (norm, weights(trainer.model()))
    };
    let ranks = |step: &(dyn Fn(&mut Trainer<AD>, usize) -> f64 + Sync)| {
        std::thread::scope(|scope| {
            let handles: Vec<_> = ThreadRank::group(2, std::time::Duration::from_secs(60))
                .into_iter()
                .map(|collective| {
                    scope.spawn(move || {
                        let rank = collective.rank();
                        let mut trainer = Trainer::new(model(), options_with(2, smooth), ReferencePolicy::Given)
                            .unwrap()
                            .with_reducer(Box::new(DataParallel::new(collective)));
                        let norm = step(&mut trainer, rank);
                        (norm, weights(trainer.model()))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>()
        })
    };
    let check = |what: &str, (norm, w): (f64, Vec<f32>), ranked: Vec<(f64, Vec<f32>)>| {
        assert_eq!(ranked[0].1, ranked[1].1, "{what}: the ranks hold the same weights after the step");
        for (rank, (rank_norm, rank_w)) in ranked.iter().enumerate() {
            // The gradient norm is read after the all-reduce: the global one.
            assert!((rank_norm - norm).abs() < 1e-4 * norm, "{what}: rank {rank} gradient norm {rank_norm} vs {norm}");
            assert!(max_difference(&w, rank_w) < 2e-5, "{what}: rank {rank} {}", max_difference(&w, rank_w));
        }
    };
    // The preference step: the mean loss over all 6 pairs.
    let all = one(&|t| t.step(&step_pairs(&pairs, &reference)).unwrap().grad_norm);
    let split = ranks(&|t, rank| {
        let slice = slices[rank].clone();
        t.step(&step_pairs(&pairs[slice.clone()], &reference[slice])).unwrap().grad_norm
    });
    check("DPO + NLL", all, split);
    // The NLL step: the mean over all ranks' completion tokens (rank 1 holds more).
    let sequences: Vec<&Sequence> = pairs.iter().map(|p| &p.chosen).collect();
    let all = one(&|t| t.nll_step(&sequences).unwrap().grad_norm);
    let split = ranks(&|t, rank| t.nll_step(&sequences[slices[rank].clone()]).unwrap().grad_norm);
    check("NLL", all, split);
}
