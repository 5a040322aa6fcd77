//! How far a policy moved from its reference: `KL(π‖π_ref)` estimated from
//! samples.
//!
//! For samples `y_j ~ π` with per-sequence log-probabilities under the policy
//! and the reference, `KL(π‖π_ref) ≈ (1/m) Σ_j [log π(y_j) − log π_ref(y_j)]`
//! per sequence (unbiased when the samples come from `π` itself; with a
//! temperature or a nucleus they come from a sharpened `π`, and the figure is
//! the same average over those samples).

use crate::error::Result;
use crate::win_probability::check_paired;

/// Monte-Carlo `KL(π‖π_ref)` per sequence from the samples' log-probabilities
/// under the policy and the reference (module documentation).
pub fn kl_estimate(policy_logps: &[f64], reference_logps: &[f64]) -> Result<f64> {
    check_paired((policy_logps, "policy log-probability"), (reference_logps, "reference log-probability"))?;
    Ok(policy_logps.iter().zip(reference_logps).map(|(p, r)| p - r).sum::<f64>() / policy_logps.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_of_samples() {
        assert!((kl_estimate(&[-1.0, -2.0], &[-1.5, -3.5]).unwrap() - 1.0).abs() < 1e-15);
        assert!(kl_estimate(&[], &[]).is_err());
    }
}
