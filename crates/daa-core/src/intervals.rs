//! Confidence intervals for experiments over seeds: Student's t interval of
//! a mean (and of paired differences), and a hierarchical bootstrap over
//! seeds and the prompts inside each seed.
//!
//! **t interval** of `n ≥ 2` values `x_j` at level `1 − a`:
//!
//! ```text
//! x̄ ± t_{1−a/2, n−1} · s / √n,     s² = Σ_j (x_j − x̄)² / (n − 1)
//! ```
//!
//! where `t_{q, ν}` is the `q` quantile of Student's t with `ν` degrees of
//! freedom, found by bisection on its distribution function
//! `F(t) = 1 − ½ I_{ν/(ν+t²)}(ν/2, ½)` for `t ≥ 0` (`I` the regularised
//! incomplete beta function, by its continued fraction). A **paired**
//! interval is the t interval of the differences `a_j − b_j` (the same seed
//! in both arms).
//!
//! **Hierarchical bootstrap** of the grand mean `m = (1/S) Σ_s x̄_s` of `S`
//! seeds, each with its own prompts' values `x_{s,i}`: each of `B`
//! replicates draws `S` seeds with replacement and, inside each drawn seed,
//! its prompts with replacement, and takes the grand mean of what it drew;
//! the interval is the `a/2` and `1 − a/2` percentiles of the `B` means (the
//! variation between seeds and between prompts both enter). Deterministic
//! for a given seed of the resampling.

use crate::error::{DaaError, Result};
use crate::kl::{Estimate, mean_with_standard_error};
use crate::synthetic::SplitMix64;

/// An estimate and its confidence interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    /// The point estimate (a mean).
    pub estimate: f64,
    /// Lower end.
    pub lower: f64,
    /// Upper end.
    pub upper: f64,
}

impl Interval {
    /// `upper − lower`.
    pub fn width(&self) -> f64 {
        self.upper - self.lower
    }

    /// Whether `value` lies inside (ends included).
    pub fn contains(&self, value: f64) -> bool {
        self.lower <= value && value <= self.upper
    }

    /// As reports print it: `0.512 [0.498, 0.526]`, with `digits` decimals.
    pub fn display(&self, digits: usize) -> String {
        format!("{:.d$} [{:.d$}, {:.d$}]", self.estimate, self.lower, self.upper, d = digits)
    }
}

fn check_level(level: f64) -> Result<()> {
    if level > 0.0 && level < 1.0 {
        Ok(())
    } else {
        Err(DaaError::Parameter { name: "level", value: level.to_string(), expected: "a level in (0, 1)".into() })
    }
}

fn check_finite(values: &[f64], name: &'static str, at_least: usize) -> Result<()> {
    if values.len() < at_least {
        return Err(DaaError::Parameter {
            name,
            value: format!("{} values", values.len()),
            expected: format!("at least {at_least}"),
        });
    }
    match values.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(DaaError::Parameter { name, value: values[i].to_string(), expected: format!("finite at {i}") }),
        None => Ok(()),
    }
}

/// `ln Γ(x)` for `x > 0` (Lanczos, g = 7, 9 terms: about 15 digits).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1 − x) = π / sin(πx).
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let series = G[1..].iter().enumerate().fold(G[0], |acc, (i, g)| acc + g / (x + i as f64 + 1.0));
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + series.ln()
}

/// The continued fraction of the incomplete beta function (modified Lentz).
fn beta_fraction(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=300 {
        let m = m as f64;
        let m2 = 2.0 * m;
        for aa in [m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))] {
            d = 1.0 + aa * d;
            if d.abs() < TINY {
                d = TINY;
            }
            c = 1.0 + aa / c;
            if c.abs() < TINY {
                c = TINY;
            }
            d = 1.0 / d;
            h *= d * c;
        }
        if (d * c - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// The regularised incomplete beta function `I_x(a, b)`, `0 ≤ x ≤ 1`.
fn incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front = (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_fraction(a, b, x) / a
    } else {
        1.0 - front * beta_fraction(b, a, 1.0 - x) / b
    }
}

/// Student's t distribution function `P(T ≤ t)` with `df > 0` degrees of freedom.
pub fn student_t_cdf(t: f64, df: f64) -> f64 {
    let tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t));
    if t >= 0.0 { 1.0 - tail } else { tail }
}

/// The `q` quantile of Student's t with `df > 0` degrees of freedom
/// (`0 < q < 1`), to about 1e-12 (bisection on [`student_t_cdf`]).
pub fn student_t_quantile(q: f64, df: f64) -> Result<f64> {
    check_level(q)?;
    if !(df > 0.0 && df.is_finite()) {
        return Err(DaaError::Parameter {
            name: "df",
            value: df.to_string(),
            expected: "degrees of freedom > 0".into(),
        });
    }
    if q < 0.5 {
        return Ok(-student_t_quantile(1.0 - q, df)?);
    }
    let (mut lo, mut hi) = (0.0, 1.0);
    while student_t_cdf(hi, df) < q {
        hi *= 2.0;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if student_t_cdf(mid, df) < q {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo < 1e-12 * hi.max(1.0) {
            break;
        }
    }
    Ok(0.5 * (lo + hi))
}

/// The t interval of the mean of `values` (`n ≥ 2`, finite) at `level`
/// (e.g. 0.95); module documentation.
pub fn t_interval(values: &[f64], level: f64) -> Result<Interval> {
    check_level(level)?;
    check_finite(values, "t interval values", 2)?;
    let Estimate { mean, standard_error, samples } = mean_with_standard_error(values, "t interval values")?;
    let se = standard_error.expect("two or more values have a standard error");
    let half = student_t_quantile(0.5 + level / 2.0, (samples - 1) as f64)? * se;
    Ok(Interval { estimate: mean, lower: mean - half, upper: mean + half })
}

/// The t interval of the paired differences `a_j − b_j` (the same seeds, in
/// the same order, in both arms).
pub fn paired_t_interval(a: &[f64], b: &[f64], level: f64) -> Result<Interval> {
    if a.len() != b.len() {
        return Err(DaaError::Parameter {
            name: "paired values",
            value: format!("{} and {}", a.len(), b.len()),
            expected: "one value per seed in both arms".into(),
        });
    }
    let differences: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    t_interval(&differences, level)
}

/// The hierarchical bootstrap interval of the grand mean of `groups` (one
/// group of prompt values per seed; every group non-empty and finite) from
/// `replicates` resamples drawn with `seed`; module documentation.
pub fn hierarchical_bootstrap(groups: &[Vec<f64>], level: f64, replicates: usize, seed: u64) -> Result<Interval> {
    check_level(level)?;
    if groups.is_empty() || replicates == 0 {
        return Err(DaaError::Parameter {
            name: "bootstrap",
            value: format!("{} groups, {replicates} replicates", groups.len()),
            expected: "at least one group and one replicate".into(),
        });
    }
    for g in groups {
        check_finite(g, "bootstrap group", 1)?;
    }
    let group_mean = |g: &[f64]| g.iter().sum::<f64>() / g.len() as f64;
    let estimate = groups.iter().map(|g| group_mean(g)).sum::<f64>() / groups.len() as f64;
    let mut rng = SplitMix64::new(seed);
    let mut pick = |n: usize| rng.below(n);
    let mut means: Vec<f64> = (0..replicates)
        .map(|_| {
            let total: f64 = (0..groups.len())
                .map(|_| {
                    let g = &groups[pick(groups.len())];
                    (0..g.len()).map(|_| g[pick(g.len())]).sum::<f64>() / g.len() as f64
                })
                .sum();
            total / groups.len() as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    let percentile = |p: f64| means[((p * replicates as f64).floor() as usize).min(replicates - 1)];
    let tail = (1.0 - level) / 2.0;
    Ok(Interval { estimate, lower: percentile(tail), upper: percentile(1.0 - tail) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_quantiles_match_the_printed_table() {
        // Two-sided 95 % (q = 0.975) and 99 % (q = 0.995) values of standard tables.
        for (df, want) in [(1.0, 12.7062), (2.0, 4.3027), (4.0, 2.7764), (9.0, 2.2622), (30.0, 2.0423), (1e6, 1.9600)] {
            let got = student_t_quantile(0.975, df).unwrap();
            assert!((got - want).abs() < 1e-4, "df {df}: {got} vs {want}");
        }
        assert!((student_t_quantile(0.995, 9.0).unwrap() - 3.2498).abs() < 1e-4);
        assert!((student_t_quantile(0.025, 9.0).unwrap() + 2.2622).abs() < 1e-4);
        assert!((student_t_cdf(0.0, 3.0) - 0.5).abs() < 1e-15);
        // ν = 1 is Cauchy: F(t) = ½ + atan(t)/π.
        for t in [-3.0, -0.5, 0.7, 10.0] {
            let cauchy = 0.5 + f64::atan(t) / std::f64::consts::PI;
            assert!((student_t_cdf(t, 1.0) - cauchy).abs() < 1e-12, "{t}");
        }
    }

    #[test]
    fn a_t_interval_by_hand() {
        // 1…5: mean 3, s = √2.5, SE = √0.5, t_{0.975,4} = 2.776445.
        let i = t_interval(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.95).unwrap();
        let half = 2.776_445 * 0.5f64.sqrt();
        assert!((i.estimate - 3.0).abs() < 1e-12);
        assert!((i.lower - (3.0 - half)).abs() < 1e-5 && (i.upper - (3.0 + half)).abs() < 1e-5, "{i:?}");
        // Paired: the differences (0.1, 0.2, 0.3) → mean 0.2, SE 0.1/√3, t_{0.975,2} = 4.302653.
        let p = paired_t_interval(&[1.1, 1.2, 1.3], &[1.0, 1.0, 1.0], 0.95).unwrap();
        let half = 4.302_653 * 0.1 / 3f64.sqrt();
        assert!((p.estimate - 0.2).abs() < 1e-12 && (p.upper - 0.2 - half).abs() < 1e-5, "{p:?}");
        assert_eq!(i.display(2), "3.00 [1.04, 4.96]");
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(t_interval(&[1.0], 0.95).is_err());
        assert!(t_interval(&[1.0, f64::NAN], 0.95).is_err());
        assert!(t_interval(&[1.0, 2.0], 1.0).is_err());
        assert!(paired_t_interval(&[1.0, 2.0], &[1.0], 0.95).is_err());
        assert!(hierarchical_bootstrap(&[], 0.95, 10, 0).is_err());
        assert!(hierarchical_bootstrap(&[vec![]], 0.95, 10, 0).is_err());
    }

    #[test]
    fn the_bootstrap_with_a_fixed_seed() {
        // Two seeds of constant prompts (0 and 1): the resampled grand mean
        // is 0, ½ or 1 with probabilities ¼, ½, ¼, so the 95 % interval is [0, 1].
        let groups = vec![vec![0.0; 4], vec![1.0; 4]];
        let i = hierarchical_bootstrap(&groups, 0.95, 2000, 7).unwrap();
        assert_eq!((i.estimate, i.lower, i.upper), (0.5, 0.0, 1.0));
        assert_eq!(i, hierarchical_bootstrap(&groups, 0.95, 2000, 7).unwrap(), "deterministic");
        // Equal values everywhere: no width.
        let flat = hierarchical_bootstrap(&[vec![2.0; 3], vec![2.0; 5]], 0.9, 100, 1).unwrap();
        assert_eq!((flat.lower, flat.upper), (2.0, 2.0));
        // One prompt per seed: the plain bootstrap of the seed means, whose
        // 95 % interval is close to the t interval on 40 normal-ish values.
        let mut rng = SplitMix64::new(3);
        let values: Vec<f64> = (0..40).map(|_| rng.uniform() + rng.uniform() + rng.uniform()).collect();
        let boot =
            hierarchical_bootstrap(&values.iter().map(|&v| vec![v]).collect::<Vec<_>>(), 0.95, 20_000, 5).unwrap();
        let t = t_interval(&values, 0.95).unwrap();
        assert!((boot.width() / t.width() - 1.0).abs() < 0.1, "{boot:?} vs {t:?}");
        // Prompts add their own variation: the same seed means with noisy
        // prompts inside give a wider interval.
        let noisy: Vec<Vec<f64>> = values.iter().map(|&v| vec![v - 1.0, v + 1.0]).collect();
        let wider = hierarchical_bootstrap(&noisy, 0.95, 20_000, 5).unwrap();
        assert!(wider.width() > 1.3 * boot.width(), "{wider:?} vs {boot:?}");
    }
}
