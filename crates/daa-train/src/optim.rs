//! AdamW with global gradient-norm clipping, gradient accumulation and the
//! paper's learning-rate schedule.
//!
//! One step, for gradients `g` summed over the micro-batches of the step:
//!
//! ```text
//! g ← g · min(1, c / ‖g‖₂)            (‖·‖₂ over all parameters together)
//! m ← β₁ m + (1 − β₁) g
//! v ← β₂ v + (1 − β₂) g²
//! θ ← θ − η (λ θ + m̂ / (√v̂ + ε)),    m̂ = m / (1 − β₁ᵗ), v̂ = v / (1 − β₂ᵗ)
//! ```
//!
//! Weight decay `λ` applies to matrices only (not norms or biases), as in the
//! Hugging Face Trainer. State `m`, `v` is f32 and kept per parameter,
//! flattened, on the parameter's device. A step's gradients stay as the
//! backward pass made them (bf16 for a bf16 model) while there is one
//! micro-batch, and are summed in f32 from the second on; the norm and the
//! update widen each to f32. A parameter the model holds below f32 (bf16,
//! [`crate::precision`]) has an f32 master copy `θ` here, which the step
//! updates and the model receives rounded.

use std::collections::HashMap;

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{FloatDType, Tensor, TensorData};

use crate::error::{ModelError, read_vec};

/// AdamW hyper-parameters; defaults are the paper's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// λ (decoupled).
    pub weight_decay: f64,
    /// Global gradient-norm clip `c`; `None` disables clipping.
    pub clip_norm: Option<f64>,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, clip_norm: Some(1.0) }
    }
}

/// Linear warm-up to `peak` over `warmup` steps, then linear decay to
/// `final_fraction · peak` at `total` steps:
/// `η(s) = peak·(s+1)/warmup` for `s < warmup`, else
/// `peak·(1 − (1 − f)·(s − warmup)/(total − warmup))`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    /// Peak learning rate.
    pub peak: f64,
    /// Warm-up steps.
    pub warmup: u64,
    /// Total optimizer steps.
    pub total: u64,
    /// Final rate as a fraction of the peak.
    pub final_fraction: f64,
}

impl LrSchedule {
    /// The rate of the step with 0-based index `step`.
    pub fn at(&self, step: u64) -> f64 {
        if step < self.warmup {
            return self.peak * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1) as f64;
        let progress = ((step - self.warmup) as f64 / span).min(1.0);
        self.peak * (1.0 - (1.0 - self.final_fraction) * progress)
    }
}

/// Gradients summed over micro-batches, flattened per parameter, remembered
/// in the model's visiting order (so reductions over parameters are
/// deterministic: parameter ids are random per process).
#[derive(Debug)]
pub struct GradAccumulator<B: Backend> {
    grads: HashMap<ParamId, Tensor<B, 1>>,
    order: Vec<ParamId>,
}

impl<B: Backend> Default for GradAccumulator<B> {
    fn default() -> Self {
        Self { grads: HashMap::new(), order: Vec::new() }
    }
}

struct Collect<'a, B: AutodiffBackend> {
    from: &'a mut GradientsParams,
    into: &'a mut GradAccumulator<B::InnerBackend>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Collect<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.from.remove::<B::InnerBackend, D>(param.id) {
            self.into.add_param(param.id, g);
        }
    }
}

impl<B: Backend> GradAccumulator<B> {
    /// Adds the gradients of one backward pass.
    pub fn add<AB, M>(&mut self, model: &M, grads: <AB as AutodiffBackend>::Gradients)
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AB>,
    {
        let mut params = GradientsParams::from_grads(grads, model);
        model.visit(&mut Collect::<AB> { from: &mut params, into: self });
    }

    /// Adds `grad` (any shape and float dtype; flattened) to parameter
    /// `id`'s gradient — the first one kept in its dtype, sums in f32 —
    /// also for gradients formed outside autodiff (the fused head's `∂S/∂W`).
    pub fn add_param<const D: usize>(&mut self, id: ParamId, grad: Tensor<B, D>) {
        let n = grad.shape().num_elements();
        let grad = grad.reshape([n]);
        let sum = match self.grads.remove(&id) {
            Some(acc) => acc.cast(FloatDType::F32) + grad.cast(FloatDType::F32),
            None => {
                self.order.push(id);
                grad
            }
        };
        self.grads.insert(id, sum);
    }

    /// Puts the parameters in `order` (those it does not name keep their
    /// place after them), so that reductions over parameters do not depend
    /// on which backward pass saw a parameter first.
    pub fn reorder(&mut self, order: &[ParamId]) {
        let rank = |id: &ParamId| order.iter().position(|o| o == id).unwrap_or(order.len());
        self.order.sort_by_key(rank);
    }

    /// `‖g‖₂` over every parameter: each parameter's `Σ g²` in f32 on the
    /// device, all of them read back together (one synchronisation per step,
    /// not one per parameter: 291 for a 7B Llama), summed in f64 in the
    /// model's visiting order.
    pub fn global_norm(&self) -> Result<f64, ModelError> {
        let squares: Vec<Tensor<B, 1>> = self
            .order
            .iter()
            .filter_map(|id| self.grads.get(id))
            .map(|g| g.clone().cast(FloatDType::F32).powi_scalar(2).sum())
            .collect();
        if squares.is_empty() {
            return Ok(0.0);
        }
        let values: Vec<f32> = read_vec(Tensor::cat(squares, 0), "the gradient norms")?;
        Ok(values.iter().map(|&v| f64::from(v)).sum::<f64>().sqrt())
    }

    /// Whether no gradient has been added.
    pub fn is_empty(&self) -> bool {
        self.grads.is_empty()
    }

    /// Every gradient, in the model's visiting order, the accumulator
    /// emptied: a sharded step reads them one group at a time and lets each
    /// go once read.
    pub fn take_ordered(&mut self) -> Vec<(ParamId, Tensor<B, 1>)> {
        let mut grads: Vec<(ParamId, Tensor<B, 1>)> = std::mem::take(&mut self.grads).into_iter().collect();
        let order = std::mem::take(&mut self.order);
        grads.sort_by_key(|(id, _)| order.iter().position(|o| o == id));
        grads
    }

    /// The gradients of `ids` that are present, in `ids`' order, taken out
    /// of the accumulator (the others stay): one unit's, to reduce-scatter
    /// as soon as its backward is done.
    pub fn take_ids(&mut self, ids: &[ParamId]) -> Vec<(ParamId, Tensor<B, 1>)> {
        let taken: Vec<(ParamId, Tensor<B, 1>)> =
            ids.iter().filter_map(|id| self.grads.remove(id).map(|g| (*id, g))).collect();
        self.order.retain(|id| self.grads.contains_key(id));
        taken
    }

    /// Every parameter's flattened gradient, in the model's visiting order:
    /// where a data-parallel all-reduce reads and writes them.
    pub fn gradients_mut(&mut self) -> impl Iterator<Item = (ParamId, &mut Tensor<B, 1>)> {
        let order = &self.order;
        let mut grads: Vec<(ParamId, &mut Tensor<B, 1>)> = self.grads.iter_mut().map(|(id, g)| (*id, g)).collect();
        grads.sort_by_key(|(id, _)| order.iter().position(|o| o == id));
        grads.into_iter()
    }
}

/// First and second moments of one parameter, flattened.
#[derive(Debug, Clone)]
pub struct Moments<B: Backend> {
    /// `m`.
    pub m: Tensor<B, 1>,
    /// `v`.
    pub v: Tensor<B, 1>,
}

/// AdamW state: step count, moments per parameter and the f32 master
/// weights of parameters held below f32.
#[derive(Debug)]
pub struct AdamW<B: Backend> {
    /// Hyper-parameters.
    pub config: AdamWConfig,
    /// Steps taken so far (`t` of the bias correction is `steps + 1` during a step).
    pub steps: u64,
    /// Moments per parameter.
    pub moments: HashMap<ParamId, Moments<B>>,
    /// f32 master weights, flattened, of the parameters the model holds in
    /// a lower precision (empty when it trains in f32).
    pub masters: HashMap<ParamId, Tensor<B, 1>>,
}

/// One parameter's AdamW moments `(m, v)` on the host, flattened.
pub type MomentValues = (Vec<f32>, Vec<f32>);

/// What a step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// `‖g‖₂` before clipping.
    pub grad_norm: f64,
    /// Learning rate used.
    pub lr: f64,
}

struct Update<'a, B: AutodiffBackend> {
    grads: &'a mut HashMap<ParamId, Tensor<B::InnerBackend, 1>>,
    moments: &'a mut HashMap<ParamId, Moments<B::InnerBackend>>,
    masters: &'a mut HashMap<ParamId, Tensor<B::InnerBackend, 1>>,
    decays: &'a HashMap<ParamId, bool>,
    config: AdamWConfig,
    lr: f64,
    scale: f64,
    t: i32,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Update<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(g) = self.grads.remove(&id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let c = self.config;
        let g = g.cast(FloatDType::F32);
        let shape = tensor.shape();
        let dtype = FloatDType::from(tensor.dtype());
        let master = self.masters.remove(&id);
        let keeps_master = master.is_some();
        let theta = match master {
            Some(theta) => theta,
            None => tensor.inner().reshape([shape.num_elements()]).cast(FloatDType::F32),
        };
        let (m, v) = match self.moments.remove(&id) {
            Some(Moments { m, v }) => (m, v),
            None => (g.zeros_like(), g.zeros_like()),
        };
        let decay = if self.decays.get(&id).copied().unwrap_or(true) { c.weight_decay } else { 0.0 };
        let step = crate::fused::adamw::AdamWStep::new(&c, self.lr, decay, self.scale, self.t);
        let (theta, m, v) = crate::fused::adamw::update(theta, g, m, v, step);
        self.moments.insert(id, Moments { m, v });
        if keeps_master {
            self.masters.insert(id, theta.clone());
        }
        let updated = Tensor::<B, D>::from_inner(theta.reshape(shape).cast(dtype)).require_grad();
        Param::from_mapped_value(id, updated, mapper)
    }
}

/// Replaces the parameters named by id with f32 values from one flat
/// vector (each parameter's range of it, flattened in burn's layout), cast
/// to `dtype` or to the parameter's own, trainable again as before: a
/// sharded step's gathered weights, without a copy per parameter.
#[derive(Debug)]
pub struct SetWeights<'a> {
    /// The values of every parameter, end to end.
    pub flat: &'a [f32],
    /// Each parameter's range of `flat`.
    pub ranges: &'a HashMap<ParamId, std::ops::Range<usize>>,
    /// The dtype they take (`None`: the parameter's).
    pub dtype: Option<FloatDType>,
}

impl<B: Backend> ModuleMapper<B> for SetWeights<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(range) = self.ranges.get(&id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let (shape, device) = (tensor.shape(), tensor.device());
        let dtype = self.dtype.unwrap_or_else(|| FloatDType::from(tensor.dtype()));
        let requires_grad = tensor.is_require_grad();
        let values = &self.flat[range.clone()];
        let value = Tensor::<B, 1>::from_data(TensorData::new(values.to_vec(), [values.len()]), &device)
            .cast(FloatDType::F32)
            .reshape(shape)
            .cast(dtype);
        Param::from_mapped_value(id, value.set_require_grad(requires_grad), mapper)
    }
}

struct Masters<'a, B: Backend> {
    masters: &'a HashMap<ParamId, Tensor<B, 1>>,
}

impl<B: Backend> ModuleMapper<B> for Masters<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let value = match self.masters.get(&id) {
            Some(master) => master.clone().reshape(tensor.shape()),
            None => tensor,
        };
        Param::from_mapped_value(id, value, mapper)
    }
}

impl<B: Backend> AdamW<B> {
    /// A fresh optimizer.
    pub fn new(config: AdamWConfig) -> Self {
        Self { config, steps: 0, moments: HashMap::new(), masters: HashMap::new() }
    }

    /// Keeps `value` (any float dtype; widened to f32, flattened) as the
    /// master copy of parameter `id`, which the model holds in a lower
    /// precision from now on.
    pub fn keep_master<const D: usize>(&mut self, id: ParamId, value: Tensor<B, D>) {
        let n = value.shape().num_elements();
        self.masters.insert(id, value.reshape([n]).cast(FloatDType::F32));
    }

    /// `model` with every parameter that has a master copy replaced by it
    /// (f32, the parameter's shape): what is saved, so that a checkpoint
    /// never holds the rounded weights only.
    pub fn with_masters<M: burn::module::Module<B>>(&self, model: M) -> M {
        if self.masters.is_empty() {
            return model;
        }
        model.map(&mut Masters { masters: &self.masters })
    }

    /// Applies one step with the accumulated gradients (consumed) at rate
    /// `lr`, their global norm `grad_norm` (finite: see
    /// [`GradAccumulator::global_norm`]) deciding the clipping. `decays` says
    /// per parameter whether weight decay applies.
    pub fn update<AB, M>(
        &mut self,
        model: M,
        mut grads: GradAccumulator<B>,
        lr: f64,
        grad_norm: f64,
        decays: &HashMap<ParamId, bool>,
    ) -> (M, StepReport)
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AB>,
    {
        let scale = match self.config.clip_norm {
            Some(c) if grad_norm > c => c / grad_norm,
            _ => 1.0,
        };
        self.steps += 1;
        let t = i32::try_from(self.steps).unwrap_or(i32::MAX);
        let mut update = Update::<AB> {
            grads: &mut grads.grads,
            moments: &mut self.moments,
            masters: &mut self.masters,
            decays,
            config: self.config,
            lr,
            scale,
            t,
        };
        let model = model.map(&mut update);
        (model, StepReport { grad_norm, lr })
    }

    /// The state of one parameter as f32 vectors `(m, v)`, if it has any;
    /// `name` is for the error.
    pub fn export(&self, id: ParamId, name: &str) -> Result<Option<MomentValues>, ModelError> {
        let Some(Moments { m, v }) = self.moments.get(&id) else {
            return Ok(None);
        };
        Ok(Some((
            read_vec(m.clone(), &format!("{name}.exp_avg"))?,
            read_vec(v.clone(), &format!("{name}.exp_avg_sq"))?,
        )))
    }

    /// Restores the state of one parameter from f32 vectors.
    pub fn import(&mut self, id: ParamId, m: Vec<f32>, v: Vec<f32>, device: &B::Device) -> Result<(), ModelError> {
        if m.len() != v.len() {
            return Err(ModelError::OptimizerState(format!("m has {} values, v has {}", m.len(), v.len())));
        }
        let n = m.len();
        self.moments.insert(
            id,
            Moments {
                m: Tensor::from_data(TensorData::new(m, [n]), device),
                v: Tensor::from_data(TensorData::new(v, [n]), device),
            },
        );
        Ok(())
    }
}
