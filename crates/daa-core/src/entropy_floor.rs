//! The top-k entropy floor: a term of the training objective that holds the
//! policy's next-token distribution from narrowing below a floor `h`.
//!
//! For a position with logits `z` (`V` values), its top-k set `K` (the `k`
//! largest logits, held fixed for the gradient: a set does not move under an
//! infinitesimal change), the renormalised top-k distribution and its
//! entropy in base `b` (the statistics' base, bits by default):
//!
//! ```text
//! q_i = exp z_i / Σ_{j∈K} exp z_j   (i ∈ K),       H = −Σ_{i∈K} q_i ln q_i  (nats),   H_b = H / ln b
//! term = relu(h − H_b)
//! ∂term/∂z_i = [H_b < h] · q_i (ln q_i + H) / ln b    for i ∈ K,   0 outside K
//! ```
//!
//! (from `∂H/∂z_i = −q_i (ln q_i + H)`). The objective adds
//! `μ · (1/T) Σ_t relu(h − H_{b,t})` over the `T` scored positions of a
//! step, with `μ` set by [`crate::controllers::EntropyFloorMultiplier`].
//! This is the f64 specification the trainer's chunked implementation is
//! tested against.

use crate::error::{DaaError, Result};

/// One position's term, its top-k entropy and the term's gradient.
#[derive(Debug, Clone, PartialEq)]
pub struct FloorRow {
    /// `relu(h − H_b)`.
    pub value: f64,
    /// `H_b`.
    pub entropy: f64,
    /// `∂term/∂z`, one value per logit (0 outside the top-k set).
    pub grad: Vec<f64>,
}

/// The indices of the `k` largest of `logits`, largest first (ties: the
/// lower index first).
pub fn top_k_indices(logits: &[f64], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    order.truncate(k);
    order
}

/// The term and its gradient for one position (module documentation).
/// Errors: `k` of 0 or beyond the vocabulary, a base not above 1, a
/// non-finite floor, NaN or `+∞` logits, or a row whose top-k are all `−∞`.
pub fn topk_entropy_floor_row(logits: &[f64], k: usize, entropy_base: f64, floor: f64) -> Result<FloorRow> {
    let param = |name: &'static str, value: String, expected: &str| DaaError::Parameter {
        name,
        value,
        expected: expected.into(),
    };
    if k == 0 || k > logits.len() {
        return Err(param("k", k.to_string(), &format!("1 ≤ k ≤ the vocabulary ({})", logits.len())));
    }
    if !(entropy_base > 1.0 && entropy_base.is_finite()) {
        return Err(param("entropy_base", entropy_base.to_string(), "a finite base > 1"));
    }
    if !floor.is_finite() {
        return Err(param("floor", floor.to_string(), "a finite entropy floor"));
    }
    if let Some(i) = logits.iter().position(|z| z.is_nan() || *z == f64::INFINITY) {
        return Err(param("logits", logits[i].to_string(), &format!("a finite or −inf logit at {i}")));
    }
    let top = top_k_indices(logits, k);
    let max = logits[top[0]];
    if max == f64::NEG_INFINITY {
        return Err(param("logits", "−inf".into(), "at least one finite logit"));
    }
    let log_norm = max + top.iter().map(|&i| (logits[i] - max).exp()).sum::<f64>().ln();
    let log_q: Vec<f64> = top.iter().map(|&i| logits[i] - log_norm).collect();
    let plogp = |l: f64| if l == f64::NEG_INFINITY { 0.0 } else { l.exp() * l };
    let entropy_nats = -log_q.iter().map(|&l| plogp(l)).sum::<f64>();
    let ln_base = entropy_base.ln();
    let entropy = entropy_nats / ln_base;
    let mut grad = vec![0.0; logits.len()];
    if entropy < floor {
        for (&i, &l) in top.iter().zip(&log_q) {
            grad[i] = if l == f64::NEG_INFINITY { 0.0 } else { l.exp() * (l + entropy_nats) / ln_base };
        }
    }
    Ok(FloorRow { value: (floor - entropy).max(0.0), entropy, grad })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::SplitMix64;

    #[test]
    fn three_tokens_by_hand() {
        // Top-2 of (0, ln 2, ln 3) is {2, 1}: q = (3/5, 2/5), H = 0.673012 nats.
        let z = [0.0, 2f64.ln(), 3f64.ln()];
        let h = -(0.6 * 0.6f64.ln() + 0.4 * 0.4f64.ln());
        let row = topk_entropy_floor_row(&z, 2, std::f64::consts::E, 1.0).unwrap();
        assert!((row.entropy - h).abs() < 1e-12 && (row.value - (1.0 - h)).abs() < 1e-12, "{row:?}");
        let g2 = 0.6 * (0.6f64.ln() + h);
        assert!((row.grad[2] - g2).abs() < 1e-12 && (row.grad[1] + g2).abs() < 1e-12 && row.grad[0] == 0.0, "{row:?}");
        // Above the floor: no term, no gradient. In bits: H / ln 2.
        let above = topk_entropy_floor_row(&z, 2, 2.0, 0.5).unwrap();
        assert!((above.entropy - h / 2f64.ln()).abs() < 1e-12);
        assert_eq!((above.value, above.grad.clone()), (0.0, vec![0.0; 3]));
        // k = V: the whole distribution; uniform logits have the largest entropy (no gradient).
        let uniform = topk_entropy_floor_row(&[1.0; 3], 3, std::f64::consts::E, 2.0).unwrap();
        assert!((uniform.entropy - 3f64.ln()).abs() < 1e-12);
        assert!(uniform.grad.iter().all(|g| g.abs() < 1e-15));
    }

    #[test]
    fn the_gradient_matches_finite_differences() {
        let mut rng = SplitMix64::new(11);
        for (v, k) in [(5, 2), (17, 10), (64, 10), (33, 33)] {
            let z: Vec<f64> = (0..v).map(|_| 3.0 * rng.normal()).collect();
            let floor = 10.0; // always active
            let row = topk_entropy_floor_row(&z, k, 2.0, floor).unwrap();
            for i in 0..v {
                let eps = 1e-6;
                let mut plus = z.clone();
                plus[i] += eps;
                let mut minus = z.clone();
                minus[i] -= eps;
                // The top-k set is held fixed: a step this small does not change it here.
                let fd = (topk_entropy_floor_row(&plus, k, 2.0, floor).unwrap().value
                    - topk_entropy_floor_row(&minus, k, 2.0, floor).unwrap().value)
                    / (2.0 * eps);
                assert!((fd - row.grad[i]).abs() < 1e-7, "V {v} k {k} i {i}: {fd} vs {}", row.grad[i]);
            }
        }
    }

    #[test]
    fn infinities_and_bad_settings() {
        // −inf inside the top-k contributes nothing; huge logits stay finite.
        let row = topk_entropy_floor_row(&[f64::NEG_INFINITY, 0.0, 0.0], 3, 2.0, 5.0).unwrap();
        assert!((row.entropy - 1.0).abs() < 1e-12 && row.grad[0] == 0.0, "{row:?}");
        let huge = topk_entropy_floor_row(&[1e30, 1e30 - 1e15, 0.0], 2, 2.0, 5.0).unwrap();
        assert!(huge.value.is_finite() && huge.grad.iter().all(|g| g.is_finite()), "{huge:?}");
        assert!(topk_entropy_floor_row(&[0.0, f64::NAN], 1, 2.0, 1.0).is_err());
        assert!(topk_entropy_floor_row(&[0.0, f64::INFINITY], 1, 2.0, 1.0).is_err());
        assert!(topk_entropy_floor_row(&[f64::NEG_INFINITY; 2], 1, 2.0, 1.0).is_err());
        assert!(topk_entropy_floor_row(&[0.0; 2], 3, 2.0, 1.0).is_err());
        assert!(topk_entropy_floor_row(&[0.0; 2], 1, 1.0, 1.0).is_err());
        assert!(topk_entropy_floor_row(&[0.0; 2], 1, 2.0, f64::NAN).is_err());
    }
}
