//! `daa merge`: a PEFT LoRA adapter folded into its base model (`W + s A B`
//! for every adapted layer), written as a full Hugging Face checkpoint that
//! any tool loads without peft.

use std::path::PathBuf;

use anyhow::{Result, bail};
use burn::backend::Flex;
use burn::tensor::FloatDType;
use clap::Args;
use daa_core::io::write_dir_atomic;
use daa_train::checkpoint::save_model_as;
use daa_train::model::CausalLm;
use daa_train::peft::{ADAPTER_CONFIG, base_model_dir, is_adapter_dir, load_adapted};
use daa_train::shards::SaveOptions;

/// Arguments of `daa merge`.
#[derive(Debug, Args, Clone)]
pub struct MergeArgs {
    /// The PEFT adapter folder (adapter_config.json, adapter_model.safetensors): a LoRA run's
    /// checkpoint, or one peft saved.
    #[arg(long)]
    adapter: PathBuf,
    /// The base model: a checkpoint folder or a Hub model id in the local Hugging Face cache
    /// (default: the adapter's base_model_name_or_path).
    #[arg(long, value_parser = crate::model_arg::model_path)]
    base: Option<PathBuf>,
    /// The merged checkpoint's folder (must not exist yet).
    #[arg(long)]
    out: PathBuf,
    /// Below f32 (a bf16 base), also write the merged weights in f32 under
    /// master/ (what daa continues training from without rounding).
    #[arg(long)]
    f32_copy: bool,
}

/// Runs `daa merge`.
pub fn run(args: &MergeArgs) -> Result<()> {
    if !is_adapter_dir(&args.adapter) {
        bail!("--adapter {}: no {ADAPTER_CONFIG} (not a PEFT adapter folder)", args.adapter.display());
    }
    if args.out.exists() {
        bail!(
            "--out {}: already exists; daa merge writes a new folder (remove it or name another)",
            args.out.display()
        );
    }
    let base = base_model_dir(&args.adapter, args.base.as_deref())?;
    let model: CausalLm<Flex> = load_adapted(&args.adapter, Some(&base), &Default::default(), FloatDType::F32)?;
    let lora = model.lora().cloned();
    let merged = model.merge_adapters();
    let options = SaveOptions { f32_copy: args.f32_copy, ..SaveOptions::like_source(merged.config()) };
    write_dir_atomic(&args.out, |dir| save_model_as(&merged, dir, &base, &options))?;
    if let Some(lora) = lora {
        println!(
            "merged {} (LoRA rank {}, α {}, {}) into {}: {} ({})",
            args.adapter.display(),
            lora.rank,
            lora.alpha,
            lora.target_modules.join(", "),
            base.display(),
            args.out.display(),
            options.dtype.torch_dtype()
        );
    }
    Ok(())
}
