//! Token batches: sequences padded on the right or packed several to a
//! row, with the positions whose tokens the loss counts (the completion).

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::error::ModelError;
use crate::model::Positions;

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

/// How a batch lays its sequences out in rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BatchLayout {
    /// One sequence per row, padded on the right to the longest.
    #[default]
    Padded,
    /// Several sequences per row, one after another (padding-free): rows as
    /// long as the longest sequence, filled first-fit in decreasing length;
    /// positions restart at each sequence and attention stays within it
    /// ([`Positions::packed`]).
    Packed,
}

/// Where one sequence of a [`TokenBatch`] sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// Its row.
    pub row: usize,
    /// Its first column.
    pub start: usize,
    /// Its length in tokens.
    pub len: usize,
}

/// Token rows holding sequences laid out as a [`BatchLayout`] says.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBatch {
    /// `[rows, len]` token ids, padding filled with `pad_id`.
    pub ids: Vec<u32>,
    /// `[rows, len]`: 1 where the token is a completion token.
    pub scored: Vec<f32>,
    /// Number of rows (the number of sequences when padded).
    pub rows: usize,
    /// Row length.
    pub len: usize,
    /// Where each sequence sits, in the order given.
    pub placements: Vec<Placement>,
    /// The rows' layout as the model reads it.
    pub positions: Positions,
}

impl TokenBatch {
    /// One sequence per row, padded on the right with `pad_id`. Fails when a
    /// sequence is shorter than 2 tokens, has no completion or holds an id `≥ vocab`.
    pub fn new(sequences: &[&Sequence], pad_id: u32, vocab: usize) -> Result<Self, ModelError> {
        Self::with_layout(sequences, pad_id, vocab, BatchLayout::Padded)
    }

    /// [`Self::new`] with the sequences laid out as `layout` says.
    pub fn with_layout(
        sequences: &[&Sequence],
        pad_id: u32,
        vocab: usize,
        layout: BatchLayout,
    ) -> Result<Self, ModelError> {
        for (r, s) in sequences.iter().enumerate() {
            check_sequence(r, s, vocab)?;
        }
        let lengths: Vec<usize> = sequences.iter().map(|s| s.ids.len()).collect();
        let (placements, rows) = match layout {
            BatchLayout::Padded => (
                lengths.iter().enumerate().map(|(row, &len)| Placement { row, start: 0, len }).collect(),
                lengths.len(),
            ),
            BatchLayout::Packed => pack_first_fit_decreasing(&lengths),
        };
        let len = placements.iter().map(|p| p.start + p.len).max().unwrap_or(0);
        let mut ids = vec![pad_id; rows * len];
        let mut scored = vec![0f32; rows * len];
        let mut starts = vec![Vec::new(); rows];
        for (s, p) in sequences.iter().zip(&placements) {
            let at = p.row * len + p.start;
            ids[at..at + p.len].copy_from_slice(&s.ids);
            scored[at + s.completion_start..at + p.len].fill(1.0);
            starts[p.row].push(p.start);
        }
        let positions = match layout {
            BatchLayout::Padded => Positions::from_zero(),
            BatchLayout::Packed => {
                starts.iter_mut().for_each(|row| row.sort_unstable());
                Positions::packed(starts)
            }
        };
        Ok(Self { ids, scored, rows, len, placements, positions })
    }

    /// Number of sequences.
    pub fn sequences(&self) -> usize {
        self.placements.len()
    }

    /// Tokens in the rows (real and padding): `rows · len`.
    pub fn slots(&self) -> usize {
        self.rows * self.len
    }

    /// Completion tokens of sequence `i`.
    pub fn scored_tokens(&self, i: usize) -> usize {
        let p = self.placements[i];
        let at = p.row * self.len + p.start;
        self.scored[at..at + p.len].iter().filter(|&&m| m != 0.0).count()
    }

    /// Input ids `[rows, len]`.
    pub fn input<B: Backend>(&self, device: &B::Device) -> Tensor<B, 2, Int> {
        let ids: Vec<i64> = self.ids.iter().map(|&i| i64::from(i)).collect();
        Tensor::from_data(TensorData::new(ids, [self.rows, self.len]), device)
    }

    /// The positions whose next token is scored (completion tokens),
    /// sequence by sequence: position `t` of a sequence predicts its token `t + 1`.
    pub fn scored_positions(&self) -> ScoredPositions {
        let sequences = self.sequences();
        let mut scored = ScoredPositions { rows: sequences, len: self.len, ..ScoredPositions::default() };
        for (i, p) in self.placements.iter().enumerate() {
            let at = p.row * self.len + p.start;
            for t in 1..p.len {
                if self.scored[at + t] != 0.0 {
                    scored.flat.push(at + t - 1);
                    scored.targets.push(self.ids[at + t]);
                    scored.row_of.push(i);
                }
            }
            scored.row_ends.push(scored.flat.len());
        }
        scored
    }
}

fn check_sequence(r: usize, s: &Sequence, vocab: usize) -> Result<(), ModelError> {
    if s.completion_start == 0 || s.completion_len() == 0 {
        return Err(ModelError::Batch(format!(
            "sequence {r} needs at least one prompt token and one completion token (length {}, completion from {})",
            s.ids.len(),
            s.completion_start
        )));
    }
    match s.ids.iter().find(|&&id| id as usize >= vocab) {
        Some(&bad) => {
            Err(ModelError::Batch(format!("sequence {r} holds token id {bad}, outside the vocabulary of {vocab}")))
        }
        None => Ok(()),
    }
}

/// Rows as long as the longest sequence, filled first-fit in decreasing
/// length (ties in the given order): each sequence goes to the first row
/// with room, else a new row. Returns each sequence's placement (in the
/// given order) and the number of rows. Within a row, sequences sit in the
/// order they were placed.
fn pack_first_fit_decreasing(lengths: &[usize]) -> (Vec<Placement>, usize) {
    let capacity = lengths.iter().copied().max().unwrap_or(0);
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let mut used: Vec<usize> = Vec::new();
    let mut placements = vec![Placement { row: 0, start: 0, len: 0 }; lengths.len()];
    for i in order {
        let len = lengths[i];
        let row = match used.iter().position(|&u| u + len <= capacity) {
            Some(row) => row,
            None => {
                used.push(0);
                used.len() - 1
            }
        };
        placements[i] = Placement { row, start: used[row], len };
        used[row] += len;
    }
    (placements, used.len())
}

/// Where a [`TokenBatch`]'s scored tokens are: `N` positions in sequence
/// order. ("Rows" here are the batch's sequences, whatever its layout.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScoredPositions {
    /// Sequences of the batch.
    pub rows: usize,
    /// Row length of the batch.
    pub len: usize,
    /// Flat index `r·len + c` (row, column) of each predicting position, `[N]`.
    pub flat: Vec<usize>,
    /// The token each position predicts, `[N]`.
    pub targets: Vec<u32>,
    /// The sequence of each position, `[N]`.
    pub row_of: Vec<usize>,
    /// Sequence `i`'s positions are `row_ends[i − 1]..row_ends[i]` (`row_ends[−1]` = 0).
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
