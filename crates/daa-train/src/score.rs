//! Sequence log-probabilities of preference pairs under a model (no
//! gradients): what the reference model contributes to the loss.

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::batch::{BatchLayout, SequencePair, TokenBatch};
use crate::error::{ModelError, read_vec};
use crate::model::CausalLm;
use crate::objective::sequence_logps;

/// Summed completion log-probabilities of one pair and the completion lengths.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PairScore {
    /// `π_w` (nats, summed over completion tokens).
    pub chosen: f64,
    /// `π_l`.
    pub rejected: f64,
    /// `n_w`.
    pub chosen_tokens: usize,
    /// `n_l`.
    pub rejected_tokens: usize,
}

/// Chosen sequences first, then rejected, padded on the right: one forward
/// pass per pair batch.
pub fn pair_batch(pairs: &[&SequencePair], pad_id: u32, vocab: usize) -> Result<TokenBatch, ModelError> {
    pair_batch_in(pairs, pad_id, vocab, BatchLayout::Padded)
}

/// [`pair_batch`] laid out as `layout` says (the sequences' order is kept:
/// chosen first, then rejected).
pub fn pair_batch_in(
    pairs: &[&SequencePair],
    pad_id: u32,
    vocab: usize,
    layout: BatchLayout,
) -> Result<TokenBatch, ModelError> {
    let sequences: Vec<_> = pairs.iter().map(|p| &p.chosen).chain(pairs.iter().map(|p| &p.rejected)).collect();
    TokenBatch::with_layout(&sequences, pad_id, vocab, layout)
}

/// Scores one batch of pairs with `model` in a single forward pass, the
/// sequences laid out as `layout` says. A non-finite score is an error
/// naming the pair's index in `pairs`.
pub fn score_batch<B: Backend>(
    model: &CausalLm<B>,
    pairs: &[&SequencePair],
    pad_id: u32,
    layout: BatchLayout,
) -> Result<Vec<PairScore>, ModelError> {
    let device = model.embed.weight.device();
    let tokens = pair_batch_in(pairs, pad_id, model.config().vocab_size, layout)?;
    let values: Vec<f64> = read_vec(sequence_logps(model, &tokens, &device)?, "sequence log-probabilities")?;
    let n = pairs.len();
    pairs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let score = PairScore {
                chosen: values[i],
                rejected: values[n + i],
                chosen_tokens: p.chosen.completion_len(),
                rejected_tokens: p.rejected.completion_len(),
            };
            if !(score.chosen.is_finite() && score.rejected.is_finite()) {
                return Err(ModelError::NonFiniteScore { pair: i, chosen: score.chosen, rejected: score.rejected });
            }
            Ok(score)
        })
        .collect()
}

/// Scores `pairs` with `model`, `batch` pairs per forward pass; `progress`
/// is told how many pairs are done. Errors name the pair's index in `pairs`.
pub fn score_pairs<B: Backend>(
    model: &CausalLm<B>,
    pairs: &[&SequencePair],
    batch: usize,
    pad_id: u32,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<PairScore>, ModelError> {
    let mut scores = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(batch.max(1)) {
        let done = scores.len();
        let batch_scores = score_batch(model, chunk, pad_id, BatchLayout::Padded).map_err(|e| e.offset_pairs(done))?;
        scores.extend(batch_scores);
        progress(scores.len());
    }
    Ok(scores)
}
