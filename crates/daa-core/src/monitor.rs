//! Acting on the over-optimisation indicators: turning points of top-k
//! entropy and top-k mass (for early stopping), and an adaptive NLL weight
//! (and β) that rises when they turn and relaxes when they recover — the two
//! cures the paper proposes (section 5) and leaves unbuilt.
//!
//! Both read the indicators once per evaluation, smoothed by an exponential
//! moving average with weight `α` on the newest value:
//!
//! ```text
//! s_0 = x_0,   s_t = α·x_t + (1 − α)·s_{t−1}
//! ```
//!
//! and the running peak `P_t = max_{τ ≤ t} s_τ`, reached at evaluation `τ*`.
//!
//! **Turning point** of one indicator (top-k entropy `H`, top-k mass `M`):
//! the smoothed value stays below its peak by more than the indicator's
//! margin, `s_t < P_t − ε`, for `patience` consecutive evaluations, after the
//! peak was reached by a rise (`τ* > 0`: a curve that only falls from its
//! first evaluation, or only rises, has no turning point). The event names
//! the peak's step (where the model was last healthy by that indicator) and
//! the step at which it was confirmed. With `ε = 0` an indicator that stops
//! rising counts as turned once it stays below its peak; a positive `ε`
//! asks for a real fall.
//!
//! **Adaptive regularisation**: with the smoothed trend `d_t = s_t − s_{t−1}`
//! of each indicator, a warning is `w_t = [d^H_t < −ε_H] ∨ [d^M_t < −ε_M]`,
//! and the NLL weight follows
//!
//! ```text
//! λ_{t+1} = min(λ_max, max(γ_up · λ_t, λ_on))      if w_t
//! λ_{t+1} = γ_down · λ_t,  snapped to λ_0 when below λ_on (or below λ_0)   otherwise
//! ```
//!
//! starting from `λ_0` (the configured weight, 0 allowed); `λ_on > 0` is the
//! first weight a warning switches on. β follows the same rule with its own
//! bounds when enabled (a larger β keeps DPO closer to the reference).

use crate::error::{DaaError, Result};
use crate::preference::{NllNormalisation, NllTerm, PreferenceLossParams};

/// Which indicator an event concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Indicator {
    /// Top-k entropy of the next-token distribution.
    TopkEntropy,
    /// Top-k probability mass.
    TopkMass,
}

impl Indicator {
    /// The indicator's name in `metrics.jsonl`.
    pub fn name(self) -> &'static str {
        match self {
            Self::TopkEntropy => "topk_entropy",
            Self::TopkMass => "topk_mass",
        }
    }
}

/// An exponential moving average with its running peak (module documentation).
#[derive(Debug, Clone, PartialEq)]
pub struct SmoothedSignal {
    alpha: f64,
    smoothed: Option<f64>,
    previous: Option<f64>,
    peak: f64,
    peak_step: u64,
    peak_index: usize,
    evaluations: usize,
}

impl SmoothedSignal {
    /// A signal with weight `alpha ∈ (0, 1]` on the newest value (1: no smoothing).
    pub fn new(alpha: f64) -> Result<Self> {
        if !(alpha > 0.0 && alpha <= 1.0) {
            return Err(DaaError::Parameter {
                name: "smoothing",
                value: alpha.to_string(),
                expected: "a weight of the newest evaluation in (0, 1]".into(),
            });
        }
        Ok(Self {
            alpha,
            smoothed: None,
            previous: None,
            peak: f64::NEG_INFINITY,
            peak_step: 0,
            peak_index: 0,
            evaluations: 0,
        })
    }

    /// Adds the value of evaluation at `step`; returns whether the smoothed
    /// value is a new peak. Non-finite values are errors (they would poison
    /// the average).
    pub fn push(&mut self, step: u64, value: f64, name: &'static str) -> Result<bool> {
        if !value.is_finite() {
            return Err(DaaError::Parameter {
                name,
                value: value.to_string(),
                expected: format!("a finite value at step {step}"),
            });
        }
        self.previous = self.smoothed;
        let s = match self.smoothed {
            None => value,
            Some(s) => self.alpha * value + (1.0 - self.alpha) * s,
        };
        self.smoothed = Some(s);
        self.evaluations += 1;
        let new_peak = s > self.peak;
        if new_peak {
            self.peak = s;
            self.peak_step = step;
            self.peak_index = self.evaluations - 1;
        }
        Ok(new_peak)
    }

    /// The smoothed value `s_t`, once a value was pushed.
    pub fn smoothed(&self) -> Option<f64> {
        self.smoothed
    }

    /// The smoothed trend `s_t − s_{t−1}` (0 after the first value).
    pub fn trend(&self) -> f64 {
        match (self.smoothed, self.previous) {
            (Some(s), Some(p)) => s - p,
            _ => 0.0,
        }
    }

    /// The running peak `P_t` and the step at which it was reached.
    pub fn peak(&self) -> (f64, u64) {
        (self.peak, self.peak_step)
    }
}

/// Settings of [`TurningPointDetector`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TurningPointConfig {
    /// EMA weight `α` of the newest evaluation, `(0, 1]`.
    pub smoothing: f64,
    /// `ε_H ≥ 0`: how far (in the entropy's unit, bits by default) below its
    /// peak the smoothed top-k entropy must be.
    pub entropy_margin: f64,
    /// `ε_M ≥ 0`: how far (absolute probability) below its peak the smoothed
    /// top-k mass must be.
    pub mass_margin: f64,
    /// Consecutive evaluations below the peak that confirm a turn (≥ 1).
    pub patience: usize,
}

impl Default for TurningPointConfig {
    fn default() -> Self {
        Self { smoothing: 0.5, entropy_margin: 0.0, mass_margin: 0.01, patience: 2 }
    }
}

/// A confirmed turning point of one indicator.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TurningPoint {
    /// The indicator that turned.
    pub indicator: Indicator,
    /// Step of the smoothed peak: the last healthy point by this indicator.
    pub peak_step: u64,
    /// The smoothed peak value.
    pub peak_value: f64,
    /// Step of the evaluation that confirmed the turn.
    pub confirmed_step: u64,
    /// The smoothed value at confirmation.
    pub value: f64,
}

/// What one evaluation told the detector.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    /// Turning points confirmed by this evaluation (each indicator turns once).
    pub turning_points: Vec<TurningPoint>,
    /// Whether no indicator has turned yet and one of them is at a new
    /// smoothed peak: the evaluation to keep as the `best-indicator`
    /// checkpoint (the last point before the first turn at which an
    /// indicator was still at its best).
    pub at_peak: bool,
}

#[derive(Debug, Clone, PartialEq)]
struct Track {
    indicator: Indicator,
    margin: f64,
    signal: SmoothedSignal,
    below: usize,
    turned: Option<TurningPoint>,
}

impl Track {
    fn push(&mut self, step: u64, value: f64, patience: usize) -> Result<(bool, Option<TurningPoint>)> {
        let new_peak = self.signal.push(step, value, self.indicator.name())?;
        let s = self.signal.smoothed.unwrap_or(value);
        let (peak, peak_step) = self.signal.peak();
        self.below = if s < peak - self.margin { self.below + 1 } else { 0 };
        if self.turned.is_none() && self.signal.peak_index > 0 && self.below >= patience {
            let event =
                TurningPoint { indicator: self.indicator, peak_step, peak_value: peak, confirmed_step: step, value: s };
            self.turned = Some(event);
            return Ok((new_peak, Some(event)));
        }
        Ok((new_peak, None))
    }
}

/// Finds turning points of top-k entropy and top-k mass (module documentation).
#[derive(Debug, Clone, PartialEq)]
pub struct TurningPointDetector {
    patience: usize,
    entropy: Track,
    mass: Track,
}

impl TurningPointDetector {
    /// A detector with `config`, checked.
    pub fn new(config: TurningPointConfig) -> Result<Self> {
        if config.patience == 0 {
            return Err(DaaError::Parameter {
                name: "patience",
                value: "0".into(),
                expected: "at least 1 evaluation".into(),
            });
        }
        for (name, margin) in [("entropy_margin", config.entropy_margin), ("mass_margin", config.mass_margin)] {
            if !(margin.is_finite() && margin >= 0.0) {
                return Err(DaaError::Parameter {
                    name,
                    value: margin.to_string(),
                    expected: "a finite margin ≥ 0".into(),
                });
            }
        }
        let track = |indicator, margin| -> Result<Track> {
            Ok(Track { indicator, margin, signal: SmoothedSignal::new(config.smoothing)?, below: 0, turned: None })
        };
        Ok(Self {
            patience: config.patience,
            entropy: track(Indicator::TopkEntropy, config.entropy_margin)?,
            mass: track(Indicator::TopkMass, config.mass_margin)?,
        })
    }

    /// Reads one evaluation's mean top-k entropy and top-k mass.
    pub fn observe(&mut self, step: u64, topk_entropy: f64, topk_mass: f64) -> Result<Observation> {
        let healthy_before = self.first_turn().is_none();
        let (entropy_peak, entropy_turn) = self.entropy.push(step, topk_entropy, self.patience)?;
        let (mass_peak, mass_turn) = self.mass.push(step, topk_mass, self.patience)?;
        let turning_points: Vec<TurningPoint> = entropy_turn.into_iter().chain(mass_turn).collect();
        let at_peak = healthy_before && turning_points.is_empty() && (entropy_peak || mass_peak);
        Ok(Observation { turning_points, at_peak })
    }

    /// The first confirmed turning point (the earlier confirmation; entropy
    /// first on a tie), if any.
    pub fn first_turn(&self) -> Option<TurningPoint> {
        match (self.entropy.turned, self.mass.turned) {
            (Some(h), Some(m)) => Some(if m.confirmed_step < h.confirmed_step { m } else { h }),
            (h, m) => h.or(m),
        }
    }

    /// The smoothed signals: (top-k entropy, top-k mass).
    pub fn signals(&self) -> (&SmoothedSignal, &SmoothedSignal) {
        (&self.entropy.signal, &self.mass.signal)
    }
}

/// Bounds and factors of one adaptively controlled coefficient (`λ` or `β`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveBounds {
    /// `λ_0`: the starting value, kept while nothing warns.
    pub initial: f64,
    /// `λ_on > 0`: the first value a warning switches on.
    pub switch_on: f64,
    /// `λ_max`: the ceiling.
    pub max: f64,
    /// `γ_up > 1`: growth per warning evaluation.
    pub up: f64,
    /// `γ_down ∈ (0, 1)`: decay per calm evaluation.
    pub down: f64,
}

impl AdaptiveBounds {
    pub(crate) fn validate(&self, name: &'static str) -> Result<()> {
        let ok = self.initial.is_finite()
            && self.initial >= 0.0
            && self.switch_on > 0.0
            && self.max >= self.switch_on
            && self.max >= self.initial
            && self.max.is_finite()
            && self.up > 1.0
            && self.up.is_finite()
            && self.down > 0.0
            && self.down < 1.0;
        if ok {
            return Ok(());
        }
        Err(DaaError::Parameter {
            name,
            value: format!("{self:?}"),
            expected: "0 ≤ initial ≤ max, 0 < switch_on ≤ max, up > 1, 0 < down < 1, all finite".into(),
        })
    }

    pub(crate) fn next(&self, value: f64, warning: bool) -> f64 {
        if warning {
            (value * self.up).max(self.switch_on).min(self.max)
        } else {
            let relaxed = value * self.down;
            if relaxed < self.switch_on || relaxed < self.initial { self.initial } else { relaxed }
        }
    }
}

/// Settings of [`AdaptiveRegulariser`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveConfig {
    /// EMA weight `α` of the newest evaluation, `(0, 1]`.
    pub smoothing: f64,
    /// `ε_H ≥ 0`: a fall of the smoothed top-k entropy larger than this warns.
    pub entropy_tolerance: f64,
    /// `ε_M ≥ 0`: a fall of the smoothed top-k mass larger than this warns.
    pub mass_tolerance: f64,
    /// The NLL weight's rule, when λ is adapted.
    pub nll_weight: Option<AdaptiveBounds>,
    /// β's rule, when β is adapted (at least one of the two is).
    pub beta: Option<AdaptiveBounds>,
}

/// One decision of the controller.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RegularisationDecision {
    /// Evaluation step.
    pub step: u64,
    /// Whether an indicator fell (`w_t`).
    pub warning: bool,
    /// The NLL weight from now on (`None` when λ is not adapted).
    pub nll_weight: Option<f64>,
    /// β from now on (`None` when β is not adapted).
    pub beta: Option<f64>,
}

impl RegularisationDecision {
    /// The objective from now on: `base` with the adapted β (when β is
    /// adapted) and the adapted NLL weight with `normalisation` (none at
    /// weight 0; `base`'s NLL term when λ is not adapted).
    pub fn apply(&self, base: &PreferenceLossParams, normalisation: NllNormalisation) -> PreferenceLossParams {
        let loss = match self.beta {
            Some(beta) => base.loss.with_beta(beta),
            None => base.loss,
        };
        let nll = match self.nll_weight {
            Some(weight) => (weight > 0.0).then_some(NllTerm { weight, normalisation }),
            None => base.nll,
        };
        PreferenceLossParams { loss, nll }
    }
}

/// Raises the NLL weight (and β) when the indicators fall, relaxes them when
/// they recover (module documentation).
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptiveRegulariser {
    config: AdaptiveConfig,
    entropy: SmoothedSignal,
    mass: SmoothedSignal,
    nll_weight: Option<f64>,
    beta: Option<f64>,
}

impl AdaptiveRegulariser {
    /// A controller with `config`, checked.
    pub fn new(config: AdaptiveConfig) -> Result<Self> {
        if config.nll_weight.is_none() && config.beta.is_none() {
            return Err(DaaError::Parameter {
                name: "adaptive",
                value: "neither λ nor β".into(),
                expected: "the NLL weight, β, or both to adapt".into(),
            });
        }
        if let Some(nll) = &config.nll_weight {
            nll.validate("adaptive.nll_weight")?;
        }
        if let Some(beta) = &config.beta {
            beta.validate("adaptive.beta")?;
        }
        for (name, tol) in [("entropy_tolerance", config.entropy_tolerance), ("mass_tolerance", config.mass_tolerance)]
        {
            if !(tol.is_finite() && tol >= 0.0) {
                return Err(DaaError::Parameter {
                    name,
                    value: tol.to_string(),
                    expected: "a finite tolerance ≥ 0".into(),
                });
            }
        }
        Ok(Self {
            entropy: SmoothedSignal::new(config.smoothing)?,
            mass: SmoothedSignal::new(config.smoothing)?,
            nll_weight: config.nll_weight.map(|b| b.initial),
            beta: config.beta.map(|b| b.initial),
            config,
        })
    }

    /// The current NLL weight, when adapted.
    pub fn nll_weight(&self) -> Option<f64> {
        self.nll_weight
    }

    /// The current β, when adapted.
    pub fn beta(&self) -> Option<f64> {
        self.beta
    }

    /// Reads one evaluation's indicators and decides the coefficients.
    pub fn observe(&mut self, step: u64, topk_entropy: f64, topk_mass: f64) -> Result<RegularisationDecision> {
        self.entropy.push(step, topk_entropy, Indicator::TopkEntropy.name())?;
        self.mass.push(step, topk_mass, Indicator::TopkMass.name())?;
        let warning =
            self.entropy.trend() < -self.config.entropy_tolerance || self.mass.trend() < -self.config.mass_tolerance;
        if let (Some(nll), Some(bounds)) = (self.nll_weight, &self.config.nll_weight) {
            self.nll_weight = Some(bounds.next(nll, warning));
        }
        if let (Some(beta), Some(bounds)) = (self.beta, &self.config.beta) {
            self.beta = Some(bounds.next(beta, warning));
        }
        Ok(RegularisationDecision { step, warning, nll_weight: self.nll_weight, beta: self.beta })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector(patience: usize) -> TurningPointDetector {
        TurningPointDetector::new(TurningPointConfig {
            smoothing: 1.0,
            entropy_margin: 0.05,
            mass_margin: 0.02,
            patience,
        })
        .unwrap()
    }

    /// A noisy-free rise to a peak at evaluation `peak`, then a fall.
    fn hill(n: usize, peak: usize, top: f64) -> Vec<f64> {
        (0..n).map(|i| if i <= peak { top * i as f64 / peak as f64 } else { top - 0.1 * (i - peak) as f64 }).collect()
    }

    #[test]
    fn finds_a_planted_entropy_turn_at_its_peak() {
        let mut d = detector(2);
        let entropy = hill(12, 5, 2.0);
        let mut events = Vec::new();
        let mut kept = Vec::new();
        for (i, &h) in entropy.iter().enumerate() {
            let step = 10 * i as u64;
            let o = d.observe(step, h, 0.9).unwrap();
            events.extend(o.turning_points);
            if o.at_peak {
                kept.push(step);
            }
        }
        assert_eq!(events.len(), 1, "{events:?}");
        let e = events[0];
        assert_eq!((e.indicator, e.peak_step), (Indicator::TopkEntropy, 50));
        // Evaluations 6 (1.9) and 7 (1.8) are below 2.0 − 0.05: confirmed at 7.
        assert_eq!(e.confirmed_step, 70);
        assert_eq!(kept.last(), Some(&50));
        assert_eq!(d.first_turn(), Some(e));
    }

    #[test]
    fn finds_a_falling_mass_while_entropy_rises() {
        // Hinge's pattern: entropy keeps rising, mass peaks at evaluation 3.
        let mut d = detector(3);
        let mut events = Vec::new();
        for i in 0..10 {
            let mass = if i <= 3 { 0.6 + 0.05 * i as f64 } else { 0.75 - 0.015 * (i - 3) as f64 };
            events.extend(d.observe(i, 1.0 + 0.1 * i as f64, mass).unwrap().turning_points);
        }
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!((events[0].indicator, events[0].peak_step), (Indicator::TopkMass, 3));
        // 0.735 (i = 4) is within the margin; 0.72, 0.705, 0.69 are below: confirmed at i = 7.
        assert_eq!(events[0].confirmed_step, 7);
    }

    #[test]
    fn monotone_curves_and_short_dips_have_no_turning_point() {
        for (entropy, mass) in [
            ((0..20).map(|i| i as f64 * 0.1).collect::<Vec<_>>(), vec![0.5; 20]),
            ((0..20).map(|i| 3.0 - i as f64 * 0.1).collect(), (0..20).map(|i| 0.9 - i as f64 * 0.02).collect()),
            // One-evaluation dip (patience 2 forgives it).
            (vec![1.0, 1.2, 1.4, 1.0, 1.6, 1.8, 2.0], vec![0.5, 0.6, 0.7, 0.5, 0.8, 0.85, 0.9]),
        ] {
            let mut d = detector(2);
            for (i, (&h, &m)) in entropy.iter().zip(&mass).enumerate() {
                let o = d.observe(i as u64, h, m).unwrap();
                assert!(o.turning_points.is_empty(), "evaluation {i}: {o:?}");
            }
        }
    }

    #[test]
    fn smoothing_averages_noise() {
        let mut s = SmoothedSignal::new(0.5).unwrap();
        for (i, v) in [1.0, 3.0, 1.0].into_iter().enumerate() {
            s.push(i as u64, v, "x").unwrap();
        }
        // s = 1, 2, 1.5.
        assert_eq!(s.smoothed(), Some(1.5));
        assert_eq!(s.trend(), -0.5);
        assert_eq!(s.peak(), (2.0, 1));
        assert!(s.push(3, f64::NAN, "x").is_err());
        assert!(SmoothedSignal::new(0.0).is_err());
    }

    fn controller(nll: bool, beta: bool) -> AdaptiveRegulariser {
        let nll = nll.then_some(AdaptiveBounds { initial: 0.0, switch_on: 0.1, max: 1.0, up: 2.0, down: 0.5 });
        let beta = beta.then_some(AdaptiveBounds { initial: 0.1, switch_on: 0.1, max: 0.8, up: 2.0, down: 0.5 });
        AdaptiveRegulariser::new(AdaptiveConfig {
            smoothing: 1.0,
            entropy_tolerance: 0.0,
            mass_tolerance: 0.0,
            nll_weight: nll,
            beta,
        })
        .unwrap()
    }

    #[test]
    fn the_controller_raises_on_falls_and_relaxes_on_recovery() {
        let mut c = controller(true, true);
        // Rising, then four falling evaluations, then recovery.
        let entropy = [1.0, 1.2, 1.4, 1.3, 1.2, 1.1, 1.0, 1.1, 1.2, 1.3, 1.4];
        let decisions: Vec<_> =
            entropy.iter().enumerate().map(|(i, &h)| c.observe(i as u64, h, 0.8).unwrap()).collect();
        let weights: Vec<f64> = decisions.iter().map(|d| d.nll_weight.unwrap()).collect();
        assert_eq!(weights, [0.0, 0.0, 0.0, 0.1, 0.2, 0.4, 0.8, 0.4, 0.2, 0.1, 0.0]);
        let betas: Vec<f64> = decisions.iter().map(|d| d.beta.unwrap()).collect();
        assert_eq!(betas, [0.1, 0.1, 0.1, 0.2, 0.4, 0.8, 0.8, 0.4, 0.2, 0.1, 0.1]);
        assert!(decisions[3].warning && !decisions[7].warning);
        // β alone: the same β sequence, no NLL weight.
        let mut only_beta = controller(false, true);
        let alone: Vec<_> =
            entropy.iter().enumerate().map(|(i, &h)| only_beta.observe(i as u64, h, 0.8).unwrap()).collect();
        assert!(alone.iter().all(|d| d.nll_weight.is_none()));
        assert_eq!(alone.iter().map(|d| d.beta.unwrap()).collect::<Vec<_>>(), betas);
    }

    #[test]
    fn the_controller_reacts_to_mass_alone_and_stays_calm_on_rises() {
        let mut c = controller(true, false);
        for i in 0..5 {
            let d = c.observe(i, 1.0 + 0.1 * i as f64, 0.5 + 0.01 * i as f64).unwrap();
            assert_eq!((d.warning, d.nll_weight, d.beta), (false, Some(0.0), None));
        }
        let d = c.observe(5, 1.6, 0.4).unwrap();
        assert!(d.warning);
        assert_eq!(d.nll_weight, Some(0.1));
    }

    #[test]
    fn bad_settings_are_named() {
        let err = TurningPointDetector::new(TurningPointConfig { patience: 0, ..Default::default() }).unwrap_err();
        assert!(err.to_string().contains("patience"));
        let bad = AdaptiveBounds { initial: 0.0, switch_on: 0.1, max: 1.0, up: 0.5, down: 0.5 };
        let err = AdaptiveRegulariser::new(AdaptiveConfig {
            smoothing: 0.5,
            entropy_tolerance: 0.0,
            mass_tolerance: 0.0,
            nll_weight: Some(bad),
            beta: None,
        })
        .unwrap_err();
        assert!(err.to_string().contains("adaptive.nll_weight"), "{err}");
        let none = AdaptiveConfig {
            smoothing: 0.5,
            entropy_tolerance: 0.0,
            mass_tolerance: 0.0,
            nll_weight: None,
            beta: None,
        };
        assert!(AdaptiveRegulariser::new(none).unwrap_err().to_string().contains("neither λ nor β"));
    }
}
