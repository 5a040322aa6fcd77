//! How far a policy moved from its reference: `KL(π‖π_ref)` over completions
//! `y` of prompts `x`, estimated from `n` samples `y_j ~ π(·|x_j)` drawn from
//! the policy itself (temperature 1, no nucleus):
//!
//! ```text
//! exact per token:  k_j = Σ_t KL(π(·|x_j, y_j,<t) ‖ π_ref(·|x_j, y_j,<t))
//!                       = Σ_t Σ_v π(v|…) [log π(v|…) − log π_ref(v|…)]
//! sequence:         k_j = log π(y_j|x_j) − log π_ref(y_j|x_j)
//! estimate:         KL ≈ k̄ = (1/n) Σ_j k_j,   SE = s_k / √n,   s_k² = Σ_j (k_j − k̄)² / (n − 1)
//! ```
//!
//! Both are unbiased for `KL(π‖π_ref)` when the `y_j` come from `π` (by the
//! chain rule, the expected sum of per-token KLs over the policy's prefixes
//! is the sequence KL). The per-token form sums whole-vocabulary KLs, each
//! never negative, so every `k_j ≥ 0` and its variance is much lower; the
//! sequence form can be negative sample by sample. From a tempered or
//! truncated `π` neither is the policy's KL: the mean log-ratio of such
//! samples ([`mean_log_ratio`]) is reported under a name that says so.
//! With fewer than two samples there is no standard error (`None`).

use crate::error::{DaaError, Result};
use crate::win_probability::check_paired;

/// A mean over samples with its standard error.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// `k̄`.
    pub mean: f64,
    /// `s_k / √n`; `None` with one sample.
    pub standard_error: Option<f64>,
    /// `n`.
    pub samples: usize,
}

/// The mean of `values` (one per sample, finite) and its standard error
/// (module documentation); `name` names the values in errors.
pub fn mean_with_standard_error(values: &[f64], name: &'static str) -> Result<Estimate> {
    if values.is_empty() {
        return Err(DaaError::Parameter { name, value: "no values".into(), expected: "at least one sample".into() });
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(DaaError::Parameter {
            name,
            value: values[i].to_string(),
            expected: format!("a finite value at sample {i}"),
        });
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let standard_error =
        (values.len() > 1).then(|| (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0) / n).sqrt());
    Ok(Estimate { mean, standard_error, samples: values.len() })
}

/// `KL(π‖π_ref)` from per-sample sums of per-token KLs. Each sum is of
/// divergences already clamped at 0 (rounding can leave one a hair below),
/// so a sum below `−1e-9` is an error: it cannot come from a KL; NaN and
/// infinities are errors too.
pub fn kl_from_token_sums(per_sample: &[f64]) -> Result<Estimate> {
    if let Some(i) = per_sample.iter().position(|&k| k < -1e-9) {
        return Err(DaaError::Parameter {
            name: "per-token KL sum",
            value: per_sample[i].to_string(),
            expected: format!("a sum of KL divergences (≥ 0) at sample {i}"),
        });
    }
    let clamped: Vec<f64> = per_sample.iter().map(|&k| if k < 0.0 { 0.0 } else { k }).collect();
    mean_with_standard_error(&clamped, "per-token KL sum")
}

/// The mean of `log π(y_j) − log π_ref(y_j)` over samples and its standard
/// error: the sequence estimator of `KL(π‖π_ref)` when the samples come from
/// `π` itself, and only a mean log-ratio otherwise.
pub fn mean_log_ratio(policy_logps: &[f64], reference_logps: &[f64]) -> Result<Estimate> {
    check_paired((policy_logps, "policy log-probability"), (reference_logps, "reference log-probability"))?;
    let ratios: Vec<f64> = policy_logps.iter().zip(reference_logps).map(|(p, r)| p - r).collect();
    mean_with_standard_error(&ratios, "log-ratio")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_standard_error_by_hand() {
        // Values 1, 2, 3, 6: mean 3, s² = (4 + 1 + 0 + 9)/3 = 14/3, SE = √(14/3 / 4) = √(7/6).
        let e = mean_with_standard_error(&[1.0, 2.0, 3.0, 6.0], "x").unwrap();
        assert_eq!(e.samples, 4);
        assert!((e.mean - 3.0).abs() < 1e-15);
        assert!((e.standard_error.unwrap() - (7.0f64 / 6.0).sqrt()).abs() < 1e-15);
        assert_eq!(mean_with_standard_error(&[2.5], "x").unwrap().standard_error, None);
    }

    #[test]
    fn log_ratios_and_token_sums() {
        let e = mean_log_ratio(&[-1.0, -2.0], &[-1.5, -3.5]).unwrap();
        assert!((e.mean - 1.0).abs() < 1e-15 && (e.standard_error.unwrap() - 0.5).abs() < 1e-15, "{e:?}");
        // Rounding below zero is clamped; a real negative is an error naming the sample.
        assert_eq!(kl_from_token_sums(&[-1e-12, 0.5]).unwrap().mean, 0.25);
        let err = kl_from_token_sums(&[0.1, -0.2]).unwrap_err().to_string();
        assert!(err.contains("sample 1"), "{err}");
        let err = kl_from_token_sums(&[0.1, 0.2, f64::NAN]).unwrap_err().to_string();
        assert!(err.contains("sample 2"), "a NaN is not clamped to 0: {err}");
    }

    #[test]
    fn empty_mismatched_and_non_finite_inputs_are_named() {
        assert!(mean_log_ratio(&[], &[]).is_err());
        assert!(mean_log_ratio(&[1.0], &[1.0, 2.0]).unwrap_err().to_string().contains("reference"));
        let err = mean_with_standard_error(&[1.0, f64::INFINITY], "KL").unwrap_err().to_string();
        assert!(err.contains("`KL`") || err.contains("KL"), "{err}");
        assert!(err.contains("sample 1"), "{err}");
    }
}
