//! The demo's settings: what the page's controls and URL set.

use daa_core::NllNormalisation;
use daa_core::monitor::{AdaptiveBounds, AdaptiveConfig, TurningPointConfig};
use daa_core::preference::{NllTerm, PreferenceLoss, PreferenceLossParams};
use daa_train::testbed::TestbedSpec;
use serde::{Deserialize, Serialize};

/// The preference losses the page offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DemoLoss {
    /// DPO: `softplus(−βΔ)`.
    Dpo,
    /// IPO: `(τΔ − ½)²`.
    Ipo,
    /// Hinge / SLiC: `max(0, γ − (ℓ̄_w − ℓ̄_l)) + α·softplus(1 − (ℓ̄_w − ρ_w/n_w))`.
    Hinge,
}

/// How the NLL term `λ·(−π_w/n_w)` is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Regularisation {
    /// No NLL term.
    Off,
    /// `λ = nll_weight` throughout.
    Fixed,
    /// λ starts at 0 and is raised (from `nll_weight`, doubling up to 1) while
    /// the top-k indicators fall, relaxed when they recover (daa-core's
    /// adaptive regulariser).
    Adaptive,
}

/// Everything a demo run depends on. Unknown fields are errors that name
/// the field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoConfig {
    /// Reference policy and pairs (the testbed's stages).
    pub testbed: TestbedSpec,
    /// Preference loss.
    pub loss: DemoLoss,
    /// DPO's β.
    pub beta: f64,
    /// IPO's τ.
    pub tau: f64,
    /// Hinge margin γ.
    pub gamma: f64,
    /// Hinge's reference-regulariser weight α.
    pub alpha: f64,
    /// The NLL term.
    pub regularisation: Regularisation,
    /// λ (fixed), or the first λ a warning switches on (adaptive).
    pub nll_weight: f64,
    /// Peak learning rate of the preference training.
    pub lr: f64,
    /// Warm-up steps.
    pub warmup_steps: u64,
    /// Pairs per optimizer step.
    pub batch_size: usize,
    /// Optimizer steps of the preference training.
    pub steps: u64,
    /// Evaluate every this many steps (and at step 0 and the last step).
    pub eval_every: u64,
    /// Held-out prompts the policy samples at each evaluation (at most the held-out pairs).
    pub sample_prompts: usize,
    /// `k` of the top-k statistics.
    pub top_k: usize,
    /// Seed of the batch order and of the evaluation's draws.
    pub seed: u64,
    /// Prompts sampled per `step()` while the pairs are made.
    pub pair_chunk: usize,
}

impl Default for DemoConfig {
    fn default() -> Self {
        let testbed =
            TestbedSpec { sft_prompts: 2048, sft_steps: 200, pairs: 512, eval_pairs: 64, ..TestbedSpec::default() };
        Self {
            testbed,
            loss: DemoLoss::Dpo,
            beta: 0.1,
            tau: 0.1,
            gamma: 1.0,
            alpha: 0.0,
            regularisation: Regularisation::Off,
            nll_weight: 0.1,
            lr: 3e-4,
            warmup_steps: 10,
            batch_size: 16,
            steps: 192,
            eval_every: 8,
            sample_prompts: 64,
            top_k: 10,
            seed: 0,
            pair_chunk: 32,
        }
    }
}

impl DemoConfig {
    /// Reads a JSON object of settings (missing fields take their defaults).
    pub fn from_json(text: &str) -> Result<Self, String> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let config: Self = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            format!("demo settings: `{path}`: {}", e.inner())
        })?;
        config.check()?;
        Ok(config)
    }

    /// Checks every setting; the error names the field.
    pub fn check(&self) -> Result<(), String> {
        self.testbed.check()?;
        let positive = |name: &str, v: f64| {
            if v > 0.0 && v.is_finite() {
                Ok(())
            } else {
                Err(format!("demo settings: `{name}` must be > 0, found {v}"))
            }
        };
        positive("lr", self.lr)?;
        if self.batch_size == 0 || self.steps == 0 || self.eval_every == 0 || self.top_k == 0 || self.pair_chunk == 0 {
            return Err(
                "demo settings: `batch_size`, `steps`, `eval_every`, `top_k` and `pair_chunk` must be at least 1"
                    .into(),
            );
        }
        if self.sample_prompts == 0 {
            return Err("demo settings: `sample_prompts` must be at least 1".into());
        }
        if !(self.nll_weight >= 0.0 && self.nll_weight.is_finite()) {
            return Err(format!("demo settings: `nll_weight` must be ≥ 0, found {}", self.nll_weight));
        }
        if self.regularisation == Regularisation::Adaptive && !(self.nll_weight > 0.0 && self.nll_weight <= 1.0) {
            return Err(format!(
                "demo settings: adaptive regularisation needs 0 < `nll_weight` ≤ 1 (the first λ it switches on), found {}",
                self.nll_weight
            ));
        }
        self.loss_params().validate().map_err(|e| format!("demo settings: {e}"))?;
        Ok(())
    }

    /// The objective of the first step.
    pub fn loss_params(&self) -> PreferenceLossParams {
        let loss = match self.loss {
            DemoLoss::Dpo => PreferenceLoss::Dpo { beta: self.beta, label_smoothing: 0.0 },
            DemoLoss::Ipo => PreferenceLoss::Ipo { tau: self.tau },
            DemoLoss::Hinge => PreferenceLoss::Hinge { gamma: self.gamma, alpha: self.alpha },
        };
        let nll = match self.regularisation {
            Regularisation::Fixed if self.nll_weight > 0.0 => {
                Some(NllTerm { weight: self.nll_weight, normalisation: NllNormalisation::Mean })
            }
            _ => None,
        };
        PreferenceLossParams { loss, nll }
    }

    /// The adaptive regulariser's settings (`daa train`'s defaults), when on.
    pub fn adaptive(&self) -> Option<AdaptiveConfig> {
        (self.regularisation == Regularisation::Adaptive).then_some(AdaptiveConfig {
            smoothing: 0.5,
            entropy_tolerance: 0.0,
            mass_tolerance: 0.0,
            nll_weight: Some(AdaptiveBounds { initial: 0.0, switch_on: self.nll_weight, max: 1.0, up: 2.0, down: 0.5 }),
            beta: None,
        })
    }

    /// The turning-point detector's settings (`daa train`'s defaults).
    pub fn turning(&self) -> TurningPointConfig {
        TurningPointConfig::default()
    }
}
