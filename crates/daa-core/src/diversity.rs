//! Diversity of generated text across inputs: expectation-adjusted distinct
//! n-grams (EAD; Liu et al. 2022, "Rethinking and Refining the Distinct
//! Metric"), the measure the paper averages over n = 1…5.
//!
//! For a set of samples (token sequences) with `C` n-grams in all, of which
//! `D` are distinct, over a vocabulary of `V` tokens:
//!
//! ```text
//! EAD_n = D / E[D],   E[D] = Vⁿ · (1 − ((Vⁿ − 1) / Vⁿ)^C)
//! ```
//!
//! `E[D]` is the expected number of distinct n-grams among `C` drawn
//! uniformly from the `Vⁿ` possible ones; the paper (and Liu et al.) state the
//! unigram case, daa uses `Vⁿ` for n-grams. Unlike the plain ratio `D / C`,
//! EAD does not fall just because samples are longer. It is 0 when there is
//! no n-gram at all (every sample shorter than `n`). `E[D]` is evaluated as
//! `−Vⁿ · expm1(C · ln1p(−1/Vⁿ))`, accurate for large `Vⁿ` and `C`.

use std::collections::HashSet;

use crate::error::{DaaError, Result};

/// Distinct n-gram counts of a set of samples for one `n`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NgramDiversity {
    /// The n-gram length.
    pub n: usize,
    /// Distinct n-grams `D` across every sample.
    pub distinct: usize,
    /// n-grams `C` in all (`Σ max(len − n + 1, 0)`).
    pub total: usize,
    /// `D / E[D]` (see the module documentation); 0 when `C = 0`.
    pub ead: f64,
    /// `D / C`, the unadjusted distinct-n; 0 when `C = 0`.
    pub distinct_ratio: f64,
}

/// `E[D]`: distinct values expected among `total` uniform draws from `space`
/// values.
pub fn expected_distinct(space: f64, total: usize) -> f64 {
    if total == 0 {
        return 0.0;
    }
    -space * (total as f64 * (-1.0 / space).ln_1p()).exp_m1()
}

/// EAD and distinct counts of the n-grams of `samples` over a vocabulary of
/// `vocab_size` tokens.
pub fn ngram_diversity<S: AsRef<[u32]>>(samples: &[S], n: usize, vocab_size: usize) -> Result<NgramDiversity> {
    if n == 0 {
        return Err(DaaError::Parameter {
            name: "n",
            value: n.to_string(),
            expected: "an n-gram length of at least 1".into(),
        });
    }
    if vocab_size == 0 {
        return Err(DaaError::Parameter {
            name: "vocab_size",
            value: vocab_size.to_string(),
            expected: "a vocabulary of at least 1 token".into(),
        });
    }
    let mut seen: HashSet<&[u32]> = HashSet::new();
    let mut total = 0usize;
    for sample in samples {
        let tokens = sample.as_ref();
        if tokens.len() >= n {
            for gram in tokens.windows(n) {
                seen.insert(gram);
                total += 1;
            }
        }
    }
    let distinct = seen.len();
    let space = (vocab_size as f64).powi(n as i32);
    let (ead, distinct_ratio) = if total == 0 {
        (0.0, 0.0)
    } else {
        (distinct as f64 / expected_distinct(space, total), distinct as f64 / total as f64)
    };
    Ok(NgramDiversity { n, distinct, total, ead, distinct_ratio })
}

/// [`ngram_diversity`] for n = 1…`max_n`, and the mean EAD over them (the
/// paper's figure, `max_n` = 5).
pub fn ead_up_to<S: AsRef<[u32]>>(
    samples: &[S],
    max_n: usize,
    vocab_size: usize,
) -> Result<(Vec<NgramDiversity>, f64)> {
    let per_n = (1..=max_n).map(|n| ngram_diversity(samples, n, vocab_size)).collect::<Result<Vec<_>>>()?;
    let mean = if per_n.is_empty() { 0.0 } else { per_n.iter().map(|d| d.ead).sum::<f64>() / per_n.len() as f64 };
    Ok((per_n, mean))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_unigrams_and_bigrams() {
        let samples = [vec![1u32, 2, 3], vec![1, 2, 4]];
        // Unigrams: {1,2,3,4}, C = 6; E[D] = 10·(1 − 0.9⁶) = 4.68559.
        let d1 = ngram_diversity(&samples, 1, 10).unwrap();
        assert_eq!((d1.distinct, d1.total), (4, 6));
        assert!((d1.ead - 4.0 / 4.68559).abs() < 1e-12, "{}", d1.ead);
        assert!((d1.distinct_ratio - 4.0 / 6.0).abs() < 1e-15);
        // Bigrams: (1,2), (2,3), (1,2), (2,4): D = 3, C = 4; E[D] = 100·(1 − 0.99⁴) = 3.940399.
        let d2 = ngram_diversity(&samples, 2, 10).unwrap();
        assert_eq!((d2.distinct, d2.total), (3, 4));
        assert!((d2.ead - 3.0 / 3.940399).abs() < 1e-12, "{}", d2.ead);
        // Trigrams: two distinct out of two, E[D] = 1000·(1 − 0.999²) = 1.999.
        let d3 = ngram_diversity(&samples, 3, 10).unwrap();
        assert!((d3.ead - 2.0 / 1.999).abs() < 1e-12);
        // No 4-grams at all.
        let d4 = ngram_diversity(&samples, 4, 10).unwrap();
        assert_eq!((d4.distinct, d4.total, d4.ead), (0, 0, 0.0));
        let (per_n, mean) = ead_up_to(&samples, 4, 10).unwrap();
        assert_eq!(per_n.len(), 4);
        assert!((mean - (d1.ead + d2.ead + d3.ead) / 4.0).abs() < 1e-15);
    }

    #[test]
    fn repetition_lowers_ead_and_large_spaces_stay_finite() {
        let varied: Vec<Vec<u32>> = (0..20).map(|i| (0..30).map(|j| (i * 31 + j * 7) % 5000).collect()).collect();
        let collapsed: Vec<Vec<u32>> = (0..20).map(|_| (0..30).map(|j| j % 3).collect()).collect();
        for n in 1..=5 {
            let v = ngram_diversity(&varied, n, 50_000).unwrap();
            let c = ngram_diversity(&collapsed, n, 50_000).unwrap();
            assert!(v.ead.is_finite() && v.ead > 0.0, "n = {n}: {v:?}");
            assert!(c.ead < v.ead / 10.0, "n = {n}: collapsed {} vs varied {}", c.ead, v.ead);
        }
        // With Vⁿ ≫ C every n-gram is expected distinct: E[D] → C.
        assert!((expected_distinct(50_000f64.powi(5), 600) - 600.0).abs() < 1e-6);
    }

    #[test]
    fn bad_parameters_are_errors() {
        let samples = [vec![1u32]];
        assert!(ngram_diversity(&samples, 0, 10).is_err());
        assert!(ngram_diversity(&samples, 1, 0).is_err());
    }
}
