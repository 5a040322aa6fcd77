//! What decides the testbed's reference policy and pairs: task shape, model
//! size, SFT schedule, sampling and labelling. Pure data (no files), shared
//! by the cached native build ([`super::build`]) and the browser demo.

use daa_core::sampling::SamplingParams;
use serde::{Deserialize, Serialize};

use super::task::{ALPHABET, TaskShape};

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

    /// Checks the specification; the error names the field and what it needs.
    pub fn check(&self) -> Result<(), String> {
        let letters = ALPHABET.len();
        if self.required == 0 || self.required + self.forbidden > letters {
            return Err(format!("testbed: `required` must be ≥ 1 and `required + forbidden` ≤ {letters}"));
        }
        if self.min_length == 0 || self.min_length > self.max_length {
            return Err("testbed: need 1 ≤ `min_length` ≤ `max_length`".into());
        }
        if self.hidden_size == 0 || !self.hidden_size.is_multiple_of(8) || self.layers == 0 {
            return Err(format!(
                "testbed: `hidden_size` must be a positive multiple of 8 (4 heads of even width) and `layers` ≥ 1, found {} and {}",
                self.hidden_size, self.layers
            ));
        }
        if self.sft_prompts == 0
            || self.sft_steps == 0
            || self.sft_batch == 0
            || self.pairs == 0
            || self.eval_pairs == 0
        {
            return Err("testbed: prompt counts, SFT steps and batch must be at least 1".into());
        }
        if self.max_new_tokens <= self.max_length {
            return Err(format!(
                "testbed: `max_new_tokens` ({}) must exceed `max_length` ({})",
                self.max_new_tokens, self.max_length
            ));
        }
        SamplingParams { temperature: self.pair_temperature, top_p: self.pair_top_p }
            .validate()
            .map_err(|e| format!("testbed: pair sampling: {e}"))?;
        if !(self.label_temperature >= 0.0 && self.label_temperature.is_finite()) {
            return Err("testbed: `label_temperature` must be ≥ 0".into());
        }
        if !(self.sft_lr > 0.0 && self.sft_lr.is_finite()) {
            return Err(format!("testbed: `sft_lr` must be > 0, found {}", self.sft_lr));
        }
        Ok(())
    }
}
