//! Deterministic inputs: synthetic logits (daa-core's [`daa_core::synthetic`],
//! which `daa bench` uses too) as host tensors, and the loss catalog.

pub use daa_core::synthetic::{SplitMix64, lm_logits, targets, token_stats_inputs};
use daa_core::{LossName, PairLogps, PreferenceLoss};

/// Every catalog loss with non-default hyper-parameters (DPO twice: plain and
/// with label smoothing, i.e. cDPO); the losses' tests and the backends'
/// agreement both walk it. A test checks it names every [`LossName`].
pub fn loss_catalog() -> Vec<PreferenceLoss> {
    vec![
        PreferenceLoss::Dpo { beta: 0.1, label_smoothing: 0.0 },
        PreferenceLoss::Dpo { beta: 0.3, label_smoothing: 0.15 },
        PreferenceLoss::RobustDpo { beta: 0.2, label_smoothing: 0.1 },
        PreferenceLoss::Ipo { tau: 0.05 },
        PreferenceLoss::IpoMean { tau: 0.5 },
        PreferenceLoss::Hinge { gamma: 1.0, alpha: 0.7 },
        PreferenceLoss::HingeTrl { beta: 0.05 },
        PreferenceLoss::Simpo { beta: 2.5, gamma: 0.3, label_smoothing: 0.05 },
        PreferenceLoss::Orpo { beta: 0.2 },
    ]
}

/// The names [`loss_catalog`] lacks (empty when it covers the catalog).
pub fn names_missing_from_loss_catalog() -> Vec<LossName> {
    let names: Vec<LossName> = loss_catalog().iter().map(PreferenceLoss::name).collect();
    LossName::ALL.into_iter().filter(|n| !names.contains(n)).collect()
}

/// The losses' worked pair: `π_w = −10`, `π_l = −12`, `ρ_w = ρ_l = −11`,
/// `n_w = 5`, `n_l = 4`, so `Δ = (−10 + 11) − (−12 + 11) = 2`.
pub const WORKED_PAIR: PairLogps = PairLogps {
    policy_chosen: -10.0,
    policy_rejected: -12.0,
    reference_chosen: -11.0,
    reference_rejected: -11.0,
    chosen_tokens: 5.0,
    rejected_tokens: 4.0,
};
