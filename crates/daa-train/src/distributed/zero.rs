//! Sharded optimizer state (ZeRO stages 1, 2 and 3). The parameters are cut
//! into units — the embedding, final norm and head together, then each
//! decoder block — each laid out flat ([`FlatLayout`]), padded to the world
//! size and sliced on its own ([`UnitSlice`]); each rank keeps, for its
//! slice of every unit only, the f32 master weights and AdamW's moments;
//! with `gradients` it also keeps only that slice of the gradient sum,
//! reduce-scattered after every micro-batch instead of once per step. The
//! exchanges run unit by unit, so their transient host copies are a unit's
//! size, not the model's. With `parameters` (ZeRO-3) a block's weights are
//! gathered from the ranks' slices of that block right before it runs
//! ([`crate::distributed::parameter_units`]), its gradients
//! reduce-scattered as soon as its backward is done, and the model holds
//! no trained weight between uses.
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

use burn::module::{Module, ParamId};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::collective::Collective;
use super::flat_layout::FlatLayout;
use super::unit_slice::{SliceSources, UnitSlice};
use crate::error::ModelError;
use crate::optim::{AdamW, AdamWConfig, GradAccumulator, Moments, SetWeights};
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

/// Gathered f32 values end to end, with each parameter's range of them.
pub type Gathered = (Vec<f32>, HashMap<ParamId, Range<usize>>);

/// A slice's first and second moments `(m, v)`.
pub type MomentSlice = (Vec<f32>, Vec<f32>);

/// What [`ZeroState::step`] did.
#[derive(Debug)]
pub struct ZeroStep {
    /// `‖g‖₂` before clipping, over every rank's slice.
    pub grad_norm: f64,
}

/// The group the state is sharded over: the shard group with HSDP, else
/// `world`.
fn shard_group<'a>(groups: &'a mut Option<ShardGroups>, world: &'a mut dyn Collective) -> &'a mut dyn Collective {
    match groups {
        Some(groups) => groups.shard.as_mut(),
        None => world,
    }
}

/// This rank's slice of the optimizer state.
#[derive(Debug)]
pub struct ZeroState<B: Backend> {
    stage: Sharding,
    /// HSDP's groups; `None`: sharded over every rank.
    groups: Option<ShardGroups>,
    rank: usize,
    /// The whole model's layout over the shard group: what checkpoints
    /// record (with `parameters` too, so any stage resumes any other).
    layout: FlatLayout,
    /// The units' slices: unit 0 (embedding, final norm, head), then one per
    /// block.
    units: Vec<UnitSlice<B>>,
    /// Each parameter's unit.
    unit_of: HashMap<ParamId, usize>,
}

/// Values per group of gradients read back at once (64 MiB of f32): the
/// transient copies of a step's gradients stay this size, not the model's.
pub(super) const READ_GROUP: usize = 1 << 24;

impl<B: Backend> ZeroState<B> {
    /// The slice of rank `rank` of `layout` (whose entries are the
    /// parameters `ids`, with their current f32 values `values` flattened in
    /// burn's layout), taking over `optimizer`'s masters and moments of
    /// the slice (from a resumed checkpoint, or none) and dropping the rest.
    /// `units[i]` is entry `i`'s unit (0 for the embedding, final norm and
    /// head, `1 + b` for block `b`: [`super::parameter_units::unit_of_name`]).
    /// A unit in `presliced` takes those f32 masters of this rank's slice
    /// instead (its weights were let go as they were loaded:
    /// [`super::parameter_units::PreslicedBlocks`]) and zero moments.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        stage: Sharding,
        rank: usize,
        layout: FlatLayout,
        ids: Vec<ParamId>,
        units: &[usize],
        values: &HashMap<ParamId, Tensor<B, 1>>,
        presliced: &mut HashMap<usize, Vec<f32>>,
        optimizer: &mut AdamW<B>,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        if stage == Sharding::None {
            return Err(ModelError::Sharding("train.sharding = \"none\" is not a sharded stage".into()));
        }
        if units.len() != layout.entries.len() {
            return Err(ModelError::Sharding(format!("{} units for {} parameters", units.len(), layout.entries.len())));
        }
        let masters = if optimizer.masters.is_empty() { values } else { &optimizer.masters };
        let firsts: HashMap<ParamId, Tensor<B, 1>> =
            optimizer.moments.iter().map(|(id, Moments { m, .. })| (*id, m.clone())).collect();
        let seconds: HashMap<ParamId, Tensor<B, 1>> =
            optimizer.moments.iter().map(|(id, Moments { v, .. })| (*id, v.clone())).collect();
        let sources = SliceSources { masters, firsts: &firsts, seconds: &seconds };
        let unit_count = units.iter().max().map_or(0, |u| u + 1);
        let mut unit_of = HashMap::new();
        let mut slices = Vec::with_capacity(unit_count);
        for u in 0..unit_count {
            let members: Vec<usize> = (0..layout.entries.len()).filter(|&i| units[i] == u).collect();
            let unit_layout = FlatLayout::new(
                members.iter().map(|&i| {
                    let e = &layout.entries[i];
                    (e.name.clone(), e.shape.clone(), e.decay)
                }),
                layout.world_size,
            );
            let unit_ids: Vec<ParamId> = members.iter().map(|&i| ids[i]).collect();
            unit_ids.iter().for_each(|id| {
                unit_of.insert(*id, u);
            });
            slices.push(match presliced.remove(&u) {
                Some(master) => {
                    let zeros = vec![0.0; master.len()];
                    UnitSlice::with_values(rank, unit_layout, unit_ids, [master, zeros.clone(), zeros], device)?
                }
                None => UnitSlice::new(rank, unit_layout, unit_ids, &sources, device)?,
            });
        }
        // The whole-model state is this slice's now.
        optimizer.masters.clear();
        optimizer.moments.clear();
        Ok(Self { stage, groups: None, rank, layout, units: slices, unit_of })
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

    /// The whole model's layout (what a checkpoint's `layout.json` records).
    pub fn layout(&self) -> &FlatLayout {
        &self.layout
    }

    /// The stage.
    pub fn stage(&self) -> Sharding {
        self.stage
    }

    /// Units the parameters are sharded in.
    pub fn unit_count(&self) -> usize {
        self.units.len()
    }

    /// The parameters of unit `unit`, in layout order.
    pub fn unit_ids(&self, unit: usize) -> &[ParamId] {
        &self.units[unit].ids
    }

    /// Values this rank holds per moment (the units' slices end to end).
    pub fn slice_len(&self) -> usize {
        self.units.iter().map(UnitSlice::len).sum()
    }

    /// Where this rank's slice lies in [`Self::layout`]'s flat vector:
    /// `(range of the whole model's vector, where it starts in the slice)`,
    /// in slice order; values of the slice no piece covers are padding.
    pub fn slice_pieces(&self) -> Vec<(Range<usize>, usize)> {
        let global: HashMap<&str, usize> = self.layout.entries.iter().map(|e| (e.name.as_str(), e.offset)).collect();
        let mut pieces = Vec::new();
        let mut at = 0;
        for unit in &self.units {
            let shard = unit.layout.shard(self.rank);
            for segment in unit.layout.segments(shard.clone()) {
                let entry = &unit.layout.entries[segment.entry];
                let start = global[entry.name.as_str()] + segment.within.start;
                pieces.push((start..start + segment.within.len(), at + segment.flat.start - shard.start));
            }
            at += shard.len();
        }
        pieces
    }

    /// Replaces this slice's `(m, v)` (a resumed checkpoint's, re-sliced;
    /// the units' slices end to end, in [`Self::slice_pieces`]' order).
    pub fn set_moments(&mut self, m: Vec<f32>, v: Vec<f32>) -> Result<(), ModelError> {
        let n = self.slice_len();
        if m.len() != n || v.len() != n {
            return Err(ModelError::OptimizerState(format!(
                "rank {}: a slice of {n} values expected, m has {} and v {}",
                self.rank,
                m.len(),
                v.len()
            )));
        }
        let mut at = 0;
        for unit in &mut self.units {
            let (len, device) = (unit.len(), unit.m.device());
            let part =
                |values: &[f32]| Tensor::from_data(burn::tensor::TensorData::new(values.to_vec(), [len]), &device);
            unit.m = part(&m[at..at + len]);
            unit.v = part(&v[at..at + len]);
            at += len;
        }
        Ok(())
    }

    /// This rank's slice of the whole model's `(m, v)` as [`Self::layout`]
    /// slices it (what a checkpoint holds, whatever the stage): each unit's
    /// moments are gathered in turn (one unit's size transient) and this
    /// rank keeps the part of the layout's shard they cover. Every rank must
    /// call it.
    pub fn layout_moments(&mut self, world: &mut dyn Collective) -> Result<MomentSlice, ModelError> {
        let shard = self.layout.shard(self.rank);
        let (mut m, mut v) = (vec![0f32; shard.len()], vec![0f32; shard.len()]);
        let segments = self.layout.segments(shard.clone());
        let shard_group = shard_group(&mut self.groups, world);
        for unit in &self.units {
            let place: HashMap<&str, usize> = unit.layout.entries.iter().map(|e| (e.name.as_str(), e.offset)).collect();
            let all_m = unit.gather(unit.m.clone(), shard_group)?;
            let all_v = unit.gather(unit.v.clone(), shard_group)?;
            for segment in &segments {
                let name = self.layout.entries[segment.entry].name.as_str();
                let Some(&offset) = place.get(name) else { continue };
                let from = offset + segment.within.start..offset + segment.within.end;
                let to = segment.flat.start - shard.start..segment.flat.end - shard.start;
                m[to.clone()].copy_from_slice(&all_m[from.clone()]);
                v[to].copy_from_slice(&all_v[from]);
            }
        }
        Ok((m, v))
    }

    /// Every rank's master weights gathered, end to end, with each
    /// parameter's range of them (what a checkpoint saves), kept where
    /// `keep` (the other ranks take part in each unit's gather and let it
    /// go: one unit's size transient). Every rank must call it.
    pub fn gather_masters(&mut self, world: &mut dyn Collective, keep: bool) -> Result<Option<Gathered>, ModelError> {
        let mut all = Vec::new();
        let mut ranges = HashMap::new();
        for u in 0..self.units.len() {
            let (values, unit_ranges) = self.gather_unit(u, world)?;
            if keep {
                let base = all.len();
                ranges.extend(unit_ranges.into_iter().map(|(id, r)| (id, base + r.start..base + r.end)));
                all.extend(values);
            }
        }
        Ok(keep.then_some((all, ranges)))
    }

    /// `model` with each unit's weights gathered in turn and put in place
    /// (cast to each parameter's dtype): the weights after a ZeRO-1/2 step,
    /// a unit's size transient. Every rank must call it.
    pub fn gather_into<AB: Backend, M: Module<AB>>(
        &mut self,
        mut model: M,
        world: &mut dyn Collective,
    ) -> Result<M, ModelError> {
        for u in 0..self.units.len() {
            let (flat, ranges) = self.gather_unit(u, world)?;
            model = model.map(&mut SetWeights { flat: &flat, ranges: &ranges, dtype: None });
        }
        Ok(model)
    }

    /// Unit `unit`'s master weights gathered from every rank of the shard
    /// group (padded), with each of its parameters' ranges. Every rank of
    /// the group must call it.
    pub fn gather_unit(&mut self, unit: usize, world: &mut dyn Collective) -> Result<Gathered, ModelError> {
        let shard_group = shard_group(&mut self.groups, world);
        let slice = &self.units[unit];
        let values = slice.gather(slice.master.clone(), shard_group)?;
        let ranges =
            slice.layout.entries.iter().zip(&slice.ids).map(|(e, id)| (*id, e.offset..e.offset + e.len)).collect();
        Ok((values, ranges))
    }

    /// The step's gradients as this rank's slice of their sum over the
    /// ranks (every unit's). With `gradients`, called after each
    /// micro-batch (the sum kept is the slice only; `grads` is emptied);
    /// with `optimizer`, once.
    pub fn scatter_gradients(
        &mut self,
        grads: &mut GradAccumulator<B>,
        collective: &mut dyn Collective,
    ) -> Result<(), ModelError> {
        let mut by_unit: Vec<Vec<(ParamId, Tensor<B, 1>)>> = (0..self.units.len()).map(|_| Vec::new()).collect();
        for (id, g) in grads.take_ordered() {
            let Some(&unit) = self.unit_of.get(&id) else {
                return Err(ModelError::Sharding(format!("a gradient for a parameter outside the layout ({id})")));
            };
            by_unit[unit].push((id, g));
        }
        for (unit, grads) in self.units.iter_mut().zip(by_unit) {
            unit.scatter(grads, collective, self.groups.as_mut())?;
        }
        Ok(())
    }

    /// Unit `unit`'s gradients (taken from `grads`; the rest stay) summed
    /// over the ranks, this rank's slice kept (`parameters`: a block's,
    /// right after its backward). Every rank must call it, in the same
    /// order of units.
    pub fn scatter_unit(
        &mut self,
        unit: usize,
        grads: &mut GradAccumulator<B>,
        collective: &mut dyn Collective,
    ) -> Result<(), ModelError> {
        let slice = &mut self.units[unit];
        let taken = grads.take_ids(&slice.ids);
        slice.scatter(taken, collective, self.groups.as_mut())
    }

    /// Forgets a step's gradients scattered so far (a step that was not
    /// applied: its sum must not carry into the next).
    pub fn discard_gradients(&mut self) {
        self.units.iter_mut().for_each(UnitSlice::discard_gradients);
    }

    /// Whether part of this step's gradient sum is held already.
    pub fn has_gradients(&self) -> bool {
        self.units.iter().any(|u| u.gradient_sum.is_some())
    }

    /// Whether gradients are reduce-scattered after every micro-batch
    /// (`gradients`, and `parameters` after every block).
    pub fn scatters_each_micro_batch(&self) -> bool {
        matches!(self.stage, Sharding::Gradients | Sharding::Parameters)
    }

    /// Clipping and AdamW on this slice at rate `lr` (`t` = steps including
    /// this one; module documentation). Every rank must call it; the new
    /// weights are then gathered ([`Self::gather_into`]; with `parameters`
    /// as each unit is used).
    pub fn step(
        &mut self,
        config: &AdamWConfig,
        lr: f64,
        t: i32,
        collective: &mut dyn Collective,
    ) -> Result<ZeroStep, ModelError> {
        let taken: Vec<Option<(Vec<f32>, Vec<f64>)>> = self.units.iter_mut().map(UnitSlice::take_gradients).collect();
        let Some(taken) = taken.into_iter().collect::<Option<Vec<_>>>() else {
            return Err(ModelError::Sharding(
                "a sharded step without gradients (scatter_gradients was not called for every unit)".into(),
            ));
        };
        let squares: f64 = taken.iter().map(|(g, _)| g.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>()).sum();
        let mut squares = [squares];
        shard_group(&mut self.groups, collective).all_reduce_sum_f64(&mut squares)?;
        let grad_norm = squares[0].sqrt();
        if !grad_norm.is_finite() {
            return Err(ModelError::NonFiniteStep { quantity: format!("the gradient norm ({grad_norm})") });
        }
        let scale = match config.clip_norm {
            Some(c) if grad_norm > c => c / grad_norm,
            _ => 1.0,
        };
        for (unit, gradients) in self.units.iter_mut().zip(taken) {
            unit.update(gradients, config, lr, t, scale);
        }
        Ok(ZeroStep { grad_norm })
    }
}
