//! The preference-loss catalog: per-pair losses of Direct Alignment
//! Algorithms, their gradients with respect to the policy's sequence
//! log-probabilities, and the implicit rewards trainers log.
//!
//! Notation (shared/paper.md): for a pair with chosen completion `y_w` and
//! rejected `y_l`,
//! - `π_w = log π_θ(y_w|x)`, `π_l = log π_θ(y_l|x)`: policy log-probabilities,
//!   SUMMED over completion tokens;
//! - `ρ_w`, `ρ_l`: the same under the frozen reference model;
//! - `n_w`, `n_l`: completion token counts; `ℓ̄_w = π_w / n_w` etc. are
//!   per-token MEAN log-likelihoods;
//! - `Δ = (π_w − ρ_w) − (π_l − ρ_l)`; `Δ̄ = (π_w − ρ_w)/n_w − (π_l − ρ_l)/n_l`;
//! - `σ` is the logistic function, `softplus(z) = ln(1 + e^z) = −ln σ(−z)`.
//!
//! Every function here is the f64 specification; GPU backends port the same
//! formulas and are checked against these.

use serde::{Deserialize, Serialize};

use crate::error::{DaaError, Result};

/// Input columns of `preference_loss`, one row per pair.
pub const PAIR_INPUT_COLUMNS: usize = 6;
/// Output columns of `preference_loss`, one row per pair, in the order of [`PairLoss`]'s fields.
pub const PAIR_OUTPUT_COLUMNS: usize = 7;

/// One pair's per-sequence log-probabilities and token counts.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PairLogps {
    /// `π_w`, summed policy log-probability of the chosen completion.
    pub policy_chosen: f64,
    /// `π_l`, summed policy log-probability of the rejected completion.
    pub policy_rejected: f64,
    /// `ρ_w`, summed reference log-probability of the chosen completion.
    pub reference_chosen: f64,
    /// `ρ_l`, summed reference log-probability of the rejected completion.
    pub reference_rejected: f64,
    /// `n_w`, completion tokens of the chosen completion.
    pub chosen_tokens: f64,
    /// `n_l`, completion tokens of the rejected completion.
    pub rejected_tokens: f64,
}

impl PairLogps {
    /// Reads a row of the `[pairs, 6]` input tensor.
    pub fn from_columns(c: &[f64]) -> Self {
        Self {
            policy_chosen: c[0],
            policy_rejected: c[1],
            reference_chosen: c[2],
            reference_rejected: c[3],
            chosen_tokens: c[4],
            rejected_tokens: c[5],
        }
    }

    /// The row of the `[pairs, 6]` input tensor.
    pub fn to_columns(&self) -> [f64; PAIR_INPUT_COLUMNS] {
        [
            self.policy_chosen,
            self.policy_rejected,
            self.reference_chosen,
            self.reference_rejected,
            self.chosen_tokens,
            self.rejected_tokens,
        ]
    }
}

/// One pair's loss, gradient and implicit rewards.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct PairLoss {
    /// Loss value (the preference term plus the NLL term, if any).
    pub loss: f64,
    /// `∂loss / ∂π_w`.
    pub grad_policy_chosen: f64,
    /// `∂loss / ∂π_l`.
    pub grad_policy_rejected: f64,
    /// Implicit reward of the chosen completion (definition per loss, see [`PreferenceLoss`]).
    pub chosen_reward: f64,
    /// Implicit reward of the rejected completion.
    pub rejected_reward: f64,
    /// `chosen_reward − rejected_reward`.
    pub margin: f64,
    /// 1 when `chosen_reward > rejected_reward`, else 0.
    pub accuracy: f64,
}

impl PairLoss {
    /// The row of the `[pairs, 7]` output tensor.
    pub fn to_columns(&self) -> [f64; PAIR_OUTPUT_COLUMNS] {
        [
            self.loss,
            self.grad_policy_chosen,
            self.grad_policy_rejected,
            self.chosen_reward,
            self.rejected_reward,
            self.margin,
            self.accuracy,
        ]
    }

    /// Reads a row of the `[pairs, 7]` output tensor.
    pub fn from_columns(c: &[f64]) -> Self {
        Self {
            loss: c[0],
            grad_policy_chosen: c[1],
            grad_policy_rejected: c[2],
            chosen_reward: c[3],
            rejected_reward: c[4],
            margin: c[5],
            accuracy: c[6],
        }
    }
}

/// The catalog's names: what `daa loss --loss` and a run's `loss.name`
/// accept. This enum is the one list of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum LossName {
    /// [`PreferenceLoss::Dpo`].
    Dpo,
    /// [`PreferenceLoss::RobustDpo`].
    RobustDpo,
    /// [`PreferenceLoss::Ipo`].
    Ipo,
    /// [`PreferenceLoss::IpoMean`].
    IpoMean,
    /// [`PreferenceLoss::Hinge`].
    Hinge,
    /// [`PreferenceLoss::HingeTrl`].
    HingeTrl,
    /// [`PreferenceLoss::Simpo`].
    Simpo,
    /// [`PreferenceLoss::Orpo`].
    Orpo,
}

impl LossName {
    /// Every name, in catalog order.
    pub const ALL: [LossName; 8] = [
        LossName::Dpo,
        LossName::RobustDpo,
        LossName::Ipo,
        LossName::IpoMean,
        LossName::Hinge,
        LossName::HingeTrl,
        LossName::Simpo,
        LossName::Orpo,
    ];

    /// The name as users write it (`robust-dpo`, `ipo-mean`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            LossName::Dpo => "dpo",
            LossName::RobustDpo => "robust-dpo",
            LossName::Ipo => "ipo",
            LossName::IpoMean => "ipo-mean",
            LossName::Hinge => "hinge",
            LossName::HingeTrl => "hinge-trl",
            LossName::Simpo => "simpo",
            LossName::Orpo => "orpo",
        }
    }

    /// Every name as users write them, joined by `, ` (for messages).
    pub fn list() -> String {
        Self::ALL.map(Self::as_str).join(", ")
    }
}

impl std::fmt::Display for LossName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for LossName {
    type Err = DaaError;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|n| n.as_str() == s).ok_or_else(|| DaaError::Parameter {
            name: "loss",
            value: s.to_string(),
            expected: format!("expected one of {}", Self::list()),
        })
    }
}

fn default_beta() -> f64 {
    0.1
}
fn default_tau() -> f64 {
    0.1
}
fn default_hinge_gamma() -> f64 {
    1.0
}
fn default_simpo_beta() -> f64 {
    2.0
}
fn default_simpo_gamma() -> f64 {
    0.5
}

/// The preference term of a DAA loss. Names in brackets are what users pass
/// on the command line (`--loss NAME`) and in a run's `[loss]` section,
/// where the hyper-parameters sit beside `name` (`name = "ipo"`, `tau = 0.1`);
/// a hyper-parameter another loss uses (`beta` for `ipo`) is an error that
/// names it. Unset hyper-parameters take the defaults shown.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case", deny_unknown_fields)]
pub enum PreferenceLoss {
    /// \[`dpo`\] DPO with label smoothing ε (cDPO; ε = 0 is plain DPO):
    /// `L = (1−ε)·softplus(−βΔ) + ε·softplus(βΔ)`.
    /// Rewards `r_w = β(π_w − ρ_w)`, `r_l = β(π_l − ρ_l)`.
    Dpo {
        /// Inverse temperature β (> 0; default 0.1); the paper sweeps 0.01–0.5.
        #[serde(default = "default_beta")]
        beta: f64,
        /// Label smoothing ε in `[0, 0.5)` (default 0).
        #[serde(default)]
        label_smoothing: f64,
    },
    /// \[`robust-dpo`\] Robust DPO (Chowdhury et al. 2024), unbiased under label noise ε:
    /// `L = ((1−ε)·softplus(−βΔ) − ε·softplus(βΔ)) / (1 − 2ε)`. Rewards as DPO.
    RobustDpo {
        /// Inverse temperature β (> 0; default 0.1).
        #[serde(default = "default_beta")]
        beta: f64,
        /// Assumed label-flip rate ε in `[0, 0.5)` (default 0).
        #[serde(default)]
        label_smoothing: f64,
    },
    /// \[`ipo`\] IPO as the paper writes it, on summed log-probabilities:
    /// `L = (τΔ − ½)²`, minimised at `Δ = 1/(2τ)`. Rewards `τ(π − ρ)`.
    Ipo {
        /// τ (> 0; default 0.1).
        #[serde(default = "default_tau")]
        tau: f64,
    },
    /// \[`ipo-mean`\] IPO as TRL and the IPO authors' code write it, length-normalised:
    /// `L = (Δ̄ − 1/(2τ))²`. Rewards `τ(π − ρ)/n`.
    IpoMean {
        /// τ (> 0; default 0.1); TRL calls it `beta`.
        #[serde(default = "default_tau")]
        tau: f64,
    },
    /// \[`hinge`\] Hinge / SLiC-HF as the paper writes it, on mean log-likelihoods:
    /// `L = max(0, γ − (ℓ̄_w − ℓ̄_l)) + α·softplus(1 − (ℓ̄_w − ρ_w/n_w))`.
    /// The first term has no reference model. Rewards `ℓ̄_w`, `ℓ̄_l` (the
    /// margin is the quantity the hinge acts on).
    Hinge {
        /// Margin γ (default 1, as the paper).
        #[serde(default = "default_hinge_gamma")]
        gamma: f64,
        /// Weight α ≥ 0 of the reference regulariser (default 0).
        #[serde(default)]
        alpha: f64,
    },
    /// \[`hinge-trl`\] TRL's `hinge`: `L = max(0, 1 − βΔ)`, reference-normalised. Rewards as DPO.
    HingeTrl {
        /// β (> 0; default 0.1).
        #[serde(default = "default_beta")]
        beta: f64,
    },
    /// \[`simpo`\] SimPO (Meng et al. 2024), reference-free, length-normalised:
    /// `L = (1−ε)·softplus(−z) + ε·softplus(z)`, `z = β(ℓ̄_w − ℓ̄_l) − γ`.
    /// Rewards `β·ℓ̄`.
    Simpo {
        /// β (> 0; default 2); SimPO suggests 2.0–2.5.
        #[serde(default = "default_simpo_beta")]
        beta: f64,
        /// Target margin γ ≥ 0 (TRL's `simpo_gamma`, default 0.5).
        #[serde(default = "default_simpo_gamma")]
        gamma: f64,
        /// Label smoothing ε in `[0, 0.5)` (default 0).
        #[serde(default)]
        label_smoothing: f64,
    },
    /// \[`orpo`\] ORPO's odds-ratio term (Hong et al. 2024) on mean log-likelihoods:
    /// `L = β·softplus(−(logodds(ℓ̄_w) − logodds(ℓ̄_l)))`, `logodds(a) = a − ln(1 − e^a)`.
    /// ORPO as published adds the mean NLL of the chosen completion with weight 1:
    /// combine with [`NllTerm`] `{ weight: 1, mean }`. Rewards `β·ℓ̄`.
    Orpo {
        /// β, the weight of the odds-ratio term (ORPO's λ; default 0.1 as TRL).
        #[serde(default = "default_beta")]
        beta: f64,
    },
}

/// How the NLL regulariser normalises the chosen completion's log-probability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum NllNormalisation {
    /// `−π_w` (summed, as the paper writes it).
    #[default]
    Sum,
    /// `−π_w / n_w` (per-token mean, as TRL's `sft` loss and ORPO do).
    Mean,
}

/// NLL regulariser `λ·(−π_w)` or `λ·(−π_w/n_w)`, added to any preference loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NllTerm {
    /// λ ≥ 0.
    pub weight: f64,
    /// Summed or per-token mean.
    pub normalisation: NllNormalisation,
}

/// Parameters of `preference_loss`: one catalog entry plus an optional NLL term.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PreferenceLossParams {
    /// The preference term.
    pub loss: PreferenceLoss,
    /// The NLL regulariser, if any.
    pub nll: Option<NllTerm>,
}

/// Hyper-parameters a user may give by name; unset ones take each loss's default.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LossHyperParams {
    /// β (DPO family, TRL hinge, SimPO, ORPO).
    pub beta: Option<f64>,
    /// τ (IPO).
    pub tau: Option<f64>,
    /// γ (hinge margin, SimPO target margin).
    pub gamma: Option<f64>,
    /// α (paper hinge regulariser weight).
    pub alpha: Option<f64>,
    /// ε (label smoothing).
    pub label_smoothing: Option<f64>,
}

impl PreferenceLoss {
    /// β of the losses that have one (`dpo`, `robust-dpo`, `hinge-trl`,
    /// `simpo`, `orpo`); `None` for IPO (τ) and the paper's hinge (α).
    pub fn beta(&self) -> Option<f64> {
        match *self {
            Self::Dpo { beta, .. }
            | Self::RobustDpo { beta, .. }
            | Self::HingeTrl { beta }
            | Self::Simpo { beta, .. }
            | Self::Orpo { beta } => Some(beta),
            Self::Ipo { .. } | Self::IpoMean { .. } | Self::Hinge { .. } => None,
        }
    }

    /// The same loss with β replaced; unchanged for losses without β.
    pub fn with_beta(mut self, value: f64) -> Self {
        match &mut self {
            Self::Dpo { beta, .. }
            | Self::RobustDpo { beta, .. }
            | Self::HingeTrl { beta }
            | Self::Simpo { beta, .. }
            | Self::Orpo { beta } => *beta = value,
            Self::Ipo { .. } | Self::IpoMean { .. } | Self::Hinge { .. } => {}
        }
        self
    }

    /// Builds a catalog entry from its name and hyper-parameters (unset ones
    /// take the defaults documented on each variant), checking the ranges.
    pub fn with_defaults(name: LossName, h: LossHyperParams) -> Result<Self> {
        let beta = |default: fn() -> f64| h.beta.unwrap_or_else(default);
        let eps = h.label_smoothing.unwrap_or(0.0);
        let loss = match name {
            LossName::Dpo => Self::Dpo { beta: beta(default_beta), label_smoothing: eps },
            LossName::RobustDpo => Self::RobustDpo { beta: beta(default_beta), label_smoothing: eps },
            LossName::Ipo => Self::Ipo { tau: h.tau.unwrap_or_else(default_tau) },
            LossName::IpoMean => Self::IpoMean { tau: h.tau.unwrap_or_else(default_tau) },
            LossName::Hinge => {
                Self::Hinge { gamma: h.gamma.unwrap_or_else(default_hinge_gamma), alpha: h.alpha.unwrap_or(0.0) }
            }
            LossName::HingeTrl => Self::HingeTrl { beta: beta(default_beta) },
            LossName::Simpo => Self::Simpo {
                beta: beta(default_simpo_beta),
                gamma: h.gamma.unwrap_or_else(default_simpo_gamma),
                label_smoothing: eps,
            },
            LossName::Orpo => Self::Orpo { beta: beta(default_beta) },
        };
        loss.validate()?;
        Ok(loss)
    }

    /// The catalog name.
    pub fn name(&self) -> LossName {
        match self {
            Self::Dpo { .. } => LossName::Dpo,
            Self::RobustDpo { .. } => LossName::RobustDpo,
            Self::Ipo { .. } => LossName::Ipo,
            Self::IpoMean { .. } => LossName::IpoMean,
            Self::Hinge { .. } => LossName::Hinge,
            Self::HingeTrl { .. } => LossName::HingeTrl,
            Self::Simpo { .. } => LossName::Simpo,
            Self::Orpo { .. } => LossName::Orpo,
        }
    }

    /// Whether the loss reads the reference log-probabilities.
    pub fn uses_reference(&self) -> bool {
        match self {
            Self::Simpo { .. } | Self::Orpo { .. } => false,
            Self::Hinge { alpha, .. } => *alpha > 0.0,
            _ => true,
        }
    }

    /// Whether the loss reads the token counts.
    pub fn uses_token_counts(&self) -> bool {
        matches!(self, Self::IpoMean { .. } | Self::Hinge { .. } | Self::Simpo { .. } | Self::Orpo { .. })
    }

    /// Checks the hyper-parameters' ranges.
    pub fn validate(&self) -> Result<()> {
        fn check(name: &'static str, value: f64, ok: bool, expected: &str) -> Result<()> {
            if ok && value.is_finite() {
                Ok(())
            } else {
                Err(DaaError::Parameter { name, value: value.to_string(), expected: expected.to_string() })
            }
        }
        let positive = "expected a finite value > 0";
        let smoothing = "expected label smoothing in [0, 0.5)";
        match *self {
            Self::Dpo { beta, label_smoothing } | Self::RobustDpo { beta, label_smoothing } => {
                check("beta", beta, beta > 0.0, positive)?;
                check("label_smoothing", label_smoothing, (0.0..0.5).contains(&label_smoothing), smoothing)
            }
            Self::Ipo { tau } | Self::IpoMean { tau } => check("tau", tau, tau > 0.0, positive),
            Self::Hinge { gamma, alpha } => {
                check("gamma", gamma, true, "expected a finite margin")?;
                check("alpha", alpha, alpha >= 0.0, "expected a finite weight >= 0")
            }
            Self::HingeTrl { beta } | Self::Orpo { beta } => check("beta", beta, beta > 0.0, positive),
            Self::Simpo { beta, gamma, label_smoothing } => {
                check("beta", beta, beta > 0.0, positive)?;
                check("gamma", gamma, gamma >= 0.0, "expected a finite margin >= 0")?;
                check("label_smoothing", label_smoothing, (0.0..0.5).contains(&label_smoothing), smoothing)
            }
        }
    }
}

impl PreferenceLossParams {
    /// Checks the loss and NLL hyper-parameters.
    pub fn validate(&self) -> Result<()> {
        self.loss.validate()?;
        if let Some(nll) = self.nll
            && !(nll.weight.is_finite() && nll.weight >= 0.0)
        {
            return Err(DaaError::Parameter {
                name: "nll_weight",
                value: nll.weight.to_string(),
                expected: "expected a finite weight >= 0".into(),
            });
        }
        Ok(())
    }

    /// Whether the loss (with its NLL term) reads the token counts.
    pub fn uses_token_counts(&self) -> bool {
        self.loss.uses_token_counts() || self.nll.is_some_and(|n| n.normalisation == NllNormalisation::Mean)
    }
}

/// A catalog entry as GPU kernels receive it (shaders/*/preference_loss.*):
/// a numeric code and the hyper-parameters, unused ones 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KernelLoss {
    /// 0 dpo, 1 robust-dpo, 2 ipo, 3 ipo-mean, 4 hinge, 5 hinge-trl, 6 simpo, 7 orpo.
    pub code: u32,
    /// β, or τ for the IPO forms.
    pub beta: f64,
    /// γ (hinge margin, SimPO target margin).
    pub gamma: f64,
    /// α (hinge reference regulariser).
    pub alpha: f64,
    /// ε (label smoothing).
    pub eps: f64,
    /// NLL term: 0 none, 1 summed, 2 per-token mean.
    pub nll_mode: u32,
    /// NLL weight λ.
    pub nll_weight: f64,
}

impl PreferenceLossParams {
    /// The parameters as the GPU kernels read them.
    pub fn kernel(&self) -> KernelLoss {
        let (code, beta, gamma, alpha, eps) = match self.loss {
            PreferenceLoss::Dpo { beta, label_smoothing } => (0, beta, 0.0, 0.0, label_smoothing),
            PreferenceLoss::RobustDpo { beta, label_smoothing } => (1, beta, 0.0, 0.0, label_smoothing),
            PreferenceLoss::Ipo { tau } => (2, tau, 0.0, 0.0, 0.0),
            PreferenceLoss::IpoMean { tau } => (3, tau, 0.0, 0.0, 0.0),
            PreferenceLoss::Hinge { gamma, alpha } => (4, 0.0, gamma, alpha, 0.0),
            PreferenceLoss::HingeTrl { beta } => (5, beta, 0.0, 0.0, 0.0),
            PreferenceLoss::Simpo { beta, gamma, label_smoothing } => (6, beta, gamma, 0.0, label_smoothing),
            PreferenceLoss::Orpo { beta } => (7, beta, 0.0, 0.0, 0.0),
        };
        let (nll_mode, nll_weight) = match self.nll {
            None => (0, 0.0),
            Some(NllTerm { weight, normalisation: NllNormalisation::Sum }) => (1, weight),
            Some(NllTerm { weight, normalisation: NllNormalisation::Mean }) => (2, weight),
        };
        KernelLoss { code, beta, gamma, alpha, eps, nll_mode, nll_weight }
    }
}

/// `softplus(z) = ln(1 + e^z)`, without overflow for large |z|.
pub fn softplus(z: f64) -> f64 {
    z.max(0.0) + (-z.abs()).exp().ln_1p()
}

/// The logistic function `σ(z) = 1 / (1 + e^−z)`, without overflow.
pub fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// `ln(1 − e^a)` for `a < 0`, accurate near 0 and for very negative `a`.
fn log1mexp(a: f64) -> f64 {
    if a > -std::f64::consts::LN_2 { (-a.exp_m1()).ln() } else { (-a.exp()).ln_1p() }
}

/// Checks one pair's inputs: finite log-probabilities ≤ 0 and, where the loss
/// reads them, token counts ≥ 1 and reference values.
pub fn validate_pair(pair: usize, x: &PairLogps, params: &PreferenceLossParams) -> Result<()> {
    let logprob = |field: &'static str, value: f64| -> Result<()> {
        if value.is_finite() && value <= 0.0 {
            Ok(())
        } else {
            Err(DaaError::PairInput { pair, field, value, expected: "expected a finite log-probability <= 0" })
        }
    };
    logprob("policy_chosen", x.policy_chosen)?;
    logprob("policy_rejected", x.policy_rejected)?;
    if params.loss.uses_reference() {
        logprob("reference_chosen", x.reference_chosen)?;
        logprob("reference_rejected", x.reference_rejected)?;
    }
    if params.uses_token_counts() {
        for (field, value) in [("chosen_tokens", x.chosen_tokens), ("rejected_tokens", x.rejected_tokens)] {
            if !(value.is_finite() && value >= 1.0) {
                return Err(DaaError::PairInput { pair, field, value, expected: "expected a token count >= 1" });
            }
        }
    }
    if let PreferenceLoss::Orpo { .. } = params.loss {
        for (field, value) in [("policy_chosen", x.policy_chosen), ("policy_rejected", x.policy_rejected)] {
            if value >= 0.0 {
                return Err(DaaError::PairInput {
                    pair,
                    field,
                    value,
                    expected: "ORPO needs a log-probability < 0 (probability 1 has infinite odds)",
                });
            }
        }
    }
    Ok(())
}

/// `∂/∂z` of `(1−ε)·softplus(−z) + ε·softplus(z)`: `−(1−ε)σ(−z) + εσ(z)`.
fn smoothed_logistic(z: f64, eps: f64) -> (f64, f64) {
    let loss = (1.0 - eps) * softplus(-z) + eps * softplus(z);
    let grad = -(1.0 - eps) * sigmoid(-z) + eps * sigmoid(z);
    (loss, grad)
}

/// The loss, gradient and rewards of one pair: the specification every
/// backend matches. Assumes [`validate_pair`] passed.
pub fn pair_loss(x: &PairLogps, params: &PreferenceLossParams) -> PairLoss {
    let log_ratio_w = x.policy_chosen - x.reference_chosen;
    let log_ratio_l = x.policy_rejected - x.reference_rejected;
    let delta = log_ratio_w - log_ratio_l;
    let (n_w, n_l) = (x.chosen_tokens, x.rejected_tokens);

    // (loss, ∂L/∂π_w, ∂L/∂π_l, r_w, r_l)
    let (mut loss, mut g_w, g_l, r_w, r_l) = match params.loss {
        PreferenceLoss::Dpo { beta, label_smoothing } => {
            let (l, dz) = smoothed_logistic(beta * delta, label_smoothing);
            (l, beta * dz, -beta * dz, beta * log_ratio_w, beta * log_ratio_l)
        }
        PreferenceLoss::RobustDpo { beta, label_smoothing: eps } => {
            let z = beta * delta;
            let l = ((1.0 - eps) * softplus(-z) - eps * softplus(z)) / (1.0 - 2.0 * eps);
            let dz = (-(1.0 - eps) * sigmoid(-z) - eps * sigmoid(z)) / (1.0 - 2.0 * eps);
            (l, beta * dz, -beta * dz, beta * log_ratio_w, beta * log_ratio_l)
        }
        PreferenceLoss::Ipo { tau } => {
            let u = tau * delta - 0.5;
            let d_delta = 2.0 * tau * u;
            (u * u, d_delta, -d_delta, tau * log_ratio_w, tau * log_ratio_l)
        }
        PreferenceLoss::IpoMean { tau } => {
            let u = log_ratio_w / n_w - log_ratio_l / n_l - 1.0 / (2.0 * tau);
            (u * u, 2.0 * u / n_w, -2.0 * u / n_l, tau * log_ratio_w / n_w, tau * log_ratio_l / n_l)
        }
        PreferenceLoss::Hinge { gamma, alpha } => {
            let (mean_w, mean_l) = (x.policy_chosen / n_w, x.policy_rejected / n_l);
            let slack = gamma - (mean_w - mean_l);
            let (hinge, d_margin) = if slack > 0.0 { (slack, -1.0) } else { (0.0, 0.0) };
            let (reg, d_reg) = if alpha > 0.0 {
                let u = 1.0 - (mean_w - x.reference_chosen / n_w);
                (alpha * softplus(u), -alpha * sigmoid(u))
            } else {
                (0.0, 0.0)
            };
            (hinge + reg, (d_margin + d_reg) / n_w, -d_margin / n_l, mean_w, mean_l)
        }
        PreferenceLoss::HingeTrl { beta } => {
            let slack = 1.0 - beta * delta;
            let (l, d_delta) = if slack > 0.0 { (slack, -beta) } else { (0.0, 0.0) };
            (l, d_delta, -d_delta, beta * log_ratio_w, beta * log_ratio_l)
        }
        PreferenceLoss::Simpo { beta, gamma, label_smoothing } => {
            let (mean_w, mean_l) = (x.policy_chosen / n_w, x.policy_rejected / n_l);
            let (l, dz) = smoothed_logistic(beta * (mean_w - mean_l) - gamma, label_smoothing);
            (l, beta * dz / n_w, -beta * dz / n_l, beta * mean_w, beta * mean_l)
        }
        PreferenceLoss::Orpo { beta } => {
            let (mean_w, mean_l) = (x.policy_chosen / n_w, x.policy_rejected / n_l);
            let log_odds = (mean_w - log1mexp(mean_w)) - (mean_l - log1mexp(mean_l));
            let l = beta * softplus(-log_odds);
            let d_log_odds = -beta * sigmoid(-log_odds);
            // d logodds(a)/da = 1/(1 − e^a) = −1/expm1(a)
            let d_w = d_log_odds * (-1.0 / mean_w.exp_m1()) / n_w;
            let d_l = -d_log_odds * (-1.0 / mean_l.exp_m1()) / n_l;
            (l, d_w, d_l, beta * mean_w, beta * mean_l)
        }
    };
    if let Some(nll) = params.nll {
        let scale = match nll.normalisation {
            NllNormalisation::Sum => 1.0,
            NllNormalisation::Mean => 1.0 / n_w,
        };
        loss += nll.weight * -x.policy_chosen * scale;
        g_w -= nll.weight * scale;
    }
    PairLoss {
        loss,
        grad_policy_chosen: g_w,
        grad_policy_rejected: g_l,
        chosen_reward: r_w,
        rejected_reward: r_l,
        margin: r_w - r_l,
        accuracy: f64::from(u8::from(r_w > r_l)),
    }
}

/// Reads a `[P, 6]` pairs tensor (any float type) and checks the loss
/// parameters and every pair; the validated pairs, in order.
pub fn read_pairs(pairs: &crate::tensor::HostTensor, params: &PreferenceLossParams) -> Result<Vec<PairLogps>> {
    pairs_of(pairs.shape())?;
    params.validate()?;
    let values = pairs.to_f64_vec("pairs")?;
    let inputs: Vec<PairLogps> = values.chunks_exact(PAIR_INPUT_COLUMNS).map(PairLogps::from_columns).collect();
    for (i, x) in inputs.iter().enumerate() {
        validate_pair(i, x, params)?;
    }
    Ok(inputs)
}

/// Checks a `[pairs, 6]` input shape and returns the number of pairs.
pub fn pairs_of(shape: &[usize]) -> Result<usize> {
    match shape {
        [p, c] if *c == PAIR_INPUT_COLUMNS => Ok(*p),
        _ => Err(DaaError::Shape {
            tensor: "pairs",
            actual: shape.to_vec(),
            expected: "[pairs, 6]: policy_chosen, policy_rejected, reference_chosen, reference_rejected, chosen_tokens, rejected_tokens".into(),
        }),
    }
}
