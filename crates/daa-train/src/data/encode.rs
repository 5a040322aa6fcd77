//! From rows to token pairs: template, tokenise, truncate, count what was
//! skipped.

use std::collections::BTreeMap;

use anyhow::{Result, bail};

use super::chat::TextEncoder;
use super::rows::{Example, Message, Prompt, RawRow};
use crate::batch::{LengthLimits, SequencePair};

/// Length limits and strictness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Longest prompt + completion, in tokens.
    pub max_length: usize,
    /// Longest prompt kept when a pair is too long (its end is kept).
    pub max_prompt_length: usize,
    /// Stop at the first bad row instead of skipping it.
    pub strict: bool,
}

/// One usable row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedPair {
    /// 1-based row number in the source file.
    pub row: usize,
    /// Prompt + preferred and prompt + dispreferred completion.
    pub pair: SequencePair,
}

impl AsRef<SequencePair> for EncodedPair {
    fn as_ref(&self) -> &SequencePair {
        &self.pair
    }
}

/// A data file after encoding, with what was skipped and why.
#[derive(Debug, Clone, Default)]
pub struct EncodedSet {
    /// Usable pairs, in file order.
    pub pairs: Vec<EncodedPair>,
    /// Rows read.
    pub rows: usize,
    /// Skipped rows by reason.
    pub skipped: BTreeMap<String, usize>,
    /// Pairs shortened to `max_length`.
    pub truncated: usize,
}

impl EncodedSet {
    /// Total skipped rows.
    pub fn skipped_total(&self) -> usize {
        self.skipped.values().sum()
    }
}

/// The prompt's, the chosen completion's and the rejected completion's ids.
type PairIds = (Vec<u32>, Vec<u32>, Vec<u32>);

/// Prompt and completion ids of an example.
fn sides(encoder: &TextEncoder, example: &Example) -> Result<PairIds, String> {
    let err = |e: anyhow::Error| format!("{e:#}");
    match example {
        Example::Text { prompt, chosen, rejected, .. } => {
            let mut prompt_ids: Vec<u32> = encoder.bos_id.into_iter().collect();
            prompt_ids.extend(encoder.encode(prompt).map_err(err)?);
            let completion = |text: &str| -> Result<Vec<u32>, String> {
                let mut ids = encoder.encode(text).map_err(err)?;
                ids.extend(encoder.eos_id);
                Ok(ids)
            };
            Ok((prompt_ids, completion(chosen)?, completion(rejected)?))
        }
        Example::Chat { prompt, chosen, rejected, .. } => {
            let prompt_text = encoder.render(prompt, true).map_err(err)?;
            let completion = |reply: &Message| -> Result<Vec<u32>, String> {
                let mut turns = prompt.clone();
                turns.push(reply.clone());
                let full = encoder.render(&turns, false).map_err(err)?;
                let Some(tail) = full.strip_prefix(&prompt_text) else {
                    return Err(
                        "the chat template renders the conversation with the reply differently from the prompt alone"
                            .into(),
                    );
                };
                encoder.encode(tail).map_err(err)
            };
            Ok((encoder.encode(&prompt_text).map_err(err)?, completion(chosen)?, completion(rejected)?))
        }
    }
}

/// Token ids of a prompt to continue, as training renders prompts: plain
/// text after the BOS token; a conversation through the chat template with
/// the assistant's turn opened.
pub fn encode_prompt(encoder: &TextEncoder, prompt: &Prompt) -> Result<Vec<u32>, String> {
    let err = |e: anyhow::Error| format!("{e:#}");
    match prompt {
        Prompt::Text(text) => {
            let mut ids: Vec<u32> = encoder.bos_id.into_iter().collect();
            ids.extend(encoder.encode(text).map_err(err)?);
            Ok(ids)
        }
        Prompt::Chat(turns) => encoder.encode(&encoder.render(turns, true).map_err(err)?).map_err(err),
    }
}

/// Encodes `rows` (bad rows skipped and counted, or an error naming the row
/// under `strict`). `source` names the file in errors.
pub fn encode_rows(
    rows: &[RawRow],
    encoder: &TextEncoder,
    options: &EncodeOptions,
    source: &str,
) -> Result<EncodedSet> {
    if options.max_prompt_length >= options.max_length {
        bail!(
            "data.max_prompt_length ({}) must be smaller than data.max_length ({})",
            options.max_prompt_length,
            options.max_length
        );
    }
    let mut set = EncodedSet { rows: rows.len(), ..EncodedSet::default() };
    for raw in rows {
        let parsed =
            raw.value.clone().and_then(|v| Example::parse(&v)).and_then(|example| sides(encoder, &example)).and_then(
                |(p, c, r)| {
                    if c == r { Err("`chosen` and `rejected` tokenise identically".into()) } else { Ok((p, c, r)) }
                },
            );
        match parsed {
            Ok((prompt, chosen, rejected)) => {
                let limits =
                    LengthLimits { max_length: options.max_length, max_prompt_length: options.max_prompt_length };
                let (pair, truncated) = SequencePair::truncated(prompt, chosen, rejected, &limits);
                set.truncated += usize::from(truncated);
                set.pairs.push(EncodedPair { row: raw.row, pair });
            }
            Err(reason) if options.strict => bail!("{source}: row {}: {reason}", raw.row),
            Err(reason) => *set.skipped.entry(reason).or_default() += 1,
        }
    }
    Ok(set)
}
