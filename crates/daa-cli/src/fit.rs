//! Least-squares fits of the experiment report: win probability against
//! chosen log-likelihood (linear and quadratic, the paper's comparison) and
//! gold reward against √KL in the functional forms of Gao et al. 2022.
//!
//! A fit with basis functions `φ_1 … φ_m` minimises `Σ_j (y_j − Σ_k c_k φ_k(x_j))²`
//! over the `n × m` design matrix `Φ_{jk} = φ_k(x_j)`, solved through the
//! singular-value decomposition `Φ = U Σ Vᵀ` (nalgebra): `c = V Σ⁺ Uᵀ y`. Unlike
//! the normal equations `(ΦᵀΦ) c = Φᵀy`, this does not square the condition
//! number. A design whose smallest singular value is below `max(n, m)·ε_f64` of
//! the largest (numerically rank-deficient, LAPACK's and NumPy's rule:
//! repeated x, a basis function that is a combination of the others on the
//! data) gives no fit. `RMSE = √((1/n) Σ_j residual_j²)`.

use nalgebra::{DMatrix, DVector};

/// Coefficients and root-mean-square error of one fit.
#[derive(Debug, Clone, PartialEq)]
pub struct Fit {
    /// `c_k`, in the order of the basis.
    pub coefficients: Vec<f64>,
    /// `√(mean squared residual)`.
    pub rmse: f64,
}

impl Fit {
    /// `Σ_k c_k φ_k(x)` with the same basis.
    pub fn predict(&self, basis: &dyn Fn(f64) -> Vec<f64>, x: f64) -> f64 {
        basis(x).iter().zip(&self.coefficients).map(|(p, c)| p * c).sum()
    }
}

/// Fits `ys` on `basis(x)` for `xs`; `None` when there are fewer points than
/// coefficients or the system is singular.
pub fn least_squares(xs: &[f64], ys: &[f64], basis: &dyn Fn(f64) -> Vec<f64>) -> Option<Fit> {
    let rows: Vec<Vec<f64>> = xs.iter().map(|&x| basis(x)).collect();
    let m = rows.first()?.len();
    if xs.len() != ys.len() || xs.len() < m {
        return None;
    }
    let design = DMatrix::from_fn(xs.len(), m, |j, k| rows[j][k]);
    let svd = design.svd(true, true);
    let zero = svd.singular_values.max() * xs.len().max(m) as f64 * f64::EPSILON;
    if !(zero > 0.0) || svd.rank(zero) < m {
        return None;
    }
    let solution = svd.solve(&DVector::from_column_slice(ys), zero).ok()?;
    let coefficients: Vec<f64> = solution.iter().copied().collect();
    let fit = Fit { coefficients, rmse: 0.0 };
    let sse: f64 = xs.iter().zip(ys).map(|(&x, &y)| (y - fit.predict(basis, x)).powi(2)).sum();
    Some(Fit { rmse: (sse / xs.len() as f64).sqrt(), ..fit })
}

/// The leave-one-run-out root-mean-square prediction error of `basis`:
/// each run's points (`runs[r]`: `(x, y)` pairs) predicted by the fit to
/// every other run's,
///
/// ```text
/// CV-RMSE = √( Σ_r Σ_{j∈r} (y_j − f_{−r}(x_j))² / Σ_r n_r )
/// ```
///
/// Out of sample, so a richer basis no longer wins by construction (an
/// in-sample RMSE of nested models always favours the larger), and whole
/// runs are held out together because evaluations within a run are
/// autocorrelated. `None` with fewer than two runs, or when a fit without
/// some run is impossible.
pub fn leave_one_run_out_rmse(runs: &[Vec<(f64, f64)>], basis: &dyn Fn(f64) -> Vec<f64>) -> Option<f64> {
    let held_out = held_out_errors(runs, basis)?;
    let (sse, n) = held_out.iter().fold((0.0, 0usize), |(s, n), e| (s + e.0, n + e.1));
    (n > 0).then(|| (sse / n as f64).sqrt())
}

/// Per group (a run, or all runs of a seed): the sum of squared prediction
/// errors of its points under the fit to every other group, and how many
/// points it has; `None` with fewer than two groups or when a fit is impossible.
pub fn held_out_errors(groups: &[Vec<(f64, f64)>], basis: &dyn Fn(f64) -> Vec<f64>) -> Option<Vec<(f64, usize)>> {
    if groups.len() < 2 {
        return None;
    }
    (0..groups.len())
        .map(|held_out| {
            let (xs, ys): (Vec<f64>, Vec<f64>) =
                groups.iter().enumerate().filter(|(g, _)| *g != held_out).flat_map(|(_, p)| p.iter().copied()).unzip();
            let fit = least_squares(&xs, &ys, basis)?;
            let sse = groups[held_out].iter().map(|&(x, y)| (y - fit.predict(basis, x)).powi(2)).sum();
            Some((sse, groups[held_out].len()))
        })
        .collect()
}

/// `[1, x]`.
pub fn linear(x: f64) -> Vec<f64> {
    vec![1.0, x]
}

/// `[1, x, x²]`.
pub fn quadratic(x: f64) -> Vec<f64> {
    vec![1.0, x, x * x]
}

/// Gao et al.'s best-of-n form `R(d) = d(α − βd)`: basis `[d, −d²]`, so the
/// coefficients are `(α, β)`.
pub fn gao_best_of_n(d: f64) -> Vec<f64> {
    vec![d, -d * d]
}

/// Gao et al.'s RL form `R(d) = d(α − β log d)`: basis `[d, −d·ln d]` (0 at
/// `d = 0`), coefficients `(α, β)`.
pub fn gao_rl(d: f64) -> Vec<f64> {
    vec![d, if d > 0.0 { -d * d.ln() } else { 0.0 }]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_exact_polynomials_and_measures_misfit() {
        let xs: Vec<f64> = (0..20).map(|i| -4.0 + 0.2 * f64::from(i)).collect();
        let ys: Vec<f64> = xs.iter().map(|x| 0.3 - 0.1 * x - 0.05 * x * x).collect();
        let q = least_squares(&xs, &ys, &quadratic).unwrap();
        for (c, want) in q.coefficients.iter().zip([0.3, -0.1, -0.05]) {
            assert!((c - want).abs() < 1e-9, "{q:?}");
        }
        assert!(q.rmse < 1e-12);
        // A line through a parabola has a residual; by hand for y = x² on {−1, 0, 1}:
        // the fit is y = 2/3, residuals 1/3, −2/3, 1/3, RMSE √(2/9).
        let l = least_squares(&[-1.0, 0.0, 1.0], &[1.0, 0.0, 1.0], &linear).unwrap();
        assert!((l.coefficients[0] - 2.0 / 3.0).abs() < 1e-12 && l.coefficients[1].abs() < 1e-12);
        assert!((l.rmse - (2.0f64 / 9.0).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn gao_forms_recover_their_coefficients() {
        let ds: Vec<f64> = (1..30).map(|i| 0.1 * f64::from(i)).collect();
        let bon: Vec<f64> = ds.iter().map(|d| d * (0.8 - 0.2 * d)).collect();
        let f = least_squares(&ds, &bon, &gao_best_of_n).unwrap();
        assert!((f.coefficients[0] - 0.8).abs() < 1e-9 && (f.coefficients[1] - 0.2).abs() < 1e-9, "{f:?}");
        let rl: Vec<f64> = ds.iter().map(|d| d * (0.5 - 0.3 * d.ln())).collect();
        let f = least_squares(&ds, &rl, &gao_rl).unwrap();
        assert!((f.coefficients[0] - 0.5).abs() < 1e-9 && (f.coefficients[1] - 0.3).abs() < 1e-9, "{f:?}");
        assert_eq!(gao_rl(0.0), vec![0.0, 0.0]);
    }

    #[test]
    fn an_ill_conditioned_design_keeps_its_accuracy() {
        // x near 1000 ± 1: ΦᵀΦ of the quadratic basis has a condition number
        // near 10¹⁸, past f64's precision; Φ itself near 10⁹, which the SVD
        // handles. y = 2 − 3(x − 1000) + 0.5(x − 1000)², expanded.
        let xs: Vec<f64> = (0..21).map(|i| 999.0 + 0.1 * f64::from(i)).collect();
        let ys: Vec<f64> = xs.iter().map(|x| 2.0 - 3.0 * (x - 1000.0) + 0.5 * (x - 1000.0).powi(2)).collect();
        let q = least_squares(&xs, &ys, &quadratic).unwrap();
        for (&x, &y) in xs.iter().zip(&ys) {
            assert!((q.predict(&quadratic, x) - y).abs() < 1e-6, "x = {x}: {q:?}");
        }
        assert!(q.rmse < 1e-6, "{q:?}");
    }

    #[test]
    fn too_few_points_or_degenerate_data_give_no_fit() {
        assert!(least_squares(&[1.0, 2.0], &[1.0, 2.0], &quadratic).is_none());
        assert!(least_squares(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0], &linear).is_none());
        assert!(least_squares(&[], &[], &linear).is_none());
    }

    #[test]
    fn leave_one_run_out_recovers_a_planted_curve_and_prefers_it_only_when_real() {
        // Four runs on one parabola, each with its own offset (seed noise ±0.01).
        let offsets = [0.01, -0.01, 0.005, -0.005];
        let parabola: Vec<Vec<(f64, f64)>> = offsets
            .iter()
            .enumerate()
            .map(|(r, o)| {
                (0..10)
                    .map(|i| {
                        let x = -3.0 + 0.2 * f64::from(i) + 0.05 * r as f64;
                        (x, 0.5 - 0.3 * (x + 2.0).powi(2) + o)
                    })
                    .collect()
            })
            .collect();
        let q = leave_one_run_out_rmse(&parabola, &quadratic).unwrap();
        let l = leave_one_run_out_rmse(&parabola, &linear).unwrap();
        // The quadratic's out-of-run error is the offsets' size; the line's is the curvature's.
        assert!(q < 0.02 && l > 5.0 * q, "quadratic {q}, linear {l}");
        // Data on a line: the quadratic gains nothing out of sample (it does in sample).
        let line: Vec<Vec<(f64, f64)>> = offsets
            .iter()
            .map(|o| {
                (0..10)
                    .map(|i| {
                        let x = f64::from(i) * 0.3;
                        (x, 0.2 * x + o)
                    })
                    .collect()
            })
            .collect();
        let (lq, ll) =
            (leave_one_run_out_rmse(&line, &quadratic).unwrap(), leave_one_run_out_rmse(&line, &linear).unwrap());
        assert!(lq >= ll * 0.999, "quadratic {lq} vs linear {ll}");
        assert!(leave_one_run_out_rmse(&line[..1], &linear).is_none());
    }
}
