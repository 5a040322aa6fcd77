//! A Hugging Face reward model as a [`Judge`]: a `…ForSequenceClassification`
//! checkpoint with one label (the decoder plus `score.weight`).
//!
//! Each item is rendered as the conversation `[user: prompt, assistant:
//! completion]` with the checkpoint's chat template (plain text, `BOS +
//! prompt + completion`, without one), tokenised, right-padded into
//! batches, and scored like `transformers`: the reward is the score head
//! applied to the final hidden state of the sequence's last token,
//! `r = h_last · score₀ᵀ`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::checkpoint::load_reward_model;
use crate::data::{Message, TextEncoder};
use crate::error::{ModelError, read_vec};
use crate::judge::{Judge, Judged};
use crate::model::{CausalLm, Positions};

/// A reward model loaded on a device.
#[derive(Debug)]
pub struct RewardModelJudge<B: Backend> {
    model: CausalLm<B>,
    encoder: TextEncoder,
    dir: PathBuf,
    batch_size: usize,
    device: B::Device,
}

impl<B: Backend> RewardModelJudge<B> {
    /// Loads the checkpoint folder `dir`; `batch_size` sequences are scored together.
    pub fn open(dir: &Path, batch_size: usize, device: &B::Device) -> Result<Self> {
        let encoder = TextEncoder::open(dir).with_context(|| format!("reward model {}", dir.display()))?;
        let model = load_reward_model(dir, device)?;
        Ok(Self { model, encoder, dir: dir.to_path_buf(), batch_size: batch_size.max(1), device: device.clone() })
    }

    /// The token ids an item is scored on (module documentation).
    pub fn encode(&self, item: &Judged<'_>) -> Result<Vec<u32>> {
        if self.encoder.template.is_some() {
            let turns = [
                Message { role: "user".into(), content: item.prompt.to_string() },
                Message { role: "assistant".into(), content: item.completion.to_string() },
            ];
            return self.encoder.encode(&self.encoder.render(&turns, false)?);
        }
        let mut ids: Vec<u32> = self.encoder.bos_id.into_iter().collect();
        ids.extend(self.encoder.encode(&format!("{}{}", item.prompt, item.completion))?);
        Ok(ids)
    }

    /// Rewards of already tokenised sequences, `batch_size` at a time.
    pub fn rewards_of_ids(&self, sequences: &[Vec<u32>]) -> Result<Vec<f64>, ModelError> {
        let vocab = self.model.config().vocab_size;
        let mut rewards = Vec::with_capacity(sequences.len());
        for (b, chunk) in sequences.chunks(self.batch_size).enumerate() {
            let rows = chunk.len();
            let seq = chunk.iter().map(Vec::len).max().unwrap_or(0);
            let mut ids = Vec::with_capacity(rows * seq);
            let mut last = Vec::with_capacity(rows);
            for (r, s) in chunk.iter().enumerate() {
                let item = b * self.batch_size + r;
                if s.is_empty() {
                    return Err(ModelError::Batch(format!("item {item}: no tokens to score")));
                }
                if let Some(&t) = s.iter().find(|&&t| t as usize >= vocab) {
                    return Err(ModelError::Batch(format!(
                        "item {item}: token {t} is outside the vocabulary 0..{vocab}"
                    )));
                }
                ids.extend(s.iter().map(|&t| i64::from(t)));
                ids.extend(std::iter::repeat_n(i64::from(self.encoder.pad_id), seq - s.len()));
                last.push((r * seq + s.len() - 1) as i64);
            }
            let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [rows, seq]), &self.device);
            let hidden = self.model.hidden(tokens, &Positions::from_zero(), None)?;
            let d = hidden.dims()[2];
            let index = Tensor::<B, 1, Int>::from_data(TensorData::new(last, [rows]), &self.device);
            let at_last = hidden.reshape([rows * seq, d]).select(0, index);
            let scores: Vec<f32> = read_vec(self.model.scores(at_last)?, "reward model scores")?;
            rewards.extend(scores.into_iter().map(f64::from));
        }
        Ok(rewards)
    }
}

impl<B: Backend> Judge for RewardModelJudge<B> {
    fn name(&self) -> String {
        self.dir.display().to_string()
    }

    fn rewards(&mut self, items: &[Judged<'_>]) -> Result<Vec<f64>, ModelError> {
        let sequences = items
            .iter()
            .enumerate()
            .map(|(i, item)| self.encode(item).map_err(|e| ModelError::Batch(format!("item {i}: {e:#}"))))
            .collect::<Result<Vec<_>, _>>()?;
        self.rewards_of_ids(&sequences)
    }
}
