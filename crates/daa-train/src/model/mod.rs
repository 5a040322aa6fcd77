//! The decoder-only transformer: Llama-family and Cohere Command R models,
//! generic over burn's backend. See [`config`] for where the families differ.
//!
//! Weights are built from a [`WeightSource`] under their Hugging Face names, so
//! the same code path loads checkpoints, makes random test models and reads
//! weights the browser fetched. Linear weights are kept as burn stores them,
//! `[in, out]`; Hugging Face files hold `[out, in]`, transposed on the host at
//! load and save.

pub mod config;
mod layers;
pub mod rope;
mod weights;

use burn::module::{Module, Param};
use burn::nn::Embedding;
use burn::tensor::backend::Backend;
use burn::tensor::module::linear;
use burn::tensor::{Int, Tensor};

pub use config::{Architecture, ModelConfig, NormKind, RopeScaling};
pub use layers::{Attention, DecoderLayer, Mlp, Norm, Positions};
pub use weights::{ParamKind, RandomWeights, WeightSource};

use crate::error::ModelError;
use rope::Rope;

/// A causal language model: embedding, decoder blocks, final norm, head.
#[derive(Module, Debug)]
pub struct CausalLm<B: Backend> {
    /// `model.embed_tokens.weight`, `[V, d]`.
    pub embed: Embedding<B>,
    /// `model.layers.{i}`.
    pub layers: Vec<DecoderLayer<B>>,
    /// `model.norm.weight`.
    pub norm: Norm<B>,
    /// `lm_head.weight`, `[V, d]` as in the file; `None` when tied to the embedding.
    pub lm_head: Option<Param<Tensor<B, 2>>>,
    #[module(skip)]
    config: ModelConfig,
    #[module(skip)]
    rope: Rope,
}

impl<B: Backend> CausalLm<B> {
    /// Builds the model, reading every weight the configuration implies from
    /// `source` (shapes checked, values finite).
    pub fn from_weights(
        config: &ModelConfig,
        source: &mut dyn WeightSource,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        let c = config;
        let mut load = weights::Loader { source, device };
        let embed = Embedding { weight: load.matrix("model.embed_tokens.weight", [c.vocab_size, c.hidden_size])? };
        let layers = (0..c.num_layers)
            .map(|i| DecoderLayer::load(c, &format!("model.layers.{i}"), &mut load))
            .collect::<Result<Vec<_>, _>>()?;
        let norm = Norm::load(c, "model.norm", &mut load)?;
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(load.matrix("lm_head.weight", [c.vocab_size, c.hidden_size])?)
        };
        Ok(Self { embed, layers, norm, lm_head, config: c.clone(), rope: Rope::new(c) })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Logits `[batch, seq, V]` for token ids `[batch, seq]`. Position `i`
    /// sees positions `≤ i` (and, with a sliding window `w`, `> i − w`), so
    /// right padding never changes the real positions.
    pub fn forward(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [_, seq] = tokens.dims();
        let device = tokens.device();
        let (cos, sin) = self.rope.tables::<B>(seq, &device);
        let bias = layers::attention_bias::<B>(seq, self.config.sliding_window, &device);
        let at = Positions { cos, sin, bias };
        let mut x = self.embed.forward(tokens);
        for layer in &self.layers {
            x = layer.forward(x, &at);
        }
        let x = self.norm.forward(x);
        let head = match &self.lm_head {
            Some(w) => w.val(),
            None => self.embed.weight.val(),
        };
        let logits = linear(x, head.transpose(), None);
        if self.config.logit_scale == 1.0 { logits } else { logits.mul_scalar(self.config.logit_scale) }
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
    }
}
