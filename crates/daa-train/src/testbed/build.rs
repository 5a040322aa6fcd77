//! The testbed's files, made once and cached by their specification's hash:
//! a reference policy fine-tuned (SFT) on the behaviour writer's samples,
//! and preference pairs sampled from that reference and labelled by
//! Bradley–Terry on the gold reward, in binarized UltraFeedback's schema.
//!
//! Prompts are drawn from disjoint index ranges of the task: SFT prompts
//! `[0, n_sft)`, training pairs `[n_sft, n_sft + n_pairs)`, held-out pairs
//! after them. Each pair is two samples of the reference for one prompt
//! (its own seeds), dropped when both samples are the same text.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::backend::{Autodiff, NdArray};
use daa_core::io::{write_bytes_atomic, write_dir_atomic};
use daa_core::sampling::SamplingParams;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::labels::{first_preferred, ultrafeedback_row};
use super::task::{Constraints, TaskShape, behaviour_completion, gold_reward};
use crate::batch::Sequence;
use crate::checkpoint::{load_model, save_model};
use crate::data::{Message, Prompt, TextEncoder, encode_prompt};
use crate::generate::{FinishReason, GenerationConfig, GenerationRequest, generate_in_batches, request_seed};
use crate::model::{CausalLm, ModelConfig, RandomWeights};
use crate::optim::{AdamWConfig, LrSchedule};
use crate::rng::uniform_open;
use crate::tiny::{TINY_VOCAB, llama_config, write_tokenizer};
use crate::trainer::{ReferencePolicy, Trainer, TrainerOptions};

/// Everything that decides the testbed's files (their cache key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TestbedSpec {
    /// Seed of the task, the initial weights, the samples and the labels.
    pub seed: u64,
    /// `|R|`, `|F|` and the target length range of prompts.
    pub required: usize,
    /// `|F|`.
    pub forbidden: usize,
    /// Shortest target length.
    pub min_length: usize,
    /// Longest target length.
    pub max_length: usize,
    /// Width of the Llama-style model (4 query, 2 key/value heads).
    pub hidden_size: usize,
    /// Decoder blocks.
    pub layers: usize,
    /// Prompts of the SFT set (one behaviour sample each).
    pub sft_prompts: usize,
    /// SFT optimizer steps.
    pub sft_steps: u64,
    /// Sequences per SFT step.
    pub sft_batch: usize,
    /// Peak SFT learning rate.
    pub sft_lr: f64,
    /// Training preference pairs (prompts).
    pub pairs: usize,
    /// Held-out preference pairs (prompts).
    pub eval_pairs: usize,
    /// Temperature of the reference's samples for the pairs.
    pub pair_temperature: f64,
    /// Nucleus of the reference's samples for the pairs.
    pub pair_top_p: f64,
    /// Bradley–Terry label temperature `τ` (0: the better sample always wins).
    pub label_temperature: f64,
    /// Tokens a sample may have (beyond it, it is cut and loses ½).
    pub max_new_tokens: usize,
}

impl Default for TestbedSpec {
    fn default() -> Self {
        let task = TaskShape::default();
        Self {
            seed: 0,
            required: task.required,
            forbidden: task.forbidden,
            min_length: task.min_length,
            max_length: task.max_length,
            hidden_size: 64,
            layers: 2,
            sft_prompts: 4096,
            sft_steps: 300,
            sft_batch: 32,
            sft_lr: 3e-3,
            pairs: 2048,
            eval_pairs: 128,
            pair_temperature: SamplingParams::PAPER.temperature,
            pair_top_p: SamplingParams::PAPER.top_p,
            label_temperature: 0.1,
            max_new_tokens: 16,
        }
    }
}

/// Where the testbed's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestbedFiles {
    /// The SFT reference checkpoint (tokenizer included).
    pub reference: PathBuf,
    /// Training pairs (JSON Lines).
    pub train: PathBuf,
    /// Held-out pairs (JSON Lines).
    pub eval: PathBuf,
}

type Cpu = Autodiff<NdArray<f32>>;

impl TestbedSpec {
    /// The task's prompt shape.
    pub fn task(&self) -> TaskShape {
        TaskShape {
            required: self.required,
            forbidden: self.forbidden,
            min_length: self.min_length,
            max_length: self.max_length,
        }
    }

    /// 16 hex digits of the SHA-256 of the specification.
    pub fn key(&self) -> String {
        let text = serde_json::to_string(self).unwrap_or_default();
        let digest = Sha256::digest(format!("daa-testbed-v1 {text}").as_bytes());
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }

    fn check(&self) -> Result<()> {
        let letters = super::task::ALPHABET.len();
        if self.required == 0 || self.required + self.forbidden > letters {
            bail!("testbed: `required` must be ≥ 1 and `required + forbidden` ≤ {letters}");
        }
        if self.min_length == 0 || self.min_length > self.max_length {
            bail!("testbed: need 1 ≤ `min_length` ≤ `max_length`");
        }
        if self.sft_prompts == 0
            || self.sft_steps == 0
            || self.sft_batch == 0
            || self.pairs == 0
            || self.eval_pairs == 0
        {
            bail!("testbed: prompt counts, SFT steps and batch must be at least 1");
        }
        if self.max_new_tokens <= self.max_length {
            bail!("testbed: `max_new_tokens` ({}) must exceed `max_length` ({})", self.max_new_tokens, self.max_length);
        }
        SamplingParams { temperature: self.pair_temperature, top_p: self.pair_top_p }.validate()?;
        if !(self.label_temperature >= 0.0 && self.label_temperature.is_finite()) {
            bail!("testbed: `label_temperature` must be ≥ 0");
        }
        Ok(())
    }
}

/// A chat-rendered prompt's ids.
fn prompt_ids(encoder: &TextEncoder, prompt: &str) -> Result<Vec<u32>> {
    let turns = vec![Message { role: "user".into(), content: prompt.to_string() }];
    encode_prompt(encoder, &Prompt::Chat(turns)).map_err(anyhow::Error::msg)
}

/// Fine-tunes the random model on behaviour samples; writes the checkpoint into `dir`.
fn fine_tune(spec: &TestbedSpec, dir: &Path, note: &mut dyn FnMut(&str)) -> Result<()> {
    write_tokenizer(dir)?;
    let encoder = TextEncoder::open(dir)?;
    let end = encoder.eos_id.context("the testbed tokenizer has no end token")?;
    let task = spec.task();
    let mut state = spec.seed ^ 0x5F7_5EED;
    let sequences: Vec<Sequence> = (0..spec.sft_prompts as u64)
        .map(|i| {
            let prompt = Constraints::draw(spec.seed, i, &task);
            let mut ids = prompt_ids(&encoder, &prompt.to_text())?;
            let completion_start = ids.len();
            ids.extend(encoder.encode(&behaviour_completion(&prompt, &mut state))?);
            ids.push(end);
            Ok(Sequence { ids, completion_start })
        })
        .collect::<Result<_>>()?;
    let mut config_json = llama_config(TINY_VOCAB, spec.hidden_size, spec.layers);
    config_json["max_position_embeddings"] = Value::from(256);
    let config = ModelConfig::from_json(&config_json.to_string())?;
    let device = Default::default();
    let model = CausalLm::<Cpu>::from_weights(&config, &mut RandomWeights { seed: spec.seed, std: 0.02 }, &device)?;
    let options = TrainerOptions {
        loss: daa_core::PreferenceLossParams {
            loss: daa_core::PreferenceLoss::Dpo { beta: 0.1, label_smoothing: 0.0 },
            nll: None,
        },
        optimizer: AdamWConfig { weight_decay: 0.0, ..AdamWConfig::default() },
        schedule: LrSchedule {
            peak: spec.sft_lr,
            warmup: spec.sft_steps / 10,
            total: spec.sft_steps,
            final_fraction: 0.1,
        },
        micro_batch_size: spec.sft_batch.div_ceil(2),
        pad_id: encoder.pad_id,
    };
    let mut trainer = Trainer::new(model, options, ReferencePolicy::Given)?;
    let mut order: Vec<usize> = (0..sequences.len()).collect();
    let mut cursor = sequences.len();
    let mut shuffle = spec.seed ^ 0xA11_0CA7E;
    for step in 0..spec.sft_steps {
        let mut batch = Vec::with_capacity(spec.sft_batch);
        while batch.len() < spec.sft_batch {
            if cursor == order.len() {
                for i in (1..order.len()).rev() {
                    order.swap(i, (crate::rng::splitmix64(&mut shuffle) % (i as u64 + 1)) as usize);
                }
                cursor = 0;
            }
            batch.push(&sequences[order[cursor]]);
            cursor += 1;
        }
        let record = trainer.nll_step(&batch).with_context(|| format!("testbed SFT step {}", step + 1))?;
        if (step + 1) % 50 == 0 || step + 1 == spec.sft_steps {
            note(&format!("testbed SFT step {}/{}: NLL {:.4} per token", step + 1, spec.sft_steps, record.loss));
        }
    }
    save_model(&trainer.valid_model(), dir, dir)
}

/// Samples two completions per prompt of `range` from `reference`, labels
/// them, and returns the rows (and how many prompts gave identical samples).
fn labelled_pairs(
    spec: &TestbedSpec,
    reference: &CausalLm<NdArray<f32>>,
    encoder: &TextEncoder,
    range: std::ops::Range<u64>,
    stream: u64,
) -> Result<(Vec<Value>, usize)> {
    let task = spec.task();
    let config = GenerationConfig {
        sampling: SamplingParams { temperature: spec.pair_temperature, top_p: spec.pair_top_p },
        max_new_tokens: spec.max_new_tokens,
        stop_tokens: encoder.stop_ids.clone(),
        topk_stats: None,
    };
    let device = Default::default();
    let prompts: Vec<(u64, Constraints, Vec<u32>)> = range
        .map(|i| {
            let c = Constraints::draw(spec.seed, i, &task);
            let ids = prompt_ids(encoder, &c.to_text())?;
            Ok((i, c, ids))
        })
        .collect::<Result<_>>()?;
    let mut labels = spec.seed ^ stream;
    let (mut rows, mut identical) = (Vec::new(), 0);
    let requests: Vec<GenerationRequest> = prompts
        .iter()
        .flat_map(|(i, _, ids)| {
            (0..2)
                .map(move |s| GenerationRequest { prompt: ids, seed: request_seed(spec.seed ^ stream, *i as usize, s) })
        })
        .collect();
    let samples = generate_in_batches(reference, &requests, 128, &config, &device, &mut |_| {})?;
    for ((i, prompt, _), two) in prompts.iter().zip(samples.chunks(2)) {
        let text = |k: usize| encoder.decode(&two[k].tokens);
        let (a, b) = (text(0)?, text(1)?);
        if a == b {
            identical += 1;
            continue;
        }
        let reward = |k: usize, t: &str| gold_reward(prompt, t, two[k].finish == FinishReason::Stop);
        let (ra, rb) = (reward(0, &a), reward(1, &b));
        let ((chosen, rc), (rejected, rr)) =
            if first_preferred(ra, rb, spec.label_temperature, uniform_open(&mut labels)) {
                ((a, ra), (b, rb))
            } else {
                ((b, rb), (a, ra))
            };
        rows.push(ultrafeedback_row(
            &format!("testbed-{i:06}"),
            &prompt.to_text(),
            (chosen.as_str(), rc),
            (rejected.as_str(), rr),
        ));
    }
    Ok((rows, identical))
}

fn write_jsonl(path: &Path, rows: &[Value]) -> Result<()> {
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    Ok(write_bytes_atomic(path, text.as_bytes())?)
}

/// The testbed's files under `cache_root/testbed/<key>/`, made when missing
/// (the SFT and the sampling take a minute or two on 2 cores; later runs
/// reuse them). `note` hears what is being done.
pub fn materialize(spec: &TestbedSpec, cache_root: &Path, note: &mut dyn FnMut(&str)) -> Result<TestbedFiles> {
    spec.check()?;
    let root = cache_root.join("testbed").join(spec.key());
    let files = TestbedFiles {
        reference: root.join("reference"),
        train: root.join("train.jsonl"),
        eval: root.join("eval.jsonl"),
    };
    if !files.reference.join("model.safetensors").exists() {
        note(&format!("testbed: fine-tuning the reference policy into {}", files.reference.display()));
        if files.reference.exists() {
            std::fs::remove_dir_all(&files.reference)
                .with_context(|| format!("{}: cannot clear", files.reference.display()))?;
        }
        write_dir_atomic(&files.reference, |dir| fine_tune(spec, dir, note))?;
    } else {
        note(&format!("testbed: cached reference policy {}", files.reference.display()));
    }
    if !(files.train.exists() && files.eval.exists()) {
        let encoder = TextEncoder::open(&files.reference)?;
        let reference: CausalLm<NdArray<f32>> = load_model(&files.reference, &Default::default())?;
        let start = spec.sft_prompts as u64;
        let (train, same_train) = labelled_pairs(spec, &reference, &encoder, start..start + spec.pairs as u64, 1)?;
        let start = start + spec.pairs as u64;
        let (eval, same_eval) = labelled_pairs(spec, &reference, &encoder, start..start + spec.eval_pairs as u64, 2)?;
        if train.is_empty() || eval.is_empty() {
            bail!("testbed: the reference's two samples were identical for every prompt; raise `pair_temperature`");
        }
        let mean = |rows: &[Value], field: &str| {
            rows.iter().filter_map(|r| r[field].as_f64()).sum::<f64>() / rows.len().max(1) as f64
        };
        note(&format!(
            "testbed: {} training and {} held-out pairs ({} and {} prompts with identical samples dropped); \
             gold reward of chosen {:.3}, rejected {:.3}",
            train.len(),
            eval.len(),
            same_train,
            same_eval,
            mean(&train, "score_chosen"),
            mean(&train, "score_rejected")
        ));
        write_jsonl(&files.eval, &eval)?;
        write_jsonl(&files.train, &train)?;
    }
    Ok(files)
}
