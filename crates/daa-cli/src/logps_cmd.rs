//! `daa logps`: reference log-probabilities of a preference dataset.

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use daa_train::backend::{BackendTask, ComputeBackend, with_compute_backend};
use daa_train::checkpoint::load_model;
use daa_train::data::{DataSource, EncodeOptions, TextEncoder, encode_rows, read_rows};
use daa_train::model::CausalLm;
use daa_train::reference_cache::{ScoresKey, score_encoded, write_scores};

use crate::progress::bar;

/// Arguments of `daa logps`.
#[derive(Debug, Args, Clone)]
pub struct LogpsArgs {
    /// Hugging Face checkpoint folder, or a Hub model id in the local Hugging Face cache.
    #[arg(long, value_parser = crate::model_arg::model_path)]
    model: PathBuf,
    /// Preference data (.jsonl or .parquet).
    #[arg(long)]
    data: PathBuf,
    /// Output safetensors file (row, chosen_logps, rejected_logps, chosen_tokens, rejected_tokens).
    #[arg(long)]
    out: PathBuf,
    /// Longest prompt + completion, in tokens.
    #[arg(long, default_value_t = 512)]
    max_length: usize,
    /// Longest prompt kept when a pair is too long.
    #[arg(long, default_value_t = 256)]
    max_prompt_length: usize,
    /// Pairs per forward pass.
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// Where the model runs.
    #[arg(long, value_enum, default_value_t = ComputeBackend::Cpu)]
    backend: ComputeBackend,
    /// Stop at the first bad row instead of skipping it.
    #[arg(long)]
    strict: bool,
}

impl BackendTask for LogpsArgs {
    type Output = ();
    type Error = anyhow::Error;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        // An adapter folder's tokenizer may be its base's (peft saves none).
        let tokenizer = daa_train::peft::tokenizer_dir(&self.model)?;
        let encoder = TextEncoder::open(&tokenizer).with_context(|| format!("model {}", self.model.display()))?;
        let options = EncodeOptions {
            max_length: self.max_length,
            max_prompt_length: self.max_prompt_length,
            strict: self.strict,
        };
        let set = encode_rows(&read_rows(&self.data)?, &encoder, &options, &self.data.display().to_string())?;
        if set.skipped_total() > 0 {
            eprintln!("skipped {} of {} rows: {:?}", set.skipped_total(), set.rows, set.skipped);
        }
        let key = ScoresKey::new(&self.model, &DataSource::file(&self.data), options)?;
        let model: CausalLm<B::InnerBackend> = load_model(&self.model, &device)?;
        let bar = bar(set.pairs.len() as u64, "scoring");
        let scores =
            score_encoded(&model, &set.pairs, self.batch_size, encoder.pad_id, &mut |n| bar.set_position(n as u64))?;
        bar.finish_and_clear();
        write_scores(&self.out, &set.pairs, &scores, &key.metadata())?;
        eprintln!("wrote {} pairs to {}", scores.len(), self.out.display());
        Ok(())
    }
}

/// Runs `daa logps`.
pub fn run(args: &LogpsArgs) -> Result<()> {
    with_compute_backend(args.backend, 0, args.clone())
}
