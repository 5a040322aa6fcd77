//! The decoder-only transformer: Llama-family and Cohere Command R models,
//! generic over burn's backend. See [`config`] for where the families differ.
//!
//! Weights are built from a [`WeightSource`] under their Hugging Face names, so
//! the same code path loads checkpoints, makes random test models and reads
//! weights the browser fetched. Linear weights are kept as burn stores them,
//! `[in, out]`; Hugging Face files hold `[out, in]`, transposed on the host at
//! load and save.

mod adapters;
mod cache;
pub mod config;
mod layers;
pub mod lora;
mod positions;
pub mod rope;
pub mod tiny_configs;
mod weights;

use burn::module::{Module, Param};
use burn::nn::Embedding;
use burn::tensor::backend::Backend;
use burn::tensor::module::linear;
use burn::tensor::{FloatDType, Int, Tensor};

pub use adapters::peft_prefix;
pub use cache::{KvCache, LayerCache};
pub use config::{Architecture, ModelConfig, NormKind, OutputHead, RopeScaling};
pub use layers::{Attention, AttentionContext, DecoderLayer, Mlp, Norm};
pub use lora::{Adapter, LoraConfig, LoraLinear, LoraTarget};
pub use positions::Positions;
pub use weights::{ParamKind, RandomWeights, WeightSource};

use crate::error::ModelError;
use rope::{ROPE_TABLE_POSITIONS, RopeTables};

/// A causal language model: embedding, decoder blocks, final norm, head.
#[derive(Module, Debug)]
pub struct CausalLm<B: Backend> {
    /// `model.embed_tokens.weight`, `[V, d]`.
    pub embed: Embedding<B>,
    /// `model.layers.{i}`.
    pub layers: Vec<DecoderLayer<B>>,
    /// `model.norm.weight`.
    pub norm: Norm<B>,
    /// `lm_head.weight`, `[V, d]` as in the file; `None` when tied to the
    /// embedding, and in sequence-classification models.
    pub lm_head: Option<Param<Tensor<B, 2>>>,
    /// `score.weight`, `[labels, d]`: the head of sequence-classification
    /// (reward) models, `None` in language models.
    pub score: Option<Param<Tensor<B, 2>>>,
    /// RoPE `cos`/`sin` of the first positions, computed once.
    pub rope: RopeTables<B>,
    #[module(skip)]
    config: ModelConfig,
    /// The LoRA configuration when adapters are attached ([`lora`]).
    #[module(skip)]
    lora: Option<LoraConfig>,
}

impl<B: Backend> CausalLm<B> {
    /// Builds the model, reading every weight the configuration implies from
    /// `source` (shapes checked, values finite).
    pub fn from_weights(
        config: &ModelConfig,
        source: &mut dyn WeightSource,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        Self::from_weights_in(config, source, device, FloatDType::F32)
    }

    /// [`Self::from_weights`] with every weight in `dtype`, converted as it
    /// is built (a frozen LoRA base in bf16 never exists in f32 whole).
    pub fn from_weights_in(
        config: &ModelConfig,
        source: &mut dyn WeightSource,
        device: &B::Device,
        dtype: FloatDType,
    ) -> Result<Self, ModelError> {
        Self::from_weights_each_block(config, source, device, dtype, &mut |_, layer| Ok(layer))
    }

    /// [`Self::from_weights_in`], each decoder block handed to `on_block`
    /// (its index, the block as loaded) as soon as it is built and replaced
    /// by what it returns: sharded parameters keep this rank's slice of it
    /// and let the rest go, so the whole model never exists on one device.
    pub fn from_weights_each_block(
        config: &ModelConfig,
        source: &mut dyn WeightSource,
        device: &B::Device,
        dtype: FloatDType,
        on_block: &mut dyn FnMut(usize, DecoderLayer<B>) -> Result<DecoderLayer<B>, ModelError>,
    ) -> Result<Self, ModelError> {
        let c = config;
        let mut load = weights::Loader { source, device, dtype };
        let embed = Embedding { weight: load.matrix("model.embed_tokens.weight", [c.vocab_size, c.hidden_size])? };
        let layers = (0..c.num_layers)
            .map(|i| on_block(i, DecoderLayer::load(c, &format!("model.layers.{i}"), &mut load)?))
            .collect::<Result<Vec<_>, _>>()?;
        let norm = Norm::load(c, "model.norm", &mut load)?;
        let (lm_head, score) = match c.head {
            OutputHead::LanguageModel if c.tie_word_embeddings => (None, None),
            OutputHead::LanguageModel => (Some(load.matrix("lm_head.weight", [c.vocab_size, c.hidden_size])?), None),
            OutputHead::SequenceClassification { num_labels } => {
                (None, Some(load.matrix("score.weight", [num_labels, c.hidden_size])?))
            }
        };
        let rope = RopeTables::new(c, c.max_position_embeddings.min(ROPE_TABLE_POSITIONS), device);
        Ok(Self { embed, layers, norm, lm_head, score, rope, config: c.clone(), lora: None })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Final hidden states `[rows, seq, d]` (after the last norm: what the
    /// head reads) of token ids `[rows, seq]` laid out as `positions` says.
    /// A query sees the keys of its own row up to its own column (within a
    /// sliding window where the model has one), never padding, and in packed
    /// rows only its own sequence's. With `cache`,
    /// the columns of earlier calls are attended to and this call's are added.
    pub fn hidden(
        &self,
        tokens: Tensor<B, 2, Int>,
        positions: &Positions,
        cache: Option<&mut KvCache<B>>,
    ) -> Result<Tensor<B, 3>, ModelError> {
        Ok(self.norm.forward(self.blocks(tokens, positions, cache)?))
    }

    /// The output of the last decoder block, `[rows, seq, d]`: [`Self::hidden`]
    /// before the final norm.
    pub fn blocks(
        &self,
        tokens: Tensor<B, 2, Int>,
        positions: &Positions,
        mut cache: Option<&mut KvCache<B>>,
    ) -> Result<Tensor<B, 3>, ModelError> {
        let [rows, seq] = tokens.dims();
        let past = match cache.as_deref_mut() {
            None => 0,
            Some(cache) => {
                if cache.layers.len() != self.layers.len() {
                    return Err(ModelError::Batch(format!(
                        "the key/value cache has {} layers, the model {}",
                        cache.layers.len(),
                        self.layers.len()
                    )));
                }
                if cache.rows.is_some_and(|r| r != rows) {
                    return Err(ModelError::Batch(format!(
                        "the key/value cache holds {} rows, the tokens {rows}",
                        cache.rows.unwrap_or(0)
                    )));
                }
                cache.columns
            }
        };
        if cache.is_some() && positions.packed_starts().is_some() {
            return Err(ModelError::Batch(
                "packed rows (several sequences per row) cannot use a key/value cache".into(),
            ));
        }
        positions.check(rows, past, seq)?;
        let at = self.attention_context(rows, past, seq, positions, &tokens.device());
        let mut x = self.embed.forward(tokens);
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = layer.forward(x, &at, layer_cache);
        }
        if let Some(cache) = cache {
            cache.rows = Some(rows);
            cache.columns += seq;
        }
        Ok(x)
    }

    /// What every block needs to know about the positions of columns
    /// `past..past + seq` of `rows` rows laid out as `positions` says: RoPE
    /// tables and which keys each query must not see.
    pub fn attention_context(
        &self,
        rows: usize,
        past: usize,
        seq: usize,
        positions: &Positions,
        device: &B::Device,
    ) -> AttentionContext<B> {
        let (cos, sin) = match positions.is_from_zero() {
            true => self.rope.contiguous(past, seq),
            false => self.rope.gathered(&positions.of_columns(rows, past, seq), rows, seq),
        };
        // The tables are f32; the activations they multiply are in the weights' dtype.
        let dtype = self.dtype();
        let (cos, sin) = (cos.cast(dtype), sin.cast(dtype));
        let hidden_keys = positions::hidden_keys::<B>(rows, past, seq, positions, self.config.sliding_window, device);
        AttentionContext { cos, sin, hidden_keys }
    }

    /// The output head's weight `[V, d]`: `lm_head`, or the embedding when tied.
    pub fn head_weight(&self) -> &Param<Tensor<B, 2>> {
        match &self.lm_head {
            Some(w) => w,
            None => &self.embed.weight,
        }
    }

    /// Logits of hidden states (`[…, d] → […, V]`), in f32 whatever the
    /// weights' dtype: the output head (the embedding matrix when tied),
    /// times Cohere's `logit_scale`. Apply it only where logits are needed:
    /// the objective's completion positions, generation's last column.
    pub fn head<const D: usize>(&self, hidden: Tensor<B, D>) -> Tensor<B, D> {
        let logits = linear(hidden, self.head_weight().val().transpose(), None).cast(FloatDType::F32);
        if self.config.logit_scale == 1.0 { logits } else { logits.mul_scalar(self.config.logit_scale) }
    }

    /// Sequence-classification outputs `[rows, labels]` of hidden states
    /// `[rows, d]` (each row's last token): `h · scoreᵀ`. An error for
    /// language models, which have no score head.
    pub fn scores(&self, hidden: Tensor<B, 2>) -> Result<Tensor<B, 2>, ModelError> {
        match &self.score {
            Some(w) => Ok(linear(hidden, w.val().transpose(), None).cast(FloatDType::F32)),
            None => Err(ModelError::Config(format!(
                "{} has no `score` head: a reward model is a `…ForSequenceClassification` checkpoint",
                self.config.architecture_name
            ))),
        }
    }

    /// Logits `[rows, seq, V]` at every position of token ids `[rows, seq]`
    /// that start at column 0 (`head(hidden(tokens))`). Right padding never
    /// changes the real positions.
    pub fn forward(&self, tokens: Tensor<B, 2, Int>) -> Result<Tensor<B, 3>, ModelError> {
        Ok(self.head(self.hidden(tokens, &Positions::from_zero(), None)?))
    }

    /// Every weight under its Hugging Face name, in the file layout (`[out, in]`
    /// for linear layers), in a fixed order.
    pub fn visit_weights(&self, visit: &mut dyn FnMut(&str, ParamKind<'_, B>)) {
        visit("model.embed_tokens.weight", ParamKind::Matrix(&self.embed.weight));
        for (i, layer) in self.layers.iter().enumerate() {
            layer.visit(&format!("model.layers.{i}"), visit);
        }
        self.norm.visit("model.norm", visit);
        if let Some(head) = &self.lm_head {
            visit("lm_head.weight", ParamKind::Matrix(head));
        }
        if let Some(score) = &self.score {
            visit("score.weight", ParamKind::Matrix(score));
        }
    }
}
