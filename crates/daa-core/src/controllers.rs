//! Adaptive regularisers consistent with the paper: a slightly *lower*
//! completion likelihood goes with more diverse outputs, and falling top-k
//! entropy warns of over-optimisation. Raising the NLL weight λ whenever
//! entropy falls (the first rule, [`crate::monitor::AdaptiveRegulariser`],
//! kept as the baseline `raise_nll_on_falling_entropy`) pushes the sensor
//! down with the actuator: NLL sharpens the next-token distribution. The two
//! controllers here act on what each lever really moves, and react only to
//! changes larger than the indicators' noise.
//!
//! **Noise.** Each threshold is `τ_x = c · σ_x`: `c` standard deviations
//! (about 2) of the evaluation-to-evaluation noise `σ_x` of indicator `x`,
//! estimated from replicate runs ([`evaluation_noise`]).
//!
//! **Direction-aware λ** ([`DirectionAwareNll`]). With the smoothed
//! held-out chosen log-likelihood per token `s^ℓ`, smoothed top-k entropy
//! `s^H`, the raw evaluation-to-evaluation changes `Δ^H`, `Δ^M` of top-k
//! entropy and mass, and the reference's values `ℓ_0`, `H_0` (the first
//! evaluation, where the policy is the reference):
//!
//! ```text
//! short      = s^H_t < H_0 − τ_H                     entropy already below the reference's
//! displaced  = s^ℓ_t < ℓ_0 − τ_ℓ                     likelihood displacement of the chosen
//! leaking    = Δ^M_t < −τ_M  and  Δ^H_t > τ_H         mass leaks into the tail (the Hinge pattern)
//! λ_{t+1} = lower(λ_t)  if short                     NLL would narrow it further
//!         = raise(λ_t)  else if displaced or leaking
//!         = λ_t         otherwise
//! raise(λ) = min(λ_max, max(γ_up λ, λ_on)),   lower(λ) = γ_down λ, snapped to λ_0 below λ_on
//! ```
//!
//! **Entropy floor by dual ascent** ([`EntropyFloorMultiplier`]). The
//! objective gains `μ · (1/T) Σ_t relu(h − H_{k,t})` over the policy's
//! positions (see [`crate::entropy_floor`]); `h = Ĥ_0 − m`, the
//! reference's top-k entropy on its own samples minus a margin. After each
//! evaluation, with `Ĥ_t` the top-k entropy of the policy's own samples on
//! held-out prompts and step size `η`:
//!
//! ```text
//! μ_{t+1} = min(μ_max, μ_t + η (h − Ĥ_t))        if Ĥ_t < h − τ_Ĥ   (below the floor: push up)
//!         = max(0,     μ_t − η (Ĥ_t − h))        if Ĥ_t > h + τ_Ĥ   (above it: relax)
//!         = μ_t                                   otherwise          (inside the noise: hold)
//! ```

use crate::error::{DaaError, Result};
use crate::monitor::{AdaptiveBounds, Indicator, SmoothedSignal};

/// The evaluation-to-evaluation noise `σ` of one indicator from replicate
/// runs (`series[r][t]`: replicate `r`'s value at evaluation `t`, the same
/// evaluation steps in every replicate, at least two replicates of at least
/// two evaluations): the changes `Δ_{r,t} = x_{r,t} − x_{r,t−1}` are compared
/// across replicates at each `t` (their spread is noise, their mean the
/// trend every replicate shares), and the spreads are pooled:
///
/// ```text
/// σ² = Σ_t Σ_r (Δ_{r,t} − Δ̄_t)² / Σ_t (R − 1)
/// ```
pub fn evaluation_noise(series: &[Vec<f64>]) -> Result<f64> {
    let bad = |value: String| DaaError::Parameter {
        name: "replicates",
        value,
        expected: "at least two replicates with the same number (≥ 2) of finite evaluations".into(),
    };
    let evaluations = series.first().map_or(0, Vec::len);
    if series.len() < 2 || evaluations < 2 || series.iter().any(|s| s.len() != evaluations) {
        return Err(bad(format!(
            "{} replicates of lengths {:?}",
            series.len(),
            series.iter().map(Vec::len).collect::<Vec<_>>()
        )));
    }
    if series.iter().flatten().any(|v| !v.is_finite()) {
        return Err(bad("a non-finite value".into()));
    }
    let replicates = series.len() as f64;
    let mut squares = 0.0;
    for t in 1..evaluations {
        let changes: Vec<f64> = series.iter().map(|s| s[t] - s[t - 1]).collect();
        let mean = changes.iter().sum::<f64>() / replicates;
        squares += changes.iter().map(|d| (d - mean).powi(2)).sum::<f64>();
    }
    Ok((squares / ((evaluations - 1) as f64 * (replicates - 1.0))).sqrt())
}

/// `value` must be finite and above 0; `what` says what it is in the error.
fn check_positive(name: &'static str, value: f64, what: &str) -> Result<()> {
    if value.is_finite() && value > 0.0 {
        return Ok(());
    }
    Err(DaaError::Parameter { name, value: value.to_string(), expected: format!("{what} > 0") })
}

/// A noise level: finite and above 0 (a noise of 0 would make every change a signal).
fn check_noise(name: &'static str, value: f64) -> Result<()> {
    check_positive(name, value, "a noise level (estimated from replicates)")
}

/// The evaluation-to-evaluation noise of the indicators a controller reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IndicatorNoise {
    /// `σ_ℓ`: held-out chosen log-likelihood per token (nats).
    pub chosen_loglik: f64,
    /// `σ_H`: held-out top-k entropy.
    pub topk_entropy: f64,
    /// `σ_M`: held-out top-k mass.
    pub topk_mass: f64,
}

/// Settings of [`DirectionAwareNll`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DirectionAwareConfig {
    /// EMA weight `α` of the newest evaluation for the levels, `(0, 1]`.
    pub smoothing: f64,
    /// λ's bounds and factors.
    pub bounds: AdaptiveBounds,
    /// The indicators' noise.
    pub noise: IndicatorNoise,
    /// `c`: thresholds in noise standard deviations (about 2), `> 0`.
    pub threshold_sds: f64,
}

/// Why [`DirectionAwareNll`] moved λ (module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NllReason {
    /// Entropy below the reference's: λ lowered.
    EntropyShort,
    /// The chosen completions' likelihood fell below the reference's: λ raised.
    Displacement,
    /// Mass fell while entropy rose: λ raised.
    TailLeakage,
    /// Nothing beyond the noise: λ held.
    Hold,
}

impl NllReason {
    /// What happened, in words.
    pub fn describe(self) -> &'static str {
        match self {
            Self::EntropyShort => "lowered: top-k entropy below the reference's",
            Self::Displacement => "raised: chosen likelihood below the reference's",
            Self::TailLeakage => "raised: top-k mass fell while entropy rose",
            Self::Hold => "held",
        }
    }
}

/// The direction-aware NLL weight (module documentation).
#[derive(Debug, Clone, PartialEq)]
pub struct DirectionAwareNll {
    config: DirectionAwareConfig,
    loglik: SmoothedSignal,
    entropy: SmoothedSignal,
    reference: Option<(f64, f64)>,
    last_raw: Option<(f64, f64)>,
    weight: f64,
}

impl DirectionAwareNll {
    /// A controller with `config`, checked.
    pub fn new(config: DirectionAwareConfig) -> Result<Self> {
        config.bounds.validate("direction_aware.nll_weight")?;
        check_noise("noise.chosen_loglik", config.noise.chosen_loglik)?;
        check_noise("noise.topk_entropy", config.noise.topk_entropy)?;
        check_noise("noise.topk_mass", config.noise.topk_mass)?;
        check_positive("threshold_sds", config.threshold_sds, "a threshold in noise standard deviations")?;
        Ok(Self {
            loglik: SmoothedSignal::new(config.smoothing)?,
            entropy: SmoothedSignal::new(config.smoothing)?,
            reference: None,
            last_raw: None,
            weight: config.bounds.initial,
            config,
        })
    }

    /// The current λ.
    pub fn nll_weight(&self) -> f64 {
        self.weight
    }

    /// Reads one evaluation (held-out chosen log-likelihood per token, top-k
    /// entropy, top-k mass), decides λ from now on and says why.
    pub fn observe(
        &mut self,
        step: u64,
        chosen_loglik: f64,
        topk_entropy: f64,
        topk_mass: f64,
    ) -> Result<(f64, NllReason)> {
        if !topk_mass.is_finite() {
            return Err(DaaError::Parameter {
                name: Indicator::TopkMass.name(),
                value: topk_mass.to_string(),
                expected: format!("a finite value at step {step}"),
            });
        }
        self.loglik.push(step, chosen_loglik, "chosen_loglik")?;
        self.entropy.push(step, topk_entropy, Indicator::TopkEntropy.name())?;
        let (ll0, h0) = *self.reference.get_or_insert((chosen_loglik, topk_entropy));
        let c = self.config.threshold_sds;
        let noise = self.config.noise;
        let (s_ll, s_h) = (self.loglik.smoothed().unwrap_or(ll0), self.entropy.smoothed().unwrap_or(h0));
        let (d_h, d_m) = match self.last_raw {
            Some((h, m)) => (topk_entropy - h, topk_mass - m),
            None => (0.0, 0.0),
        };
        self.last_raw = Some((topk_entropy, topk_mass));
        let reason = if s_h < h0 - c * noise.topk_entropy {
            NllReason::EntropyShort
        } else if s_ll < ll0 - c * noise.chosen_loglik {
            NllReason::Displacement
        } else if d_m < -c * noise.topk_mass && d_h > c * noise.topk_entropy {
            NllReason::TailLeakage
        } else {
            NllReason::Hold
        };
        let b = &self.config.bounds;
        self.weight = match reason {
            NllReason::EntropyShort => b.next(self.weight, false),
            NllReason::Displacement | NllReason::TailLeakage => b.next(self.weight, true),
            NllReason::Hold => self.weight,
        };
        Ok((self.weight, reason))
    }
}

/// Settings of [`EntropyFloorMultiplier`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EntropyFloorConfig {
    /// `m ≥ 0`: the floor lies this far below the reference's sample top-k entropy.
    pub margin: f64,
    /// `η > 0`: the dual step per unit of entropy gap.
    pub step_size: f64,
    /// `μ_max > 0`.
    pub max: f64,
    /// `σ_Ĥ > 0`: evaluation-to-evaluation noise of the sample top-k entropy.
    pub noise: f64,
    /// `c > 0`: the dead band in noise standard deviations.
    pub threshold_sds: f64,
}

/// The entropy floor's multiplier μ by dual ascent (module documentation).
#[derive(Debug, Clone, PartialEq)]
pub struct EntropyFloorMultiplier {
    config: EntropyFloorConfig,
    floor: Option<f64>,
    multiplier: f64,
}

impl EntropyFloorMultiplier {
    /// A controller with `config`, checked; μ starts at 0.
    pub fn new(config: EntropyFloorConfig) -> Result<Self> {
        check_positive("entropy_floor.step_size", config.step_size, "a dual step size")?;
        check_positive("entropy_floor.max", config.max, "a ceiling of μ")?;
        check_noise("entropy_floor.noise", config.noise)?;
        check_positive(
            "entropy_floor.threshold_sds",
            config.threshold_sds,
            "a dead band in noise standard deviations",
        )?;
        if !(config.margin.is_finite() && config.margin >= 0.0) {
            return Err(DaaError::Parameter {
                name: "entropy_floor.margin",
                value: config.margin.to_string(),
                expected: "a finite margin ≥ 0".into(),
            });
        }
        Ok(Self { config, floor: None, multiplier: 0.0 })
    }

    /// The floor `h` (set by the first evaluation: the reference's).
    pub fn floor(&self) -> Option<f64> {
        self.floor
    }

    /// The current μ.
    pub fn multiplier(&self) -> f64 {
        self.multiplier
    }

    /// Reads the top-k entropy of the policy's own samples at `step` (the
    /// first call: the reference's, which sets the floor) and returns μ
    /// from now on.
    pub fn observe(&mut self, step: u64, sample_topk_entropy: f64) -> Result<f64> {
        if !sample_topk_entropy.is_finite() {
            return Err(DaaError::Parameter {
                name: "sample_topk_entropy",
                value: sample_topk_entropy.to_string(),
                expected: format!("a finite value at step {step}"),
            });
        }
        let c = &self.config;
        let h = *self.floor.get_or_insert(sample_topk_entropy - c.margin);
        let band = c.threshold_sds * c.noise;
        let gap = h - sample_topk_entropy;
        if gap > band {
            self.multiplier = (self.multiplier + c.step_size * gap).min(c.max);
        } else if gap < -band {
            self.multiplier = (self.multiplier + c.step_size * gap).max(0.0);
        }
        Ok(self.multiplier)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds() -> AdaptiveBounds {
        AdaptiveBounds { initial: 0.0, switch_on: 0.1, max: 1.0, up: 2.0, down: 0.5 }
    }

    fn direction_aware() -> DirectionAwareNll {
        DirectionAwareNll::new(DirectionAwareConfig {
            smoothing: 1.0,
            bounds: bounds(),
            noise: IndicatorNoise { chosen_loglik: 0.02, topk_entropy: 0.01, topk_mass: 0.005 },
            threshold_sds: 2.0,
        })
        .unwrap()
    }

    /// Feeds `(loglik, entropy, mass)` evaluations; the reasons and weights.
    fn feed(c: &mut DirectionAwareNll, points: &[(f64, f64, f64)]) -> Vec<(f64, NllReason)> {
        points.iter().enumerate().map(|(i, &(l, h, m))| c.observe(16 * i as u64, l, h, m).unwrap()).collect()
    }

    #[test]
    fn noise_from_replicates_by_hand() {
        // Two replicates share the trend +1 per evaluation; their changes
        // differ by ±0.1 around it: Δ = (1.1, 0.9), (0.9, 1.1) → σ² = 4·0.01/2.
        let series = vec![vec![0.0, 1.1, 2.0], vec![0.0, 0.9, 2.0]];
        let sigma = evaluation_noise(&series).unwrap();
        assert!((sigma - 0.02f64.sqrt()).abs() < 1e-12, "{sigma}");
        // A trend alone is not noise.
        assert_eq!(evaluation_noise(&[vec![0.0, 1.0, 2.0], vec![5.0, 6.0, 7.0]]).unwrap(), 0.0);
        assert!(evaluation_noise(&[vec![0.0, 1.0]]).is_err());
        assert!(evaluation_noise(&[vec![0.0, 1.0], vec![0.0]]).is_err());
        assert!(evaluation_noise(&[vec![0.0, f64::NAN], vec![0.0, 1.0]]).is_err());
    }

    #[test]
    fn direction_aware_holds_on_noise_below_its_thresholds() {
        let mut c = direction_aware();
        // Wobbles of one noise SD in every indicator around the reference.
        let wobble: Vec<(f64, f64, f64)> =
            (0..12).map(|i| if i % 2 == 0 { (-2.50, 3.20, 0.70) } else { (-2.52, 3.19, 0.695) }).collect();
        for (w, reason) in feed(&mut c, &wobble) {
            assert_eq!((w, reason), (0.0, NllReason::Hold));
        }
    }

    #[test]
    fn direction_aware_raises_on_displacement_and_leakage_and_lowers_when_entropy_is_short() {
        let mut c = direction_aware();
        // The chosen likelihood falls beyond 2σ_ℓ below the reference: raise, twice.
        let r = feed(&mut c, &[(-2.50, 3.20, 0.70), (-2.60, 3.20, 0.70), (-2.70, 3.21, 0.70)]);
        assert_eq!(r[1], (0.1, NllReason::Displacement));
        assert_eq!(r[2], (0.2, NllReason::Displacement));
        // Entropy falls below the reference's by more than 2σ_H: lower (even while displaced).
        assert_eq!(c.observe(48, -2.70, 3.15, 0.72).unwrap(), (0.1, NllReason::EntropyShort));
        assert_eq!(c.observe(64, -2.70, 3.15, 0.72).unwrap(), (0.0, NllReason::EntropyShort), "snapped to λ_0");

        // Tail leakage: mass drops by > 2σ_M while entropy rises by > 2σ_H, likelihood held.
        let mut c = direction_aware();
        let r = feed(&mut c, &[(-2.50, 3.20, 0.70), (-2.50, 3.25, 0.68), (-2.50, 3.25, 0.68)]);
        assert_eq!(r[1], (0.1, NllReason::TailLeakage));
        assert_eq!(r[2], (0.1, NllReason::Hold), "no further change: held, not relaxed");
        // A mass drop with entropy falling is not leakage.
        let mut c = direction_aware();
        let r = feed(&mut c, &[(-2.50, 3.20, 0.70), (-2.50, 3.19, 0.68)]);
        assert_eq!(r[1], (0.0, NllReason::Hold));
    }

    #[test]
    fn direction_aware_settings_are_checked() {
        let mut config = DirectionAwareConfig {
            smoothing: 1.0,
            bounds: bounds(),
            noise: IndicatorNoise { chosen_loglik: 0.02, topk_entropy: 0.0, topk_mass: 0.005 },
            threshold_sds: 2.0,
        };
        assert!(DirectionAwareNll::new(config).is_err(), "a noise of 0 reacts to anything");
        config.noise.topk_entropy = 0.01;
        config.threshold_sds = -1.0;
        assert!(DirectionAwareNll::new(config).is_err());
        let mut c = direction_aware();
        assert!(c.observe(0, f64::NAN, 3.0, 0.7).is_err());
        assert!(c.observe(0, -2.0, 3.0, f64::INFINITY).is_err());
    }

    fn floor() -> EntropyFloorMultiplier {
        EntropyFloorMultiplier::new(EntropyFloorConfig {
            margin: 0.1,
            step_size: 2.0,
            max: 1.0,
            noise: 0.02,
            threshold_sds: 2.0,
        })
        .unwrap()
    }

    #[test]
    fn the_floor_multiplier_raises_holds_and_lowers() {
        let mut c = floor();
        assert_eq!(c.observe(0, 3.0).unwrap(), 0.0, "the reference sets the floor");
        assert!((c.floor().unwrap() - 2.9).abs() < 1e-12);
        // Inside the dead band (|h − Ĥ| ≤ 0.04): hold.
        for h in [2.95, 2.87, 2.93] {
            assert_eq!(c.observe(16, h).unwrap(), 0.0, "{h}");
        }
        // 0.1 below the floor: μ += 2 · 0.1.
        assert!((c.observe(32, 2.8).unwrap() - 0.2).abs() < 1e-12);
        assert!((c.observe(48, 2.7).unwrap() - 0.6).abs() < 1e-12);
        assert_eq!(c.observe(64, 2.0).unwrap(), 1.0, "capped at μ_max");
        // Back above the floor by 0.15: μ −= 0.3; far above: down to 0, not below.
        assert!((c.observe(80, 3.05).unwrap() - 0.7).abs() < 1e-12);
        assert_eq!(c.observe(96, 4.0).unwrap(), 0.0);
        assert!(c.observe(112, f64::NAN).is_err());
        let bad = EntropyFloorConfig { margin: -0.1, step_size: 1.0, max: 1.0, noise: 0.01, threshold_sds: 2.0 };
        assert!(EntropyFloorMultiplier::new(bad).is_err());
    }
}
