//! Preference labels like annotators': Bradley–Terry on the gold reward.
//!
//! For two completions of one prompt with gold rewards `r_1`, `r_2` and a
//! label temperature `τ ≥ 0`:
//!
//! ```text
//! P(y_1 ≻ y_2) = σ((r_1 − r_2) / τ)
//! ```
//!
//! `τ → 0` gives near-deterministic labels (the better completion always
//! wins: the regime where IPO's authors showed DPO's regularisation
//! vanishes); a large `τ` gives noisy ones. At `τ = 0` exactly, the higher
//! reward wins and a tie is a fair coin.

use daa_core::win_probability::sigmoid;
use serde_json::{Value, json};

/// `P(y_1 ≻ y_2)` (module documentation).
pub fn preference_probability(r1: f64, r2: f64, temperature: f64) -> f64 {
    if temperature == 0.0 {
        return match r1.partial_cmp(&r2) {
            Some(std::cmp::Ordering::Greater) => 1.0,
            Some(std::cmp::Ordering::Less) => 0.0,
            _ => 0.5,
        };
    }
    sigmoid((r1 - r2) / temperature)
}

/// Whether `y_1` is preferred, for a uniform draw `u ∈ [0, 1)`.
pub fn first_preferred(r1: f64, r2: f64, temperature: f64, u: f64) -> bool {
    u < preference_probability(r1, r2, temperature)
}

/// One labelled pair in binarized UltraFeedback's schema: `prompt`,
/// `prompt_id`, `chosen` and `rejected` as the whole conversation (user turn,
/// assistant reply), `score_chosen`, `score_rejected` (the gold rewards).
pub fn ultrafeedback_row(prompt_id: &str, prompt: &str, chosen: (&str, f64), rejected: (&str, f64)) -> Value {
    let conversation = |reply: &str| {
        json!([
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": reply},
        ])
    };
    json!({
        "prompt": prompt,
        "prompt_id": prompt_id,
        "chosen": conversation(chosen.0),
        "rejected": conversation(rejected.0),
        "score_chosen": chosen.1,
        "score_rejected": rejected.1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::uniform_open;

    #[test]
    fn labels_follow_bradley_terry_at_the_temperature() {
        let mut state = 11;
        for (difference, temperature) in [(0.5, 0.25), (0.2, 0.5), (-0.3, 0.1), (0.0, 1.0)] {
            let n = 20_000;
            let wins =
                (0..n).filter(|_| first_preferred(difference, 0.0, temperature, uniform_open(&mut state))).count();
            let p = sigmoid(difference / temperature);
            let sd = (p * (1.0 - p) / n as f64).sqrt();
            let f = wins as f64 / n as f64;
            assert!((f - p).abs() < 4.0 * sd + 1e-9, "Δ {difference}, τ {temperature}: {f} vs {p}");
        }
        // τ = 0: the better one always wins; ties are a coin.
        assert!(first_preferred(0.1, 0.0, 0.0, 0.999_999));
        assert!(!first_preferred(0.0, 0.1, 0.0, 0.0));
        assert!(first_preferred(0.2, 0.2, 0.0, 0.49) && !first_preferred(0.2, 0.2, 0.0, 0.51));
        // Near-deterministic at a small τ.
        assert!(preference_probability(0.1, 0.0, 0.001) > 0.999_999);
    }

    #[test]
    fn rows_have_the_ultrafeedback_schema() {
        let row = ultrafeedback_row("t-1", "need abc avoid de length 6", ("abcfgh", 1.0), ("aab", -0.5));
        assert_eq!(row["prompt"], "need abc avoid de length 6");
        assert_eq!(row["chosen"][0]["content"], "need abc avoid de length 6");
        assert_eq!(row["chosen"][1]["content"], "abcfgh");
        assert_eq!(row["rejected"][1]["content"], "aab");
        assert_eq!((row["score_chosen"].as_f64(), row["score_rejected"].as_f64()), (Some(1.0), Some(-0.5)));
        assert_eq!(row["chosen"][0]["role"], "user");
        assert_eq!(row["rejected"][1]["role"], "assistant");
    }
}
