//! ZeRO-3 (`train.sharding = "parameters"`): the trained weights live only
//! as each rank's slices of its units ([`ZeroState`]); the model a rank
//! holds keeps an empty placeholder of every one ([`Release`]), and a
//! unit's weights are gathered from the ranks' slices right before they
//! are used ([`Materialise`]):
//!
//! ```text
//! step start     gather unit 0 (embedding, final norm, head), kept for the step
//! forward        for block b = 0 … L−1: gather, run without a graph (activation checkpointing), let go
//! backward       for block b = L−1 … 0: gather, recompute with autodiff, back-propagate,
//!                let go, reduce-scatter its gradients (this rank keeps its slice of their sum)
//! micro-batch    reduce-scatter unit 0's gradients
//! step end       norm, AdamW on every unit's slice; unit 0 let go
//! ```
//!
//! A rank holds one block's weights (and gradients) at a time besides unit
//! 0, plus its slices: `(16·P/W + 4·P_block + …)` bytes instead of
//! `16·P/W + 4·P` with ZeRO-2 (f32 weights). Every rank gathers and scatters
//! the same units in the same order, also in a micro-batch it does not have
//! (fewer pairs than another rank) or whose pairs failed
//! ([`ShardedBlocks::finish`]).

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{FloatDType, Tensor, TensorData};

use super::collective::Collective;
use super::flat_layout::FlatLayout;
use super::unit_slice::slice_values;
use super::zero::ZeroState;
use crate::backward::BlockWeights;
use crate::error::ModelError;
use crate::model::{CausalLm, DecoderLayer, ParamKind};
use crate::optim::GradAccumulator;

/// The unit of the parameter named `name`: `1 + b` for a parameter of
/// decoder block `b` (`model.layers.{b}.…`), 0 for the rest (embedding,
/// final norm, head).
pub fn unit_of_name(name: &str) -> usize {
    name.strip_prefix("model.layers.")
        .and_then(|rest| rest.split('.').next())
        .and_then(|b| b.parse::<usize>().ok())
        .map_or(0, |b| b + 1)
}

/// Replaces the parameters `ids` by empty placeholders (dtype and whether
/// they train kept), recording each one's shape in `shapes`.
#[derive(Debug)]
pub struct Release<'a> {
    /// The parameters to let go.
    pub ids: &'a HashSet<ParamId>,
    /// Their shapes, recorded for [`Materialise`].
    pub shapes: &'a mut HashMap<ParamId, Vec<usize>>,
}

impl<B: Backend> ModuleMapper<B> for Release<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        // Not one of them, or let go already (its shape is recorded).
        if !self.ids.contains(&id) || (tensor.shape().num_elements() == 0 && self.shapes.contains_key(&id)) {
            return Param::from_mapped_value(id, tensor, mapper);
        }
        self.shapes.insert(id, tensor.dims().to_vec());
        let (dtype, device, trains) = (FloatDType::from(tensor.dtype()), tensor.device(), tensor.is_require_grad());
        // (`reshape` reads a 0 as "keep this dimension": built empty directly.)
        let placeholder = Tensor::<B, D>::from_data(TensorData::new(Vec::<f32>::new(), [0; D]), &device)
            .cast(dtype)
            .set_require_grad(trains);
        Param::from_mapped_value(id, placeholder, mapper)
    }
}

/// Puts gathered f32 values (`flat`, each parameter's range in `ranges`,
/// its shape in `shapes`) in place of the placeholders, in each
/// placeholder's dtype, trainable as it was.
#[derive(Debug)]
pub struct Materialise<'a> {
    /// A unit's (or every unit's) gathered values.
    pub flat: &'a [f32],
    /// Each parameter's range of `flat`.
    pub ranges: &'a HashMap<ParamId, Range<usize>>,
    /// Each parameter's shape.
    pub shapes: &'a HashMap<ParamId, Vec<usize>>,
    /// The dtype they take (`None`: the placeholder's).
    pub dtype: Option<FloatDType>,
}

impl<B: Backend> ModuleMapper<B> for Materialise<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let (Some(range), Some(shape)) = (self.ranges.get(&id), self.shapes.get(&id)) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let Ok(dims) = <[usize; D]>::try_from(shape.as_slice()) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let dtype = self.dtype.unwrap_or_else(|| FloatDType::from(tensor.dtype()));
        let (device, trains) = (tensor.device(), tensor.is_require_grad());
        let values = &self.flat[range.clone()];
        let value = Tensor::<B, 1>::from_data(TensorData::new(values.to_vec(), [values.len()]), &device)
            .reshape(dims)
            .cast(dtype)
            .set_require_grad(trains);
        Param::from_mapped_value(id, value, mapper)
    }
}

/// `module` with unit `unit`'s weights gathered from every rank's slice in
/// place of its placeholders (in their dtype). Every rank of the shard
/// group must call it.
pub fn materialise_unit<B: Backend, AB: Backend, M: Module<AB>>(
    module: M,
    unit: usize,
    zero: &mut ZeroState<B>,
    world: &mut dyn Collective,
    shapes: &HashMap<ParamId, Vec<usize>>,
) -> Result<M, ModelError> {
    let (flat, ranges) = zero.gather_unit(unit, world)?;
    Ok(module.map(&mut Materialise { flat: &flat, ranges: &ranges, shapes, dtype: None }))
}

/// ZeRO-3 at load time: each decoder block, as soon as it is loaded, cut to
/// this rank's slice of its unit (f32 values, on the host) and let go, so
/// the whole model never exists on one device (a 35B model's blocks one at
/// a time); [`crate::Trainer::with_presliced_blocks`] builds the rank's
/// state from the slices. The block must be loaded in f32 (the slices are
/// the f32 masters).
#[derive(Debug, Default)]
pub struct PreslicedBlocks {
    /// This rank's place in the shard group: `(slice, slices)`.
    pub place: (usize, usize),
    /// Per unit (`1 + block`): this rank's slice of its f32 values.
    pub slices: HashMap<usize, Vec<f32>>,
    /// Each parameter let go: its shape as burn holds it.
    pub shapes: HashMap<ParamId, Vec<usize>>,
    /// Each parameter let go: its shape in files.
    pub file_shapes: HashMap<ParamId, Vec<usize>>,
}

impl PreslicedBlocks {
    /// Slices for rank `slice` of a shard group of `slices` ranks.
    pub fn new(slice: usize, slices: usize) -> Self {
        Self { place: (slice, slices.max(1)), ..Self::default() }
    }

    /// Keeps this rank's slice of block `block`'s unit and returns the block
    /// with placeholders in place of its weights.
    pub fn take<B: Backend>(&mut self, block: usize, layer: DecoderLayer<B>) -> Result<DecoderLayer<B>, ModelError> {
        let (mut entries, mut values, mut ids) = (Vec::new(), Vec::new(), HashSet::new());
        layer.visit(&format!("model.layers.{block}"), &mut |name: &str, p: ParamKind<'_, B>| {
            entries.push((name.to_string(), p.file_shape(), p.decays()));
            values.push(p.flat());
            ids.insert(p.id());
            self.file_shapes.insert(p.id(), p.file_shape());
        });
        let layout = FlatLayout::new(entries, self.place.1);
        let slice = slice_values(&layout, self.place.0, &|entry| values.get(entry).cloned(), "loading")?;
        self.slices.insert(block + 1, slice.unwrap_or_else(|| vec![0.0; layout.shard_len()]));
        drop(values);
        Ok(layer.map(&mut Release { ids: &ids, shapes: &mut self.shapes }))
    }
}

/// The decoder blocks of one micro-batch's pass with sharded parameters:
/// each gathered when the pass asks for it, its gradients reduce-scattered
/// when its backward is done (module documentation). Counts what it did so
/// that [`Self::finish`] can complete the sequence every rank runs.
pub struct ShardedBlocks<'a, B: Backend> {
    zero: &'a mut ZeroState<B>,
    world: &'a mut dyn Collective,
    shapes: &'a HashMap<ParamId, Vec<usize>>,
    blocks: usize,
    /// Blocks gathered for the forward pass.
    forward: usize,
    /// Blocks whose backward is done (from the last).
    backward: usize,
    /// A block gathered for its backward, not done yet.
    pending: bool,
}

impl<B: Backend> std::fmt::Debug for ShardedBlocks<'_, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardedBlocks")
            .field("blocks", &self.blocks)
            .field("forward", &self.forward)
            .field("backward", &self.backward)
            .finish_non_exhaustive()
    }
}

impl<'a, B: Backend> ShardedBlocks<'a, B> {
    /// A micro-batch's pass over `blocks` decoder blocks (units `1 ..=
    /// blocks` of `zero`).
    pub fn new(
        zero: &'a mut ZeroState<B>,
        world: &'a mut dyn Collective,
        shapes: &'a HashMap<ParamId, Vec<usize>>,
        blocks: usize,
    ) -> Self {
        Self { zero, world, shapes, blocks, forward: 0, backward: 0, pending: false }
    }

    /// Completes the micro-batch as every rank runs it — the gathers and
    /// reduce-scatters the pass did not reach (a rank without this
    /// micro-batch, or whose pairs failed, sends zeros) — then
    /// reduce-scatters unit 0's gradients from `grads`.
    pub fn finish(mut self, grads: &mut GradAccumulator<B>) -> Result<(), ModelError> {
        while self.forward < self.blocks {
            self.zero.gather_unit(self.forward + 1, self.world)?;
            self.forward += 1;
        }
        while self.backward < self.blocks {
            let block = self.blocks - 1 - self.backward;
            if !self.pending {
                self.zero.gather_unit(block + 1, self.world)?;
            }
            self.pending = false;
            self.zero.scatter_unit(block + 1, grads, self.world)?;
            self.backward += 1;
        }
        self.zero.scatter_unit(0, grads, self.world)
    }
}

impl<AB: AutodiffBackend> BlockWeights<AB> for ShardedBlocks<'_, AB::InnerBackend> {
    fn block(&mut self, model: &CausalLm<AB>, i: usize) -> Result<DecoderLayer<AB>, ModelError> {
        let expected = match self.forward < self.blocks {
            true => self.forward,
            false => self.blocks - 1 - self.backward,
        };
        if i != expected || self.pending || i >= model.layers.len() {
            return Err(ModelError::Sharding(format!(
                "block {i} asked for out of order (block {expected} expected): every rank must gather the same blocks \
                 in the same order"
            )));
        }
        let gathered = materialise_unit(model.layers[i].clone(), i + 1, self.zero, self.world, self.shapes)?;
        match self.forward < self.blocks {
            true => self.forward += 1,
            false => self.pending = true,
        }
        Ok(gathered)
    }

    fn block_done(&mut self, i: usize, grads: &mut GradAccumulator<AB::InnerBackend>) -> Result<(), ModelError> {
        if !self.pending || i != self.blocks - 1 - self.backward {
            return Err(ModelError::Sharding(format!("block {i}'s backward ended out of order")));
        }
        self.pending = false;
        self.zero.scatter_unit(i + 1, grads, self.world)?;
        self.backward += 1;
        Ok(())
    }
}
