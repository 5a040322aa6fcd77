//! Sharded parameters (ZeRO-3, `train.sharding = "parameters"`) against the
//! unsharded step, ranks as threads: each decoder block gathered from the
//! ranks' slices for its forward pass and its recomputation, its gradients
//! reduce-scattered after its backward. The weights after every step are
//! those of one rank accumulating the same micro-batches, bit for bit where
//! the sums are the same sums; between steps a rank holds no trained
//! weight, only its slice of each unit; its checkpoint slice is ZeRO-2's.

use std::time::Duration;

use burn::tensor::backend::Backend;
use daa_train::batch::Sequence;
use daa_train::distributed::parameter_units::PreslicedBlocks;
use daa_train::distributed::{Collective, DataParallel, Sharding, ThreadRank, rank_slice};
use daa_train::model::{CausalLm, ParamKind};
use daa_train::{Precision, ReferencePolicy, Trainer, TrainerOptions};

use super::distributed::{AD, checkpointed, model_each_block, options, setup, train, weights_of};
use super::sharding::{
    REORDERED_TOLERANCE, assert_two_ranks_are_one_rank_at, max_difference, on_ranks, ranks, unclipped,
};

#[test]
fn sharded_parameters_on_two_ranks_are_one_rank_accumulating_two_bit_for_bit() {
    assert_two_ranks_are_one_rank_at(checkpointed(unclipped(4)), &[Sharding::Parameters]);
}

#[test]
fn sharded_parameters_with_clipping_uneven_micro_batches_or_three_ranks_agree_within_rounding() {
    let (pairs, initial, reference) = setup();
    // Clipping active: the scale follows the norm summed per unit and slice.
    let mut one = Trainer::new(initial.clone(), checkpointed(options(4)), ReferencePolicy::Given).unwrap();
    let (norms, clipped) = train(&mut one, &pairs, &reference);
    assert!(norms[0] > 1.0, "the test needs clipping to act: ‖g‖ = {}", norms[0]);
    let inputs = (pairs.as_slice(), &initial, reference.as_slice());
    for (rank, (_, weights)) in ranks(2, Sharding::Parameters, checkpointed(options(4)), inputs).iter().enumerate() {
        let d = max_difference(weights, &clipped);
        assert!(d <= REORDERED_TOLERANCE, "clipped, rank {rank}: weights differ by {d}");
    }
    // 5 pairs, micro-batches of 1: rank 0 has 3, rank 1 has 2 and takes
    // part in the third micro-batch's gathers and scatters with zeros.
    // 8 pairs over 3 ranks with micro-batches of 2: slices of 3, 3, 2.
    for (world, count, micro) in [(2, 5, 1), (3, 8, 2)] {
        let options = checkpointed(unclipped(micro));
        let mut one = Trainer::new(initial.clone(), options, ReferencePolicy::Given).unwrap();
        let (_, expected) = train(&mut one, &pairs[..count], &reference[..count]);
        let inputs = (&pairs[..count], &initial, &reference[..count]);
        for (rank, (_, weights)) in ranks(world, Sharding::Parameters, options, inputs).iter().enumerate() {
            let d = max_difference(weights, &expected);
            assert!(d <= REORDERED_TOLERANCE, "{world} ranks, {count} pairs, rank {rank}: weights differ by {d}");
        }
    }
}

/// Values of every trained weight the model holds.
fn held_values<B: Backend>(model: &CausalLm<B>) -> usize {
    let mut n = 0;
    model.visit_trainable(&mut |_: &str, p: ParamKind<'_, B>| n += p.flat().dims()[0]);
    n
}

/// Each rank's `(values held between steps, slice length, units, the
/// checkpoint slice's moments, bf16 weights and f32 masters gathered)`
/// after 3 steps at `stage` in bf16.
type RankState = (usize, usize, usize, (Vec<f32>, Vec<f32>), Vec<f32>, Vec<f32>);

fn two_ranks_in_bf16(stage: Sharding) -> Vec<RankState> {
    let (pairs, initial, reference) = setup();
    let bf16 = TrainerOptions { precision: Precision::Bf16, ..checkpointed(unclipped(4)) };
    let inputs = (pairs.as_slice(), &initial, reference.as_slice());
    on_ranks(2, stage, bf16, inputs, &|trainer, pairs, reference| {
        let (_, weights) = train(trainer, pairs, reference);
        let zero = trainer.zero_state().unwrap();
        let (slice_len, units) = (zero.slice_len(), zero.unit_count());
        let held = held_values(trainer.model());
        if stage == Sharding::Parameters {
            // The placeholders are not evaluated by mistake: the ranks gather together.
            let err = trainer.evaluate(&[], &[], &daa_core::TokenStatsParams::default(), 4).unwrap_err();
            assert!(err.to_string().contains("every rank calls evaluate_on_ranks"), "{err}");
        }
        let moments = trainer.layout_moments().unwrap().unwrap();
        let masters = weights_of(&trainer.gathered_master_model().unwrap());
        (held, slice_len, units, moments, weights, masters)
    })
}

#[test]
fn a_rank_holds_only_its_slices_and_checkpoints_what_zero_2_checkpoints() {
    let (_, initial, _) = setup();
    let total = held_values(&initial);
    let blocks = initial.layers.len();
    let zero2 = two_ranks_in_bf16(Sharding::Gradients);
    let zero3 = two_ranks_in_bf16(Sharding::Parameters);
    for (rank, (two, three)) in zero2.iter().zip(&zero3).enumerate() {
        let (held, slice_len, units, moments, weights, masters) = three;
        assert_eq!(*held, 0, "rank {rank}: the model holds trained weights between steps");
        assert_eq!(two.0, total, "rank {rank}: ZeRO-2 keeps every weight");
        assert_eq!((*units, two.2), (1 + blocks, 1 + blocks), "rank {rank}: units of ZeRO-3 and ZeRO-2");
        // Each unit padded to the 2 ranks on its own: at most one value more per unit.
        assert!(*slice_len >= total.div_ceil(2) && *slice_len <= total / 2 + units, "rank {rank}: {slice_len}");
        assert!(moments == &two.3, "rank {rank}: the checkpoint slice's moments differ from ZeRO-2's");
        assert!(weights == &two.4, "rank {rank}: the bf16 weights differ from ZeRO-2's");
        assert!(masters == &two.5, "rank {rank}: the f32 masters differ from ZeRO-2's");
        assert!(masters != weights, "rank {rank}: the masters must be f32, not the rounded weights");
    }
}

/// A step's loss and the weights after it.
type LossAndWeights = (f64, Vec<f32>);

/// One NLL step on `count` chosen sequences: one rank's loss and weights,
/// and each of two ranks' with sharded parameters (micro-batches of 2
/// sequences).
fn supervised_step(count: usize) -> (LossAndWeights, Vec<LossAndWeights>) {
    let (pairs, initial, _) = setup();
    let sequences: Vec<&Sequence> = pairs.iter().take(count).map(|p| &p.chosen).collect();
    let options = checkpointed(unclipped(1));
    let mut one = Trainer::new(initial.clone(), options, ReferencePolicy::Given).unwrap();
    let expected = (one.nll_step(&sequences).unwrap().loss, weights_of(&one.valid_model()));
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = ThreadRank::group(2, Duration::from_secs(120))
            .into_iter()
            .map(|collective| {
                let (sequences, initial) = (&sequences, super::distributed::rank_copy(&initial));
                scope.spawn(move || {
                    let slice = rank_slice(sequences.len(), collective.rank(), collective.world_size());
                    let mut trainer = Trainer::new(initial, options, ReferencePolicy::Given)
                        .unwrap()
                        .with_reducer(Box::new(DataParallel::new(collective)))
                        .with_sharding(Sharding::Parameters)
                        .unwrap();
                    let record = trainer.nll_step(&sequences[slice]).unwrap();
                    assert_eq!(record.sequences, count);
                    (record.loss, weights_of(&trainer.gathered_valid_model().unwrap()))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    (expected, results)
}

#[test]
fn a_supervised_step_with_sharded_parameters_is_one_rank_and_uneven_ranks_take_part() {
    // 4 sequences: one micro-batch per rank, one rank's two summed in the same order.
    let ((loss, weights), ranks) = supervised_step(4);
    for (rank, (l, w)) in ranks.iter().enumerate() {
        assert!((l - loss).abs() <= 1e-12 * loss.abs(), "rank {rank}: loss {l} against {loss}");
        assert!(w == &weights, "rank {rank}: the weights differ");
    }
    // 5: one rank 2 + 2 + 1; rank 0 (3) 2 + 1, rank 1 (2) 2 and a micro-batch
    // of zeros: the sums in another order (measured 2026-12-07: weights
    // within 1.9e-5 after AdamW's first step, whose m̂/√v̂ ≈ ±1 turns a
    // rounding of a gradient near 0 into up to 2·lr).
    let ((loss, weights), ranks) = supervised_step(5);
    for (rank, (l, w)) in ranks.iter().enumerate() {
        assert!((l - loss).abs() <= 1e-6 * loss.abs(), "rank {rank}: loss {l} against {loss}");
        let d = max_difference(w, &weights);
        assert!(d <= 1e-4, "rank {rank}: weights differ by {d}");
    }
}

#[test]
fn sharded_parameters_without_checkpointing_or_with_lora_are_refused_by_name() {
    let (_, initial, _) = setup();
    let collective = ThreadRank::group(1, Duration::from_secs(5)).pop().unwrap();
    let plain = Trainer::new(initial.clone(), options(4), ReferencePolicy::Given)
        .unwrap()
        .with_reducer(Box::new(DataParallel::new(collective)));
    let err = plain.with_sharding(Sharding::Parameters).unwrap_err().to_string();
    assert!(err.contains("needs train.activation_checkpointing = true"), "{err}");
    let adapted: CausalLm<AD> = initial.with_lora(&daa_train::model::LoraConfig::default(), 1).unwrap();
    let collective = ThreadRank::group(1, Duration::from_secs(5)).pop().unwrap();
    let trainer = Trainer::new(adapted, checkpointed(options(4)), ReferencePolicy::Given)
        .unwrap()
        .with_reducer(Box::new(DataParallel::new(collective)));
    let err = trainer.with_sharding(Sharding::Parameters).unwrap_err().to_string();
    assert!(err.contains("LoRA trains adapters only"), "{err}");
}

#[test]
fn blocks_sliced_as_they_load_train_what_a_whole_load_trains() {
    for precision in [Precision::F32, Precision::Bf16] {
        blocks_sliced_as_they_load_in(TrainerOptions { precision, ..checkpointed(unclipped(4)) });
    }
}

/// [`blocks_sliced_as_they_load_train_what_a_whole_load_trains`] with `options`.
fn blocks_sliced_as_they_load_in(options: TrainerOptions) {
    let (pairs, initial, reference) = setup();
    let inputs = (pairs.as_slice(), &initial, reference.as_slice());
    let expected = ranks(2, Sharding::Parameters, options, inputs);
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = ThreadRank::group(2, Duration::from_secs(120))
            .into_iter()
            .map(|collective| {
                let (pairs, reference) = (&pairs, &reference);
                scope.spawn(move || {
                    let (rank, world) = (collective.rank(), collective.world_size());
                    let mut slices = PreslicedBlocks::new(rank, world);
                    let model = model_each_block(&mut |b, layer| slices.take(b, layer));
                    // Only unit 0 (embedding, norm, head) was ever whole after its block loaded.
                    let held = held_values(&model);
                    let slice = rank_slice(pairs.len(), rank, world);
                    let mut trainer = Trainer::new(model, options, ReferencePolicy::Given)
                        .unwrap()
                        .with_reducer(Box::new(DataParallel::new(collective)))
                        .with_presliced_blocks(slices)
                        .with_sharding(Sharding::Parameters)
                        .unwrap();
                    (held, train(&mut trainer, &pairs[slice.clone()], &reference[slice]))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (rank, (held, result)) in results.iter().enumerate() {
        assert_eq!(*held + blocks_values(&initial), held_values(&initial), "rank {rank}: blocks kept whole");
        let what = options.precision;
        assert!(result.1 == expected[rank].1, "{what:?}, rank {rank}: the weights differ from the whole load's");
        assert_eq!(result.0, expected[rank].0, "{what:?}, rank {rank}: the gradient norms differ");
    }
}

/// Values of every decoder block's trained weights.
fn blocks_values<B: Backend>(model: &CausalLm<B>) -> usize {
    let mut n = 0;
    model.visit_trainable(&mut |name: &str, p: ParamKind<'_, B>| {
        if name.starts_with("model.layers.") {
            n += p.flat().dims()[0];
        }
    });
    n
}

#[test]
fn blocks_sliced_for_another_place_are_refused_by_name() {
    let mut slices = PreslicedBlocks::new(0, 3);
    let model = model_each_block(&mut |b, layer| slices.take(b, layer));
    let collective = ThreadRank::group(1, Duration::from_secs(5)).pop().unwrap();
    let err = Trainer::new(model, checkpointed(options(4)), ReferencePolicy::Given)
        .unwrap()
        .with_reducer(Box::new(DataParallel::new(collective)))
        .with_presliced_blocks(slices)
        .with_sharding(Sharding::Parameters)
        .unwrap_err()
        .to_string();
    assert!(err.contains("sliced for slice 0 of 3 as they loaded") && err.contains("slice 0 of 1"), "{err}");
}
