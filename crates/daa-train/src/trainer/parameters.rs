//! The trainer's side of sharded parameters (ZeRO-3,
//! [`crate::distributed::parameter_units`]): the model's trained weights let
//! go once sharded, unit 0 (embedding, final norm, head) gathered for each
//! step, the blocks gathered and scattered inside each micro-batch's pass.

use std::collections::{HashMap, HashSet};

use burn::module::{Module, ParamId};
use burn::tensor::backend::{AutodiffBackend, Backend};

use super::{GradientReducer, Trainer, sharded_collective};
use crate::distributed::ZeroState;
use crate::distributed::parameter_units::{Materialise, Release, ShardedBlocks, materialise_unit};
use crate::error::ModelError;
use crate::model::{CausalLm, ParamKind};
use crate::optim::GradAccumulator;
use crate::plan::Sharding;

impl<B: AutodiffBackend> Trainer<B> {
    /// Whether the parameters are sharded (ZeRO-3).
    pub(super) fn shards_parameters(&self) -> bool {
        self.zero.as_ref().is_some_and(|z| z.stage() == Sharding::Parameters)
    }

    /// Lets go of every trained weight of the model (their values live in
    /// the ranks' slices from now on), recording their shapes.
    pub(super) fn release_parameters(&mut self) {
        let mut ids = HashSet::new();
        self.model().visit_trainable(&mut |_: &str, p: ParamKind<'_, B>| {
            ids.insert(p.id());
        });
        self.release(&ids);
    }

    fn release(&mut self, ids: &HashSet<ParamId>) {
        let model = self.model.take().expect("the model is put back after every step");
        self.model = Some(model.map(&mut Release { ids, shapes: &mut self.parameter_shapes }));
    }

    /// ZeRO-3: unit 0 (embedding, final norm, head) gathered into the model
    /// for a step (every rank calls it); nothing at other stages.
    pub(super) fn gather_outer_unit(&mut self) -> Result<(), ModelError> {
        if !self.shards_parameters() {
            return Ok(());
        }
        let zero = self.zero.as_mut().expect("sharded parameters have a state");
        let world = sharded_collective(self.reducer.as_mut())?;
        // A clone (shared tensors): a failed gather leaves the model in place.
        let model = self.model.clone().expect("the model is put back after every step");
        self.model = Some(materialise_unit(model, 0, zero, world, &self.parameter_shapes)?);
        Ok(())
    }

    /// ZeRO-3: unit 0 let go after a step's passes.
    pub(super) fn release_outer_unit(&mut self) {
        if let Some(zero) = self.zero.as_ref().filter(|z| z.stage() == Sharding::Parameters) {
            let ids: HashSet<ParamId> = zero.unit_ids(0).iter().copied().collect();
            self.release(&ids);
        }
    }

    /// The most micro-batches any rank has in this step (`mine` on this
    /// one): with sharded parameters every rank gathers and scatters as
    /// often as that rank.
    pub(super) fn most_micro_batches(&mut self, mine: usize) -> Result<usize, ModelError> {
        let collective = sharded_collective(self.reducer.as_mut())?;
        let mut counts = vec![0f64; collective.world_size()];
        counts[collective.rank()] = mine as f64;
        collective.all_reduce_sum_f64(&mut counts)?;
        Ok(counts.iter().fold(0.0f64, |a, &b| a.max(b)) as usize)
    }

    /// `model` with the gathered weights of every unit where parameters
    /// are sharded (every rank must call it), else as it is.
    pub(super) fn with_gathered_parameters(
        &mut self,
        model: CausalLm<B::InnerBackend>,
    ) -> Result<CausalLm<B::InnerBackend>, ModelError> {
        if !self.shards_parameters() {
            return Ok(model);
        }
        let zero = self.zero.as_mut().expect("sharded parameters have a state");
        let world = sharded_collective(self.reducer.as_mut())?;
        let (flat, ranges) = zero.gather_masters(world, true)?.expect("kept where asked");
        Ok(model.map(&mut Materialise { flat: &flat, ranges: &ranges, shapes: &self.parameter_shapes, dtype: None }))
    }
}

/// ZeRO-3: a micro-batch's blocks gathered from and scattered to the
/// ranks' slices; `None` at other stages.
pub(super) fn sharded_blocks<'a, B: Backend>(
    zero: &'a mut Option<ZeroState<B>>,
    reducer: &'a mut dyn GradientReducer<B>,
    shapes: &'a HashMap<ParamId, Vec<usize>>,
    blocks: usize,
) -> Result<Option<ShardedBlocks<'a, B>>, ModelError> {
    match zero.as_mut().filter(|z| z.stage() == Sharding::Parameters) {
        Some(zero) => Ok(Some(ShardedBlocks::new(zero, sharded_collective(reducer)?, shapes, blocks))),
        None => Ok(None),
    }
}

/// A micro-batch this rank does not have (or whose pairs failed before
/// their pass), run as every other rank runs one: zeros scattered for
/// every unit, the gathers taken part in; the ZeRO-2 scatter of `grads`
/// at other stages.
pub(super) fn idle_micro_batch<B: Backend>(
    zero: &mut Option<ZeroState<B>>,
    reducer: &mut dyn GradientReducer<B>,
    shapes: &HashMap<ParamId, Vec<usize>>,
    blocks: usize,
    grads: &mut GradAccumulator<B>,
) -> Result<(), ModelError> {
    match sharded_blocks(zero, reducer, shapes, blocks)? {
        Some(sharded) => sharded.finish(grads),
        None => super::scatter_micro_batch(zero, reducer, grads),
    }
}
