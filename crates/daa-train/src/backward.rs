//! One forward and backward pass of a batch: what every training step is
//! made of.
//!
//! The batch's rows get scores `π_i = Σ_t ℓ_{i,t}` (completion positions
//! only); the caller looks at them and answers with weights `w_i` (for a
//! preference loss `w_i = ∂L̄/∂π_i`, for the NLL step `−1/n`); the pass adds
//! `∇_θ S`, `S = Σ_i w_i π_i`, to the gradient accumulator. How, is the
//! [`MemoryOptions`]' choice; every choice gives the same gradient:
//!
//! - **head**: unfused (autodiff through the `[N, V]` logits and their
//!   log-softmax) or fused ([`crate::fused_head`]: chunks of logits,
//!   recomputed in backward; `∂S/∂W` added directly, `∂S/∂h` sent into the
//!   model by back-propagating `⟨h, stop_grad(∂S/∂h)⟩`).
//! - **activation checkpointing**: the decoder blocks first run without an
//!   autodiff graph, keeping only each block's input `x_i` (`[rows, seq, d]`).
//!   Backward walks the blocks in reverse: block `i` runs again with autodiff
//!   from `x_i` (a leaf), and back-propagating `⟨block_i(x_i), g_{i+1}⟩` gives
//!   the block's parameters their share of `∇S` and `g_i = ∂S/∂x_i` (chain
//!   rule); the embedding gets `⟨embed(x), g_0⟩`'s. One block's graph exists
//!   at a time, for one more forward pass of the blocks.
//!
//! The logits of the scored positions (f32) are handed to the caller's
//! `on_chunk` as the head computes them — one chunk at a time with the fused
//! head, all at once without — for statistics of the training batch.

use burn::module::Module;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::batch::{ScoredPositions, TokenBatch};
use crate::entropy_floor::FloorTerm;
use crate::error::{ModelError, read_vec};
use crate::fused_head::{FusedHead, OnChunk, chunk_rows_or};
use crate::model::{CausalLm, DecoderLayer};
use crate::objective::{CompletionLogits, row_sums};
use crate::optim::GradAccumulator;

/// How a training pass trades memory for compute (`[train]`'s
/// `fused_head`, `activation_checkpointing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryOptions {
    /// The fused head: no `[N × V]` logits kept (default on).
    pub fused_head: bool,
    /// Positions per chunk of the fused head; 0 = [`crate::fused_head::chunk_rows`] of the vocabulary.
    pub head_chunk_rows: usize,
    /// Recompute each decoder block in backward instead of keeping its activations.
    pub activation_checkpointing: bool,
}

impl Default for MemoryOptions {
    fn default() -> Self {
        Self { fused_head: true, head_chunk_rows: 0, activation_checkpointing: false }
    }
}

/// What a pass asks its caller: the weights `w` (one per row) for the rows'
/// scores `π`.
pub type Weigh<'a> = dyn FnMut(&[f64]) -> Result<Vec<f32>, ModelError> + 'a;

/// Where a pass with activation checkpointing gets each decoder block's
/// weights — for its forward pass, then again for its recomputation in
/// backward — and what follows each block's backward: the model's own
/// blocks ([`ModelBlocks`]), or blocks gathered from the ranks' slices
/// with their gradients reduce-scattered at once (ZeRO-3,
/// [`crate::distributed::parameter_units::ShardedBlocks`]).
pub trait BlockWeights<B: AutodiffBackend> {
    /// Block `i` of `model`, ready to run.
    fn block(&mut self, model: &CausalLm<B>, i: usize) -> Result<DecoderLayer<B>, ModelError>;

    /// Block `i`'s backward is done: its parameters' gradients are in `grads`.
    fn block_done(&mut self, i: usize, grads: &mut GradAccumulator<B::InnerBackend>) -> Result<(), ModelError>;
}

/// The model's own blocks, as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct ModelBlocks;

impl<B: AutodiffBackend> BlockWeights<B> for ModelBlocks {
    fn block(&mut self, model: &CausalLm<B>, i: usize) -> Result<DecoderLayer<B>, ModelError> {
        Ok(model.layers[i].clone())
    }

    fn block_done(&mut self, _: usize, _: &mut GradAccumulator<B::InnerBackend>) -> Result<(), ModelError> {
        Ok(())
    }
}

/// Runs `model` on `batch`, hands the rows' scores `π` to `weigh`, and adds
/// `∇_θ Σ_i w_i π_i` (`w` = what `weigh` returns, one per row) to `grads`.
/// `on_chunk` sees the scored positions' logits (`[C, V]`, f32, with the
/// first position of the chunk, in [`TokenBatch::scored_positions`] order).
/// With `floor`, the top-k entropy floor term `F` over the scored positions
/// ([`crate::entropy_floor`]) joins the surrogate, `S = Σ_i w_i π_i + F`;
/// returns `F` (0 without it).
pub fn weighted_backward<B: AutodiffBackend>(
    model: &CausalLm<B>,
    batch: &TokenBatch,
    memory: &MemoryOptions,
    weigh: &mut Weigh<'_>,
    on_chunk: &mut OnChunk<'_, B::InnerBackend>,
    floor: Option<&FloorTerm>,
    grads: &mut GradAccumulator<B::InnerBackend>,
) -> Result<f64, ModelError> {
    weighted_backward_with(model, batch, memory, (weigh, on_chunk), floor, grads, &mut ModelBlocks)
}

/// [`weighted_backward`] with the decoder blocks' weights from `blocks`
/// (used with activation checkpointing; without it the model's own run).
pub fn weighted_backward_with<B: AutodiffBackend>(
    model: &CausalLm<B>,
    batch: &TokenBatch,
    memory: &MemoryOptions,
    (weigh, on_chunk): (&mut Weigh<'_>, &mut OnChunk<'_, B::InnerBackend>),
    floor: Option<&FloorTerm>,
    grads: &mut GradAccumulator<B::InnerBackend>,
    blocks: &mut dyn BlockWeights<B>,
) -> Result<f64, ModelError> {
    let device = model.embed.weight.device();
    let tokens = batch.input::<B>(&device);
    // The caller's weights, one per row, checked once for both heads.
    let mut weigh = |policy: &[f64]| {
        let weights = weigh(policy)?;
        if weights.len() != policy.len() {
            return Err(ModelError::Batch(format!("{} weights for {} rows", weights.len(), policy.len())));
        }
        Ok(weights)
    };
    let checkpoints = match memory.activation_checkpointing {
        true => Some(BlockInputs::record(model, tokens.clone(), batch, blocks)?),
        false => None,
    };
    let top = match &checkpoints {
        Some(saved) => saved.leaf(),
        None => model.blocks(tokens.clone(), &batch.positions, None)?,
    };
    let hidden = model.norm.forward(top.clone());
    let [rows, len, d] = hidden.dims();
    let positions = batch.scored_positions();
    let picked = hidden.reshape([rows * len, d]).select(0, positions.flat_index::<B>(&device));
    let (top_grads, floor_value) = if memory.fused_head {
        fused_head_backward(model, picked, &positions, memory, &mut weigh, on_chunk, floor, grads)?
    } else {
        let logits = model.head(picked);
        on_chunk(0, &logits.clone().inner())?;
        let floor_part = floor.map(|term| term.chunk(&logits.clone().inner()));
        let policy = CompletionLogits { logits: logits.clone(), positions }.sequence_logps();
        let weights = weigh(&read_vec::<f64, _, 1>(policy.clone(), "policy log-probabilities")?)?;
        let sequences = weights.len();
        let mut surrogate = (policy * Tensor::from_data(TensorData::new(weights, [sequences]), &device)).sum();
        let mut floor_value = None;
        if let Some((grad, value)) = floor_part {
            // ⟨z, stop_grad(∂F/∂z)⟩ carries F's gradient into the model.
            surrogate = surrogate + (logits * Tensor::from_inner(grad)).sum();
            floor_value = Some(value);
        }
        (surrogate.backward(), floor_value)
    };
    let floor_value = match floor_value {
        Some(value) => read_vec::<f64, _, 1>(value, "entropy floor term")?.first().copied().unwrap_or(0.0),
        None => 0.0,
    };
    match checkpoints {
        None => grads.add::<B, _>(model, top_grads),
        Some(saved) => {
            let mut g = top.grad(&top_grads).ok_or_else(|| no_gradient("the last block's output"))?;
            grads.add::<B, _>(model, top_grads);
            for i in (0..model.layers.len()).rev() {
                let layer = blocks.block(model, i)?;
                let x = saved.inputs[i].clone().detach().require_grad();
                let out = layer.forward(x.clone(), &saved.context, None);
                let block_grads = (out * Tensor::from_inner(g)).sum().backward();
                g = x.grad(&block_grads).ok_or_else(|| no_gradient(&format!("block {i}'s input")))?;
                grads.add::<B, _>(&layer, block_grads);
                drop(layer);
                blocks.block_done(i, grads)?;
            }
            // A frozen embedding (LoRA) has no gradient to collect.
            if model.embed.weight.val().is_require_grad() {
                let embedded = model.embed.forward(tokens);
                grads.add::<B, _>(model, (embedded * Tensor::from_inner(g)).sum().backward());
            }
        }
    }
    Ok(floor_value)
}

/// The entropy floor term's value on the device, when the pass has one.
type FloorValue<B> = Option<Tensor<<B as AutodiffBackend>::InnerBackend, 1>>;

/// The fused head's part of [`weighted_backward`]: `ℓ` in chunks, the
/// weights, `∂S/∂W` into `grads`, and the autodiff gradients of
/// `⟨h, ∂S/∂h⟩` returned for the rest of the model, with the floor term's
/// value when there is one.
#[allow(clippy::too_many_arguments)]
fn fused_head_backward<B: AutodiffBackend>(
    model: &CausalLm<B>,
    picked: Tensor<B, 2>,
    positions: &ScoredPositions,
    memory: &MemoryOptions,
    weigh: &mut Weigh<'_>,
    on_chunk: &mut OnChunk<'_, B::InnerBackend>,
    floor: Option<&FloorTerm>,
    grads: &mut GradAccumulator<B::InnerBackend>,
) -> Result<(B::Gradients, FloorValue<B>), ModelError> {
    let device = picked.device();
    let config = model.config();
    let weight = model.head_weight();
    let rows = chunk_rows_or::<B::InnerBackend>(memory.head_chunk_rows, config.vocab_size, &device);
    let head = FusedHead::new(weight.val().inner(), config.logit_scale, rows);
    let hidden = picked.clone().inner();
    let targets = positions.target_index::<B::InnerBackend>(&device);
    let token_logps = head.token_logps(&hidden, &targets, on_chunk)?;
    let policy = row_sums(token_logps, positions);
    let weights = weigh(&read_vec::<f64, _, 1>(policy, "policy log-probabilities")?)?;
    let per_position: Vec<f32> = positions.row_of.iter().map(|&r| weights[r]).collect();
    let n = per_position.len();
    let coefficients = Tensor::from_data(TensorData::new(per_position, [n]), &device);
    // A frozen head (LoRA) gets no `∂S/∂W`.
    let trains_head = weight.val().is_require_grad();
    let (grad_hidden, grad_weight, floor_value) = head.backward(&hidden, &targets, &coefficients, floor, trains_head);
    let model_grads = (picked * Tensor::from_inner(grad_hidden)).sum().backward();
    if let Some(grad_weight) = grad_weight {
        grads.add_param(weight.id, grad_weight);
    }
    Ok((model_grads, floor_value))
}

fn no_gradient(what: &str) -> ModelError {
    ModelError::Batch(format!("activation checkpointing: no gradient reached {what}"))
}

/// The decoder blocks run without a graph: each block's input, and the
/// attention context they share. The pass runs on the autodiff backend with
/// the parameters marked constant (nothing is recorded), not on the inner
/// backend: burn's ndarray backend rounds some operations differently when
/// a buffer is not shared (in place), and the recomputation in backward must
/// see the values a single graph would have.
struct BlockInputs<B: AutodiffBackend> {
    inputs: Vec<Tensor<B, 3>>,
    output: Tensor<B, 3>,
    context: crate::model::AttentionContext<B>,
}

impl<B: AutodiffBackend> BlockInputs<B> {
    fn record(
        model: &CausalLm<B>,
        tokens: Tensor<B, 2, Int>,
        batch: &TokenBatch,
        blocks: &mut dyn BlockWeights<B>,
    ) -> Result<Self, ModelError> {
        let context = model.attention_context(batch.rows, 0, batch.len, &batch.positions, &tokens.device());
        let mut x = model.embed.clone().no_grad().forward(tokens);
        let mut inputs = Vec::with_capacity(model.layers.len());
        for i in 0..model.layers.len() {
            inputs.push(x.clone());
            // Each block's weights exist for its own forward pass only.
            x = blocks.block(model, i)?.no_grad().forward(x, &context, None);
        }
        Ok(Self { inputs, output: x, context })
    }

    /// The last block's output as a leaf that collects its gradient.
    fn leaf(&self) -> Tensor<B, 3> {
        self.output.clone().detach().require_grad()
    }
}
