//! Sharded optimizer state (ZeRO-1 `optimizer`, ZeRO-2 `gradients`) against
//! the unsharded step, ranks as threads: the same weights bit for bit where
//! the gradient sums are the same sums, within a stated tolerance where the
//! order of summation changes; the flat layout's slicing, padding and
//! re-slicing as properties.

use std::time::Duration;

use daa_train::distributed::{Collective, DataParallel, FlatLayout, Sharding, ThreadRank, rank_slice};
use daa_train::optim::AdamWConfig;
use daa_train::score::PairScore;
use daa_train::{ReferencePolicy, Trainer, TrainerOptions};
use proptest::prelude::*;

use super::distributed::{AD, STEPS, options, rank_copy, setup, train};
use daa_train::batch::SequencePair;
use daa_train::model::CausalLm;

/// Weights may differ by this much where sums are taken in another order
/// (f32 rounding of sums of up to 8 pairs' gradients, through 3 AdamW steps
/// at rate 1e-2 whose `m̂/√v̂` amplifies a rounding of `g` near 0; measured
/// 2026-12-07: at most 4.6e-7 with the unfused compositions, and 0 with
/// clipping at these sizes; with the fused operations (`daa_train::fused`,
/// other roundings) 1.3e-5 at one weight of 26 528 over three ranks, every
/// other weight within 1e-6).
pub const REORDERED_TOLERANCE: f32 = 5e-5;

/// `options(micro_batch)` without clipping (the norm, summed per slice,
/// then decides nothing).
pub fn unclipped(micro_batch: usize) -> TrainerOptions {
    TrainerOptions { optimizer: AdamWConfig { clip_norm: None, ..AdamWConfig::default() }, ..options(micro_batch) }
}

/// Each rank's gradient norms and final weights, `world` thread ranks at
/// `stage`, each on its contiguous slice of `pairs`.
pub fn ranks(
    world: usize,
    stage: Sharding,
    options: TrainerOptions,
    inputs: (&[SequencePair], &CausalLm<AD>, &[PairScore]),
) -> Vec<(Vec<f64>, Vec<f32>)> {
    on_ranks(world, stage, options, inputs, &|trainer, pairs, reference| train(trainer, pairs, reference))
}

/// The training body each rank runs on its trainer, pairs and reference scores.
pub type RankBody<'a, T> = dyn Fn(&mut Trainer<AD>, &[SequencePair], &[PairScore]) -> T + Sync + 'a;

/// `body`'s result on each of `world` thread ranks, each with a trainer of
/// `initial` sharded at `stage` and its contiguous slice of the pairs.
pub fn on_ranks<T: Send>(
    world: usize,
    stage: Sharding,
    options: TrainerOptions,
    (pairs, initial, reference): (&[SequencePair], &CausalLm<AD>, &[PairScore]),
    body: &RankBody<'_, T>,
) -> Vec<T> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = ThreadRank::group(world, Duration::from_secs(120))
            .into_iter()
            .map(|collective| {
                let initial = rank_copy(initial);
                scope.spawn(move || {
                    let slice = rank_slice(pairs.len(), collective.rank(), collective.world_size());
                    let mut trainer = Trainer::new(initial, options, ReferencePolicy::Given)
                        .unwrap()
                        .with_reducer(Box::new(DataParallel::new(collective)))
                        .with_sharding(stage)
                        .unwrap();
                    body(&mut trainer, &pairs[slice.clone()], &reference[slice])
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

pub fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn every_stage_on_two_ranks_is_one_rank_accumulating_two_bit_for_bit() {
    assert_two_ranks_are_one_rank_at(unclipped(4), &[Sharding::None, Sharding::Optimizer, Sharding::Gradients]);
}

/// Each of `stages` on two ranks (4 pairs each) against one rank
/// accumulating the 8 pairs, both with `options`: the weights bit for bit,
/// the gradient norms to 1e-6.
pub fn assert_two_ranks_are_one_rank_at(options: TrainerOptions, stages: &[Sharding]) {
    let (pairs, initial, reference) = setup();
    let mut one = Trainer::new(initial.clone(), options, ReferencePolicy::Given).unwrap();
    let (one_norms, one_weights) = train(&mut one, &pairs, &reference);
    for &stage in stages {
        for (rank, (norms, weights)) in ranks(2, stage, options, (&pairs, &initial, &reference)).iter().enumerate() {
            assert!(weights == &one_weights, "{stage:?}, rank {rank}: the weights after {STEPS} steps differ");
            for (n, o) in norms.iter().zip(&one_norms) {
                // The sharded norm is summed per slice in f64: equal to rounding.
                assert!((n - o).abs() <= 1e-6 * o, "{stage:?}, rank {rank}: gradient norm {n} against {o}");
            }
        }
    }
}

#[test]
fn bf16_with_sharded_f32_masters_is_one_rank_accumulating_two_bit_for_bit() {
    let (pairs, initial, reference) = setup();
    let bf16 = TrainerOptions { precision: daa_train::Precision::Bf16, ..unclipped(4) };
    let mut one = Trainer::new(initial.clone(), bf16, ReferencePolicy::Given).unwrap();
    let (_, one_weights) = train(&mut one, &pairs, &reference);
    let one_masters = super::distributed::weights_of(&one.master_model());
    let inputs = (pairs.as_slice(), &initial, reference.as_slice());
    let masters = on_ranks(2, Sharding::Optimizer, bf16, inputs, &|trainer, pairs, reference| {
        let (_, weights) = train(trainer, pairs, reference);
        (weights, super::distributed::weights_of(&trainer.gathered_master_model().unwrap()))
    });
    for (rank, (weights, gathered)) in masters.iter().enumerate() {
        assert!(weights == &one_weights, "rank {rank}: the bf16 weights differ");
        assert!(gathered == &one_masters, "rank {rank}: the gathered f32 masters differ");
        assert!(gathered != weights, "rank {rank}: the masters must be f32, not the rounded weights");
    }
}

#[test]
fn sharded_steps_with_clipping_or_reordered_sums_agree_within_rounding() {
    let (pairs, initial, reference) = setup();
    let inputs = (pairs.as_slice(), &initial, reference.as_slice());
    // Clipping active (‖g‖ > 1 at these rates): the scale follows the norm.
    let mut one = Trainer::new(initial.clone(), options(4), ReferencePolicy::Given).unwrap();
    let (norms, clipped) = train(&mut one, &pairs, &reference);
    assert!(norms[0] > 1.0, "the test needs clipping to act: ‖g‖ = {}", norms[0]);
    for stage in [Sharding::Optimizer, Sharding::Gradients] {
        for (rank, (_, weights)) in ranks(2, stage, options(4), inputs).iter().enumerate() {
            let d = max_difference(weights, &clipped);
            assert!(d <= REORDERED_TOLERANCE, "{stage:?} clipped, rank {rank}: weights differ by {d}");
        }
    }
    // ZeRO-2 sums each micro-batch over the ranks first, one rank sums its
    // micro-batches first: two micro-batches of 2 per rank, and an uneven
    // batch (7 pairs: ranks of 4 and 3 pairs).
    for count in [8, 7] {
        let mut one = Trainer::new(initial.clone(), unclipped(2), ReferencePolicy::Given).unwrap();
        let (_, expected) = train(&mut one, &pairs[..count], &reference[..count]);
        let inputs = (&pairs[..count], &initial, &reference[..count]);
        for (rank, (_, weights)) in ranks(2, Sharding::Gradients, unclipped(2), inputs).iter().enumerate() {
            let d = max_difference(weights, &expected);
            assert!(d <= REORDERED_TOLERANCE, "{count} pairs, rank {rank}: weights differ by {d}");
        }
    }
    // Three ranks over 8 pairs with micro-batches of 2: slices of 3, 3, 2
    // pairs, two micro-batches each; 8 pairs' sum in another order.
    let mut one = Trainer::new(initial.clone(), unclipped(2), ReferencePolicy::Given).unwrap();
    let (_, expected) = train(&mut one, &pairs, &reference);
    for stage in [Sharding::Optimizer, Sharding::Gradients] {
        for (rank, (_, weights)) in ranks(3, stage, unclipped(2), inputs).iter().enumerate() {
            let d = max_difference(weights, &expected);
            assert!(d <= REORDERED_TOLERANCE, "{stage:?}, 3 ranks, rank {rank}: weights differ by {d}");
        }
    }
}

#[test]
fn a_rank_with_fewer_micro_batches_still_takes_part_in_each_scatter() {
    // 5 pairs over 2 ranks, micro-batches of 1: rank 0 has 3, rank 1 has 2;
    // rank 1 scatters zeros the third time instead of leaving rank 0 waiting.
    let (pairs, initial, reference) = setup();
    let mut one = Trainer::new(initial.clone(), unclipped(1), ReferencePolicy::Given).unwrap();
    let (_, expected) = train(&mut one, &pairs[..5], &reference[..5]);
    let inputs = (&pairs[..5], &initial, &reference[..5]);
    for (rank, (_, weights)) in ranks(2, Sharding::Gradients, unclipped(1), inputs).iter().enumerate() {
        let d = max_difference(weights, &expected);
        assert!(d <= REORDERED_TOLERANCE, "rank {rank}: weights differ by {d}");
    }
}

#[test]
fn sharding_without_ranks_is_refused_by_name() {
    let (_, initial, _) = setup();
    let single = Trainer::new(initial, options(4), ReferencePolicy::Given).unwrap();
    let err = single.with_sharding(Sharding::Optimizer).unwrap_err().to_string();
    assert!(err.contains("train.sharding = \"optimizer\" needs several ranks"), "{err}");
}

#[test]
fn a_rank_that_leaves_ends_a_sharded_step_with_a_named_error() {
    let (pairs, initial, reference) = setup();
    let mut group = ThreadRank::group(2, Duration::from_secs(120));
    drop(group.pop());
    let mut trainer = Trainer::new(initial, unclipped(4), ReferencePolicy::Given)
        .unwrap()
        .with_reducer(Box::new(DataParallel::new(group.pop().unwrap())))
        .with_sharding(Sharding::Gradients)
        .unwrap();
    let step: Vec<_> = pairs[..4]
        .iter()
        .zip(&reference)
        .map(|(p, r)| daa_train::StepPair { sequences: p, reference: Some(*r) })
        .collect();
    let err = trainer.step(&step).unwrap_err().to_string();
    assert!(err.contains("rank 1 left the group"), "{err}");
}

/// The flat vector's values at `range`, each value its own flat index.
fn indices(range: std::ops::Range<usize>, total: usize) -> Vec<f32> {
    range.map(|i| if i < total { i as f32 } else { 0.0 }).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Slices of N ranks put back together are the vector; re-sliced to M
    /// and back to N they are the same slices; every segment names the
    /// parameter values it covers; padding is zeros past the end only.
    #[test]
    fn slicing_padding_and_reslicing_n_m_n(
        lens in proptest::collection::vec(1usize..40, 1..12),
        n in 1usize..9,
        m in 1usize..9,
    ) {
        let layout = FlatLayout::new(lens.iter().enumerate().map(|(i, &l)| (format!("p{i}"), vec![l], true)), n);
        let total = layout.total();
        prop_assert_eq!(total, lens.iter().sum::<usize>());
        prop_assert!(layout.padded_len() >= total && layout.padded_len() - total < n);
        let slices: Vec<Vec<f32>> = (0..n).map(|r| indices(layout.shard(r), total)).collect();
        let whole: Vec<f32> = slices.concat();
        prop_assert_eq!(&whole[..total], &indices(0..total, total)[..]);
        prop_assert!(whole[total..].iter().all(|&x| x == 0.0));
        let resliced = layout.with_world(m);
        let again: Vec<f32> = (0..m).map(|r| {
            let s = resliced.shard(r);
            (s.start..s.end).map(|i| whole.get(i).copied().unwrap_or(0.0)).collect::<Vec<_>>()
        }).collect::<Vec<_>>().concat();
        let back = resliced.with_world(n);
        prop_assert_eq!(&back, &layout);
        for (r, slice) in slices.iter().enumerate() {
            let s = back.shard(r);
            let from_m: Vec<f32> = (s.start..s.end).map(|i| again.get(i).copied().unwrap_or(0.0)).collect();
            prop_assert_eq!(&from_m, slice);
            for segment in back.segments(s.clone()) {
                let entry = &back.entries[segment.entry];
                prop_assert_eq!(segment.flat.start, entry.offset + segment.within.start);
                prop_assert_eq!(segment.flat.len(), segment.within.len());
                prop_assert!(segment.within.end <= entry.len && s.start <= segment.flat.start && segment.flat.end <= s.end);
            }
            let covered: usize = back.segments(s.clone()).iter().map(|g| g.flat.len()).sum();
            prop_assert_eq!(covered, s.end.min(total).saturating_sub(s.start.min(total)));
        }
        prop_assert!(layout.check_same_parameters(&resliced).is_ok());
    }
}

/// HSDP: 4 thread ranks as 2 "nodes" of 2, each stage sharded within a node
/// (`split` by node) and replicated across nodes (`split` by local rank),
/// against one rank accumulating the 8 pairs in micro-batches of 2.
#[test]
fn sharded_within_nodes_and_replicated_across_them_is_one_rank_to_rounding() {
    let (pairs, initial, reference) = setup();
    let mut one = Trainer::new(initial.clone(), unclipped(2), ReferencePolicy::Given).unwrap();
    let (one_norms, one_weights) = train(&mut one, &pairs, &reference);
    for stage in [Sharding::Optimizer, Sharding::Gradients, Sharding::Parameters] {
        let options = match stage {
            Sharding::Parameters => super::distributed::checkpointed(unclipped(2)),
            _ => unclipped(2),
        };
        let results: Vec<(Vec<f64>, Vec<f32>, Vec<usize>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = ThreadRank::group(4, Duration::from_secs(120))
                .into_iter()
                .map(|mut collective| {
                    let (pairs, reference, initial) = (&pairs, &reference, rank_copy(&initial));
                    scope.spawn(move || {
                        let (rank, world) = (collective.rank(), collective.world_size());
                        let (node, local) = (rank / 2, rank % 2);
                        let groups = daa_train::distributed::ShardGroups {
                            shard: collective.split(node).unwrap(),
                            replicas: collective.split(local).unwrap(),
                        };
                        let slice = rank_slice(pairs.len(), rank, world);
                        let mut trainer = Trainer::new(initial, options, ReferencePolicy::Given)
                            .unwrap()
                            .with_reducer(Box::new(DataParallel::new(collective)))
                            .with_sharding_in(stage, Some(groups))
                            .unwrap();
                        let zero = trainer.zero_state().unwrap();
                        let place = vec![zero.slice_of().0, zero.slice_of().1, usize::from(zero.writes_slice())];
                        let (norms, weights) = train(&mut trainer, &pairs[slice.clone()], &reference[slice]);
                        (norms, weights, place)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // Slices of the node's 2 ranks; node 0's ranks write them.
        let places: Vec<&Vec<usize>> = results.iter().map(|r| &r.2).collect();
        assert_eq!(places, [&vec![0, 2, 1], &vec![1, 2, 1], &vec![0, 2, 0], &vec![1, 2, 0]], "{stage:?}");
        for (rank, (norms, weights, _)) in results.iter().enumerate() {
            assert!(weights == &results[0].1, "{stage:?}: rank {rank} holds other weights than rank 0");
            // Summed as (g₀ + g₁) + (g₂ + g₃), not ((g₀ + g₁) + g₂) + g₃.
            let d = max_difference(weights, &one_weights);
            assert!(d <= REORDERED_TOLERANCE, "{stage:?}, rank {rank}: weights differ by {d}");
            for (n, o) in norms.iter().zip(&one_norms) {
                assert!((n - o).abs() <= 1e-5 * o, "{stage:?}, rank {rank}: gradient norm {n} against {o}");
            }
        }
    }
}
