//! Named tolerances, `|got − want| ≤ abs + rel·|want|`, and a comparison that
//! reports the first mismatches with their indices.

/// An absolute-plus-relative tolerance.
#[derive(Debug, Clone, Copy)]
pub struct Tolerance {
    /// Name shown in failures.
    pub name: &'static str,
    /// Absolute part.
    pub abs: f64,
    /// Relative part.
    pub rel: f64,
}

/// Fast CPU `token_stats` against the f64 specification: f32 lane sums over
/// blocks, f64 across blocks, a 2-ulp exp. Log-probabilities of rows with
/// logits near ±1e4 carry f32 rounding of the logits' magnitude (1e4·2^-24 ≈ 6e-4).
pub const TOKEN_STATS_CPU: Tolerance = Tolerance { name: "token_stats cpu vs spec", abs: 2e-5, rel: 2e-5 };

/// Per-pair losses: f64 everywhere on CPU backends.
pub const PREFERENCE_CPU: Tolerance = Tolerance { name: "preference_loss cpu vs spec", abs: 1e-12, rel: 1e-12 };

/// Segment sums: f64 accumulation, f32 output.
pub const SEGMENT_CPU: Tolerance = Tolerance { name: "segment_reduce cpu vs spec", abs: 1e-6, rel: 1e-6 };

/// Logits gradient: f32 exp of `x − m − ln Z`.
pub const LOGITS_BACKWARD_CPU: Tolerance = Tolerance { name: "logits_backward cpu vs spec", abs: 1e-6, rel: 1e-5 };

/// GPU `token_stats`: f32 throughout (per-invocation sums, the device's exp
/// and log), checked against the f64 specification.
pub const TOKEN_STATS_GPU: Tolerance = Tolerance { name: "token_stats gpu vs spec", abs: 2e-4, rel: 2e-4 };

/// GPU per-pair losses: f32 inputs (summed log-probabilities up to a few
/// hundred lose ~1e-5 absolute when narrowed) and f32 arithmetic.
pub const PREFERENCE_GPU: Tolerance = Tolerance { name: "preference_loss gpu vs spec", abs: 2e-4, rel: 2e-4 };

/// GPU segment sums: Kahan-compensated f32.
pub const SEGMENT_GPU: Tolerance = Tolerance { name: "segment_reduce gpu vs spec", abs: 1e-5, rel: 1e-5 };

/// GPU logits gradient: f32 log-sum-exp and exp.
pub const LOGITS_BACKWARD_GPU: Tolerance = Tolerance { name: "logits_backward gpu vs spec", abs: 1e-5, rel: 1e-4 };

/// Compares element-wise; panics listing the first five mismatches.
pub fn assert_close(got: &[f64], want: &[f64], tol: Tolerance, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length {} vs {}", got.len(), want.len());
    let bad: Vec<String> = got
        .iter()
        .zip(want)
        .enumerate()
        .filter(|(_, (g, w))| {
            let same_inf = g.is_infinite() && g == w;
            !same_inf && !((*g - *w).abs() <= tol.abs + tol.rel * w.abs())
        })
        .take(5)
        .map(|(i, (g, w))| format!("[{i}] got {g} want {w} (diff {:.3e})", (g - w).abs()))
        .collect();
    assert!(bad.is_empty(), "{what}: outside {} (abs {}, rel {}):\n  {}", tol.name, tol.abs, tol.rel, bad.join("\n  "));
}
