//! Data parallelism (DDP): every rank holds the whole model and optimizer,
//! steps on its own slice of the global batch, and the gradients are summed
//! over the ranks before clipping and the update, so every rank applies the
//! same update.

use std::ops::Range;

use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Tensor, TensorData};

use super::collective::{Collective, CollectiveError};
use super::zero::READ_GROUP;
use crate::error::{ModelError, read_vec};
use crate::optim::GradAccumulator;
use crate::trainer::GradientReducer;

/// The pairs of a global batch of `global` that `rank` of `world` steps on:
/// contiguous slices, the first `global mod world` ranks one pair longer.
/// Rank `r`'s slice holds what one rank would see as its `r`-th micro-batch
/// when `global` divides evenly, so `N` ranks with micro-batch `B/N`
/// compute what one rank accumulating `N` micro-batches of `B/N` computes.
pub fn rank_slice(global: usize, rank: usize, world: usize) -> Range<usize> {
    let world = world.max(1);
    let (base, extra) = (global / world, global % world);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// The trainer's [`GradientReducer`] over a [`Collective`]: every gradient
/// summed over the ranks (f32 all-reduces of groups of up to 64 MiB, in the
/// model's parameter order), and the step's counts summed before the loss
/// is normalised.
#[derive(Debug)]
pub struct DataParallel<C: Collective> {
    collective: C,
    read_group: usize,
}

impl<C: Collective> DataParallel<C> {
    /// Data parallelism over `collective`'s ranks.
    pub fn new(collective: C) -> Self {
        Self { collective, read_group: READ_GROUP }
    }

    /// Gradients read back and all-reduced `values` at a time (at least one
    /// parameter's; default 2²⁴ = 64 MiB of f32): smaller groups hold less
    /// memory and make more collectives, the sums are the same.
    pub fn with_read_group(mut self, values: usize) -> Self {
        self.read_group = values.max(1);
        self
    }

    /// The collective, for the run's other exchanges (metrics, checks).
    pub fn collective(&mut self) -> &mut C {
        &mut self.collective
    }
}

impl<C: Collective, B: Backend> GradientReducer<B> for DataParallel<C> {
    fn world_size(&self) -> usize {
        self.collective.world_size()
    }

    fn reduce(&mut self, gradients: &mut GradAccumulator<B>) -> Result<(), ModelError> {
        let mut grads: Vec<&mut Tensor<B, 1>> = gradients.gradients_mut().map(|(_, g)| g).collect();
        // Every rank must exchange as many values (a rank without
        // gradients is named, not waited for until the deadline).
        let total: usize = grads.iter().map(|g| g.dims()[0]).sum();
        let (rank, world) = (self.collective.rank(), self.collective.world_size());
        let mut lengths = vec![0f64; world];
        lengths[rank] = total as f64;
        self.collective.all_reduce_sum_f64(&mut lengths)?;
        if let Some(other) = lengths.iter().position(|&l| l != total as f64) {
            return Err(CollectiveError::LengthMismatch {
                operation: "all_reduce",
                rank,
                len: total,
                other_rank: other,
                other_len: lengths[other] as usize,
            }
            .into());
        }
        // In groups of at most `read_group` values (f32, whatever the
        // parameters' dtype), in the model's parameter order: read back,
        // summed over the ranks, written back; the transient copies stay
        // small whatever the model's size.
        let mut start = 0;
        while start < grads.len() {
            let mut end = start + 1;
            let mut values = grads[start].dims()[0];
            while end < grads.len() && values + grads[end].dims()[0] <= self.read_group {
                values += grads[end].dims()[0];
                end += 1;
            }
            let group = &mut grads[start..end];
            let mut host: Vec<f32> = read_vec(
                Tensor::cat(group.iter().map(|g| (*g).clone().cast(FloatDType::F32)).collect(), 0),
                "the gradients",
            )?;
            self.collective.all_reduce_sum_f32(&mut host)?;
            let mut offset = 0;
            for g in group.iter_mut() {
                let (len, dtype, device): (usize, FloatDType, _) = (g.dims()[0], g.dtype().into(), g.device());
                let values = host[offset..offset + len].to_vec();
                **g = Tensor::<B, 1>::from_data(TensorData::new(values, [len]), &device).cast(dtype);
                offset += len;
            }
            start = end;
        }
        Ok(())
    }

    fn sum_counts(&mut self, counts: &mut [f64]) -> Result<(), ModelError> {
        Ok(self.collective.all_reduce_sum_f64(counts)?)
    }

    fn collective(&mut self) -> Option<&mut dyn Collective> {
        Some(&mut self.collective)
    }
}

#[cfg(test)]
mod tests {
    use super::rank_slice;

    #[test]
    fn rank_slices_cover_the_batch_in_order() {
        for global in 0..20 {
            for world in 1..6 {
                let slices: Vec<_> = (0..world).map(|r| rank_slice(global, r, world)).collect();
                assert_eq!(slices[0].start, 0);
                assert_eq!(slices[world - 1].end, global);
                for w in slices.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                    assert!(w[0].len() >= w[1].len() && w[0].len() - w[1].len() <= 1);
                }
            }
        }
        assert_eq!(rank_slice(8, 1, 2), 4..8);
        assert_eq!(rank_slice(7, 2, 3), 5..7);
    }
}
