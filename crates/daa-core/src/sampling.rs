//! Next-token sampling with a temperature and a nucleus (top-p), as the
//! paper's evaluation samples (temperature 0.5, top-p 0.75).
//!
//! For logits `l` over the vocabulary and temperature `T > 0`, the tempered
//! distribution is `q_i ∝ exp(l_i / T)`. The nucleus `N_p` is the smallest set
//! of tokens, taken in order of decreasing `q_i` (ties: lower id first), whose
//! mass reaches `p`: `Σ_{i∈N_p} q_i ≥ p`. The token is drawn from `q`
//! restricted to `N_p` and renormalised, by inverting its cumulative sum at a
//! uniform draw `u ∈ [0, 1)` supplied by the caller (so the caller owns the
//! random stream and runs are reproducible). `T = 0` is greedy decoding: the
//! arg-max, lowest id on ties; `u` is not used.
//!
//! Each sampled token comes with its log-probability under the model's own
//! distribution, `log softmax(l)_token` (no temperature, no nucleus): what a
//! Monte-Carlo estimate of `KL(π‖π_ref)` sums.

use crate::error::{DaaError, Result};

/// Temperature and nucleus of sampling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// `T ≥ 0`; 0 is greedy.
    pub temperature: f64,
    /// Nucleus mass `p ∈ (0, 1]`; 1 keeps every token.
    pub top_p: f64,
}

impl SamplingParams {
    /// The paper's evaluation settings: temperature 0.5, top-p 0.75.
    pub const PAPER: Self = Self { temperature: 0.5, top_p: 0.75 };
    /// Greedy decoding.
    pub const GREEDY: Self = Self { temperature: 0.0, top_p: 1.0 };

    /// Checks the ranges, naming the parameter that is out of range.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(DaaError::Parameter {
                name: "temperature",
                value: self.temperature.to_string(),
                expected: "a finite temperature ≥ 0 (0 is greedy)".into(),
            });
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(DaaError::Parameter {
                name: "top_p",
                value: self.top_p.to_string(),
                expected: "a nucleus mass in (0, 1]".into(),
            });
        }
        Ok(())
    }

    /// Whether `u` is ignored (greedy decoding).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

/// A sampled token and its log-probability under the untempered model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampledToken {
    /// Token id.
    pub token: u32,
    /// `log softmax(l)_token` (nats).
    pub logprob: f64,
}

/// Draws the next token from one row of `logits` (see the module
/// documentation). `row` only names the row in errors. Logits may be −inf
/// (probability 0), never NaN or +inf, and not all −inf.
pub fn sample_next(logits: &[f32], params: &SamplingParams, uniform: f64, row: usize) -> Result<SampledToken> {
    params.validate()?;
    let mut max = f32::NEG_INFINITY;
    let mut argmax = None;
    for (column, &value) in logits.iter().enumerate() {
        if value.is_nan() || value == f32::INFINITY {
            return Err(DaaError::NonFiniteLogit { row, column, value });
        }
        if value > max {
            max = value;
            argmax = Some(column);
        }
    }
    let Some(argmax) = argmax else {
        return Err(DaaError::EmptyDistribution { row });
    };
    let max = f64::from(max);
    let log_norm = max + logits.iter().map(|&l| (f64::from(l) - max).exp()).sum::<f64>().ln();
    let token = if params.is_greedy() { argmax } else { draw(logits, max, params, uniform.clamp(0.0, 1.0)) };
    Ok(SampledToken { token: token as u32, logprob: f64::from(logits[token]) - log_norm })
}

/// Inverts the cumulative tempered, nucleus-restricted distribution at `u`.
fn draw(logits: &[f32], max: f64, params: &SamplingParams, u: f64) -> usize {
    let weights: Vec<f64> = logits.iter().map(|&l| ((f64::from(l) - max) / params.temperature).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut order: Vec<usize> = (0..weights.len()).filter(|&i| weights[i] > 0.0).collect();
    if params.top_p < 1.0 {
        order.sort_by(|&a, &b| weights[b].total_cmp(&weights[a]).then(a.cmp(&b)));
        let mut mass = 0.0;
        let mut keep = order.len();
        for (n, &i) in order.iter().enumerate() {
            mass += weights[i];
            if mass >= params.top_p * total {
                keep = n + 1;
                break;
            }
        }
        order.truncate(keep);
    }
    let nucleus: f64 = order.iter().map(|&i| weights[i]).sum();
    let target = u * nucleus;
    let mut cumulative = 0.0;
    for &i in &order {
        cumulative += weights[i];
        if target < cumulative {
            return i;
        }
    }
    // Rounding left `target` at the very top: the last token of the nucleus.
    order.last().copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frequencies(logits: &[f32], params: SamplingParams, draws: usize) -> Vec<f64> {
        let mut counts = vec![0usize; logits.len()];
        for n in 0..draws {
            let u = (n as f64 + 0.5) / draws as f64;
            counts[sample_next(logits, &params, u, 0).unwrap().token as usize] += 1;
        }
        counts.into_iter().map(|c| c as f64 / draws as f64).collect()
    }

    #[test]
    fn greedy_takes_the_lowest_arg_max() {
        let s = sample_next(&[0.5, 2.0, 2.0, f32::NEG_INFINITY], &SamplingParams::GREEDY, 0.9, 0).unwrap();
        assert_eq!(s.token, 1);
        let expected = 2.0 - (0.5f64.exp() + 2.0 * 2.0f64.exp()).ln();
        assert!((s.logprob - expected).abs() < 1e-12);
    }

    #[test]
    fn temperature_and_nucleus_match_hand_derivation() {
        // ln of probabilities 0.5, 0.3, 0.15, 0.05 at T = 1.
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.15f32.ln(), 0.05f32.ln()];
        let full = frequencies(&logits, SamplingParams { temperature: 1.0, top_p: 1.0 }, 20_000);
        for (f, p) in full.iter().zip([0.5, 0.3, 0.15, 0.05]) {
            assert!((f - p).abs() < 1e-3, "{full:?}");
        }
        // Top-p 0.75: the nucleus is {0, 1} (0.5 < 0.75 ≤ 0.8), renormalised to 5/8, 3/8.
        let nucleus = frequencies(&logits, SamplingParams { temperature: 1.0, top_p: 0.75 }, 20_000);
        assert!((nucleus[0] - 0.625).abs() < 1e-3 && (nucleus[1] - 0.375).abs() < 1e-3, "{nucleus:?}");
        assert_eq!(nucleus[2] + nucleus[3], 0.0);
        // T = 0.5 squares the probabilities: 0.25, 0.09, 0.0225, 0.0025 (sum 0.365).
        let cold = frequencies(&logits, SamplingParams { temperature: 0.5, top_p: 1.0 }, 20_000);
        for (f, w) in cold.iter().zip([0.25, 0.09, 0.0225, 0.0025]) {
            assert!((f - w / 0.365).abs() < 1e-3, "{cold:?}");
        }
        // A nucleus smaller than the top token keeps the top token only.
        let tiny = frequencies(&logits, SamplingParams { temperature: 1.0, top_p: 0.01 }, 100);
        assert_eq!(tiny[0], 1.0);
    }

    #[test]
    fn huge_and_infinite_logits() {
        let s = sample_next(&[1e30, f32::NEG_INFINITY, -1e30], &SamplingParams::PAPER, 0.99, 0).unwrap();
        assert_eq!(s.token, 0);
        assert!(s.logprob.abs() < 1e-12);
        let s =
            sample_next(&[f32::NEG_INFINITY, 3.0], &SamplingParams { temperature: 2.0, top_p: 1.0 }, 0.0, 0).unwrap();
        assert_eq!(s.token, 1);
    }

    #[test]
    fn bad_rows_and_parameters_are_named() {
        let err = sample_next(&[0.0, f32::NAN], &SamplingParams::PAPER, 0.5, 7).unwrap_err().to_string();
        assert!(err.contains("row 7") && err.contains("column 1"), "{err}");
        let err = sample_next(&[f32::NEG_INFINITY; 3], &SamplingParams::PAPER, 0.5, 2).unwrap_err().to_string();
        assert!(err.contains("row 2"), "{err}");
        let err = sample_next(&[0.0], &SamplingParams { temperature: 1.0, top_p: 0.0 }, 0.5, 0).unwrap_err();
        assert!(err.to_string().contains("top_p"), "{err}");
        let err = sample_next(&[0.0], &SamplingParams { temperature: -1.0, top_p: 1.0 }, 0.5, 0).unwrap_err();
        assert!(err.to_string().contains("temperature"), "{err}");
    }
}
