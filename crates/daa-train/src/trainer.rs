//! One optimizer step, the same for every host: `daa train`, the testbed,
//! the browser and data-parallel ranks all call [`Trainer::step`].
//!
//! A step over `P` pairs (split into micro-batches of `m`):
//! 1. per micro-batch: one forward pass over the chosen and rejected
//!    sequences, `π` at the completion positions, the catalog loss and its
//!    surrogate (see [`crate::objective`]), backward, gradients added;
//! 2. **the data-parallel reduction point**: [`GradientReducer::reduce`]
//!    (a no-op with one rank);
//! 3. global-norm clipping and AdamW (see [`crate::optim`]) at the
//!    schedule's rate for this step.
//!
//! No files, no threads: this module builds for `wasm32-unknown-unknown`.

use std::collections::HashMap;

use burn::module::{AutodiffModule, Module, ParamId};
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use daa_core::TokenStatsParams;
use daa_core::preference::{PairLogps, PairLoss, PreferenceLossParams};
use serde::{Deserialize, Serialize};

use crate::backward::{BlockWeights, MemoryOptions, ModelBlocks, weighted_backward_with};
use crate::batch::{BatchLayout, Sequence, SequencePair, TokenBatch};
use crate::distributed::parameter_units::{Materialise, PreslicedBlocks};
use crate::distributed::{Collective, FlatLayout, ShardGroups, StepFigures, ZeroState};
use crate::entropy_floor::EntropyFloor;
use crate::error::{ModelError, read_vec};
use crate::eval::{ChosenLogits, EvalReport, StatsSums, evaluate, evaluate_on_ranks};
use crate::model::{CausalLm, ParamKind};
use crate::objective::{PairWeights, pair_weights};
use crate::optim::{AdamW, AdamWConfig, GradAccumulator, LrSchedule, SetWeights, StepReport};
use crate::plan::Sharding;
use crate::precision::Precision;
use crate::score::{PairScore, pair_batch_in, score_batch, score_pairs};
use parameters::{idle_micro_batch, sharded_blocks};

mod parameters;

/// What a [`Trainer`] needs besides the model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainerOptions {
    /// The catalog loss and NLL term.
    pub loss: PreferenceLossParams,
    /// AdamW hyper-parameters.
    pub optimizer: AdamWConfig,
    /// The learning-rate schedule over the whole run.
    pub schedule: LrSchedule,
    /// Pairs per forward pass.
    pub micro_batch_size: usize,
    /// Token id of padding.
    pub pad_id: u32,
    /// Fused head, activation checkpointing.
    pub memory: MemoryOptions,
    /// The dtype the model trains in (bf16: f32 masters in the optimizer).
    pub precision: Precision,
}

/// Where the reference log-probabilities `ρ` come from.
#[derive(Debug)]
pub enum ReferencePolicy<B: Backend> {
    /// Each [`StepPair`] carries its reference scores (computed once and
    /// cached, as `daa train` does by default).
    Given,
    /// A frozen copy of the initial model scores each micro-batch (boxed:
    /// the model is large beside `Given`).
    Frozen(Box<CausalLm<B>>),
    /// The policy with its LoRA adapters switched off scores each
    /// micro-batch: the frozen base model itself, no copy
    /// ([`CausalLm::without_adapters`]). Only for a model with adapters.
    AdapterOff,
}

/// One pair of a step, with its reference scores when the reference policy
/// is [`ReferencePolicy::Given`].
#[derive(Debug, Clone, Copy)]
pub struct StepPair<'a> {
    /// The two sequences.
    pub sequences: &'a SequencePair,
    /// `(ρ_w, ρ_l)` and the token counts, if known.
    pub reference: Option<PairScore>,
}

/// Combines the gradients of data-parallel ranks. Called once per optimizer
/// step, after every micro-batch's gradients are accumulated and before
/// clipping: the place for an all-reduce (or a reduce-scatter, with sharded
/// optimizer state).
pub trait GradientReducer<B: Backend>: std::fmt::Debug {
    /// Ranks whose gradients [`Self::reduce`] sums (each rank steps on its
    /// own pairs; the loss is normalised by the pairs, or tokens, of all
    /// ranks together: [`Self::sum_counts`]).
    fn world_size(&self) -> usize {
        1
    }

    /// Replaces every gradient by its sum over the ranks.
    fn reduce(&mut self, gradients: &mut GradAccumulator<B>) -> Result<(), ModelError>;

    /// Replaces each of `counts` (this rank's pairs, tokens or scored
    /// positions of the step) by its sum over the ranks: called before the
    /// step's loss is normalised, so ranks holding different numbers of
    /// pairs or tokens still step on the mean over all of them. The default
    /// serves one rank; a reducer of several ranks must sum.
    fn sum_counts(&mut self, counts: &mut [f64]) -> Result<(), ModelError> {
        let _ = counts;
        if self.world_size() == 1 {
            return Ok(());
        }
        Err(ModelError::Batch(format!(
            "{self:?} reduces gradients over {} ranks but cannot sum the step's counts",
            self.world_size()
        )))
    }

    /// The ranks' collective, for the exchanges besides the gradient
    /// reduction (sharded optimizer state, the step's metrics); `None` for
    /// one rank.
    fn collective(&mut self) -> Option<&mut dyn Collective> {
        None
    }
}

/// One process, one device: nothing to reduce.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleRank;

impl<B: Backend> GradientReducer<B> for SingleRank {
    fn reduce(&mut self, _gradients: &mut GradAccumulator<B>) -> Result<(), ModelError> {
        Ok(())
    }
}

/// The collective sharded optimizer state exchanges through (a sharded
/// trainer always has one: [`Trainer::with_sharding`] requires it).
fn sharded_collective<B: Backend>(reducer: &mut dyn GradientReducer<B>) -> Result<&mut dyn Collective, ModelError> {
    reducer.collective().ok_or_else(|| ModelError::Sharding("sharded optimizer state without a collective".into()))
}

/// ZeRO-2: a micro-batch's gradients reduce-scattered into this rank's slice
/// of the step's sum (nothing at other stages).
fn scatter_micro_batch<B: Backend>(
    zero: &mut Option<ZeroState<B>>,
    reducer: &mut dyn GradientReducer<B>,
    grads: &mut GradAccumulator<B>,
) -> Result<(), ModelError> {
    let Some(zero) = zero.as_mut().filter(|z| z.scatters_each_micro_batch()) else { return Ok(()) };
    let collective = sharded_collective(reducer)?;
    zero.scatter_gradients(grads, collective)
}

/// What one optimizer step did, as `metrics.jsonl` records it (means over
/// the step's pairs).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Optimizer steps completed, this one included.
    pub step: u64,
    /// Learning rate used (TRL's name; `lr` before).
    #[serde(rename = "learning_rate", alias = "lr")]
    pub lr: f64,
    /// Mean loss.
    pub loss: f64,
    /// `‖g‖₂` before clipping.
    pub grad_norm: f64,
    /// Mean implicit reward of the chosen completions.
    #[serde(rename = "rewards/chosen")]
    pub chosen_reward: f64,
    /// Mean implicit reward of the rejected completions.
    #[serde(rename = "rewards/rejected")]
    pub rejected_reward: f64,
    /// Mean reward margin (TRL's name; `rewards/margin` before).
    #[serde(rename = "rewards/margins", alias = "rewards/margin")]
    pub margin: f64,
    /// Fraction of pairs whose chosen reward exceeds the rejected one
    /// (TRL's name; `rewards/accuracy` before).
    #[serde(rename = "rewards/accuracies", alias = "rewards/accuracy")]
    pub accuracy: f64,
    /// Mean `π_w` (nats).
    #[serde(rename = "logps/chosen")]
    pub chosen_logps: f64,
    /// Mean `π_l` (nats).
    #[serde(rename = "logps/rejected")]
    pub rejected_logps: f64,
    /// Mean `π_w / n_w`.
    #[serde(rename = "logps/chosen_per_token")]
    pub chosen_logps_per_token: f64,
    /// Mean `π_l / n_l`.
    #[serde(rename = "logps/rejected_per_token")]
    pub rejected_logps_per_token: f64,
    /// TRL's `logits/chosen`: the policy's logits `z_t,v` averaged over the
    /// vocabulary and the chosen completions' positions,
    /// `Σ_t Σ_v z_t,v / (V · Σ n_w)`, before the update; `None` in records
    /// written before daa logged it.
    #[serde(rename = "logits/chosen", default, skip_serializing_if = "Option::is_none")]
    pub chosen_logits: Option<f64>,
    /// TRL's `logits/rejected`: the same over the rejected completions' positions.
    #[serde(rename = "logits/rejected", default, skip_serializing_if = "Option::is_none")]
    pub rejected_logits: Option<f64>,
    /// Pairs in the step.
    pub pairs: usize,
    /// Tokens of the policy's forward passes (prompt, completion, both sides).
    pub tokens: usize,
    /// Mean top-k entropy of the next-token distributions at the chosen
    /// completions' positions of this step's batch, before the update
    /// ([`Trainer::step_with_stats`]; bits, renormalised top-k).
    #[serde(rename = "train/topk_entropy", default, skip_serializing_if = "Option::is_none")]
    pub topk_entropy: Option<f64>,
    /// Mean top-k probability mass at the same positions.
    #[serde(rename = "train/topk_mass", default, skip_serializing_if = "Option::is_none")]
    pub topk_mass: Option<f64>,
    /// Mean full-vocabulary entropy at the same positions (nats).
    #[serde(rename = "train/entropy", default, skip_serializing_if = "Option::is_none")]
    pub entropy: Option<f64>,
    /// The top-k entropy floor term of the step's objective,
    /// `μ · (1/T) Σ_t relu(h − H_{b,t})`, when the floor is on
    /// ([`Trainer::set_entropy_floor`]); not part of `loss`.
    #[serde(rename = "loss/entropy_floor", default, skip_serializing_if = "Option::is_none")]
    pub entropy_floor: Option<f64>,
}

impl StepRecord {
    /// The record of step `step` from its update (`report`), each pair's
    /// inputs and loss, the tokens of its forward passes and, when asked
    /// for, the sums of its batch's top-k statistics: means over the pairs
    /// (and over the statistics' rows).
    pub fn of_pairs(
        step: u64,
        report: &StepReport,
        inputs: &[PairLogps],
        losses: &[PairLoss],
        tokens: usize,
        stats: Option<&StatsSums>,
    ) -> Self {
        let n = losses.len() as f64;
        let mean = |f: &dyn Fn(usize) -> f64| (0..losses.len()).map(f).sum::<f64>() / n;
        let per_row = |sum: &dyn Fn(&StatsSums) -> f64| stats.map(|s| sum(s) / s.rows.max(1) as f64);
        StepRecord {
            step,
            lr: report.lr,
            loss: mean(&|i| losses[i].loss),
            grad_norm: report.grad_norm,
            chosen_reward: mean(&|i| losses[i].chosen_reward),
            rejected_reward: mean(&|i| losses[i].rejected_reward),
            margin: mean(&|i| losses[i].margin),
            accuracy: mean(&|i| losses[i].accuracy),
            chosen_logps: mean(&|i| inputs[i].policy_chosen),
            rejected_logps: mean(&|i| inputs[i].policy_rejected),
            chosen_logps_per_token: mean(&|i| inputs[i].policy_chosen / inputs[i].chosen_tokens),
            rejected_logps_per_token: mean(&|i| inputs[i].policy_rejected / inputs[i].rejected_tokens),
            chosen_logits: None,
            rejected_logits: None,
            pairs: losses.len(),
            tokens,
            topk_entropy: per_row(&|s| s.topk_entropy),
            topk_mass: per_row(&|s| s.topk_mass),
            entropy: per_row(&|s| s.entropy),
            entropy_floor: None,
        }
    }
}

/// Adds one chunk of scored positions' logits (`[C, V]` from position
/// `start`; the first `chosen_positions` scored positions are the chosen
/// completions') to the running sums `[chosen, rejected]` (on the device).
fn add_logit_sums<B: Backend>(
    sums: &mut [Option<Tensor<B, 1>>; 2],
    logits: &Tensor<B, 2>,
    start: usize,
    chosen_positions: usize,
) {
    let [rows, _] = logits.dims();
    let split = chosen_positions.saturating_sub(start).min(rows);
    for (side, (from, len)) in [(0, split), (split, rows - split)].into_iter().enumerate() {
        if len > 0 {
            let part = logits.clone().narrow(0, from, len).sum();
            sums[side] = Some(match sums[side].take() {
                Some(sum) => sum.add(part),
                None => part,
            });
        }
    }
}

/// What one supervised step did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NllStepRecord {
    /// Optimizer steps completed, this one included.
    pub step: u64,
    /// Learning rate used.
    pub lr: f64,
    /// Mean negative log-likelihood per completion token (nats).
    pub loss: f64,
    /// `‖g‖₂` before clipping.
    pub grad_norm: f64,
    /// Sequences in the step.
    pub sequences: usize,
    /// Tokens of the forward passes.
    pub tokens: usize,
}

/// Model, optimizer state, schedule, objective and reference of one run.
#[derive(Debug)]
pub struct Trainer<B: AutodiffBackend> {
    /// Always present between steps (taken only while AdamW maps it).
    model: Option<CausalLm<B>>,
    optimizer: AdamW<B::InnerBackend>,
    options: TrainerOptions,
    reference: ReferencePolicy<B::InnerBackend>,
    reducer: Box<dyn GradientReducer<B::InnerBackend>>,
    /// This rank's slice of the optimizer state, when it is sharded
    /// ([`Self::with_sharding`]); `optimizer` then keeps only the step count.
    zero: Option<ZeroState<B::InnerBackend>>,
    /// Which parameters weight decay applies to, by id (ids survive `valid()` and steps).
    decays: HashMap<ParamId, bool>,
    /// With sharded parameters (ZeRO-3), the shape of every trained weight
    /// the model holds a placeholder of.
    parameter_shapes: HashMap<ParamId, Vec<usize>>,
    /// The blocks' slices taken as they loaded ([`Self::with_presliced_blocks`]),
    /// until [`Self::with_sharding_in`] builds the state from them.
    presliced: Option<PreslicedBlocks>,
    /// Every parameter in the model's visiting order (gradient reductions follow it).
    param_order: Vec<ParamId>,
    /// The top-k entropy floor term, when on.
    entropy_floor: Option<EntropyFloor>,
    /// Seed of LoRA dropout's masks (mixed with the step number).
    dropout_seed: u64,
    /// How a micro-batch's sequences are laid out in rows.
    layout: BatchLayout,
    completed: u64,
}

impl<B: AutodiffBackend> Trainer<B> {
    /// A trainer at step 0 with fresh optimizer state, on one rank. With
    /// `options.precision` below f32, `model`'s weights (f32, as loaded)
    /// become the optimizer's masters and the model (and a frozen reference)
    /// is cast to that precision.
    pub fn new(
        model: CausalLm<B>,
        options: TrainerOptions,
        reference: ReferencePolicy<B::InnerBackend>,
    ) -> Result<Self, ModelError> {
        if options.micro_batch_size == 0 {
            return Err(ModelError::Batch("the micro-batch size must be at least 1".into()));
        }
        options.loss.validate()?;
        let precision = options.precision;
        precision.check_supported::<B>(&model.embed.weight.val().device())?;
        let mut optimizer = AdamW::new(options.optimizer);
        let mut decays = HashMap::new();
        let mut param_order = Vec::new();
        // A LoRA model trains its adapters only, and they stay in f32: no masters.
        let keeps_masters = precision.keeps_masters() && model.lora().is_none();
        model.visit_trainable(&mut |_: &str, p: ParamKind<'_, B>| {
            decays.insert(p.id(), p.decays());
            param_order.push(p.id());
            if keeps_masters {
                optimizer.keep_master(p.id(), p.flat().inner());
            }
        });
        let model = model.cast(precision.dtype());
        let reference = match reference {
            ReferencePolicy::Frozen(frozen) => ReferencePolicy::Frozen(Box::new(frozen.cast(precision.dtype()))),
            ReferencePolicy::AdapterOff if model.lora().is_none() => {
                return Err(ModelError::Lora(
                    "the adapter-off reference needs a model with LoRA adapters; this one has none".into(),
                ));
            }
            ReferencePolicy::AdapterOff => ReferencePolicy::Frozen(Box::new(model.valid().without_adapters())),
            given => given,
        };
        Ok(Self {
            model: Some(model),
            optimizer,
            options,
            reference,
            reducer: Box::new(SingleRank),
            zero: None,
            decays,
            parameter_shapes: HashMap::new(),
            presliced: None,
            param_order,
            entropy_floor: None,
            dropout_seed: 0,
            layout: BatchLayout::Padded,
            completed: 0,
        })
    }

    /// Lays out each micro-batch's sequences as `layout` says (default
    /// [`BatchLayout::Padded`]; [`BatchLayout::Packed`]: several sequences per
    /// row, no padding between them). The policy and a frozen reference read
    /// the same layout; the losses are the padded step's up to the order of
    /// floating-point sums.
    pub fn with_batch_layout(mut self, layout: BatchLayout) -> Self {
        self.layout = layout;
        self
    }

    /// Seeds LoRA dropout: before each step the backend's generator is
    /// seeded from `seed` and the step number, so a step's masks are the same
    /// in every run and after a resume (default seed 0).
    pub fn with_dropout_seed(mut self, seed: u64) -> Self {
        self.dropout_seed = seed;
        self
    }

    /// Seeds the backend's generator for this step's LoRA dropout masks
    /// (nothing without dropout).
    fn seed_dropout(&self) {
        let model = self.model();
        if model.lora().is_some_and(|l| l.dropout > 0.0) {
            let mut state = self.dropout_seed ^ self.completed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            B::seed(&model.embed.weight.val().device(), crate::rng::splitmix64(&mut state));
        }
    }

    /// Uses `reducer` to combine gradients across data-parallel ranks.
    pub fn with_reducer(mut self, reducer: Box<dyn GradientReducer<B::InnerBackend>>) -> Self {
        self.reducer = reducer;
        self
    }

    /// The decoder blocks' slices taken while the model loaded (its blocks
    /// hold placeholders: [`PreslicedBlocks`]); [`Self::with_sharding_in`]
    /// at `parameters` then builds this rank's state from them.
    pub fn with_presliced_blocks(mut self, presliced: PreslicedBlocks) -> Self {
        self.presliced = Some(presliced);
        self
    }

    /// Shards the optimizer state over the reducer's ranks from now on
    /// (`optimizer`: ZeRO-1; `gradients`: ZeRO-2, see
    /// [`crate::distributed::ZeroState`]); `none` keeps every rank's state
    /// whole. Call after [`Self::with_reducer`] and after restoring a
    /// checkpoint's whole state, if any: this rank keeps its slice of it.
    pub fn with_sharding(self, stage: Sharding) -> Result<Self, ModelError> {
        self.with_sharding_in(stage, None)
    }

    /// [`Self::with_sharding`] within `groups.shard` (a node's ranks) and
    /// replicated over `groups.replicas` (HSDP; `None`: over every rank).
    pub fn with_sharding_in(mut self, stage: Sharding, groups: Option<ShardGroups>) -> Result<Self, ModelError> {
        if stage == Sharding::None {
            return Ok(self);
        }
        if stage == Sharding::Parameters {
            if !self.options.memory.activation_checkpointing {
                return Err(ModelError::Sharding(
                    "train.sharding = \"parameters\" gathers each decoder block's weights for its forward pass and \
                     again for its recomputation in backward: it needs train.activation_checkpointing = true"
                        .into(),
                ));
            }
            if self.model().lora().is_some() {
                return Err(ModelError::Sharding(
                    "train.sharding = \"parameters\" shards a full fine-tune's weights; LoRA trains adapters only \
                     (use \"optimizer\" or \"none\" with LoRA)"
                        .into(),
                ));
            }
        }
        let Some(collective) = self.reducer.collective() else {
            return Err(ModelError::Sharding(format!(
                "train.sharding = \"{}\" needs several ranks (a data-parallel reducer)",
                stage.as_str()
            )));
        };
        let (rank, world) = match &groups {
            Some(groups) => (groups.shard.rank(), groups.shard.world_size()),
            None => (collective.rank(), collective.world_size()),
        };
        let mut presliced = self.presliced.take().unwrap_or_default();
        let model = self.model.as_ref().expect("the model is put back after every step");
        let device = model.embed.weight.val().device();
        let (mut parameters, mut ids, mut values, mut units) = (Vec::new(), Vec::new(), HashMap::new(), Vec::new());
        if !presliced.slices.is_empty() && (stage != Sharding::Parameters || presliced.place != (rank, world)) {
            return Err(ModelError::Sharding(format!(
                "the blocks were sliced for slice {} of {} as they loaded; this trainer shards at {} as slice {rank} \
                 of {world}",
                presliced.place.0,
                presliced.place.1,
                stage.as_str()
            )));
        }
        model.visit_trainable(&mut |name: &str, p: ParamKind<'_, B>| {
            // A weight let go as it loaded has only its recorded shape.
            let file_shape = presliced.file_shapes.get(&p.id()).cloned().unwrap_or_else(|| p.file_shape());
            parameters.push((name.to_string(), file_shape, p.decays()));
            ids.push(p.id());
            if !presliced.file_shapes.contains_key(&p.id()) {
                values.insert(p.id(), p.flat().inner());
            }
            units.push(crate::distributed::parameter_units::unit_of_name(name));
        });
        let layout = FlatLayout::new(parameters, world);
        let optimizer = &mut self.optimizer;
        let zero =
            ZeroState::new(stage, rank, layout, ids, &units, &values, &mut presliced.slices, optimizer, &device)?;
        drop(values);
        self.parameter_shapes.extend(presliced.shapes);
        self.zero = Some(match groups {
            Some(groups) => zero.with_groups(groups)?,
            None => zero,
        });
        if stage == Sharding::Parameters {
            self.release_parameters();
        }
        Ok(self)
    }

    /// This rank's slice of the sharded optimizer state, if sharded.
    pub fn zero_state(&self) -> Option<&ZeroState<B::InnerBackend>> {
        self.zero.as_ref()
    }

    /// This rank's slice of the sharded optimizer state, to restore a
    /// checkpoint's, if sharded.
    pub fn zero_state_mut(&mut self) -> Option<&mut ZeroState<B::InnerBackend>> {
        self.zero.as_mut()
    }

    /// This rank's slice of the sharded optimizer state's moments `(m, v)`
    /// as the whole model's layout slices them (what a checkpoint holds,
    /// whatever the stage); `None` when the state is whole. Every rank must
    /// call it (sharded parameters gather each unit's moments in turn).
    pub fn layout_moments(&mut self) -> Result<Option<crate::distributed::MomentSlice>, ModelError> {
        let Some(zero) = &mut self.zero else { return Ok(None) };
        let collective = sharded_collective(self.reducer.as_mut())?;
        zero.layout_moments(collective).map(Some)
    }

    /// The ranks' collective (`None` for one rank): the run's exchanges
    /// besides the step (checks, checkpoints).
    pub fn collective(&mut self) -> Option<&mut dyn Collective> {
        self.reducer.collective()
    }

    /// [`Self::master_model`] on every rank, gathering the master weights
    /// where they are sharded (every rank must call it then).
    pub fn gathered_master_model(&mut self) -> Result<CausalLm<B::InnerBackend>, ModelError> {
        let model = self.master_model_where(true)?;
        Ok(model.expect("kept where asked"))
    }

    /// [`Self::master_model`] on rank 0 (`None` on the others), gathered
    /// where the master weights are sharded: every rank must call it, and
    /// only rank 0 holds the whole model (the others let each unit go once
    /// gathered). What a checkpoint writes.
    pub fn master_model_on_first(&mut self) -> Result<Option<CausalLm<B::InnerBackend>>, ModelError> {
        let first = self.reducer.collective().is_none_or(|c| c.rank() == 0);
        self.master_model_where(first)
    }

    /// The master model gathered, kept where `keep`.
    fn master_model_where(&mut self, keep: bool) -> Result<Option<CausalLm<B::InnerBackend>>, ModelError> {
        let dtype = Some(burn::tensor::FloatDType::F32);
        let Some(zero) = &mut self.zero else { return Ok(keep.then(|| self.master_model())) };
        let collective = sharded_collective(self.reducer.as_mut())?;
        let Some((flat, ranges)) = zero.gather_masters(collective, keep)? else { return Ok(None) };
        let model = self.valid_model();
        Ok(Some(match self.shards_parameters() {
            true => model.map(&mut Materialise { flat: &flat, ranges: &ranges, shapes: &self.parameter_shapes, dtype }),
            false => model.map(&mut SetWeights { flat: &flat, ranges: &ranges, dtype }),
        }))
    }

    /// [`Self::valid_model`] on every rank, its weights gathered where the
    /// parameters are sharded (every rank must call it then; the model
    /// holds only placeholders of them between steps).
    pub fn gathered_valid_model(&mut self) -> Result<CausalLm<B::InnerBackend>, ModelError> {
        self.with_gathered_parameters(self.valid_model())
    }

    /// The policy.
    pub fn model(&self) -> &CausalLm<B> {
        self.model.as_ref().expect("the model is put back after every step")
    }

    /// The policy, without its autodiff graph (for evaluation, saving,
    /// sampling). With sharded parameters (ZeRO-3) its trained weights are
    /// empty placeholders: [`Self::gathered_valid_model`] gathers them.
    pub fn valid_model(&self) -> CausalLm<B::InnerBackend> {
        self.model().valid()
    }

    /// The policy as it is saved: [`Self::valid_model`] with the f32 master
    /// weights in place of lower-precision ones (the same model when
    /// training in f32).
    pub fn master_model(&self) -> CausalLm<B::InnerBackend> {
        self.optimizer.with_masters(self.valid_model())
    }

    /// The optimizer state.
    pub fn optimizer(&self) -> &AdamW<B::InnerBackend> {
        &self.optimizer
    }

    /// The optimizer state, to restore a checkpoint's.
    pub fn optimizer_mut(&mut self) -> &mut AdamW<B::InnerBackend> {
        &mut self.optimizer
    }

    /// The options.
    pub fn options(&self) -> &TrainerOptions {
        &self.options
    }

    /// Changes the objective from the next step on (the adaptive
    /// regulariser's NLL weight or β); checked like [`Trainer::new`] checks it.
    pub fn set_loss(&mut self, loss: PreferenceLossParams) -> Result<(), ModelError> {
        loss.validate()?;
        self.options.loss = loss;
        Ok(())
    }

    /// Adds the top-k entropy floor term to the objective from the next
    /// step on (`None` or a multiplier of 0: no term). Errors: a negative or
    /// non-finite multiplier or floor, `k` of 0, a base not above 1.
    pub fn set_entropy_floor(&mut self, floor: Option<EntropyFloor>) -> Result<(), ModelError> {
        if let Some(f) = &floor {
            let ok = f.multiplier >= 0.0
                && f.multiplier.is_finite()
                && f.floor.is_finite()
                && f.k > 0
                && f.entropy_base > 1.0
                && f.entropy_base.is_finite();
            if !ok {
                return Err(ModelError::Batch(format!(
                    "entropy floor {f:?}: needs μ ≥ 0, a finite floor, k ≥ 1 and a base above 1"
                )));
            }
        }
        self.entropy_floor = floor;
        Ok(())
    }

    /// Optimizer steps completed.
    pub fn completed_steps(&self) -> u64 {
        self.completed
    }

    /// Continues a run after `steps` completed steps (the schedule resumes there).
    pub fn resume_at(&mut self, steps: u64) {
        self.completed = steps;
    }

    /// Counts a step that was not applied (a non-finite loss or gradient,
    /// `train.skip_nonfinite`): the weights and AdamW state stay as they
    /// were, the schedule and the learning rate move on as after a step.
    pub fn skip_step(&mut self) {
        self.completed += 1;
    }

    /// Reference scores of `pairs` under the frozen reference model, or
    /// `None` when the reference is [`ReferencePolicy::Given`].
    pub fn frozen_reference_scores(
        &self,
        pairs: &[&SequencePair],
        batch: usize,
    ) -> Result<Option<Vec<PairScore>>, ModelError> {
        match &self.reference {
            ReferencePolicy::Given | ReferencePolicy::AdapterOff => Ok(None),
            ReferencePolicy::Frozen(model) => {
                Ok(Some(score_pairs(model, pairs, batch, self.options.pad_id, &mut |_| {})?))
            }
        }
    }

    /// One optimizer step over `pairs` (this rank's share of the step).
    pub fn step(&mut self, pairs: &[StepPair<'_>]) -> Result<StepRecord, ModelError> {
        self.step_with_stats(pairs, None)
    }

    /// [`Self::step`], and with `stats` the over-optimisation statistics of
    /// the batch itself: top-k entropy, top-k mass and entropy of the
    /// policy's next-token distributions at the chosen completions' positions,
    /// as the step's forward pass computes them (before the update), from the
    /// fused head's chunks of logits (copied to the host a chunk at a time,
    /// the statistics on daa-core's CPU backend) — what the held-out
    /// evaluation reports, on training data, without a second forward pass.
    pub fn step_with_stats(
        &mut self,
        pairs: &[StepPair<'_>],
        stats: Option<&TokenStatsParams>,
    ) -> Result<StepRecord, ModelError> {
        if pairs.is_empty() {
            return Err(ModelError::Batch("a step needs at least one pair".into()));
        }
        let o = self.options;
        let lr = o.schedule.at(self.completed);
        self.seed_dropout();
        // A step left unapplied (a skipped non-finite one) leaves nothing behind.
        if let Some(zero) = &mut self.zero {
            zero.discard_gradients();
        }
        self.gather_outer_unit()?;

        let model = self.model.as_ref().expect("the model is put back after every step");
        let (vocab, blocks) = (model.config().vocab_size, model.layers.len());
        let mut grads = GradAccumulator::<B::InnerBackend>::default();
        let (mut inputs, mut losses, mut tokens) = (Vec::new(), Vec::new(), 0);
        let cpu = daa_core::Cpu::new();
        let mut totals = StatsSums::default();
        // Σ z over the chosen and the rejected completions' positions (TRL's logits/…), read once after the step.
        let mut logit_sums: [Option<Tensor<B::InnerBackend, 1>>; 2] = [None, None];
        // The loss is the mean over every rank's pairs; the floor term
        // averages over every rank's scored positions.
        let scored_positions: usize =
            pairs.iter().map(|p| p.sequences.chosen.completion_len() + p.sequences.rejected.completion_len()).sum();
        let mut counts = [pairs.len() as f64, scored_positions as f64];
        self.reducer.sum_counts(&mut counts)?;
        let [normaliser, all_positions] = counts;
        let floor = self.entropy_floor.filter(|f| f.multiplier > 0.0).map(|f| f.term(all_positions as usize));
        let mut floor_total = 0.0;
        // With several ranks, an error of this rank's own pairs (a
        // non-finite log-probability) is kept until every rank has said
        // whether it met one, so that all leave the step together.
        let several_ranks = self.reducer.world_size() > 1;
        let mut failed = None;
        let mut scattered = 0;
        for (m, micro) in pairs.chunks(o.micro_batch_size).enumerate() {
            let offset = m * o.micro_batch_size;
            let sequences: Vec<&SequencePair> = micro.iter().map(|p| p.sequences).collect();
            let batch = match pair_batch_in(&sequences, o.pad_id, vocab, self.layout) {
                Err(e) if several_ranks => {
                    failed = Some(e.offset_pairs(offset));
                    break;
                }
                batch => batch?,
            };
            tokens += sequences.iter().map(|p| p.chosen.ids.len() + p.rejected.ids.len()).sum::<usize>();
            let reference = match self.micro_batch_reference(micro, &sequences, offset) {
                Err(e) if several_ranks => {
                    failed = Some(e);
                    break;
                }
                reference => reference?,
            };
            let counts: Vec<(f64, f64)> = sequences
                .iter()
                .map(|p| (p.chosen.completion_len() as f64, p.rejected.completion_len() as f64))
                .collect();
            let mut objective = None;
            // The chosen sequences are the batch's first rows: their completion
            // positions come first among the scored ones.
            let positions = batch.scored_positions();
            let chosen_positions = positions.count_in_first_rows(micro.len());
            let shapes = &self.parameter_shapes;
            let (mut sharded, mut own_blocks) =
                (sharded_blocks(&mut self.zero, self.reducer.as_mut(), shapes, blocks)?, ModelBlocks);
            let backward = weighted_backward_with(
                model,
                &batch,
                &o.memory,
                (
                    &mut |policy| {
                        let weighed = pair_weights(policy, &reference, &counts, &o.loss, normaliser)
                            .map_err(|e| e.offset_pairs(offset))?;
                        let weights = weighed.weights.clone();
                        objective = Some(weighed);
                        Ok(weights)
                    },
                    &mut |start, logits| {
                        add_logit_sums(&mut logit_sums, logits, start, chosen_positions);
                        let Some(params) = stats else { return Ok(()) };
                        match ChosenLogits::of_chunk(logits, start, chosen_positions, &positions.targets)? {
                            Some(chosen) => totals.add_on_cpu(&cpu, &chosen.logits, &chosen.targets, params),
                            None => Ok(()),
                        }
                    },
                ),
                floor.as_ref(),
                &mut grads,
                match sharded.as_mut() {
                    Some(sharded) => sharded as &mut dyn BlockWeights<B>,
                    None => &mut own_blocks,
                },
            );
            floor_total += match backward {
                Err(e) if several_ranks => {
                    // The rest of this micro-batch's gathers and scatters, zeros sent.
                    if let Some(sharded) = sharded {
                        sharded.finish(&mut GradAccumulator::default())?;
                        scattered += 1;
                    }
                    failed = Some(e);
                    break;
                }
                floor_part => floor_part?,
            };
            let PairWeights { inputs: pair_inputs, losses: pair_losses, .. } =
                objective.expect("weighted_backward asks for the weights once");
            inputs.extend(pair_inputs);
            losses.extend(pair_losses);
            match sharded {
                Some(sharded) => sharded.finish(&mut grads)?,
                None => scatter_micro_batch(&mut self.zero, self.reducer.as_mut(), &mut grads)?,
            }
            scattered += 1;
        }
        // ZeRO-2 and 3: every rank scatters (and with ZeRO-3 gathers) as
        // often as the rank with the most micro-batches (rank slices differ
        // by at most one pair); the others (and a rank whose pairs failed)
        // add zeros.
        if self.zero.as_ref().is_some_and(|z| z.scatters_each_micro_batch()) {
            let world = self.reducer.world_size();
            let most = (normaliser as usize).div_ceil(world).div_ceil(o.micro_batch_size);
            if failed.is_some() {
                grads = GradAccumulator::default();
            }
            for _ in scattered..most {
                let shapes = &self.parameter_shapes;
                idle_micro_batch(&mut self.zero, self.reducer.as_mut(), shapes, blocks, &mut grads)?;
            }
        }
        self.agree_on_failure(failed)?;
        let report = self.apply(grads, lr)?;
        let read_sum = |sum: Option<Tensor<B::InnerBackend, 1>>, side: &str| -> Result<Option<f64>, ModelError> {
            sum.map(|s| Ok(read_vec::<f64, _, 1>(s, side)?[0])).transpose()
        };
        let [chosen, rejected] = logit_sums;
        let logit_sums = [read_sum(chosen, "chosen logits")?, read_sum(rejected, "rejected logits")?];
        let mut figures = StepFigures { inputs, losses, tokens, stats: totals, logit_sums, floor: floor_total };
        // Several ranks: the record describes the global batch on every rank.
        if let Some(collective) = self.reducer.collective().filter(|c| c.world_size() > 1) {
            figures = figures.gather(collective)?;
        }
        let stats = stats.map(|_| &figures.stats);
        let (inputs, losses) = (&figures.inputs, &figures.losses);
        let mut record = StepRecord::of_pairs(self.completed, &report, inputs, losses, figures.tokens, stats);
        record.entropy_floor = floor.map(|_| figures.floor);
        let tokens_of = |f: fn(&PairLogps) -> f64| inputs.iter().map(f).sum::<f64>();
        let [chosen, rejected] = figures.logit_sums;
        record.chosen_logits = chosen.map(|sum| sum / (tokens_of(|i| i.chosen_tokens) * vocab as f64));
        record.rejected_logits = rejected.map(|sum| sum / (tokens_of(|i| i.rejected_tokens) * vocab as f64));
        Ok(record)
    }

    /// `(ρ_w, ρ_l)` of a micro-batch (pairs `offset…` of the step): given
    /// with each pair, scored by the frozen reference, or zeros for a loss
    /// that does not use the reference.
    fn micro_batch_reference(
        &self,
        micro: &[StepPair<'_>],
        sequences: &[&SequencePair],
        offset: usize,
    ) -> Result<Vec<(f64, f64)>, ModelError> {
        let o = &self.options;
        match &self.reference {
            // `Trainer::new` turns `AdapterOff` into `Frozen`.
            ReferencePolicy::Given | ReferencePolicy::AdapterOff => micro
                .iter()
                .enumerate()
                .map(|(i, p)| match p.reference {
                    Some(r) => Ok((r.chosen, r.rejected)),
                    None if !o.loss.loss.uses_reference() => Ok((0.0, 0.0)),
                    None => Err(ModelError::Batch(format!(
                        "pair {} of the step has no reference log-probabilities and the trainer has no reference \
                         model",
                        offset + i
                    ))),
                })
                .collect(),
            ReferencePolicy::Frozen(frozen) => Ok(score_batch(frozen, sequences, o.pad_id, self.layout)
                .map_err(|e| e.offset_pairs(offset))?
                .iter()
                .map(|s| (s.chosen, s.rejected))
                .collect()),
        }
    }

    /// Whether any rank's own pairs failed in this step (`failed` on this
    /// rank: a non-finite log-probability of the policy or the reference):
    /// every rank learns it before the gradients are exchanged, so all leave
    /// the step together instead of the others waiting in a collective the
    /// failed rank never joins. The failed rank returns its own error; the
    /// others a non-finite step naming the ranks when every failure was a
    /// non-finite reference score (which `train.skip_nonfinite` may skip, on
    /// every rank alike), else an error naming them that stops the run.
    fn agree_on_failure(&mut self, failed: Option<ModelError>) -> Result<(), ModelError> {
        let Some(collective) = self.reducer.collective().filter(|c| c.world_size() > 1) else {
            return failed.map_or(Ok(()), Err);
        };
        // Per rank: 0 fine, 1 a skippable non-finite score, 2 another failure.
        let mut met = vec![0f64; collective.world_size()];
        met[collective.rank()] = match &failed {
            None => 0.0,
            Some(ModelError::NonFiniteScore { .. }) => 1.0,
            Some(_) => 2.0,
        };
        collective.all_reduce_sum_f64(&mut met)?;
        let ranks = |code: f64| -> Vec<String> {
            met.iter().enumerate().filter(|(_, m)| **m == code).map(|(r, _)| r.to_string()).collect()
        };
        let (skippable, stopping) = (ranks(1.0), ranks(2.0));
        // A failure that stops the run stops every rank, also one whose own
        // failure alone would have been skipped.
        if !stopping.is_empty() {
            return Err(match failed {
                Some(e) if !matches!(e, ModelError::NonFiniteScore { .. }) => e,
                _ => ModelError::Batch(format!(
                    "the pairs of rank(s) {} failed in this step (that rank's error says why); every rank stops",
                    stopping.join(", ")
                )),
            });
        }
        if let Some(e) = failed {
            return Err(e);
        }
        if !skippable.is_empty() {
            return Err(ModelError::NonFiniteStep {
                quantity: format!(
                    "a log-probability of rank(s) {}'s pairs (this rank's were finite)",
                    skippable.join(", ")
                ),
            });
        }
        Ok(())
    }

    /// The data-parallel reduction, clipping and AdamW at rate `lr`: the end
    /// of every kind of step.
    fn apply(&mut self, mut grads: GradAccumulator<B::InnerBackend>, lr: f64) -> Result<StepReport, ModelError> {
        // ZeRO-3: every gradient is scattered; the weights live in the slices.
        self.release_outer_unit();
        if let Some(zero) = &mut self.zero {
            let collective = sharded_collective(self.reducer.as_mut())?;
            // ZeRO-2 scattered each micro-batch already (an NLL step scatters once).
            if !grads.is_empty() || !zero.has_gradients() {
                zero.scatter_gradients(&mut grads, collective)?;
            }
            // Counted once the step is applied (a non-finite norm refuses it).
            let t = i32::try_from(self.optimizer.steps + 1).unwrap_or(i32::MAX);
            let step = zero.step(&self.options.optimizer, lr, t, collective)?;
            self.optimizer.steps += 1;
            // ZeRO-1/2: every unit's new weights gathered into the model, one at a time.
            if zero.stage() != Sharding::Parameters {
                // A clone (shared tensors): a failed gather leaves the model in place.
                let model = self.model.clone().expect("the model is put back after every step");
                self.model = Some(zero.gather_into(model, collective)?);
            }
            self.completed += 1;
            return Ok(StepReport { grad_norm: step.grad_norm, lr });
        }
        grads.reorder(&self.param_order);
        // ── Data-parallel reduction point: every rank's gradients summed here. ──
        self.reducer.reduce(&mut grads)?;
        let grad_norm = grads.global_norm()?;
        if !grad_norm.is_finite() {
            return Err(ModelError::NonFiniteStep { quantity: format!("the gradient norm ({grad_norm})") });
        }
        let model = self.model.take().expect("the model is put back after every step");
        let (model, report) = self.optimizer.update::<B, _>(model, grads, lr, grad_norm, &self.decays);
        self.model = Some(model);
        self.completed += 1;
        Ok(report)
    }

    /// One supervised (NLL) optimizer step on completions: the mean negative
    /// log-likelihood per completion token,
    /// `L = −(Σ_i Σ_t ℓ_{i,t}) / (Σ_i n_i)` (summed over ranks, normalised by
    /// every rank's tokens when the reducer has several). What the testbed's
    /// reference policy is fine-tuned with; the preference loss and the
    /// reference are not used.
    pub fn nll_step(&mut self, sequences: &[&Sequence]) -> Result<NllStepRecord, ModelError> {
        if sequences.is_empty() {
            return Err(ModelError::Batch("a step needs at least one sequence".into()));
        }
        let o = self.options;
        let lr = o.schedule.at(self.completed);
        self.seed_dropout();
        if let Some(zero) = &mut self.zero {
            zero.discard_gradients();
        }
        let micro_batches = sequences.len().div_ceil(2 * o.micro_batch_size);
        let most = match self.shards_parameters() {
            true => self.most_micro_batches(micro_batches)?,
            false => micro_batches,
        };
        self.gather_outer_unit()?;
        let model = self.model.as_ref().expect("the model is put back after every step");
        let (vocab, blocks) = (model.config().vocab_size, model.layers.len());
        let scored: usize = sequences.iter().map(|s| s.completion_len()).sum();
        // The mean over every rank's completion tokens.
        let mut all_scored = [scored as f64];
        self.reducer.sum_counts(&mut all_scored)?;
        let normaliser = all_scored[0];
        let mut grads = GradAccumulator::<B::InnerBackend>::default();
        let (mut total, mut tokens) = (0.0, 0);
        for micro in sequences.chunks(2 * o.micro_batch_size) {
            let batch = TokenBatch::with_layout(micro, o.pad_id, vocab, self.layout)?;
            tokens += micro.iter().map(|s| s.ids.len()).sum::<usize>();
            let shapes = &self.parameter_shapes;
            let (mut sharded, mut own_blocks) =
                (sharded_blocks(&mut self.zero, self.reducer.as_mut(), shapes, blocks)?, ModelBlocks);
            weighted_backward_with(
                model,
                &batch,
                &o.memory,
                (
                    &mut |logps| {
                        let value: f64 = logps.iter().sum();
                        if !value.is_finite() {
                            return Err(ModelError::Batch(format!("the completion log-likelihood is {value}")));
                        }
                        total += value;
                        Ok(vec![(-1.0 / normaliser) as f32; logps.len()])
                    },
                    &mut |_, _| Ok(()),
                ),
                None,
                &mut grads,
                match sharded.as_mut() {
                    Some(sharded) => sharded as &mut dyn BlockWeights<B>,
                    None => &mut own_blocks,
                },
            )?;
            if let Some(sharded) = sharded {
                sharded.finish(&mut grads)?;
            }
        }
        // ZeRO-3: as many gathers and scatters as the rank with the most micro-batches.
        if self.shards_parameters() {
            for _ in micro_batches..most {
                let shapes = &self.parameter_shapes;
                idle_micro_batch(&mut self.zero, self.reducer.as_mut(), shapes, blocks, &mut grads)?;
            }
        }
        let report = self.apply(grads, lr)?;
        // The loss over every rank's tokens (`normaliser` counts them all).
        let mut sums = [total, tokens as f64, sequences.len() as f64];
        self.reducer.sum_counts(&mut sums)?;
        let (total, tokens, sequences) = (sums[0], sums[1] as usize, sums[2] as usize);
        Ok(NllStepRecord {
            step: self.completed,
            lr: report.lr,
            loss: -total / normaliser.max(1.0),
            grad_norm: report.grad_norm,
            sequences,
            tokens,
        })
    }

    /// Held-out figures of the current policy on `pairs` against their
    /// reference scores (see [`crate::eval`]). With sharded parameters the
    /// ranks must gather them together: [`Self::evaluate_on_ranks`].
    pub fn evaluate(
        &self,
        pairs: &[&SequencePair],
        reference: &[PairScore],
        stats: &TokenStatsParams,
        batch: usize,
    ) -> Result<EvalReport, ModelError> {
        if self.shards_parameters() {
            return Err(ModelError::Sharding(
                "evaluate: the parameters are sharded over the ranks (ZeRO-3); every rank calls evaluate_on_ranks, \
                 which gathers them"
                    .into(),
            ));
        }
        evaluate(&self.valid_model(), pairs, reference, &self.options.loss, stats, batch, self.options.pad_id)
    }

    /// [`Self::evaluate`] split over the data-parallel ranks (each scores
    /// its slice of `pairs`, the sums are added): every rank must call it,
    /// and every rank gets the same report. One rank: [`Self::evaluate`].
    pub fn evaluate_on_ranks(
        &mut self,
        pairs: &[&SequencePair],
        reference: &[PairScore],
        stats: &TokenStatsParams,
        batch: usize,
    ) -> Result<EvalReport, ModelError> {
        let (model, options) = (self.gathered_valid_model()?, self.options);
        let collective = self.reducer.collective().filter(|c| c.world_size() > 1);
        evaluate_on_ranks(&model, pairs, reference, (&options.loss, stats), (batch, options.pad_id), collective)
    }
}
