//! The study's prompt splits: what trains, what selects and what reports.
//!
//! A testbed's prompts come from disjoint index ranges of the task
//! ([`super::stages`]): SFT `[0, n_sft)`, training pairs after them, then the
//! held-out pairs whose prompts the run's own evaluations read (the
//! **selection** prompts: controllers, thresholds and stopping steps are
//! chosen on them). Two more splits are only ever read after training:
//!
//! - **test**: prompts of the same task drawn from indices `2⁴⁰ + i`, every
//!   one whose text is an SFT, training or selection prompt left out (the
//!   task has about 2·10⁵ distinct prompts, so a few hundred of ~6 800
//!   indices repeat a text by chance), and no text twice;
//! - **generalisation**: prompts whose target length lies beyond every
//!   length the reference and the pairs ever saw (`max_length + 1 …
//!   max_length + 3`), from indices `2⁴¹ + i`: the paper's claim is about
//!   prompts unlike the training ones, which held-out prompts of the same
//!   generator do not test.

use std::collections::HashSet;

use super::spec::TestbedSpec;
use super::stages::pair_ranges;
use super::task::{Constraints, TaskShape};

/// First index of the test prompts.
pub const TEST_INDEX_BASE: u64 = 1 << 40;
/// First index of the generalisation prompts.
pub const GENERALISATION_INDEX_BASE: u64 = 1 << 41;
/// Lengths beyond the training range the generalisation prompts ask for.
pub const GENERALISATION_EXTRA_LENGTHS: usize = 3;

/// A prompt of a split: its index in the task (its seeds) and constraints.
pub type SplitPrompt = (u64, Constraints);

/// The text of every prompt the reference or the run reads: SFT, training
/// and selection (held-out) prompts.
pub fn seen_prompt_texts(spec: &TestbedSpec) -> HashSet<String> {
    let task = spec.task();
    let (train, selection) = pair_ranges(spec);
    (0..spec.sft_prompts as u64)
        .chain(train)
        .chain(selection)
        .map(|i| Constraints::draw(spec.seed, i, &task).to_text())
        .collect()
}

/// The selection prompts (the held-out pairs' prompts, in order).
pub fn selection_prompts(spec: &TestbedSpec) -> Vec<SplitPrompt> {
    let task = spec.task();
    pair_ranges(spec).1.map(|i| (i, Constraints::draw(spec.seed, i, &task))).collect()
}

/// Draws `count` prompts of `shape` from indices `base + i`, skipping texts
/// in `exclude` and repeats.
fn fresh_prompts(
    spec: &TestbedSpec,
    shape: &TaskShape,
    base: u64,
    count: usize,
    exclude: &HashSet<String>,
) -> Vec<SplitPrompt> {
    let mut taken = HashSet::new();
    let mut out = Vec::with_capacity(count);
    let mut index = base;
    while out.len() < count {
        let c = Constraints::draw(spec.seed, index, shape);
        let text = c.to_text();
        if !exclude.contains(&text) && taken.insert(text) {
            out.push((index, c));
        }
        index += 1;
    }
    out
}

/// `count` test prompts (module documentation).
pub fn test_prompts(spec: &TestbedSpec, count: usize) -> Vec<SplitPrompt> {
    fresh_prompts(spec, &spec.task(), TEST_INDEX_BASE, count, &seen_prompt_texts(spec))
}

/// The generalisation prompts' shape: the task's letters, target lengths
/// `max_length + 1 … max_length + 3`.
pub fn generalisation_shape(spec: &TestbedSpec) -> TaskShape {
    TaskShape {
        min_length: spec.max_length + 1,
        max_length: spec.max_length + GENERALISATION_EXTRA_LENGTHS,
        ..spec.task()
    }
}

/// `count` generalisation prompts (module documentation); an error when the
/// testbed's `max_new_tokens` cannot hold their longest target.
pub fn generalisation_prompts(spec: &TestbedSpec, count: usize) -> Result<Vec<SplitPrompt>, String> {
    let shape = generalisation_shape(spec);
    if spec.max_new_tokens <= shape.max_length {
        return Err(format!(
            "testbed: the generalisation prompts ask for up to {} letters: `max_new_tokens` ({}) must exceed it",
            shape.max_length, spec.max_new_tokens
        ));
    }
    Ok(fresh_prompts(spec, &shape, GENERALISATION_INDEX_BASE, count, &seen_prompt_texts(spec)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_prompt_is_in_two_splits() {
        // A smaller testbed than the default so the test is quick; the same code.
        for seed in [0, 3] {
            let spec = TestbedSpec { seed, sft_prompts: 1500, pairs: 600, eval_pairs: 128, ..TestbedSpec::default() };
            let task = spec.task();
            let (train, selection) = pair_ranges(&spec);
            let text = |i: u64| Constraints::draw(seed, i, &task).to_text();
            let sft: HashSet<String> = (0..spec.sft_prompts as u64).map(text).collect();
            let train: HashSet<String> = train.map(text).collect();
            let selection: HashSet<String> = selection.map(text).collect();
            let test = test_prompts(&spec, 512);
            let general = generalisation_prompts(&spec, 256).unwrap();
            let test_texts: HashSet<String> = test.iter().map(|(_, c)| c.to_text()).collect();
            let general_texts: HashSet<String> = general.iter().map(|(_, c)| c.to_text()).collect();
            assert_eq!((test_texts.len(), general_texts.len()), (512, 256), "no text twice within a split");
            for (name, split) in [("test", &test_texts), ("generalisation", &general_texts)] {
                for (other_name, other) in [("SFT", &sft), ("training", &train), ("selection", &selection)] {
                    assert!(split.is_disjoint(other), "{name} shares a prompt with {other_name}");
                }
            }
            assert!(test_texts.is_disjoint(&general_texts));
            // The exclusion is real: some test indices drew a seen prompt and were skipped.
            let last_index = test.last().unwrap().0 - TEST_INDEX_BASE;
            assert!(last_index >= 511);
            // Generalisation lengths were never a training length.
            assert!(general.iter().all(|(_, c)| c.length > spec.max_length && c.length <= spec.max_length + 3));
            for l in spec.max_length + 1..=spec.max_length + 3 {
                assert!(general.iter().any(|(_, c)| c.length == l), "length {l}");
            }
            // Deterministic per seed.
            assert_eq!(test, test_prompts(&spec, 512));
        }
        // With enough prompts drawn, repeats of seen texts do occur and are skipped.
        let spec = TestbedSpec::default();
        let seen = seen_prompt_texts(&spec);
        let skipped = (0..2048u64)
            .filter(|i| seen.contains(&Constraints::draw(0, TEST_INDEX_BASE + i, &spec.task()).to_text()))
            .count();
        assert!(skipped > 0, "the default testbed's prompts cover part of the task");
        let tight = TestbedSpec { max_new_tokens: 13, ..TestbedSpec::default() };
        assert!(generalisation_prompts(&tight, 4).unwrap_err().contains("max_new_tokens"));
    }
}
