//! Win probability against a competitor: the testbed's measure of how good
//! a policy's samples are (how far it moved is [`crate::kl`]).
//!
//! For prompts `i = 1…n`, a judge's reward `r_i` of the model's sample and
//! `c_i` of the competitor's sample for the same prompt:
//!
//! ```text
//! P_win    = (1/n) Σ_i σ(r_i − c_i)          (the paper's win probability)
//! win_rate = (1/n) Σ_i [r_i > c_i]            (strictly better)
//! ```

use crate::error::{DaaError, Result};

/// Win figures of a model's samples against a competitor's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WinStats {
    /// `P_win`.
    pub win_prob: f64,
    /// Fraction of prompts where the model's reward is strictly higher.
    pub win_rate: f64,
    /// Prompts compared.
    pub prompts: usize,
}

/// `σ(x)` without overflow for large `|x|`.
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 { 1.0 / (1.0 + (-x).exp()) } else { x.exp() / (1.0 + x.exp()) }
}

/// Two non-empty series of the same length, every value finite; errors name
/// the series and the row.
pub(crate) fn check_paired(first: (&[f64], &'static str), second: (&[f64], &'static str)) -> Result<()> {
    if first.0.len() != second.0.len() || first.0.is_empty() {
        return Err(DaaError::Parameter {
            name: second.1,
            value: format!("{} values", second.0.len()),
            expected: format!("one per row of the {} {} values (at least one)", first.0.len(), first.1),
        });
    }
    for (values, name) in [first, second] {
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(DaaError::Parameter {
                name,
                value: values[i].to_string(),
                expected: format!("a finite value at row {i}"),
            });
        }
    }
    Ok(())
}

/// Win probability and win rate of `model` rewards against `competitor`
/// rewards, prompt by prompt (module documentation).
pub fn win_stats(model: &[f64], competitor: &[f64]) -> Result<WinStats> {
    check_paired((model, "model reward"), (competitor, "competitor reward"))?;
    let n = model.len() as f64;
    let win_prob = model.iter().zip(competitor).map(|(r, c)| sigmoid(r - c)).sum::<f64>() / n;
    let win_rate = model.iter().zip(competitor).filter(|(r, c)| r > c).count() as f64 / n;
    Ok(WinStats { win_prob, win_rate, prompts: model.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_win_figures() {
        let w = win_stats(&[1.0, 0.0, 2.0], &[0.0, 0.0, 3.0]).unwrap();
        let expected = (sigmoid(1.0) + 0.5 + sigmoid(-1.0)) / 3.0;
        assert!((w.win_prob - expected).abs() < 1e-15);
        assert!((w.win_prob - 0.5).abs() < 1e-15, "σ(1) + σ(−1) = 1");
        assert!((w.win_rate - 1.0 / 3.0).abs() < 1e-15);
        assert_eq!(sigmoid(-1000.0), 0.0);
        assert_eq!(sigmoid(1000.0), 1.0);
    }

    #[test]
    fn mismatches_and_non_finite_values_are_named() {
        assert!(win_stats(&[1.0], &[]).unwrap_err().to_string().contains("competitor"));
        let err = win_stats(&[1.0, f64::NAN], &[0.0, 0.0]).unwrap_err().to_string();
        assert!(err.contains("row 1"), "{err}");
    }
}
