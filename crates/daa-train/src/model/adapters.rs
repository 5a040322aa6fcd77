//! LoRA on a whole model ([`super::lora`]): fresh or saved adapters on the
//! configured layers of every block, the adapter-off model (the reference
//! policy of a LoRA run), merging, and the tensor names PEFT files use.

use std::collections::HashSet;

use burn::module::{Module, ParamId};
use burn::tensor::backend::Backend;

use super::CausalLm;
use super::lora::{Adapter, LoraConfig, LoraTarget};
use super::weights::{Loader, ParamKind, WeightSource};
use crate::error::ModelError;

/// PEFT's name of the adapted layer `target` of block `layer`, without the
/// `lora_A` / `lora_B` part: `base_model.model.model.layers.{i}.self_attn.q_proj`.
pub fn peft_prefix(layer: usize, target: LoraTarget) -> String {
    format!("base_model.model.model.layers.{layer}.{}", target.block_path())
}

/// Builds the adapter of a layer: `(PEFT prefix, d_in, d_out, device)`.
type MakeAdapter<'a, B> =
    dyn FnMut(&str, usize, usize, &burn::tensor::Device<B>) -> Result<Adapter<B>, ModelError> + 'a;

impl<B: Backend> CausalLm<B> {
    /// The LoRA configuration of the attached adapters; `None` without adapters.
    pub fn lora(&self) -> Option<&LoraConfig> {
        self.lora.as_ref()
    }

    /// The model with fresh adapters ([`Adapter::fresh`], seeded by `seed`
    /// and each layer's name) on `config`'s targets of every block, every
    /// other parameter constant (no gradient). The outputs are unchanged
    /// (`B = 0`).
    pub fn with_lora(self, config: &LoraConfig, seed: u64) -> Result<Self, ModelError> {
        self.attach(config, &mut |prefix, d_in, d_out, device| {
            Ok(Adapter::fresh(prefix, d_in, d_out, config, seed, device))
        })
    }

    /// The model with the adapters `source` holds under PEFT's names
    /// (`{prefix}.lora_A.weight` `[r, in]`, `{prefix}.lora_B.weight`
    /// `[out, r]`; shapes checked, values finite) on `config`'s targets.
    pub fn with_saved_lora(self, config: &LoraConfig, source: &mut dyn WeightSource) -> Result<Self, ModelError> {
        let r = config.rank;
        self.attach(config, &mut |prefix, d_in, d_out, device| {
            let mut load = Loader { source: &mut *source, device, dtype: burn::tensor::FloatDType::F32 };
            // The shapes come from the rank and the base model's widths.
            let shaped = |e: ModelError| match e {
                ModelError::Shape { name, expected, found } => ModelError::Lora(format!(
                    "tensor `{name}`: expected shape {expected:?} (rank r = {r} and the base model's config.json), \
                     found {found:?}"
                )),
                other => other,
            };
            let a = load.linear(&format!("{prefix}.lora_A"), d_in, r, false).map_err(shaped)?.weight;
            let b = load.linear(&format!("{prefix}.lora_B"), r, d_out, false).map_err(shaped)?.weight;
            Ok(Adapter::new(a, b, config))
        })
    }

    /// Attaches what `make(peft prefix, d_in, d_out, device)` builds to
    /// `config`'s targets of every block; everything else made constant.
    fn attach(self, config: &LoraConfig, make: &mut MakeAdapter<'_, B>) -> Result<Self, ModelError> {
        config.validate()?;
        if self.lora.is_some() {
            return Err(ModelError::Lora("the model already has LoRA adapters".into()));
        }
        let targets = config.targets()?;
        let device = self.embed.weight.device();
        let mut model = self.no_grad();
        for (i, layer) in model.layers.iter_mut().enumerate() {
            for &target in &targets {
                let linear = layer.linear_mut(target);
                let [d_in, d_out] = linear.dims();
                linear.adapter = Some(make(&peft_prefix(i, target), d_in, d_out, &device)?);
            }
        }
        model.lora = Some(config.clone());
        Ok(model)
    }

    /// The same model without its adapters: the base weights shared, not
    /// copied. A LoRA run's reference policy.
    pub fn without_adapters(&self) -> Self {
        let mut model = self.clone();
        model.for_each_linear(&mut |linear| linear.adapter = None);
        model.lora = None;
        model
    }

    /// The model with every adapter folded into its layer (`W + s A B`): a
    /// plain model with the same outputs.
    pub fn merge_adapters(mut self) -> Self {
        self.for_each_linear(&mut |linear| linear.merge());
        self.lora = None;
        self
    }

    fn for_each_linear(&mut self, f: &mut dyn FnMut(&mut super::lora::LoraLinear<B>)) {
        for layer in &mut self.layers {
            for target in LoraTarget::ALL {
                f(layer.linear_mut(target));
            }
        }
    }

    /// Every adapter tensor under PEFT's name (`….lora_A.weight`,
    /// `….lora_B.weight`; [`ParamKind::Linear`]: `[r, in]` and `[out, r]`
    /// in the file layout), block by block.
    pub fn visit_adapters(&self, visit: &mut dyn FnMut(&str, ParamKind<'_, B>)) {
        for (i, layer) in self.layers.iter().enumerate() {
            for target in LoraTarget::ALL {
                if let Some(adapter) = &layer.linear(target).adapter {
                    let prefix = peft_prefix(i, target);
                    visit(&format!("{prefix}.lora_A.weight"), ParamKind::Linear(&adapter.a));
                    visit(&format!("{prefix}.lora_B.weight"), ParamKind::Linear(&adapter.b));
                }
            }
        }
    }

    /// The parameters a training step updates: the adapters of a LoRA model
    /// ([`Self::visit_adapters`]), else every weight ([`Self::visit_weights`]).
    pub fn visit_trainable(&self, visit: &mut dyn FnMut(&str, ParamKind<'_, B>)) {
        if self.lora.is_some() { self.visit_adapters(visit) } else { self.visit_weights(visit) }
    }

    /// Ids of the adapters' parameters.
    pub fn adapter_ids(&self) -> HashSet<ParamId> {
        let mut ids = HashSet::new();
        self.visit_adapters(&mut |_: &str, p: ParamKind<'_, B>| {
            ids.insert(p.id());
        });
        ids
    }
}
