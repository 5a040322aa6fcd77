//! A run's reaction to its evaluations, without files: daa-core's turning-point
//! detector and adaptive regulariser (the rules are in `daa_core::monitor`)
//! read each evaluation's top-k entropy and top-k mass, and their findings
//! become what the run does next — events to log, the model to keep as
//! `best-indicator/`, an early stop, the objective from the next step on.
//! `daa train` and the browser demo's `Session` both act through it.

use daa_core::NllNormalisation;
use daa_core::monitor::{AdaptiveConfig, AdaptiveRegulariser, TurningPointConfig, TurningPointDetector};
use daa_core::preference::PreferenceLossParams;

use crate::error::ModelError;
use crate::eval::EvalReport;
use crate::records::MonitorEvent;

/// The adaptive regulariser's coefficients a step used (`None`: not adapted).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Coefficients {
    /// The NLL weight λ.
    pub nll_weight: Option<f64>,
    /// β.
    pub beta: Option<f64>,
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
    /// The objective from the next step on, when the regulariser runs.
    pub loss: Option<PreferenceLossParams>,
}

/// The detector, the optional regulariser and the early-stopping switch
/// (module documentation).
#[derive(Debug, Clone)]
pub struct IndicatorMonitor {
    detector: TurningPointDetector,
    adaptive: Option<AdaptiveRegulariser>,
    base_loss: PreferenceLossParams,
    nll_normalisation: NllNormalisation,
    early_stop: bool,
}

impl IndicatorMonitor {
    /// A monitor of a run whose configured objective is `base_loss`; the
    /// regulariser, when configured, adapts λ (with `nll_normalisation`)
    /// and/or β of that objective. Errors name a setting out of range.
    pub fn new(
        turning: TurningPointConfig,
        adaptive: Option<AdaptiveConfig>,
        base_loss: PreferenceLossParams,
        nll_normalisation: NllNormalisation,
        early_stop: bool,
    ) -> Result<Self, ModelError> {
        Ok(Self {
            detector: TurningPointDetector::new(turning)?,
            adaptive: adaptive.map(AdaptiveRegulariser::new).transpose()?,
            base_loss,
            nll_normalisation,
            early_stop,
        })
    }

    /// The coefficients the next steps use (`None` where not adapted).
    pub fn coefficients(&self) -> Coefficients {
        match &self.adaptive {
            None => Coefficients::default(),
            Some(a) => Coefficients { nll_weight: a.nll_weight(), beta: a.beta() },
        }
    }

    /// Reads the evaluation after `step` steps: turning points first, then
    /// the regulariser's decision.
    pub fn observe(&mut self, step: u64, report: &EvalReport) -> Result<MonitorDecision, ModelError> {
        let (entropy, mass) = (report.topk_entropy, report.topk_mass);
        let observation = self.detector.observe(step, entropy, mass)?;
        let mut decision = MonitorDecision { keep_best: observation.at_peak, ..MonitorDecision::default() };
        decision.events.extend(observation.turning_points.iter().map(MonitorEvent::turning_point));
        if let Some(adaptive) = self.adaptive.as_mut() {
            let d = adaptive.observe(step, entropy, mass)?;
            decision.loss = Some(d.apply(&self.base_loss, self.nll_normalisation));
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
            let first = monitor.observe(0, &report(1.0, 0.5)).unwrap();
            assert!(first.events.is_empty() && !first.stop && first.loss.is_none());
            assert!(monitor.observe(10, &report(2.0, 0.5)).unwrap().keep_best);
            let fall = monitor.observe(20, &report(1.5, 0.5)).unwrap();
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
        let calm = monitor.observe(0, &report(2.0, 0.5)).unwrap();
        assert_eq!(calm.loss, Some(dpo()), "weight 0: no NLL term");
        // Entropy falls: λ switches on at 0.25 with the run's normalisation.
        let warned = monitor.observe(1, &report(1.0, 0.5)).unwrap();
        let expected = NllTerm { weight: 0.25, normalisation: NllNormalisation::Sum };
        assert_eq!(warned.loss.unwrap().nll, Some(expected));
        assert_eq!(monitor.coefficients().nll_weight, Some(0.25));
    }
}
