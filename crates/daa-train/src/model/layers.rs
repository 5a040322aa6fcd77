//! Norms, attention, MLP and the decoder block.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor};

use super::cache::LayerCache;
use super::config::{ModelConfig, NormKind};
use super::lora::{LoraLinear, LoraTarget};
use super::rope::Rope;
use super::weights::{Loader, ParamKind};
use crate::error::ModelError;
use crate::fused;

/// RMSNorm `y = x / √(mean(x²) + ε) · w` or, for Cohere, LayerNorm without
/// bias `y = (x − μ) / √(σ² + ε) · w` (`μ`, `σ²` the mean and biased variance
/// over the last axis). The normalisation runs in f32 whatever `x`'s dtype;
/// its result is rounded back to it before the product with `w`, as in
/// Hugging Face's Llama.
#[derive(Module, Debug)]
pub struct Norm<B: Backend> {
    /// `w`, `[d]`.
    pub weight: Param<Tensor<B, 1>>,
    #[module(skip)]
    kind: NormKind,
    #[module(skip)]
    eps: f64,
}

impl<B: Backend> Norm<B> {
    pub(crate) fn load(c: &ModelConfig, prefix: &str, load: &mut Loader<'_, B>) -> Result<Self, ModelError> {
        Ok(Self { weight: load.vector(&format!("{prefix}.weight"), c.hidden_size)?, kind: c.norm, eps: c.norm_eps })
    }

    /// Normalises over the last axis of `[batch, seq, d]` ([`crate::fused::norm`]).
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        fused::norm::norm(x, self.weight.val(), self.kind, self.eps)
    }

    pub(crate) fn visit(&self, prefix: &str, visit: &mut dyn FnMut(&str, ParamKind<'_, B>)) {
        visit(&format!("{prefix}.weight"), ParamKind::Vector(&self.weight));
    }
}

fn visit_linear<B: Backend>(name: &str, l: &LoraLinear<B>, visit: &mut dyn FnMut(&str, ParamKind<'_, B>)) {
    let l = &l.base;
    visit(&format!("{name}.weight"), ParamKind::Linear(&l.weight));
    if let Some(bias) = &l.bias {
        visit(&format!("{name}.bias"), ParamKind::Vector(bias));
    }
}

/// What every block needs about positions, built once per call of
/// [`super::CausalLm::hidden`].
#[derive(Debug, Clone)]
pub struct AttentionContext<B: Backend> {
    /// RoPE `cos` `[rows or 1, 1, seq, h]`.
    pub cos: Tensor<B, 4>,
    /// RoPE `sin` `[rows or 1, 1, seq, h]`.
    pub sin: Tensor<B, 4>,
    /// `true` where a query must not see a key, `[rows or 1, 1, seq, keys]`
    /// (see `model/positions.rs`, `hidden_keys`); `None` when every key is visible.
    pub hidden_keys: Option<Tensor<B, 4, Bool>>,
}

/// Grouped-query self-attention with RoPE:
/// `softmax(q kᵀ / √h + bias) v`, each key/value head shared by
/// `heads / kv_heads` query heads ([`crate::fused::attention`]).
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// `q_proj`.
    pub q: LoraLinear<B>,
    /// `k_proj`.
    pub k: LoraLinear<B>,
    /// `v_proj`.
    pub v: LoraLinear<B>,
    /// `o_proj`.
    pub o: LoraLinear<B>,
    #[module(skip)]
    heads: usize,
    #[module(skip)]
    kv_heads: usize,
    #[module(skip)]
    head_dim: usize,
    #[module(skip)]
    rope: Rope,
}

impl<B: Backend> Attention<B> {
    fn load(c: &ModelConfig, prefix: &str, load: &mut Loader<'_, B>) -> Result<Self, ModelError> {
        let (d, h, kv) = (c.hidden_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        Ok(Self {
            q: LoraLinear::plain(load.linear(&format!("{prefix}.q_proj"), d, h, c.qkv_bias)?),
            k: LoraLinear::plain(load.linear(&format!("{prefix}.k_proj"), d, kv, c.qkv_bias)?),
            v: LoraLinear::plain(load.linear(&format!("{prefix}.v_proj"), d, kv, c.qkv_bias)?),
            o: LoraLinear::plain(load.linear(&format!("{prefix}.o_proj"), h, d, c.o_bias)?),
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            rope: Rope::new(c),
        })
    }

    fn split_heads(&self, x: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
        let [b, t, _] = x.dims();
        x.reshape([b, t, heads, self.head_dim]).swap_dims(1, 2)
    }

    /// `[batch, seq, d] → [batch, seq, d]`. With `cache`, the keys and values
    /// of earlier calls are attended to and this call's are appended.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        at: &AttentionContext<B>,
        cache: Option<&mut LayerCache<B>>,
    ) -> Tensor<B, 3> {
        let [b, t, _] = x.dims();
        let q = self.rope.apply(self.split_heads(self.q.forward(x.clone()), self.heads), &at.cos, &at.sin);
        let k = self.rope.apply(self.split_heads(self.k.forward(x.clone()), self.kv_heads), &at.cos, &at.sin);
        let v = self.split_heads(self.v.forward(x), self.kv_heads);
        let (k, v) = match cache {
            Some(cache) => cache.append(k, v),
            None => (k, v),
        };
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let context = fused::attention::attention(q, k, v, at.hidden_keys.clone(), scale);
        self.o.forward(context.swap_dims(1, 2).reshape([b, t, self.heads * self.head_dim]))
    }

    fn visit(&self, prefix: &str, visit: &mut dyn FnMut(&str, ParamKind<'_, B>)) {
        for (name, l) in [("q_proj", &self.q), ("k_proj", &self.k), ("v_proj", &self.v), ("o_proj", &self.o)] {
            visit_linear(&format!("{prefix}.{name}"), l, visit);
        }
    }
}

/// SwiGLU MLP: `down(silu(gate(x)) ⊙ up(x))` ([`crate::fused::swiglu`]).
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// `gate_proj`.
    pub gate: LoraLinear<B>,
    /// `up_proj`.
    pub up: LoraLinear<B>,
    /// `down_proj`.
    pub down: LoraLinear<B>,
}

impl<B: Backend> Mlp<B> {
    fn load(c: &ModelConfig, prefix: &str, load: &mut Loader<'_, B>) -> Result<Self, ModelError> {
        let (d, m) = (c.hidden_size, c.intermediate_size);
        Ok(Self {
            gate: LoraLinear::plain(load.linear(&format!("{prefix}.gate_proj"), d, m, c.mlp_bias)?),
            up: LoraLinear::plain(load.linear(&format!("{prefix}.up_proj"), d, m, c.mlp_bias)?),
            down: LoraLinear::plain(load.linear(&format!("{prefix}.down_proj"), m, d, c.mlp_bias)?),
        })
    }

    /// `[batch, seq, d] → [batch, seq, d]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.down.forward(fused::swiglu::swiglu(self.gate.forward(x.clone()), self.up.forward(x)))
    }

    fn visit(&self, prefix: &str, visit: &mut dyn FnMut(&str, ParamKind<'_, B>)) {
        for (name, l) in [("gate_proj", &self.gate), ("up_proj", &self.up), ("down_proj", &self.down)] {
            visit_linear(&format!("{prefix}.{name}"), l, visit);
        }
    }
}

/// One decoder block. Sequential (Llama): `h = x + attn(n₁(x))`,
/// `y = h + mlp(n₂(h))`. Parallel (Cohere, `post_norm` absent):
/// `y = x + attn(n₁(x)) + mlp(n₁(x))`.
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    /// `input_layernorm`.
    pub input_norm: Norm<B>,
    /// `post_attention_layernorm` (sequential blocks only).
    pub post_norm: Option<Norm<B>>,
    /// `self_attn`.
    pub attention: Attention<B>,
    /// `mlp`.
    pub mlp: Mlp<B>,
}

impl<B: Backend> DecoderLayer<B> {
    pub(crate) fn load(c: &ModelConfig, prefix: &str, load: &mut Loader<'_, B>) -> Result<Self, ModelError> {
        Ok(Self {
            input_norm: Norm::load(c, &format!("{prefix}.input_layernorm"), load)?,
            post_norm: if c.parallel_block {
                None
            } else {
                Some(Norm::load(c, &format!("{prefix}.post_attention_layernorm"), load)?)
            },
            attention: Attention::load(c, &format!("{prefix}.self_attn"), load)?,
            mlp: Mlp::load(c, &format!("{prefix}.mlp"), load)?,
        })
    }

    /// `[batch, seq, d] → [batch, seq, d]`.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        at: &AttentionContext<B>,
        cache: Option<&mut LayerCache<B>>,
    ) -> Tensor<B, 3> {
        let normed = self.input_norm.forward(x.clone());
        match &self.post_norm {
            None => {
                let attended = self.attention.forward(normed.clone(), at, cache);
                x + attended + self.mlp.forward(normed)
            }
            Some(post_norm) => {
                let h = x + self.attention.forward(normed, at, cache);
                h.clone() + self.mlp.forward(post_norm.forward(h))
            }
        }
    }

    /// The linear layer LoRA names `target`.
    pub fn linear(&self, target: LoraTarget) -> &LoraLinear<B> {
        match target {
            LoraTarget::Q => &self.attention.q,
            LoraTarget::K => &self.attention.k,
            LoraTarget::V => &self.attention.v,
            LoraTarget::O => &self.attention.o,
            LoraTarget::Gate => &self.mlp.gate,
            LoraTarget::Up => &self.mlp.up,
            LoraTarget::Down => &self.mlp.down,
        }
    }

    /// [`Self::linear`], mutably.
    pub fn linear_mut(&mut self, target: LoraTarget) -> &mut LoraLinear<B> {
        match target {
            LoraTarget::Q => &mut self.attention.q,
            LoraTarget::K => &mut self.attention.k,
            LoraTarget::V => &mut self.attention.v,
            LoraTarget::O => &mut self.attention.o,
            LoraTarget::Gate => &mut self.mlp.gate,
            LoraTarget::Up => &mut self.mlp.up,
            LoraTarget::Down => &mut self.mlp.down,
        }
    }

    pub(crate) fn visit(&self, prefix: &str, visit: &mut dyn FnMut(&str, ParamKind<'_, B>)) {
        self.input_norm.visit(&format!("{prefix}.input_layernorm"), visit);
        if let Some(post) = &self.post_norm {
            post.visit(&format!("{prefix}.post_attention_layernorm"), visit);
        }
        self.attention.visit(&format!("{prefix}.self_attn"), visit);
        self.mlp.visit(&format!("{prefix}.mlp"), visit);
    }
}
