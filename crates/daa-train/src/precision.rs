//! Mixed-precision training (`train.precision = "bf16"`): the model's
//! weights and activations in bf16, the master weights, gradient sums and
//! AdamW moments in f32.
//!
//! One step with precision `p` = bf16, for parameters `θ` held as f32
//! masters `θ₃₂`:
//!
//! ```text
//! θ_p  = round_p(θ₃₂)                         the model the step runs
//! g₃₂  = f32(∇_θp L(θ_p))                     summed over micro-batches in f32
//! θ₃₂ ← AdamW(θ₃₂, g₃₂)                       moments m, v in f32
//! ```
//!
//! so an update smaller than half a unit in the last place of `θ_p` is kept
//! in `θ₃₂` instead of being rounded away. Inside the model, what loses
//! most in 16 bits runs in f32 (as Hugging Face's Llama does): RMSNorm's and
//! LayerNorm's statistics, the attention softmax, and the logits from the
//! output head on (log-softmax, log-probabilities, the objective, the top-k
//! statistics). Everything else — the matrix products, RoPE, SwiGLU, the
//! residual stream — runs in `p`.
//!
//! bf16 is the precision of NVIDIA's Ampere and later GPUs; burn's CPU
//! backend (Flex) runs it too, which is how it is tested here. A device
//! without bf16 (most wgpu adapters) is refused with a message before
//! anything loads. IEEE f16 is not offered: its 5-bit exponent makes small
//! gradients underflow without loss scaling, which is not built.

use std::collections::HashSet;

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, FloatDType, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::ModelError;
use crate::model::CausalLm;

/// The dtype of the model's weights and activations while training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// bfloat16 weights and activations, f32 masters, gradient sums and
    /// optimizer state.
    Bf16,
}

impl Precision {
    /// The name users write.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// burn's dtype of the weights and activations.
    pub fn dtype(self) -> FloatDType {
        match self {
            Precision::F32 => FloatDType::F32,
            Precision::Bf16 => FloatDType::BF16,
        }
    }

    /// Bytes per weight or activation value.
    pub fn bytes(self) -> u64 {
        match self {
            Precision::F32 => 4,
            Precision::Bf16 => 2,
        }
    }

    /// Whether f32 master weights are kept beside the model's.
    pub fn keeps_masters(self) -> bool {
        self != Precision::F32
    }

    /// An error unless backend `B` computes in this precision on `device`.
    pub fn check_supported<B: Backend>(self, device: &B::Device) -> Result<(), ModelError> {
        let dtype: DType = self.dtype().into();
        if B::supports_dtype(device, dtype) {
            Ok(())
        } else {
            Err(ModelError::Config(format!(
                "train.precision = \"{}\": the device {device:?} cannot compute in {dtype:?}; use \"f32\"",
                self.as_str(),
            )))
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Casts every float parameter but those in `keep` (LoRA adapters, f32
/// always) to one dtype, keeping its id and whether it requires a gradient
/// (a new leaf, not a node of the old graph).
struct CastParams {
    dtype: FloatDType,
    keep: HashSet<ParamId>,
}

impl<B: Backend> ModuleMapper<B> for CastParams {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        if self.keep.contains(&id) {
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let trains = tensor.is_require_grad();
        let cast = tensor.cast(self.dtype).detach().set_require_grad(trains);
        Param::from_mapped_value(id, cast, mapper)
    }
}

impl<B: Backend> CausalLm<B> {
    /// The model with every weight in `dtype` (parameter ids kept), LoRA
    /// adapters excepted: they stay in f32.
    pub fn cast(self, dtype: FloatDType) -> Self {
        if self.dtype() == dtype {
            return self;
        }
        let keep = self.adapter_ids();
        self.map(&mut CastParams { dtype, keep })
    }

    /// The dtype of the weights and activations (the embedding's).
    pub fn dtype(&self) -> FloatDType {
        self.embed.weight.val().dtype().into()
    }
}
