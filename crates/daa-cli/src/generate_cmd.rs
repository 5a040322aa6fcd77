//! `daa generate`: sample completions of prompts from a checkpoint.
//!
//! Input rows (JSON Lines or Parquet) have a `prompt`: a string (the
//! completion follows the BOS token and the text) or chat messages (rendered
//! with the checkpoint's template, the assistant's turn opened), as training
//! renders prompts. Each output row keeps the input's fields and adds
//! `completion` (text, special tokens left out), `completion_ids`, `logprob`
//! (`log π(completion|prompt)` under the model, untempered), `finish_reason`
//! (`stop` or `length`) and, with several samples per prompt, `sample`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use daa_core::io::write_bytes_atomic;
use daa_core::sampling::SamplingParams;
use daa_train::backend::{BackendTask, ComputeBackend, with_compute_backend};
use daa_train::checkpoint::load_model;
use daa_train::data::{Prompt, TextEncoder, encode_prompt, read_rows};
use daa_train::generate::{FinishReason, GenerationConfig, GenerationRequest, generate_in_batches, request_seed};
use daa_train::model::CausalLm;
use serde_json::{Map, Value, json};

use crate::progress::bar;

/// Arguments of `daa generate`.
#[derive(Debug, Args, Clone)]
pub struct GenerateArgs {
    /// Hugging Face checkpoint folder (config.json, model.safetensors,
    /// tokenizer files), or a Hub model id in the local Hugging Face cache.
    #[arg(long, value_parser = crate::model_arg::model_path)]
    model: PathBuf,
    /// Rows with a `prompt` (.jsonl or .parquet).
    #[arg(long)]
    prompts: PathBuf,
    /// Output JSON Lines: the input rows with `completion`, `completion_ids`, `logprob`, `finish_reason`.
    #[arg(long)]
    out: PathBuf,
    /// Sampling temperature; 0 is greedy decoding. The paper samples at 0.5.
    #[arg(long, default_value_t = SamplingParams::PAPER.temperature)]
    temperature: f64,
    /// Nucleus mass (top-p) in (0, 1]. The paper samples with 0.75.
    #[arg(long, default_value_t = SamplingParams::PAPER.top_p)]
    top_p: f64,
    /// Tokens generated at most per completion.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Completions per prompt (rows `sample` 0, 1, …).
    #[arg(long, default_value_t = 1)]
    samples_per_prompt: usize,
    /// Seed of the draws: the same seed gives the same completions, whatever the batch size.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Completions generated together.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Where the model runs.
    #[arg(long, value_enum, default_value_t = ComputeBackend::Cpu)]
    backend: ComputeBackend,
}

/// One completion to make: its input row, prompt ids and sample index.
struct Job {
    row: usize,
    ids: Vec<u32>,
    sample: usize,
}

impl BackendTask for GenerateArgs {
    type Output = ();
    type Error = anyhow::Error;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let sampling = SamplingParams { temperature: self.temperature, top_p: self.top_p };
        sampling.validate()?;
        if self.batch_size == 0 || self.samples_per_prompt == 0 {
            bail!("--batch-size and --samples-per-prompt must be at least 1");
        }
        let source = self.prompts.display().to_string();
        // An adapter folder's tokenizer may be its base's (peft saves none).
        let tokenizer = daa_train::peft::tokenizer_dir(&self.model)?;
        let encoder = TextEncoder::open(&tokenizer).with_context(|| format!("model {}", self.model.display()))?;
        let rows = read_rows(&self.prompts)?;
        let mut values = Vec::with_capacity(rows.len());
        let mut jobs = Vec::new();
        for (index, raw) in rows.iter().enumerate() {
            let value = raw.value.clone().map_err(|e| anyhow::anyhow!("{source}: row {}: {e}", raw.row))?;
            let ids = Prompt::parse(&value)
                .and_then(|p| encode_prompt(&encoder, &p))
                .map_err(|e| anyhow::anyhow!("{source}: row {}: {e}", raw.row))?;
            if ids.is_empty() {
                bail!("{source}: row {}: the prompt encodes to no tokens", raw.row);
            }
            for sample in 0..self.samples_per_prompt {
                jobs.push(Job { row: index, ids: ids.clone(), sample });
            }
            values.push(value);
        }
        let model: CausalLm<B::InnerBackend> = load_model(&self.model, &device)?;
        let vocab = model.config().vocab_size;
        if let Some((job, t)) = jobs.iter().find_map(|j| j.ids.iter().find(|&&t| t as usize >= vocab).map(|&t| (j, t)))
        {
            bail!(
                "{source}: row {}: prompt token {t} is outside the model's vocabulary 0..{vocab} (tokenizer and model disagree)",
                rows[job.row].row
            );
        }
        let config = GenerationConfig {
            sampling,
            max_new_tokens: self.max_new_tokens,
            stop_tokens: encoder.stop_ids.clone(),
            topk_stats: None,
        };
        // Similar lengths batch together (less padding); the seeds keep the output independent of the order.
        let mut order: Vec<usize> = (0..jobs.len()).collect();
        order.sort_by_key(|&j| jobs[j].ids.len());
        let bar = bar(jobs.len() as u64, "generating");
        let requests: Vec<GenerationRequest> = order
            .iter()
            .map(|&j| GenerationRequest {
                prompt: &jobs[j].ids,
                seed: request_seed(self.seed, jobs[j].row, jobs[j].sample),
            })
            .collect();
        let generated = generate_in_batches(&model, &requests, self.batch_size, &config, &device, &mut |done| {
            bar.set_position(done as u64)
        })?;
        let mut lines: Vec<Option<String>> = vec![None; jobs.len()];
        for (&j, g) in order.iter().zip(generated) {
            let job = &jobs[j];
            let mut row: Map<String, Value> = values[job.row].as_object().cloned().unwrap_or_default();
            row.insert("completion".into(), json!(encoder.decode(&g.tokens)?));
            row.insert("completion_ids".into(), json!(g.tokens));
            row.insert("logprob".into(), json!(g.logprob()));
            let finish = match g.finish {
                FinishReason::Stop => "stop",
                FinishReason::Length => "length",
            };
            row.insert("finish_reason".into(), json!(finish));
            if self.samples_per_prompt > 1 {
                row.insert("sample".into(), json!(job.sample));
            }
            lines[j] = Some(serde_json::to_string(&Value::Object(row))?);
        }
        bar.finish_and_clear();
        let mut text = String::new();
        for line in lines.into_iter().flatten() {
            text.push_str(&line);
            text.push('\n');
        }
        write_bytes_atomic(&self.out, text.as_bytes())?;
        eprintln!("wrote {} completions of {} prompts to {}", jobs.len(), values.len(), self.out.display());
        Ok(())
    }
}

/// Runs `daa generate`.
pub fn run(args: &GenerateArgs) -> Result<()> {
    with_compute_backend(args.backend, 0, args.clone())
}
