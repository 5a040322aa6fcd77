//! Token batches: sequences padded on the right, with the positions whose
//! tokens the loss counts (the completion).

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::error::ModelError;

/// One tokenised sequence: prompt then completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequence {
    /// Token ids, prompt first.
    pub ids: Vec<u32>,
    /// Index of the first completion token; tokens from here on are scored.
    pub completion_start: usize,
}

impl Sequence {
    /// Number of completion tokens.
    pub fn completion_len(&self) -> usize {
        self.ids.len().saturating_sub(self.completion_start)
    }
}

/// Sequences padded on the right to the longest one.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBatch {
    /// `[rows, len]` token ids, padding filled with `pad_id`.
    pub ids: Vec<u32>,
    /// `[rows, len]`: 1 where the token is a completion token.
    pub scored: Vec<f32>,
    /// Number of sequences.
    pub rows: usize,
    /// Padded length.
    pub len: usize,
}

impl TokenBatch {
    /// Pads `sequences` with `pad_id`. Fails when a sequence is shorter than 2
    /// tokens, has no completion or holds an id `≥ vocab`.
    pub fn new(sequences: &[&Sequence], pad_id: u32, vocab: usize) -> Result<Self, ModelError> {
        let len = sequences.iter().map(|s| s.ids.len()).max().unwrap_or(0);
        let rows = sequences.len();
        let mut ids = vec![pad_id; rows * len];
        let mut scored = vec![0f32; rows * len];
        for (r, s) in sequences.iter().enumerate() {
            if s.completion_start == 0 || s.completion_len() == 0 {
                return Err(ModelError::Batch(format!(
                    "sequence {r} needs at least one prompt token and one completion token (length {}, completion from {})",
                    s.ids.len(),
                    s.completion_start
                )));
            }
            if let Some(&bad) = s.ids.iter().find(|&&id| id as usize >= vocab) {
                return Err(ModelError::Batch(format!(
                    "sequence {r} holds token id {bad}, outside the vocabulary of {vocab}"
                )));
            }
            ids[r * len..r * len + s.ids.len()].copy_from_slice(&s.ids);
            scored[r * len + s.completion_start..r * len + s.ids.len()].fill(1.0);
        }
        Ok(Self { ids, scored, rows, len })
    }

    /// Completion tokens of row `r`.
    pub fn scored_tokens(&self, r: usize) -> usize {
        self.scored[r * self.len..(r + 1) * self.len].iter().filter(|&&m| m != 0.0).count()
    }

    /// Input ids `[rows, len]`.
    pub fn input<B: Backend>(&self, device: &B::Device) -> Tensor<B, 2, Int> {
        let ids: Vec<i64> = self.ids.iter().map(|&i| i64::from(i)).collect();
        Tensor::from_data(TensorData::new(ids, [self.rows, self.len]), device)
    }

    /// Next-token targets `[rows, len − 1]` (`ids[:, 1:]`) and their weights
    /// (1 for completion tokens, 0 for prompt and padding).
    pub fn targets<B: Backend>(&self, device: &B::Device) -> (Tensor<B, 2, Int>, Tensor<B, 2>) {
        let n = self.len.saturating_sub(1);
        let mut targets = Vec::with_capacity(self.rows * n);
        let mut weights = Vec::with_capacity(self.rows * n);
        for r in 0..self.rows {
            let row = r * self.len;
            targets.extend(self.ids[row + 1..row + self.len].iter().map(|&i| i64::from(i)));
            weights.extend_from_slice(&self.scored[row + 1..row + self.len]);
        }
        (
            Tensor::from_data(TensorData::new(targets, [self.rows, n]), device),
            Tensor::from_data(TensorData::new(weights, [self.rows, n]), device),
        )
    }
}
