//! Judges: a tiny `LlamaForSequenceClassification` reward model scores like a
//! straightforward f64 computation from the file; reward and language
//! checkpoints are not confused.

use burn::backend::NdArray;
use daa_train::checkpoint::{load_model, load_reward_model};
use daa_train::judge::{Judge, Judged};
use daa_train::reward_model::RewardModelJudge;
use daa_train::tiny_run::{TINY_VOCAB, llama_config};
use serde_json::json;

use super::checkpoint;
use super::naive::{Weights, sequence_reward};

type B = NdArray<f32>;

/// |burn f32 − f64 reference| ≤ REWARD_TOLERANCE·(1 + |reference|). The
/// forward pass agrees with the reference to 2e-4 per log-probability
/// (model.rs); a reward is a 32-term dot product of the last hidden state
/// with `score.weight` (σ = 0.3). Alone, a row agrees to 1e-6; right-padded
/// in a batch with a longer one, by up to 2.6e-4 here: burn's ndarray matrix
/// product rounds differently with the batch's shape (tests/decode.rs saw the
/// same, 1.6e-4, with no padding logic involved).
const REWARD_TOLERANCE: f64 = 5e-4;

fn reward_config() -> serde_json::Value {
    let mut config = llama_config(TINY_VOCAB, 32, 2);
    config["architectures"] = json!(["LlamaForSequenceClassification"]);
    config["id2label"] = json!({"0": "LABEL_0"});
    config["label2id"] = json!({"LABEL_0": 0});
    config["pad_token_id"] = json!(257);
    config
}

#[test]
fn a_reward_model_scores_like_the_reference_in_batches_of_any_shape() {
    let dir = tempfile::tempdir().unwrap();
    let config = reward_config();
    checkpoint(dir.path(), &config, 0.3);
    let weights = Weights::read(dir.path());
    assert!(load_model::<B>(dir.path(), &Default::default()).unwrap_err().to_string().contains("reward"));

    let items = [
        Judged { prompt: "need cfk avoid bm length 8", completion: "acdfghik", ended: true },
        Judged { prompt: "What is 2 plus 3?", completion: "5", ended: true },
        Judged { prompt: "hi", completion: "a much longer answer than the others", ended: false },
    ];
    let mut judge = RewardModelJudge::<B>::open(dir.path(), 2, &Default::default()).unwrap();
    let rewards = judge.rewards(&items).unwrap();
    let mut alone = RewardModelJudge::<B>::open(dir.path(), 1, &Default::default()).unwrap();
    for (i, item) in items.iter().enumerate() {
        let ids = judge.encode(item).unwrap();
        // The chat template wraps the turns: BOS, user, end, assistant, …, end.
        assert_eq!(ids[0], 256, "item {i}");
        let want = sequence_reward(&config, &weights, &ids);
        let single = alone.rewards(std::slice::from_ref(item)).unwrap()[0];
        assert!(
            (rewards[i] - want).abs() < REWARD_TOLERANCE * (1.0 + want.abs()),
            "item {i}: {} vs {want}",
            rewards[i]
        );
        assert!((single - want).abs() < REWARD_TOLERANCE * (1.0 + want.abs()), "item {i} alone: {single} vs {want}");
    }
    assert!(rewards.iter().all(|r| r.is_finite()));
    assert!((rewards[0] - rewards[1]).abs() > 1e-6, "different texts, different rewards: {rewards:?}");
}

#[test]
fn checkpoints_of_the_wrong_kind_are_named() {
    let dir = tempfile::tempdir().unwrap();
    checkpoint(dir.path(), &llama_config(TINY_VOCAB, 32, 1), 0.3);
    let e = load_reward_model::<B>(dir.path(), &Default::default()).unwrap_err().to_string();
    assert!(e.contains("LlamaForCausalLM is a language model"), "{e}");

    let two = tempfile::tempdir().unwrap();
    let mut config = reward_config();
    config["id2label"] = json!({"0": "bad", "1": "good"});
    checkpoint(two.path(), &config, 0.3);
    let e = load_reward_model::<B>(two.path(), &Default::default()).unwrap_err().to_string();
    assert!(e.contains("2 labels"), "{e}");
}
