//! Judges: what scores a completion of a prompt. The evaluation's win
//! probability and `daa judge` use the same ones.
//!
//! - [`GoldJudge`]: the testbed's gold reward (exact, see
//!   [`crate::testbed::task`]).
//! - A Hugging Face reward model (`LlamaForSequenceClassification`) comes
//!   with the `io` feature (`daa_train::reward_model`).

use crate::error::ModelError;
use crate::testbed::{Constraints, gold_reward};

/// A prompt, one completion of it, and whether the model ended it itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Judged<'a> {
    /// The prompt's text (for a conversation: its last user message).
    pub prompt: &'a str,
    /// The completion's text.
    pub completion: &'a str,
    /// `false` when generation stopped at its length limit.
    pub ended: bool,
}

/// Scores completions; higher is better.
pub trait Judge {
    /// A name for reports.
    fn name(&self) -> String;
    /// One reward per item, in order. Errors name the item.
    fn rewards(&mut self, items: &[Judged<'_>]) -> Result<Vec<f64>, ModelError>;
}

/// The testbed's gold reward `r(x, y)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct GoldJudge;

impl Judge for GoldJudge {
    fn name(&self) -> String {
        "gold".into()
    }

    fn rewards(&mut self, items: &[Judged<'_>]) -> Result<Vec<f64>, ModelError> {
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let prompt = Constraints::parse(item.prompt)
                    .map_err(|e| ModelError::Batch(format!("item {i}: not a testbed prompt: {e}")))?;
                Ok(gold_reward(&prompt, item.completion, item.ended))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gold_judge_scores_testbed_prompts_and_names_others() {
        let items = [
            Judged { prompt: "need cfk avoid bm length 8", completion: "acdfghik", ended: true },
            Judged { prompt: " need cfk avoid bm length 8\n", completion: "acdfghik", ended: false },
        ];
        assert_eq!(GoldJudge.rewards(&items).unwrap(), [1.0, 0.5]);
        let bad = [items[0], Judged { prompt: "What is 2 plus 2?", completion: "4", ended: true }];
        let e = GoldJudge.rewards(&bad).unwrap_err().to_string();
        assert!(e.contains("item 1") && e.contains("not a testbed prompt"), "{e}");
    }
}
