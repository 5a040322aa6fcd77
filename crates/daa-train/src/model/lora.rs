//! LoRA (Hu et al. 2021): a frozen linear layer `y = x W (+ b)` plus a
//! trainable low-rank update,
//!
//! ```text
//! y = x W (+ b) + s · dropout(x) A B,    A: [in, r],  B: [r, out],
//! s = α / r   (rsLoRA: s = α / √r)
//! ```
//!
//! with `A` drawn as PEFT draws it (`U(−1/√in, 1/√in)`, Kaiming-uniform with
//! `a = √5`) and `B = 0`, so a fresh adapter leaves the model unchanged. The
//! adapters are kept in f32 whatever the base weights' dtype (`x` is widened
//! for their product and the result rounded back), as PEFT keeps them; the
//! base model's parameters are marked constant, so backward computes no
//! gradient for them. Files name them as PEFT does:
//! `base_model.model.{layer}.lora_A.weight` `[r, in]` and `….lora_B.weight`
//! `[out, r]` (see [`crate::model::CausalLm::visit_adapters`]).

use burn::module::{Module, Param};
use burn::nn::{DropoutConfig, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::ModelError;
use crate::fused::linear::linear;
use crate::rng::uniform_open;

/// A linear layer LoRA can adapt, named as PEFT's `target_modules` name it
/// (the same in Llama-family models and Command R).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LoraTarget {
    /// `self_attn.q_proj`.
    Q,
    /// `self_attn.k_proj`.
    K,
    /// `self_attn.v_proj`.
    V,
    /// `self_attn.o_proj`.
    O,
    /// `mlp.gate_proj`.
    Gate,
    /// `mlp.up_proj`.
    Up,
    /// `mlp.down_proj`.
    Down,
}

impl LoraTarget {
    /// Every target, in the order a decoder block holds them.
    pub const ALL: [LoraTarget; 7] = [Self::Q, Self::K, Self::V, Self::O, Self::Gate, Self::Up, Self::Down];

    /// PEFT's name (`q_proj`, …).
    pub fn peft_name(self) -> &'static str {
        match self {
            Self::Q => "q_proj",
            Self::K => "k_proj",
            Self::V => "v_proj",
            Self::O => "o_proj",
            Self::Gate => "gate_proj",
            Self::Up => "up_proj",
            Self::Down => "down_proj",
        }
    }

    /// The module path inside a decoder block (`self_attn.q_proj`, …).
    pub fn block_path(self) -> &'static str {
        match self {
            Self::Q => "self_attn.q_proj",
            Self::K => "self_attn.k_proj",
            Self::V => "self_attn.v_proj",
            Self::O => "self_attn.o_proj",
            Self::Gate => "mlp.gate_proj",
            Self::Up => "mlp.up_proj",
            Self::Down => "mlp.down_proj",
        }
    }

    /// The targets a `target_modules` entry names: one PEFT name, or
    /// `all-linear` (every linear layer of the blocks, as PEFT expands it
    /// for a causal LM: the output head excluded).
    pub fn parse(name: &str) -> Result<Vec<Self>, ModelError> {
        if name == "all-linear" {
            return Ok(Self::ALL.to_vec());
        }
        Self::ALL.into_iter().find(|t| t.peft_name() == name).map(|t| vec![t]).ok_or_else(|| {
            let known: Vec<&str> = Self::ALL.iter().map(|t| t.peft_name()).collect();
            ModelError::Lora(format!(
                "`{name}` is not a linear layer of the decoder blocks; daa adapts {} or `all-linear`",
                known.join(", ")
            ))
        })
    }
}

/// A list of names, or one name.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(name) => vec![name],
        OneOrMany::Many(names) => names,
    })
}

fn default_rank() -> usize {
    8
}
fn default_alpha() -> f64 {
    8.0
}
fn default_targets() -> Vec<String> {
    vec!["q_proj".into(), "v_proj".into()]
}

/// `[lora]`: which layers get adapters, their rank and scale. The defaults
/// are PEFT's `LoraConfig`'s for Llama (`r = 8`, `lora_alpha = 8`, no
/// dropout, `q_proj` and `v_proj`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// `r`.
    #[serde(default = "default_rank")]
    pub rank: usize,
    /// `α` (`lora_alpha`).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Dropout probability on the adapters' input while training (`lora_dropout`).
    #[serde(default)]
    pub dropout: f64,
    /// PEFT names of the adapted layers, or `["all-linear"]` (`"all-linear"`
    /// alone, as PEFT also takes it).
    #[serde(default = "default_targets", deserialize_with = "one_or_many")]
    pub target_modules: Vec<String>,
    /// rsLoRA's scale `α / √r` instead of `α / r` (`use_rslora`).
    #[serde(default)]
    pub use_rslora: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            rank: default_rank(),
            alpha: default_alpha(),
            dropout: 0.0,
            target_modules: default_targets(),
            use_rslora: false,
        }
    }
}

impl LoraConfig {
    /// Checks the values; each message names its field.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.rank == 0 {
            return Err(ModelError::Lora("`lora.rank` must be at least 1".into()));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(ModelError::Lora(format!("`lora.alpha` must be a positive number, found {}", self.alpha)));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(ModelError::Lora(format!("`lora.dropout` must lie in [0, 1), found {}", self.dropout)));
        }
        if self.target_modules.is_empty() {
            return Err(ModelError::Lora("`lora.target_modules` names no layer".into()));
        }
        self.targets().map(|_| ()).map_err(|e| ModelError::Lora(format!("`lora.target_modules`: {e}")))
    }

    /// The adapted layers, each once, in block order.
    pub fn targets(&self) -> Result<Vec<LoraTarget>, ModelError> {
        let mut targets = Vec::new();
        for name in &self.target_modules {
            targets.extend(LoraTarget::parse(name)?);
        }
        targets.sort();
        targets.dedup();
        Ok(targets)
    }

    /// `s = α / r`, or `α / √r` with rsLoRA.
    pub fn scale(&self) -> f64 {
        let r = self.rank as f64;
        if self.use_rslora { self.alpha / r.sqrt() } else { self.alpha / r }
    }
}

/// One adapter: `s · dropout(x) A B`, in f32.
#[derive(Module, Debug)]
pub struct Adapter<B: Backend> {
    /// `A`, `[in, r]` (PEFT's `lora_A.weight` is its transpose).
    pub a: Param<Tensor<B, 2>>,
    /// `B`, `[r, out]` (PEFT's `lora_B.weight` is its transpose).
    pub b: Param<Tensor<B, 2>>,
    #[module(skip)]
    scale: f64,
    #[module(skip)]
    dropout: f64,
}

impl<B: Backend> Adapter<B> {
    /// An adapter of `a` `[in, r]` and `b` `[r, out]` (made trainable).
    pub fn new(a: Param<Tensor<B, 2>>, b: Param<Tensor<B, 2>>, config: &LoraConfig) -> Self {
        Self {
            a: a.set_require_grad(true),
            b: b.set_require_grad(true),
            scale: config.scale(),
            dropout: config.dropout,
        }
    }

    /// A fresh adapter for a `[d_in, d_out]` layer: `A ~ U(−1/√d_in, 1/√d_in)`
    /// from a stream seeded by `seed` and `name`, `B = 0`.
    pub fn fresh(name: &str, d_in: usize, d_out: usize, config: &LoraConfig, seed: u64, device: &B::Device) -> Self {
        let r = config.rank;
        let bound = 1.0 / (d_in as f64).sqrt();
        let mut state = name
            .bytes()
            .fold(seed ^ 0x4C6F_5241_2D41_0001, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3));
        let a: Vec<f32> = (0..d_in * r).map(|_| ((2.0 * uniform_open(&mut state) - 1.0) * bound) as f32).collect();
        let a = Param::from_data(TensorData::new(a, [d_in, r]), device);
        let b = Param::from_data(TensorData::new(vec![0f32; r * d_out], [r, d_out]), device);
        Self::new(a, b, config)
    }

    /// `s · dropout(x) A B` of `x` `[…, in]`, in the adapter's dtype (f32:
    /// `x` widened for the products, as PEFT does). Dropout acts only on an
    /// autodiff backend (training), as burn's `Dropout` does, drawing from
    /// the backend's generator (which [`crate::Trainer`] seeds per step).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let mut x = x.cast(FloatDType::from(self.a.val().dtype()));
        if self.dropout > 0.0 {
            x = DropoutConfig::new(self.dropout).init().forward(x);
        }
        linear(linear(x, self.a.val(), None), self.b.val(), None).mul_scalar(self.scale)
    }

    /// The dropout probability.
    pub fn dropout(&self) -> f64 {
        self.dropout
    }

    /// `s · A B`, `[in, out]`, f32: the update merging adds to `W`.
    pub fn delta(&self) -> Tensor<B, 2> {
        self.a.val().matmul(self.b.val()).mul_scalar(self.scale)
    }
}

/// A linear layer with an optional adapter.
#[derive(Module, Debug)]
pub struct LoraLinear<B: Backend> {
    /// The (frozen, when adapted) layer.
    pub base: Linear<B>,
    /// The adapter, when this layer is a LoRA target.
    pub adapter: Option<Adapter<B>>,
}

impl<B: Backend> LoraLinear<B> {
    /// A layer without adapter.
    pub fn plain(base: Linear<B>) -> Self {
        Self { base, adapter: None }
    }

    /// `x W (+ b)`, plus the adapter's update when there is one, summed in
    /// the adapter's dtype and rounded once to `x`'s (as PEFT does).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match &self.adapter {
            None => self.base_forward(x),
            // The adapter first: `x` is then the base product's alone, which
            // (on burn's CPU backends) rounds as it does without an adapter.
            Some(adapter) => {
                let dtype = FloatDType::from(x.dtype());
                let update = adapter.forward(x.clone());
                let base = self.base_forward(x);
                (base.cast(FloatDType::from(update.dtype())) + update).cast(dtype)
            }
        }
    }

    /// `x W (+ b)` of the base layer (burn's `Linear::forward`, through the
    /// fused linear node).
    fn base_forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        linear(x, self.base.weight.val(), self.base.bias.as_ref().map(Param::val))
    }

    /// `[in, out]` of the base weight.
    pub fn dims(&self) -> [usize; 2] {
        self.base.weight.val().dims()
    }

    /// Folds the adapter into the layer: `W ← W + s A B` (in `W`'s dtype),
    /// no adapter left.
    pub fn merge(&mut self) {
        let Some(adapter) = self.adapter.take() else { return };
        self.base.weight = self.base.weight.clone().map(|w| {
            let dtype = FloatDType::from(w.dtype());
            (w.cast(FloatDType::F32) + adapter.delta()).cast(dtype)
        });
    }
}
