//! The testbed's stages without files, in steps a caller can interleave
//! with other work (the browser demo runs them between frames; the cached
//! native build, [`super::build`], runs them to the end and writes files):
//!
//! 1. [`SftRun`]: a random Llama-style model fine-tuned (next-token NLL) on
//!    the behaviour writer's completions of SFT prompts `[0, n_sft)`;
//! 2. [`PairSampler`]: two samples of that reference per prompt, labelled by
//!    Bradley–Terry on the gold reward: training prompts
//!    `[n_sft, n_sft + n_pairs)`, held-out prompts after them.
//!
//! Text goes to ids through the byte-level codec of [`super::byte_chat`].

use std::ops::Range;

use burn::tensor::backend::{AutodiffBackend, Backend};
use daa_core::preference::{PreferenceLoss, PreferenceLossParams};
use daa_core::sampling::SamplingParams;

use super::byte_chat::{self, END, VOCAB};
use super::labels::first_preferred;
use super::spec::TestbedSpec;
use super::task::{Constraints, behaviour_completion, gold_reward};
use crate::batch::{LengthLimits, Sequence, SequencePair};
use crate::error::ModelError;
use crate::generate::{FinishReason, GenerationConfig, GenerationRequest, generate_in_batches, request_seed};
use crate::model::{CausalLm, ModelConfig, RandomWeights};
use crate::optim::{AdamWConfig, LrSchedule};
use crate::rng::{splitmix64, uniform_open};
use crate::trainer::{NllStepRecord, ReferencePolicy, Trainer, TrainerOptions};

/// The reference model's configuration: the tiny Llama shape (4 query and
/// 2 key/value heads, MLP `8/3·d`) over the byte vocabulary.
pub fn model_config(spec: &TestbedSpec) -> Result<ModelConfig, ModelError> {
    let mut config = crate::model::tiny_configs::llama_config(VOCAB, spec.hidden_size, spec.layers);
    config["max_position_embeddings"] = serde_json::Value::from(256);
    ModelConfig::from_json(&config.to_string())
}

/// Prompt ranges of the training and the held-out pairs.
pub fn pair_ranges(spec: &TestbedSpec) -> (Range<u64>, Range<u64>) {
    let start = spec.sft_prompts as u64;
    let middle = start + spec.pairs as u64;
    (start..middle, middle..middle + spec.eval_pairs as u64)
}

/// The SFT set: each prompt with one behaviour-writer completion.
pub fn sft_sequences(spec: &TestbedSpec) -> Vec<Sequence> {
    let task = spec.task();
    let mut state = spec.seed ^ 0x5F7_5EED;
    (0..spec.sft_prompts as u64)
        .map(|i| {
            let prompt = Constraints::draw(spec.seed, i, &task);
            let mut ids = byte_chat::prompt_ids(&prompt.to_text());
            let completion_start = ids.len();
            ids.extend(byte_chat::reply_ids(&behaviour_completion(&prompt, &mut state)));
            Sequence { ids, completion_start }
        })
        .collect()
}

/// Supervised fine-tuning of the reference policy, one optimizer step at a
/// time: AdamW (no weight decay), warm-up over the first tenth of the steps,
/// then cosine decay to a tenth of `sft_lr`; batches of `sft_batch`
/// sequences drawn without replacement, reshuffled every pass.
#[derive(Debug)]
pub struct SftRun<B: AutodiffBackend> {
    trainer: Trainer<B>,
    sequences: Vec<Sequence>,
    order: Vec<usize>,
    cursor: usize,
    shuffle: u64,
    batch: usize,
    total: u64,
}

impl<B: AutodiffBackend> SftRun<B> {
    /// A random model (seed `spec.seed`) and its SFT set, at step 0.
    pub fn new(spec: &TestbedSpec, device: &B::Device) -> Result<Self, ModelError> {
        spec.check().map_err(ModelError::Config)?;
        let config = model_config(spec)?;
        let model = CausalLm::<B>::from_weights(&config, &mut RandomWeights { seed: spec.seed, std: 0.02 }, device)?;
        let options = TrainerOptions {
            // Unused by NLL steps; a valid objective is required.
            loss: PreferenceLossParams { loss: PreferenceLoss::Dpo { beta: 0.1, label_smoothing: 0.0 }, nll: None },
            optimizer: AdamWConfig { weight_decay: 0.0, ..AdamWConfig::default() },
            schedule: LrSchedule {
                peak: spec.sft_lr,
                warmup: spec.sft_steps / 10,
                total: spec.sft_steps,
                final_fraction: 0.1,
            },
            micro_batch_size: spec.sft_batch.div_ceil(2),
            pad_id: END,
            memory: crate::backward::MemoryOptions::default(),
            precision: crate::precision::Precision::F32,
        };
        let sequences = sft_sequences(spec);
        Ok(Self {
            trainer: Trainer::new(model, options, ReferencePolicy::Given)?,
            order: (0..sequences.len()).collect(),
            cursor: sequences.len(),
            sequences,
            shuffle: spec.seed ^ 0xA11_0CA7E,
            batch: spec.sft_batch,
            total: spec.sft_steps,
        })
    }

    /// Steps done.
    pub fn completed(&self) -> u64 {
        self.trainer.completed_steps()
    }

    /// Steps the run makes.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Whether every step is done.
    pub fn finished(&self) -> bool {
        self.completed() >= self.total
    }

    /// One optimizer step on the next batch.
    pub fn step(&mut self) -> Result<NllStepRecord, ModelError> {
        let mut batch = Vec::with_capacity(self.batch);
        while batch.len() < self.batch {
            if self.cursor == self.order.len() {
                for i in (1..self.order.len()).rev() {
                    self.order.swap(i, (splitmix64(&mut self.shuffle) % (i as u64 + 1)) as usize);
                }
                self.cursor = 0;
            }
            batch.push(&self.sequences[self.order[self.cursor]]);
            self.cursor += 1;
        }
        self.trainer.nll_step(&batch)
    }

    /// The fine-tuned model (with autodiff, to train further).
    pub fn model(&self) -> &CausalLm<B> {
        self.trainer.model()
    }

    /// The fine-tuned model without autodiff (to sample, score, save).
    pub fn valid_model(&self) -> CausalLm<B::InnerBackend> {
        self.trainer.valid_model()
    }
}

/// A reply the reference sampled, with its gold reward.
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    /// The decoded text.
    pub text: String,
    /// `r(x, y)`.
    pub reward: f64,
}

/// One labelled pair.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledPair {
    /// The prompt's index in the task.
    pub index: u64,
    /// The prompt.
    pub prompt: Constraints,
    /// The preferred reply.
    pub chosen: Judged,
    /// The other reply.
    pub rejected: Judged,
}

/// The testbed's length limits (`configs/testbed.toml`'s `[data]`).
pub const LENGTH_LIMITS: LengthLimits = LengthLimits { max_length: 64, max_prompt_length: 48 };

impl LabelledPair {
    /// Prompt + chosen and prompt + rejected ids, as `daa train` encodes the
    /// pair's UltraFeedback row with the tokenizer and chat template and
    /// truncates it to `limits`; `None` for a row `daa train` skips (a reply
    /// empty after trimming, or both replies the same ids).
    pub fn sequences(&self, limits: &LengthLimits) -> Option<SequencePair> {
        if self.chosen.text.trim().is_empty() || self.rejected.text.trim().is_empty() {
            return None;
        }
        let (chosen, rejected) = (byte_chat::reply_ids(&self.chosen.text), byte_chat::reply_ids(&self.rejected.text));
        if chosen == rejected {
            return None;
        }
        Some(SequencePair::truncated(byte_chat::prompt_ids(&self.prompt.to_text()), chosen, rejected, limits).0)
    }
}

/// Samples and labels pairs for a range of prompts, a chunk at a time; the
/// result does not depend on the chunk sizes (each sample has its own seed,
/// and labels are drawn in prompt order).
#[derive(Debug, Clone)]
pub struct PairSampler {
    spec: TestbedSpec,
    range: Range<u64>,
    stream: u64,
    labels: u64,
    identical: usize,
}

impl PairSampler {
    /// A sampler for prompts `range`; `stream` separates the seeds of
    /// different ranges (1 for training pairs, 2 for held-out ones).
    pub fn new(spec: &TestbedSpec, range: Range<u64>, stream: u64) -> Self {
        Self { spec: spec.clone(), range, stream, labels: spec.seed ^ stream, identical: 0 }
    }

    /// Prompts not sampled yet.
    pub fn remaining(&self) -> usize {
        (self.range.end - self.range.start) as usize
    }

    /// Prompts whose two samples were the same text (no pair).
    pub fn identical(&self) -> usize {
        self.identical
    }

    /// Samples the next `prompts` prompts (`batch` sequences per forward
    /// pass) and returns their pairs.
    pub fn sample<B: Backend>(
        &mut self,
        reference: &CausalLm<B>,
        prompts: usize,
        batch: usize,
    ) -> Result<Vec<LabelledPair>, ModelError> {
        let spec = &self.spec;
        let task = spec.task();
        let end = (self.range.start + prompts as u64).min(self.range.end);
        let chunk = self.range.start..end;
        self.range.start = end;
        let config = GenerationConfig {
            sampling: SamplingParams { temperature: spec.pair_temperature, top_p: spec.pair_top_p },
            max_new_tokens: spec.max_new_tokens,
            stop_tokens: vec![END],
            topk_stats: None,
        };
        let prompts: Vec<(u64, Constraints, Vec<u32>)> = chunk
            .map(|i| {
                let c = Constraints::draw(spec.seed, i, &task);
                let ids = byte_chat::prompt_ids(&c.to_text());
                (i, c, ids)
            })
            .collect();
        let seed = spec.seed ^ self.stream;
        let requests: Vec<GenerationRequest> = prompts
            .iter()
            .flat_map(|(i, _, ids)| {
                (0..2).map(move |s| GenerationRequest { prompt: ids, seed: request_seed(seed, *i as usize, s) })
            })
            .collect();
        let device = reference.embed.weight.device();
        let samples = generate_in_batches(reference, &requests, batch.max(1), &config, &device, &mut |_| {})?;
        let mut pairs = Vec::with_capacity(prompts.len());
        for ((index, prompt, _), two) in prompts.into_iter().zip(samples.chunks(2)) {
            let judged = |k: usize| {
                let text = byte_chat::decode(&two[k].tokens);
                let reward = gold_reward(&prompt, &text, two[k].finish == FinishReason::Stop);
                Judged { text, reward }
            };
            let (a, b) = (judged(0), judged(1));
            if a.text == b.text {
                self.identical += 1;
                continue;
            }
            let a_wins = first_preferred(a.reward, b.reward, spec.label_temperature, uniform_open(&mut self.labels));
            let (chosen, rejected) = if a_wins { (a, b) } else { (b, a) };
            pairs.push(LabelledPair { index, prompt, chosen, rejected });
        }
        Ok(pairs)
    }
}
