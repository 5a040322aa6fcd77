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

/// The two sequences of one preference pair: the same prompt with the
/// preferred (chosen) and the dispreferred (rejected) completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequencePair {
    /// Prompt + preferred completion.
    pub chosen: Sequence,
    /// Prompt + dispreferred completion.
    pub rejected: Sequence,
}

impl AsRef<SequencePair> for SequencePair {
    fn as_ref(&self) -> &SequencePair {
        self
    }
}

/// How long a pair's sequences may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LengthLimits {
    /// Longest prompt + completion, in tokens.
    pub max_length: usize,
    /// Longest prompt kept when a pair is too long (its end is kept).
    pub max_prompt_length: usize,
}

impl SequencePair {
    /// Joins a prompt with two completions, truncated like TRL: when the
    /// prompt and the longer completion exceed `max_length` together, keep
    /// the last `max_prompt_length` prompt tokens, then cut the completions
    /// to what is left. Returns the pair and whether anything was cut.
    pub fn truncated(
        mut prompt: Vec<u32>,
        mut chosen: Vec<u32>,
        mut rejected: Vec<u32>,
        limits: &LengthLimits,
    ) -> (Self, bool) {
        let longest = chosen.len().max(rejected.len());
        let cut = prompt.len() + longest > limits.max_length;
        if cut {
            if prompt.len() > limits.max_prompt_length {
                prompt.drain(..prompt.len() - limits.max_prompt_length);
            }
            let room = limits.max_length.saturating_sub(prompt.len());
            chosen.truncate(room);
            rejected.truncate(room);
        }
        let start = prompt.len();
        let join = |completion: Vec<u32>| {
            let mut ids = prompt.clone();
            ids.extend(completion);
            Sequence { ids, completion_start: start }
        };
        (Self { chosen: join(chosen), rejected: join(rejected) }, cut)
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

    /// The positions whose next token is scored (completion tokens), row by
    /// row: position `t` of row `r` predicts token `t + 1`.
    pub fn scored_positions(&self) -> ScoredPositions {
        let mut scored = ScoredPositions { rows: self.rows, len: self.len, ..ScoredPositions::default() };
        for r in 0..self.rows {
            for t in 1..self.len {
                if self.scored[r * self.len + t] != 0.0 {
                    scored.flat.push(r * self.len + t - 1);
                    scored.targets.push(self.ids[r * self.len + t]);
                    scored.row_of.push(r);
                }
            }
            scored.row_ends.push(scored.flat.len());
        }
        scored
    }
}

/// Where a [`TokenBatch`]'s scored tokens are: `N` positions in row order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScoredPositions {
    /// Rows of the batch.
    pub rows: usize,
    /// Padded length of the batch.
    pub len: usize,
    /// Flat index `r·len + t` of each predicting position, `[N]`.
    pub flat: Vec<usize>,
    /// The token each position predicts, `[N]`.
    pub targets: Vec<u32>,
    /// The row of each position, `[N]`.
    pub row_of: Vec<usize>,
    /// Row `r`'s positions are `row_ends[r − 1]..row_ends[r]` (`row_ends[−1]` = 0).
    pub row_ends: Vec<usize>,
}

impl ScoredPositions {
    /// Number of scored positions `N`.
    pub fn count(&self) -> usize {
        self.flat.len()
    }

    /// Positions of rows `0..rows` (they come first).
    pub fn count_in_first_rows(&self, rows: usize) -> usize {
        if rows == 0 { 0 } else { self.row_ends[rows - 1] }
    }

    fn ints<B: Backend>(values: impl Iterator<Item = i64>, n: usize, device: &B::Device) -> Tensor<B, 1, Int> {
        Tensor::from_data(TensorData::new(values.collect::<Vec<_>>(), [n]), device)
    }

    /// [`Self::flat`] as an index tensor.
    pub fn flat_index<B: Backend>(&self, device: &B::Device) -> Tensor<B, 1, Int> {
        Self::ints(self.flat.iter().map(|&i| i as i64), self.count(), device)
    }

    /// [`Self::targets`] as an index tensor.
    pub fn target_index<B: Backend>(&self, device: &B::Device) -> Tensor<B, 1, Int> {
        Self::ints(self.targets.iter().map(|&i| i64::from(i)), self.count(), device)
    }

    /// [`Self::row_of`] as an index tensor.
    pub fn row_index<B: Backend>(&self, device: &B::Device) -> Tensor<B, 1, Int> {
        Self::ints(self.row_of.iter().map(|&i| i as i64), self.count(), device)
    }
}
