//! Data parallelism in one process: ranks as threads exchanging through
//! `ThreadRank::group`, the trainer's reduction point filled by `DataParallel`.
//! Two ranks with micro-batch B/2 each must compute exactly what one rank
//! accumulating two micro-batches of B/2 computes (burn's Flex backend:
//! deterministic), step after step.

use burn::backend::{Autodiff, Flex};
use burn::tensor::FloatDType;
use daa_core::preference::{NllNormalisation, NllTerm, PreferenceLoss, PreferenceLossParams};
use daa_train::batch::{Sequence, SequencePair};
use daa_train::distributed::{Collective, DataParallel, Sharding, ThreadRank, rank_slice};
use daa_train::model::tiny_configs::llama_config;
use daa_train::model::{CausalLm, DecoderLayer, ModelConfig, RandomWeights};
use daa_train::optim::{AdamWConfig, LrSchedule};
use daa_train::score::{PairScore, score_pairs};
use daa_train::{ReferencePolicy, StepPair, Trainer, TrainerOptions};

pub type AD = Autodiff<Flex>;
const VOCAB: usize = 61;
/// Steps each comparison trains.
pub const STEPS: usize = 3;

fn model() -> CausalLm<AD> {
    model_each_block(&mut |_, layer| Ok(layer))
}

/// The test model, each decoder block handed to `on_block` as it loads.
pub fn model_each_block(on_block: &mut OnBlock<'_>) -> CausalLm<AD> {
    let config = ModelConfig::from_json(&llama_config(VOCAB, 32, 2).to_string()).unwrap();
    let mut source = RandomWeights { seed: 5, std: 0.1 };
    CausalLm::from_weights_each_block(&config, &mut source, &Default::default(), FloatDType::F32, on_block).unwrap()
}

/// What loading does with each decoder block.
pub type OnBlock<'a> = dyn FnMut(usize, DecoderLayer<AD>) -> Result<DecoderLayer<AD>, daa_train::ModelError> + 'a;

fn pairs() -> Vec<SequencePair> {
    let sequence =
        |p: &[u32], c: &[u32]| Sequence { ids: p.iter().chain(c).copied().collect(), completion_start: p.len() };
    // Completions of different lengths: the micro-batches pad differently.
    (0..8u32)
        .map(|i| SequencePair {
            chosen: sequence(&[1, 2 + i, 3], &(0..1 + i % 4).map(|t| 10 + i + t).collect::<Vec<_>>()),
            rejected: sequence(&[1, 2 + i, 3], &[40 - i, 50 + i % 5]),
        })
        .collect()
}

pub fn options(micro_batch_size: usize) -> TrainerOptions {
    TrainerOptions {
        loss: PreferenceLossParams {
            loss: PreferenceLoss::Dpo { beta: 0.5, label_smoothing: 0.0 },
            nll: Some(NllTerm { weight: 0.1, normalisation: NllNormalisation::Mean }),
        },
        optimizer: AdamWConfig::default(),
        schedule: LrSchedule { peak: 1e-2, warmup: 1, total: 20, final_fraction: 0.1 },
        micro_batch_size,
        pad_id: 0,
        memory: daa_train::backward::MemoryOptions::default(),
        precision: daa_train::Precision::F32,
    }
}

/// `options` with activation checkpointing (what sharded parameters need).
pub fn checkpointed(options: TrainerOptions) -> TrainerOptions {
    let memory = daa_train::backward::MemoryOptions { activation_checkpointing: true, ..options.memory };
    TrainerOptions { memory, ..options }
}

/// A copy of `model` whose parameters are new autodiff leaves over the same
/// values: what each rank thread trains. Thread ranks must not share leaves:
/// burn-autodiff 0.21 merges the graphs of operations that share a node, and
/// one rank merging (the locator's lock, then a graph's) while another runs
/// its backward pass (its graph's lock, then the locator's to clean up) leaves
/// both waiting for ever (seen as this file hanging on CI). Ranks in separate
/// processes, as in training, never share nodes.
pub fn rank_copy(model: &CausalLm<AD>) -> CausalLm<AD> {
    use burn::module::Module;
    model.clone().map(&mut NewLeaves)
}

/// Gives every parameter a new autodiff node (same id, values and
/// `require_grad`).
struct NewLeaves;

impl burn::module::ModuleMapper<AD> for NewLeaves {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<burn::tensor::Tensor<AD, D>>,
    ) -> burn::module::Param<burn::tensor::Tensor<AD, D>> {
        let (id, tensor, mapper) = param.consume();
        let trained = tensor.is_require_grad();
        let leaf = burn::tensor::Tensor::from_inner(tensor.inner());
        let leaf = if trained { leaf.require_grad() } else { leaf };
        burn::module::Param::from_mapped_value(id, leaf, mapper)
    }
}

/// Every trained parameter's values as f32, in file layout.
pub fn weights_of<B: burn::tensor::backend::Backend>(model: &CausalLm<B>) -> Vec<f32> {
    let mut out = Vec::new();
    model.visit_trainable(&mut |name, p| out.extend(p.to_file_f32(name).unwrap()));
    out
}

/// The pairs, the initial model and its scores of them (the cached reference).
pub fn setup() -> (Vec<SequencePair>, CausalLm<AD>, Vec<PairScore>) {
    let (pairs, initial) = (pairs(), model());
    let valid = burn::module::AutodiffModule::valid(&initial);
    let reference = score_pairs(&valid, &pairs.iter().collect::<Vec<_>>(), 8, 0, &mut |_| {}).unwrap();
    (pairs, initial, reference)
}

/// One step on `pairs`: its gradient norm.
pub fn step_once(trainer: &mut Trainer<AD>, pairs: &[SequencePair], reference: &[PairScore]) -> f64 {
    let step: Vec<StepPair> =
        pairs.iter().zip(reference).map(|(p, r)| StepPair { sequences: p, reference: Some(*r) }).collect();
    trainer.step(&step).unwrap().grad_norm
}

/// The gradient norm of each of [`STEPS`] steps and the weights after the last.
pub fn train(trainer: &mut Trainer<AD>, pairs: &[SequencePair], reference: &[PairScore]) -> (Vec<f64>, Vec<f32>) {
    let norms = (0..STEPS).map(|_| step_once(trainer, pairs, reference)).collect();
    // Gathered where the parameters are sharded (the model holds placeholders).
    (norms, weights_of(&trainer.gathered_valid_model().unwrap()))
}

/// Two ranks (4 pairs each, one micro-batch of 4; gradients all-reduced in
/// groups of `read_group` values) against one rank accumulating the global
/// batch of 8 in two micro-batches of 4: the same norms and weights.
fn assert_two_ranks_are_one_rank(read_group: Option<usize>) {
    let (pairs, initial, reference) = setup();
    let mut one = Trainer::new(initial.clone(), options(4), ReferencePolicy::Given).unwrap();
    let (one_norms, one_weights) = train(&mut one, &pairs, &reference);
    let ranked: Vec<(Vec<f64>, Vec<f32>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = ThreadRank::group(2, std::time::Duration::from_secs(120))
            .into_iter()
            .map(|collective| {
                let (pairs, reference, initial) = (&pairs, &reference, rank_copy(&initial));
                scope.spawn(move || {
                    let slice = rank_slice(pairs.len(), collective.rank(), collective.world_size());
                    let reducer = DataParallel::new(collective);
                    let reducer = match read_group {
                        Some(values) => reducer.with_read_group(values),
                        None => reducer,
                    };
                    let mut trainer = Trainer::new(initial, options(4), ReferencePolicy::Given)
                        .unwrap()
                        .with_reducer(Box::new(reducer));
                    train(&mut trainer, &pairs[slice.clone()], &reference[slice])
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (rank, (norms, weights)) in ranked.iter().enumerate() {
        assert_eq!(norms, &one_norms, "rank {rank}: gradient norms per step");
        assert!(weights == &one_weights, "rank {rank}: the weights after {STEPS} steps differ from one rank's");
    }
}

#[test]
fn two_ranks_with_half_the_micro_batch_are_one_rank_accumulating_two_bit_for_bit() {
    assert_two_ranks_are_one_rank(None);
}

#[test]
fn gradients_all_reduced_in_small_groups_are_the_same_sums() {
    // Groups of at most 100 values: most parameters alone, some together.
    assert_two_ranks_are_one_rank(Some(100));
}

#[test]
fn a_rank_that_fails_ends_the_others_step_with_a_named_error() {
    let (pairs, initial, reference) = setup();
    let mut ranks = ThreadRank::group(2, std::time::Duration::from_secs(120));
    drop(ranks.pop()); // rank 1 is gone before the first step
    let collective = ranks.pop().unwrap();
    let mut trainer = Trainer::new(initial, options(4), ReferencePolicy::Given)
        .unwrap()
        .with_reducer(Box::new(DataParallel::new(collective)));
    let step: Vec<StepPair> =
        pairs[..4].iter().zip(&reference).map(|(p, r)| StepPair { sequences: p, reference: Some(*r) }).collect();
    let err = trainer.step(&step).unwrap_err().to_string();
    assert!(err.contains("distributed training") && err.contains("rank 1 left the group"), "{err}");
}

#[test]
fn evaluation_split_over_ranks_reports_what_one_rank_reports() {
    let (pairs, initial, reference) = setup();
    let held: Vec<&SequencePair> = pairs.iter().collect();
    let stats = daa_core::TokenStatsParams { k: 5, ..Default::default() };
    let mut one = Trainer::new(initial.clone(), options(4), ReferencePolicy::Given).unwrap();
    step_once(&mut one, &pairs, &reference);
    let expected = one.evaluate(&held, &reference, &stats, 3).unwrap();
    // Two ranks (the same weights after the step, bit for bit), each scoring
    // its 4 held-out pairs in passes of 3 and 1 (one rank: 3, 3 and 2).
    let reports: Vec<daa_train::EvalReport> = std::thread::scope(|scope| {
        let handles: Vec<_> = ThreadRank::group(2, std::time::Duration::from_secs(120))
            .into_iter()
            .map(|collective| {
                let (pairs, reference, held, stats, initial) = (&pairs, &reference, &held, &stats, rank_copy(&initial));
                scope.spawn(move || {
                    let slice = rank_slice(pairs.len(), collective.rank(), collective.world_size());
                    let mut trainer = Trainer::new(initial, options(4), ReferencePolicy::Given)
                        .unwrap()
                        .with_reducer(Box::new(DataParallel::new(collective)));
                    step_once(&mut trainer, &pairs[slice.clone()], &reference[slice]);
                    trainer.evaluate_on_ranks(held, reference, stats, 3).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
    for (rank, r) in reports.iter().enumerate() {
        assert_eq!(r, &reports[0], "rank {rank}: every rank gets the same report");
        for (name, a, b) in [
            ("loss", r.loss, expected.loss),
            ("accuracy", r.accuracy, expected.accuracy),
            ("margin", r.margin, expected.margin),
            ("chosen log-lik", r.chosen_token_loglik, expected.chosen_token_loglik),
            ("top-k entropy", r.topk_entropy, expected.topk_entropy),
            ("top-k mass", r.topk_mass, expected.topk_mass),
            ("entropy", r.entropy, expected.entropy),
        ] {
            assert!(close(a, b), "rank {rank}: {name} {a} against one rank's {b}");
        }
    }
}

/// Runs one step on each of two ranks (rank `r` with `policy(r)` as its
/// reference and its half of `pairs` with `reference(r)`), then a second
/// step with the good reference when `again`; each rank's results.
fn two_ranks_step(
    policy: &(dyn Fn(usize) -> ReferencePolicy<Flex> + Sync),
    reference: &(dyn Fn(usize) -> Vec<PairScore> + Sync),
    again: bool,
) -> Vec<(String, Option<Vec<f32>>)> {
    two_ranks_step_at(Sharding::None, policy, reference, again)
}

/// [`two_ranks_step`] with the state sharded at `stage` (with activation
/// checkpointing: what `parameters` needs).
fn two_ranks_step_at(
    stage: Sharding,
    policy: &(dyn Fn(usize) -> ReferencePolicy<Flex> + Sync),
    reference: &(dyn Fn(usize) -> Vec<PairScore> + Sync),
    again: bool,
) -> Vec<(String, Option<Vec<f32>>)> {
    let options = match stage {
        Sharding::None => options(4),
        _ => checkpointed(options(4)),
    };
    let (pairs, initial, good) = setup();
    std::thread::scope(|scope| {
        let handles: Vec<_> = ThreadRank::group(2, std::time::Duration::from_secs(120))
            .into_iter()
            .map(|collective| {
                let (pairs, good, initial) = (&pairs, &good, rank_copy(&initial));
                scope.spawn(move || {
                    let rank = collective.rank();
                    let slice = rank_slice(pairs.len(), rank, 2);
                    let mut trainer = Trainer::new(initial, options, policy(rank))
                        .unwrap()
                        .with_reducer(Box::new(DataParallel::new(collective)))
                        .with_sharding(stage)
                        .unwrap();
                    let scores = reference(rank);
                    let step: Vec<StepPair> = pairs[slice.clone()]
                        .iter()
                        .zip(&scores)
                        .map(|(p, r)| StepPair { sequences: p, reference: Some(*r) })
                        .collect();
                    let err = trainer.step(&step).map(drop).unwrap_err();
                    let after = again.then(|| {
                        trainer.skip_step();
                        step_once(&mut trainer, &pairs[slice.clone()], &good[slice.clone()]);
                        weights_of(&trainer.gathered_valid_model().unwrap())
                    });
                    (err.to_string(), after)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn a_non_finite_log_probability_on_one_rank_is_agreed_on_by_every_rank() {
    let (_, _, good) = setup();
    // Rank 1's given reference holds a NaN: its pairs fail; rank 0 learns it
    // in the same step (no wait for a collective rank 1 never joins), and the
    // two stay in step: the next step trains on both.
    let started = std::time::Instant::now();
    let poisoned = |rank: usize| {
        let mut scores = good[rank_slice(good.len(), rank, 2)].to_vec();
        if rank == 1 {
            scores[2].chosen = f64::NAN;
        }
        scores
    };
    // With sharded parameters rank 1 fails after the forward pass gathered
    // every block: it completes the micro-batch's gathers and scatters.
    for stage in [Sharding::None, Sharding::Parameters] {
        let results = two_ranks_step_at(stage, &|_| ReferencePolicy::Given, &poisoned, true);
        assert!(results[1].0.contains("reference_chosen") && results[1].0.contains("pair 2"), "{}", results[1].0);
        assert!(results[0].0.contains("the pairs of rank(s) 1 failed in this step"), "{stage:?}: {}", results[0].0);
        assert!(results[0].1 == results[1].1, "{stage:?}: after the failed step the ranks train on together");
        assert!(results[0].1.as_ref().is_some_and(|w| !w.is_empty()), "{stage:?}: no weights");
    }
    assert!(started.elapsed().as_secs() < 60, "the ranks waited {:?}", started.elapsed());

    // Rank 1's frozen reference (every weight NaN) gives non-finite scores:
    // a non-finite step on
    // both ranks (which train.skip_nonfinite skips on every rank alike).
    let nan_reference = || {
        use burn::module::Module;
        burn::module::AutodiffModule::valid(&model()).map(&mut Poison)
    };
    let frozen = |rank: usize| match rank {
        1 => ReferencePolicy::Frozen(Box::new(nan_reference())),
        _ => ReferencePolicy::Frozen(Box::new(burn::module::AutodiffModule::valid(&model()))),
    };
    let results = two_ranks_step(&frozen, &|rank| good[rank_slice(good.len(), rank, 2)].to_vec(), false);
    assert!(results[1].0.contains("log-probability is not finite"), "{}", results[1].0);
    assert!(
        results[0].0.contains("a log-probability of rank(s) 1's pairs (this rank's were finite)"),
        "{}",
        results[0].0
    );
}

/// Makes every weight NaN (loading refuses non-finite weights).
struct Poison;

impl<B: burn::tensor::backend::Backend> burn::module::ModuleMapper<B> for Poison {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<burn::tensor::Tensor<B, D>>,
    ) -> burn::module::Param<burn::tensor::Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        burn::module::Param::from_mapped_value(id, tensor.mul_scalar(f32::NAN), mapper)
    }
}
