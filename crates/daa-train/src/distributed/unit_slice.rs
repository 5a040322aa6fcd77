//! One rank's slice of one flat unit of parameters ([`FlatLayout`]): the
//! f32 master weights, AdamW's moments and the step's gradient sum of the
//! values `rank·n .. (rank+1)·n` of the unit's padded flat vector. ZeRO-1
//! and ZeRO-2 shard the whole model as one unit; ZeRO-3 shards each decoder
//! block (and the embedding, final norm and head together) as a unit of its
//! own, so that a block's weights are gathered from every rank's slice of
//! it alone.

use std::collections::HashMap;

use burn::module::ParamId;
use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Tensor, TensorData};

use super::collective::Collective;
use super::flat_layout::FlatLayout;
use super::zero::{READ_GROUP, ShardGroups};
use crate::error::{ModelError, read_vec};
use crate::optim::AdamWConfig;

/// This rank's slice of one unit.
#[derive(Debug)]
pub(super) struct UnitSlice<B: Backend> {
    pub(super) rank: usize,
    pub(super) layout: FlatLayout,
    /// The id of each layout entry in this process.
    pub(super) ids: Vec<ParamId>,
    /// f32 master weights of the slice (padding: zeros).
    pub(super) master: Tensor<B, 1>,
    /// AdamW's moments of the slice (zeros before the first step).
    pub(super) m: Tensor<B, 1>,
    pub(super) v: Tensor<B, 1>,
    /// 1 where weight decay applies.
    decays: Vec<bool>,
    /// This slice of the step's gradient sum so far.
    pub(super) gradient_sum: Option<Vec<f32>>,
    /// Per parameter, the ranks and micro-batches that had a gradient for
    /// it this step: one without any is left as it is (no decay, no moment
    /// update), as the unsharded step leaves it.
    pub(super) with_gradient: Vec<f64>,
}

/// Slice `rank` of the values of `layout`'s entries (each entry's values
/// flattened in burn's layout, `None` where absent), in f32 on the host;
/// `None` when every entry is absent. `what` names them in errors.
pub(super) fn slice_values<B: Backend>(
    layout: &FlatLayout,
    rank: usize,
    values: &dyn Fn(usize) -> Option<Tensor<B, 1>>,
    what: &str,
) -> Result<Option<Vec<f32>>, ModelError> {
    let shard = layout.shard(rank);
    let mut out = vec![0f32; shard.len()];
    let mut any = false;
    for segment in layout.segments(shard.clone()) {
        let Some(t) = values(segment.entry) else { continue };
        any = true;
        let name = &layout.entries[segment.entry].name;
        let part: Vec<f32> =
            read_vec(t.slice(segment.within.clone()).cast(FloatDType::F32), &format!("{name} ({what})"))?;
        out[segment.flat.start - shard.start..segment.flat.end - shard.start].copy_from_slice(&part);
    }
    Ok(any.then_some(out))
}

/// Where a step's values come from when a slice is built: masters (or the
/// current values) and the two moments, by parameter id.
pub(super) struct SliceSources<'a, B: Backend> {
    pub masters: &'a HashMap<ParamId, Tensor<B, 1>>,
    pub firsts: &'a HashMap<ParamId, Tensor<B, 1>>,
    pub seconds: &'a HashMap<ParamId, Tensor<B, 1>>,
}

impl<B: Backend> UnitSlice<B> {
    /// The slice `rank` of `layout` (entries `ids`), its values taken from
    /// `sources` (absent moments: zeros).
    pub(super) fn new(
        rank: usize,
        layout: FlatLayout,
        ids: Vec<ParamId>,
        sources: &SliceSources<'_, B>,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        let n = layout.shard_len();
        let take = |source: &HashMap<ParamId, Tensor<B, 1>>, what: &str| {
            slice_values(&layout, rank, &|entry| source.get(&ids[entry]).cloned(), what)
        };
        let master = take(sources.masters, "master weights")?.unwrap_or_else(|| vec![0.0; n]);
        let m = take(sources.firsts, "exp_avg")?.unwrap_or_else(|| vec![0.0; n]);
        let v = take(sources.seconds, "exp_avg_sq")?.unwrap_or_else(|| vec![0.0; n]);
        Self::with_values(rank, layout, ids, [master, m, v], device)
    }

    /// The slice `rank` of `layout` (entries `ids`) holding `[master, m, v]`
    /// (each the slice's length).
    pub(super) fn with_values(
        rank: usize,
        layout: FlatLayout,
        ids: Vec<ParamId>,
        [master, m, v]: [Vec<f32>; 3],
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        let shard = layout.shard(rank);
        let n = shard.len();
        if [&master, &m, &v].iter().any(|values| values.len() != n) {
            return Err(ModelError::Sharding(format!(
                "slice {rank} of a unit of {} values holds {n}; given {}, {} and {}",
                layout.total(),
                master.len(),
                m.len(),
                v.len()
            )));
        }
        let mut decays = vec![false; n];
        for segment in layout.segments(shard.clone()) {
            let decay = layout.entries[segment.entry].decay;
            decays[segment.flat.start - shard.start..segment.flat.end - shard.start].fill(decay);
        }
        let tensor = |values: Vec<f32>| Tensor::<B, 1>::from_data(TensorData::new(values, [n]), device);
        Ok(Self {
            rank,
            layout,
            ids,
            master: tensor(master),
            m: tensor(m),
            v: tensor(v),
            decays,
            gradient_sum: None,
            with_gradient: Vec::new(),
        })
    }

    /// Values in this slice.
    pub(super) fn len(&self) -> usize {
        self.layout.shard_len()
    }

    /// `grads` (this unit's parameters' flattened gradients, in layout
    /// order; absent ones count as zeros) summed over the ranks, this
    /// slice of the sum added to the step's. `world` counts which
    /// parameters had a gradient; the sum runs in the shard group (and over
    /// the replicas, with HSDP).
    pub(super) fn scatter(
        &mut self,
        grads: Vec<(ParamId, Tensor<B, 1>)>,
        world: &mut dyn Collective,
        groups: Option<&mut ShardGroups>,
    ) -> Result<(), ModelError> {
        let mut flat = vec![0f32; self.layout.padded_len()];
        let position: HashMap<ParamId, usize> = self.ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        let mut present = Vec::new();
        // Read back in groups of at most READ_GROUP values, each gradient
        // let go once read: the transient copies stay small.
        let mut pending = grads.into_iter().peekable();
        while pending.peek().is_some() {
            let (mut entries, mut group, mut values) = (Vec::new(), Vec::new(), 0);
            while let Some((id, g)) = pending.next_if(|(_, g)| values == 0 || values + g.dims()[0] <= READ_GROUP) {
                let Some(&entry) = position.get(&id) else {
                    return Err(ModelError::Sharding(format!("a gradient for a parameter outside the layout ({id})")));
                };
                values += g.dims()[0];
                entries.push(entry);
                group.push(g.cast(FloatDType::F32));
            }
            let host: Vec<f32> = read_vec(Tensor::cat(group, 0), "the gradients")?;
            let mut at = 0;
            for entry in entries {
                let e = &self.layout.entries[entry];
                flat[e.offset..e.offset + e.len].copy_from_slice(&host[at..at + e.len]);
                at += e.len;
                present.push(entry);
            }
        }
        let mut seen = vec![0f64; self.layout.entries.len()];
        present.iter().for_each(|entry| seen[*entry] = 1.0);
        world.all_reduce_sum_f64(&mut seen)?;
        if self.with_gradient.is_empty() {
            self.with_gradient = seen;
        } else {
            self.with_gradient.iter_mut().zip(&seen).for_each(|(a, b)| *a += b);
        }
        let mut slice = vec![0f32; self.layout.shard_len()];
        match groups {
            Some(groups) => {
                groups.shard.reduce_scatter_sum_f32(&flat, &mut slice)?;
                groups.replicas.all_reduce_sum_f32(&mut slice)?;
            }
            None => world.reduce_scatter_sum_f32(&flat, &mut slice)?,
        }
        self.gradient_sum = Some(match self.gradient_sum.take() {
            Some(mut sum) => {
                sum.iter_mut().zip(&slice).for_each(|(s, g)| *s += g);
                sum
            }
            None => slice,
        });
        Ok(())
    }

    /// Forgets a step's gradients scattered so far.
    pub(super) fn discard_gradients(&mut self) {
        self.gradient_sum = None;
        self.with_gradient.clear();
    }

    /// The step's gradient sum and its record of which parameters had one,
    /// taken (a step refused after this does not leak them into the next).
    pub(super) fn take_gradients(&mut self) -> Option<(Vec<f32>, Vec<f64>)> {
        let g = self.gradient_sum.take()?;
        Some((g, std::mem::take(&mut self.with_gradient)))
    }

    /// AdamW on this slice with the gradient sum `g` times `scale` (the
    /// clipping factor) at rate `lr`, `t` steps including this one;
    /// parameters no rank had a gradient for (`seen`) are left as they are.
    pub(super) fn update(
        &mut self,
        (g, seen): (Vec<f32>, Vec<f64>),
        config: &AdamWConfig,
        lr: f64,
        t: i32,
        scale: f64,
    ) {
        let device = self.master.device();
        let n = g.len();
        let g = Tensor::<B, 1>::from_data(TensorData::new(g, [n]), &device).mul_scalar(scale);
        // θ·(1 − ηλ) where the parameter decays, θ·1 elsewhere: the same f32
        // factor the unsharded step multiplies by.
        let with_decay = (1.0 - lr * config.weight_decay) as f32;
        let factor: Vec<f32> = self.decays.iter().map(|&d| if d { with_decay } else { 1.0 }).collect();
        let factor = Tensor::<B, 1>::from_data(TensorData::new(factor, [n]), &device);
        let m = self.m.clone().mul_scalar(config.beta1) + g.clone().mul_scalar(1.0 - config.beta1);
        let v = self.v.clone().mul_scalar(config.beta2) + g.powi_scalar(2).mul_scalar(1.0 - config.beta2);
        let m_hat = m.clone().div_scalar(1.0 - config.beta1.powi(t));
        let v_hat = v.clone().div_scalar(1.0 - config.beta2.powi(t));
        let theta = self.master.clone() * factor - (m_hat / (v_hat.sqrt().add_scalar(config.eps))).mul_scalar(lr);
        let mut untouched = vec![false; n];
        let shard = self.layout.shard(self.rank);
        for segment in self.layout.segments(shard.clone()) {
            if seen[segment.entry] == 0.0 {
                untouched[segment.flat.start - shard.start..segment.flat.end - shard.start].fill(true);
            }
        }
        if untouched.iter().any(|&u| u) {
            let keep = Tensor::<B, 1, burn::tensor::Bool>::from_data(TensorData::new(untouched, [n]), &device);
            self.m = m.mask_where(keep.clone(), self.m.clone());
            self.v = v.mask_where(keep.clone(), self.v.clone());
            self.master = theta.mask_where(keep, self.master.clone());
        } else {
            self.m = m;
            self.v = v;
            self.master = theta;
        }
    }

    /// Every rank's master weights of this unit gathered (padded, in the
    /// unit's flat layout) through `shard` (the group the unit is sharded
    /// over). Every rank of it must call it.
    pub(super) fn gather(&self, what: Tensor<B, 1>, shard: &mut dyn Collective) -> Result<Vec<f32>, ModelError> {
        let mine: Vec<f32> = read_vec(what, "this rank's slice")?;
        let mut all = vec![0f32; self.layout.padded_len()];
        shard.all_gather_f32(&mine, &mut all)?;
        Ok(all)
    }
}
