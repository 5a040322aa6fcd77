//! A run's reaction to its evaluations, without files: daa-core's turning-point
//! detector and adaptive regularisers (the rules are in `daa_core::monitor`
//! and `daa_core::controllers`) read each evaluation's figures, and their
//! findings become what the run does next — events to log, the model to
//! keep as `best-indicator/`, an early stop, the objective from the next
//! step on. `daa train` and the browser demo's `Session` both act through it.
//!
//! The NLL weight follows one rule at most: the baseline
//! `raise_nll_on_falling_entropy` (λ, and β, up whenever an indicator falls)
//! or the direction-aware rule (λ up on likelihood displacement or tail
//! leakage, down when entropy is short of the reference's). The top-k
//! entropy floor's multiplier μ, when on, follows the entropy of the
//! policy's own samples (it needs `[monitor.samples]`).

use daa_core::NllNormalisation;
use daa_core::controllers::{
    DirectionAwareConfig, DirectionAwareNll, EntropyFloorConfig, EntropyFloorMultiplier, NllReason,
};
use daa_core::monitor::{
    AdaptiveConfig, AdaptiveRegulariser, RegularisationDecision, TurningPointConfig, TurningPointDetector,
};
use daa_core::preference::PreferenceLossParams;

use crate::entropy_floor::EntropyFloor;
use crate::error::ModelError;
use crate::eval::EvalReport;
use crate::records::MonitorEvent;
use crate::sample_eval::SampleReport;

/// The adaptive regularisers' coefficients a step used (`None`: not adapted).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Coefficients {
    /// The NLL weight λ.
    pub nll_weight: Option<f64>,
    /// β.
    pub beta: Option<f64>,
    /// The top-k entropy floor's multiplier μ.
    pub floor_multiplier: Option<f64>,
}

/// What the run does after one evaluation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MonitorDecision {
    /// Turning points this evaluation confirmed, to log.
    pub events: Vec<MonitorEvent>,
    /// Whether this evaluation's model is the one to keep as
    /// `best-indicator/`: no indicator has turned yet and one is at a new
    /// smoothed peak.
    pub keep_best: bool,
    /// Whether the run stops here: early stopping is on and an indicator
    /// has turned.
    pub stop: bool,
    /// The objective from the next step on, when a rule adapts λ or β.
    pub loss: Option<PreferenceLossParams>,
    /// Why the direction-aware rule moved λ (or held it), when it runs.
    pub nll_reason: Option<NllReason>,
    /// The entropy floor from the next step on, when it is on.
    pub entropy_floor: Option<EntropyFloor>,
}

/// The rule that adapts the NLL weight.
#[derive(Debug, Clone)]
enum NllRule {
    /// `raise_nll_on_falling_entropy` (and β): the baseline.
    RaiseOnFallingEntropy(AdaptiveRegulariser),
    /// The direction-aware rule.
    DirectionAware(DirectionAwareNll),
}

/// The entropy floor's controller and the statistics' top-k setting.
#[derive(Debug, Clone)]
struct FloorControl {
    multiplier: EntropyFloorMultiplier,
    k: usize,
    entropy_base: f64,
}

/// The detector, the optional regularisers and the early-stopping switch
/// (module documentation).
#[derive(Debug, Clone)]
pub struct IndicatorMonitor {
    detector: TurningPointDetector,
    nll_rule: Option<NllRule>,
    floor: Option<FloorControl>,
    base_loss: PreferenceLossParams,
    nll_normalisation: NllNormalisation,
    early_stop: bool,
}

impl IndicatorMonitor {
    /// A monitor of a run whose configured objective is `base_loss`; the
    /// baseline regulariser, when configured, adapts λ (with
    /// `nll_normalisation`) and/or β of that objective. Errors name a
    /// setting out of range.
    pub fn new(
        turning: TurningPointConfig,
        adaptive: Option<AdaptiveConfig>,
        base_loss: PreferenceLossParams,
        nll_normalisation: NllNormalisation,
        early_stop: bool,
    ) -> Result<Self, ModelError> {
        Ok(Self {
            detector: TurningPointDetector::new(turning)?,
            nll_rule: adaptive.map(AdaptiveRegulariser::new).transpose()?.map(NllRule::RaiseOnFallingEntropy),
            floor: None,
            base_loss,
            nll_normalisation,
            early_stop,
        })
    }

    /// The same monitor with the direction-aware NLL weight instead of the
    /// baseline rule (λ starts at `config.bounds.initial`).
    pub fn with_direction_aware(mut self, config: DirectionAwareConfig) -> Result<Self, ModelError> {
        self.nll_rule = Some(NllRule::DirectionAware(DirectionAwareNll::new(config)?));
        Ok(self)
    }

    /// The same monitor with the top-k entropy floor (μ from 0) on the
    /// statistics' `k` and `entropy_base`.
    pub fn with_entropy_floor(
        mut self,
        config: EntropyFloorConfig,
        k: usize,
        entropy_base: f64,
    ) -> Result<Self, ModelError> {
        self.floor = Some(FloorControl { multiplier: EntropyFloorMultiplier::new(config)?, k, entropy_base });
        Ok(self)
    }

    /// The coefficients the next steps use (`None` where not adapted).
    pub fn coefficients(&self) -> Coefficients {
        let floor_multiplier = self.floor.as_ref().map(|f| f.multiplier.multiplier());
        match &self.nll_rule {
            None => Coefficients { floor_multiplier, ..Coefficients::default() },
            Some(NllRule::RaiseOnFallingEntropy(a)) => {
                Coefficients { nll_weight: a.nll_weight(), beta: a.beta(), floor_multiplier }
            }
            Some(NllRule::DirectionAware(d)) => {
                Coefficients { nll_weight: Some(d.nll_weight()), beta: None, floor_multiplier }
            }
        }
    }

    /// Reads the evaluation after `step` (teacher-forced `report`, and the
    /// policy's own `samples` when the run samples): turning points first,
    /// then the regularisers' decisions. The entropy floor needs `samples`.
    pub fn observe(
        &mut self,
        step: u64,
        report: &EvalReport,
        samples: Option<&SampleReport>,
    ) -> Result<MonitorDecision, ModelError> {
        let (entropy, mass) = (report.topk_entropy, report.topk_mass);
        let observation = self.detector.observe(step, entropy, mass)?;
        let mut decision = MonitorDecision { keep_best: observation.at_peak, ..MonitorDecision::default() };
        decision.events.extend(observation.turning_points.iter().map(MonitorEvent::turning_point));
        match self.nll_rule.as_mut() {
            None => {}
            Some(NllRule::RaiseOnFallingEntropy(adaptive)) => {
                let d = adaptive.observe(step, entropy, mass)?;
                decision.loss = Some(d.apply(&self.base_loss, self.nll_normalisation));
            }
            Some(NllRule::DirectionAware(rule)) => {
                let (weight, reason) = rule.observe(step, report.chosen_token_loglik, entropy, mass)?;
                let adapted = RegularisationDecision { step, warning: false, nll_weight: Some(weight), beta: None };
                decision.loss = Some(adapted.apply(&self.base_loss, self.nll_normalisation));
                decision.nll_reason = Some(reason);
            }
        }
        if let Some(floor) = self.floor.as_mut() {
            let samples = samples.ok_or_else(|| {
                ModelError::Batch(format!(
                    "evaluation after step {step}: the entropy floor reads the top-k entropy of the policy's own \
                     samples, and this evaluation has none (it needs `[monitor.samples]`)"
                ))
            })?;
            let multiplier = floor.multiplier.observe(step, samples.sample_topk_entropy)?;
            let h = floor.multiplier.floor().expect("set by the first observation");
            decision.entropy_floor =
                Some(EntropyFloor { multiplier, floor: h, k: floor.k, entropy_base: floor.entropy_base });
        }
        decision.stop = self.early_stop && self.detector.first_turn().is_some();
        Ok(decision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use daa_core::monitor::AdaptiveBounds;
    use daa_core::preference::{NllTerm, PreferenceLoss};

    fn report(topk_entropy: f64, topk_mass: f64) -> EvalReport {
        EvalReport {
            loss: 0.0,
            accuracy: 0.0,
            margin: 0.0,
            chosen_token_loglik: 0.0,
            rejected_token_loglik: 0.0,
            topk_entropy,
            topk_mass,
            entropy: 0.0,
        }
    }

    fn dpo() -> PreferenceLossParams {
        PreferenceLossParams { loss: PreferenceLoss::Dpo { beta: 0.1, label_smoothing: 0.0 }, nll: None }
    }

    #[test]
    fn a_turn_is_an_event_and_stops_only_with_early_stopping() {
        // α = 1 (no smoothing), patience 1: a rise to 2.0 then a fall turns entropy.
        let turning = TurningPointConfig { smoothing: 1.0, patience: 1, ..TurningPointConfig::default() };
        for early_stop in [false, true] {
            let mut monitor = IndicatorMonitor::new(turning, None, dpo(), NllNormalisation::Mean, early_stop).unwrap();
            let first = monitor.observe(0, &report(1.0, 0.5), None).unwrap();
            assert!(first.events.is_empty() && !first.stop && first.loss.is_none());
            assert!(monitor.observe(10, &report(2.0, 0.5), None).unwrap().keep_best);
            let fall = monitor.observe(20, &report(1.5, 0.5), None).unwrap();
            assert_eq!(fall.events.len(), 1, "{fall:?}");
            assert!(matches!(fall.events[0], MonitorEvent::TurningPoint { peak_step: 10, .. }), "{:?}", fall.events);
            assert_eq!(fall.stop, early_stop);
            assert!(!fall.keep_best);
            assert_eq!(monitor.coefficients(), Coefficients::default());
        }
    }

    #[test]
    fn the_regulariser_sets_the_next_objective_and_the_coefficients() {
        let bounds = AdaptiveBounds { initial: 0.0, switch_on: 0.25, max: 1.0, up: 2.0, down: 0.5 };
        let adaptive = AdaptiveConfig {
            smoothing: 1.0,
            entropy_tolerance: 0.0,
            mass_tolerance: 0.0,
            nll_weight: Some(bounds),
            beta: None,
        };
        let mut monitor =
            IndicatorMonitor::new(TurningPointConfig::default(), Some(adaptive), dpo(), NllNormalisation::Sum, false)
                .unwrap();
        assert_eq!(monitor.coefficients().nll_weight, Some(0.0));
        let calm = monitor.observe(0, &report(2.0, 0.5), None).unwrap();
        assert_eq!(calm.loss, Some(dpo()), "weight 0: no NLL term");
        // Entropy falls: λ switches on at 0.25 with the run's normalisation.
        let warned = monitor.observe(1, &report(1.0, 0.5), None).unwrap();
        let expected = NllTerm { weight: 0.25, normalisation: NllNormalisation::Sum };
        assert_eq!(warned.loss.unwrap().nll, Some(expected));
        assert_eq!(monitor.coefficients().nll_weight, Some(0.25));
    }

    fn report_with_loglik(loglik: f64, topk_entropy: f64, topk_mass: f64) -> EvalReport {
        EvalReport { chosen_token_loglik: loglik, ..report(topk_entropy, topk_mass) }
    }

    fn samples(sample_topk_entropy: f64) -> SampleReport {
        SampleReport { sample_topk_entropy, ..SampleReport::default() }
    }

    #[test]
    fn the_direction_aware_rule_sets_lambda_and_says_why() {
        use daa_core::controllers::IndicatorNoise;
        use daa_core::monitor::AdaptiveBounds;
        let rule = DirectionAwareConfig {
            smoothing: 1.0,
            bounds: AdaptiveBounds { initial: 0.0, switch_on: 0.1, max: 1.0, up: 2.0, down: 0.5 },
            noise: IndicatorNoise { chosen_loglik: 0.02, topk_entropy: 0.01, topk_mass: 0.005 },
            threshold_sds: 2.0,
        };
        let mut monitor =
            IndicatorMonitor::new(TurningPointConfig::default(), None, dpo(), NllNormalisation::Mean, false)
                .unwrap()
                .with_direction_aware(rule)
                .unwrap();
        let first = monitor.observe(0, &report_with_loglik(-2.5, 3.2, 0.7), None).unwrap();
        assert_eq!((first.nll_reason, first.loss), (Some(NllReason::Hold), Some(dpo())));
        // Displacement: the chosen likelihood 0.1 nats below the reference's.
        let displaced = monitor.observe(16, &report_with_loglik(-2.6, 3.2, 0.7), None).unwrap();
        assert_eq!(displaced.nll_reason, Some(NllReason::Displacement));
        assert_eq!(displaced.loss.unwrap().nll, Some(NllTerm { weight: 0.1, normalisation: NllNormalisation::Mean }));
        assert_eq!(monitor.coefficients().nll_weight, Some(0.1));
        assert_eq!(monitor.coefficients().beta, None);
        // Entropy short of the reference's: back to no NLL term.
        let short = monitor.observe(32, &report_with_loglik(-2.6, 3.1, 0.7), None).unwrap();
        assert_eq!((short.nll_reason, short.loss.unwrap().nll), (Some(NllReason::EntropyShort), None));
    }

    #[test]
    fn the_entropy_floor_follows_the_samples_and_needs_them() {
        use daa_core::controllers::EntropyFloorConfig;
        let config = EntropyFloorConfig { margin: 0.1, step_size: 2.0, max: 5.0, noise: 0.01, threshold_sds: 2.0 };
        let mut monitor =
            IndicatorMonitor::new(TurningPointConfig::default(), None, dpo(), NllNormalisation::Mean, false)
                .unwrap()
                .with_entropy_floor(config, 10, 2.0)
                .unwrap();
        assert!(monitor.observe(0, &report(3.2, 0.7), None).is_err(), "no samples: an error, not a silent 0");
        let mut monitor =
            IndicatorMonitor::new(TurningPointConfig::default(), None, dpo(), NllNormalisation::Mean, false)
                .unwrap()
                .with_entropy_floor(config, 10, 2.0)
                .unwrap();
        let first = monitor.observe(0, &report(3.2, 0.7), Some(&samples(3.0))).unwrap();
        let floor = first.entropy_floor.unwrap();
        assert_eq!((floor.multiplier, floor.k, floor.entropy_base), (0.0, 10, 2.0));
        assert!((floor.floor - 2.9).abs() < 1e-12);
        assert_eq!(first.loss, None, "the floor leaves λ alone");
        // The samples' entropy 0.2 below the floor: μ = 2 · 0.2.
        let below = monitor.observe(16, &report(3.2, 0.7), Some(&samples(2.7))).unwrap();
        assert!((below.entropy_floor.unwrap().multiplier - 0.4).abs() < 1e-12);
        assert!((monitor.coefficients().floor_multiplier.unwrap() - 0.4).abs() < 1e-12);
    }
}
