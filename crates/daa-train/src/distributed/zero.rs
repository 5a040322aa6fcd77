//! Sharded optimizer state (ZeRO stages 1 and 2): each rank owns one slice
//! of the flat parameter vector ([`FlatLayout`]) and keeps, for that slice
//! only, the f32 master weights and AdamW's moments; with `gradients` it
//! also keeps only that slice of the gradient sum, reduce-scattered after
//! every micro-batch instead of once per step.
//!
//! One step of rank `r` owning `S_r`, for `W` ranks:
//!
//! ```text
//! g_S   ← (Σ_ranks g)[S_r]                     reduce-scatter, summed in rank order
//! ‖g‖²  ← Σ_ranks Σ_{i∈S_r} g_i²               f64, all-reduced (the clipping norm)
//! m, v, θ on S_r: AdamW exactly as crate::optim (decay where the parameter decays)
//! θ     ← all-gather of every rank's θ_S        f32; the model receives it cast to its dtype
//! ```
//!
//! With HSDP ([`ShardGroups`]: sharded within a node, replicated across
//! nodes) the slices are those of the rank's shard group; the
//! reduce-scatter runs within the group and the slice's sum is then
//! all-reduced over the replicas (the ranks of the other groups holding
//! the same slice); the norm is summed and the weights gathered within the
//! group.
//!
//! The weights after a step are bit for bit those of the unsharded step on
//! the same backend when the gradient sums are (every operation on a value
//! is the same, element by element); the norm is summed in another order
//! (per slice in f64 instead of per parameter in f32), so it agrees to
//! rounding (relative 1e-6), and so do the weights when clipping is active.

use std::collections::HashMap;
use std::ops::Range;

use burn::module::ParamId;
use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Tensor, TensorData};

use super::collective::Collective;
use super::flat_layout::FlatLayout;
use crate::error::{ModelError, read_vec};
use crate::optim::{AdamW, AdamWConfig, GradAccumulator, Moments};
use crate::plan::Sharding;

/// HSDP's two groups of a rank: the ranks its slices are sharded over
/// (its node) and the ranks holding the same slice (one per node).
#[derive(Debug)]
pub struct ShardGroups {
    /// The ranks the state is sharded over.
    pub shard: Box<dyn Collective>,
    /// The ranks holding the same slice as this one.
    pub replicas: Box<dyn Collective>,
}

/// This rank's slice of the optimizer state.
#[derive(Debug)]
pub struct ZeroState<B: Backend> {
    stage: Sharding,
    /// HSDP's groups; `None`: sharded over every rank.
    groups: Option<ShardGroups>,
    rank: usize,
    layout: FlatLayout,
    /// The id of each layout entry in this process.
    ids: Vec<ParamId>,
    /// f32 master weights of the slice (padding: zeros).
    master: Tensor<B, 1>,
    /// AdamW's moments of the slice (zeros before the first step).
    m: Tensor<B, 1>,
    v: Tensor<B, 1>,
    /// 1 where weight decay applies.
    decays: Vec<bool>,
    /// `gradients`: this slice of the step's gradient sum so far.
    gradient_sum: Option<Vec<f32>>,
    /// Per parameter, the ranks and micro-batches that had a gradient for
    /// it this step: one without any is left as it is (no decay, no moment
    /// update), as the unsharded step leaves it.
    with_gradient: Vec<f64>,
}

/// What [`ZeroState::step`] did.
#[derive(Debug)]
pub struct ZeroStep {
    /// `‖g‖₂` before clipping, over every rank's slice.
    pub grad_norm: f64,
    /// Every parameter's new f32 values end to end (padded; each
    /// parameter's range: [`ZeroState::ranges`]), flattened in burn's layout.
    pub weights: Vec<f32>,
}

/// Values per group of gradients read back at once (64 MiB of f32): the
/// transient copies of a step's gradients stay this size, not the model's.
pub(super) const READ_GROUP: usize = 1 << 24;

impl<B: Backend> ZeroState<B> {
    /// The slice of rank `rank` of `layout` (whose entries are the
    /// parameters `ids`, with their current f32 values `values` flattened in
    /// burn's layout), taking over `optimizer`'s masters and moments of
    /// the slice (from a resumed checkpoint, or none) and dropping the rest.
    pub fn new(
        stage: Sharding,
        rank: usize,
        layout: FlatLayout,
        ids: Vec<ParamId>,
        values: &HashMap<ParamId, Tensor<B, 1>>,
        optimizer: &mut AdamW<B>,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        if !matches!(stage, Sharding::Optimizer | Sharding::Gradients) {
            return Err(ModelError::Sharding(format!(
                "train.sharding = \"{}\" is not a sharded optimizer stage (optimizer or gradients)",
                stage.as_str()
            )));
        }
        let shard = layout.shard(rank);
        let n = shard.len();
        let take = |source: &HashMap<ParamId, Tensor<B, 1>>, what: &str| -> Result<Option<Vec<f32>>, ModelError> {
            let mut out = vec![0f32; n];
            let mut any = false;
            for segment in layout.segments(shard.clone()) {
                let Some(t) = source.get(&ids[segment.entry]) else { continue };
                any = true;
                let name = &layout.entries[segment.entry].name;
                let part = t.clone().slice(segment.within.clone()).cast(FloatDType::F32);
                let part: Vec<f32> = read_vec(part, &format!("{name} ({what})"))?;
                out[segment.flat.start - shard.start..segment.flat.end - shard.start].copy_from_slice(&part);
            }
            Ok(any.then_some(out))
        };
        let masters = if optimizer.masters.is_empty() { values } else { &optimizer.masters };
        let master = take(masters, "master weights")?.unwrap_or_else(|| vec![0.0; n]);
        let firsts: HashMap<ParamId, Tensor<B, 1>> =
            optimizer.moments.iter().map(|(id, Moments { m, .. })| (*id, m.clone())).collect();
        let seconds: HashMap<ParamId, Tensor<B, 1>> =
            optimizer.moments.iter().map(|(id, Moments { v, .. })| (*id, v.clone())).collect();
        let m = take(&firsts, "exp_avg")?.unwrap_or_else(|| vec![0.0; n]);
        let v = take(&seconds, "exp_avg_sq")?.unwrap_or_else(|| vec![0.0; n]);
        // The whole-model state is this slice's now.
        optimizer.masters.clear();
        optimizer.moments.clear();
        let mut decays = vec![false; n];
        for segment in layout.segments(shard.clone()) {
            let decay = layout.entries[segment.entry].decay;
            decays[segment.flat.start - shard.start..segment.flat.end - shard.start].fill(decay);
        }
        let tensor = |values: Vec<f32>| Tensor::<B, 1>::from_data(TensorData::new(values, [n]), device);
        Ok(Self {
            stage,
            groups: None,
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

    /// Shards within `groups.shard` and replicates over `groups.replicas`
    /// (HSDP): this state's rank and layout must be the shard group's.
    pub fn with_groups(mut self, groups: ShardGroups) -> Result<Self, ModelError> {
        let (rank, size) = (groups.shard.rank(), groups.shard.world_size());
        if (rank, size) != (self.rank, self.layout.world_size) {
            return Err(ModelError::Sharding(format!(
                "the shard group's rank {rank} of {size} is not this state's slice {} of {}",
                self.rank, self.layout.world_size
            )));
        }
        self.groups = Some(groups);
        Ok(self)
    }

    /// Whether this rank writes its slice into checkpoints: every rank, or
    /// with HSDP the ranks of the first replica (the others hold the same).
    pub fn writes_slice(&self) -> bool {
        self.groups.as_ref().is_none_or(|g| g.replicas.rank() == 0)
    }

    /// This rank's place among the slices: `(slice, slices)`.
    pub fn slice_of(&self) -> (usize, usize) {
        (self.rank, self.layout.world_size)
    }

    /// The layout (what a checkpoint's `layout.json` records).
    pub fn layout(&self) -> &FlatLayout {
        &self.layout
    }

    /// The flat range this rank owns.
    pub fn shard(&self) -> Range<usize> {
        self.layout.shard(self.rank)
    }

    /// The stage.
    pub fn stage(&self) -> Sharding {
        self.stage
    }

    /// This slice's `(m, v)` on the host.
    pub fn moments(&self) -> Result<(Vec<f32>, Vec<f32>), ModelError> {
        Ok((read_vec(self.m.clone(), "exp_avg (this rank's slice)")?, read_vec(self.v.clone(), "exp_avg_sq")?))
    }

    /// Replaces this slice's `(m, v)` (a resumed checkpoint's, re-sliced).
    pub fn set_moments(&mut self, m: Vec<f32>, v: Vec<f32>) -> Result<(), ModelError> {
        let n = self.shard().len();
        if m.len() != n || v.len() != n {
            return Err(ModelError::OptimizerState(format!(
                "rank {}: a slice of {n} values expected, m has {} and v {}",
                self.rank,
                m.len(),
                v.len()
            )));
        }
        let device = self.m.device();
        self.m = Tensor::from_data(TensorData::new(m, [n]), &device);
        self.v = Tensor::from_data(TensorData::new(v, [n]), &device);
        Ok(())
    }

    /// Every rank's master weights gathered, end to end (each parameter's
    /// range: [`Self::ranges`]; what a checkpoint saves). Every rank must
    /// call it.
    pub fn gather_masters(&mut self, collective: &mut dyn Collective) -> Result<Vec<f32>, ModelError> {
        let mine: Vec<f32> = read_vec(self.master.clone(), "the master weights (this rank's slice)")?;
        let mut all = vec![0f32; self.layout.padded_len()];
        self.shard_collective(collective).all_gather_f32(&mine, &mut all)?;
        Ok(all)
    }

    /// The group the state is sharded over: the shard group with HSDP,
    /// else `world`.
    fn shard_collective<'a>(&'a mut self, world: &'a mut dyn Collective) -> &'a mut dyn Collective {
        match &mut self.groups {
            Some(groups) => groups.shard.as_mut(),
            None => world,
        }
    }

    /// Each parameter's range of the flat vector, by id.
    pub fn ranges(&self) -> HashMap<ParamId, Range<usize>> {
        self.layout.entries.iter().zip(&self.ids).map(|(e, id)| (*id, e.offset..e.offset + e.len)).collect()
    }

    /// The step's gradients as this rank's slice of their sum over the
    /// ranks. With `gradients`, called after each micro-batch (the sum kept
    /// is the slice only; `grads` is emptied); with `optimizer`, once.
    pub fn scatter_gradients(
        &mut self,
        grads: &mut GradAccumulator<B>,
        collective: &mut dyn Collective,
    ) -> Result<(), ModelError> {
        let mut flat = vec![0f32; self.layout.padded_len()];
        let position: HashMap<ParamId, usize> = self.ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        let mut present = Vec::new();
        // Read back in groups of at most READ_GROUP values, each gradient
        // let go once read: the transient copies stay small.
        let mut pending = grads.take_ordered().into_iter().peekable();
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
        collective.all_reduce_sum_f64(&mut seen)?;
        if self.with_gradient.is_empty() {
            self.with_gradient = seen;
        } else {
            self.with_gradient.iter_mut().zip(&seen).for_each(|(a, b)| *a += b);
        }
        let mut slice = vec![0f32; self.layout.shard_len()];
        match &mut self.groups {
            Some(groups) => {
                groups.shard.reduce_scatter_sum_f32(&flat, &mut slice)?;
                groups.replicas.all_reduce_sum_f32(&mut slice)?;
            }
            None => collective.reduce_scatter_sum_f32(&flat, &mut slice)?,
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

    /// Forgets a step's gradients scattered so far (a step that was not
    /// applied: its sum must not carry into the next).
    pub fn discard_gradients(&mut self) {
        self.gradient_sum = None;
        self.with_gradient.clear();
    }

    /// Whether part of this step's gradient sum is held already.
    pub fn has_gradients(&self) -> bool {
        self.gradient_sum.is_some()
    }

    /// Whether gradients are reduce-scattered after every micro-batch.
    pub fn scatters_each_micro_batch(&self) -> bool {
        self.stage == Sharding::Gradients
    }

    /// Clipping and AdamW on this slice at rate `lr` (`t` = steps including
    /// this one), then every rank's new weights gathered (module
    /// documentation). Every rank must call it.
    pub fn step(
        &mut self,
        config: &AdamWConfig,
        lr: f64,
        t: i32,
        collective: &mut dyn Collective,
    ) -> Result<ZeroStep, ModelError> {
        let g = self.gradient_sum.take().ok_or_else(|| {
            ModelError::Sharding("a sharded step without gradients (scatter_gradients was not called)".into())
        })?;
        // This step's record of which parameters had a gradient, taken now
        // so that a step refused below does not leak it into the next.
        let seen = std::mem::take(&mut self.with_gradient);
        let mut squares = [g.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>()];
        self.shard_collective(collective).all_reduce_sum_f64(&mut squares)?;
        let grad_norm = squares[0].sqrt();
        if !grad_norm.is_finite() {
            return Err(ModelError::NonFiniteStep { quantity: format!("the gradient norm ({grad_norm})") });
        }
        let scale = match config.clip_norm {
            Some(c) if grad_norm > c => c / grad_norm,
            _ => 1.0,
        };
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
        let shard = self.shard();
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
        let mine: Vec<f32> = read_vec(self.master.clone(), "the updated weights (this rank's slice)")?;
        let mut all = vec![0f32; self.layout.padded_len()];
        self.shard_collective(collective).all_gather_f32(&mine, &mut all)?;
        Ok(ZeroStep { grad_norm, weights: all })
    }
}
