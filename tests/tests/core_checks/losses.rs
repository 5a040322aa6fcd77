//! The loss catalog against hand-derived numbers and central finite differences.
//!
//! The worked pair: π_w = −10, π_l = −12, ρ_w = −11, ρ_l = −11, n_w = 5, n_l = 4, so
//! Δ = (−10 + 11) − (−12 + 11) = 2, ℓ̄_w = −2, ℓ̄_l = −3, ρ_w/n_w = −2.2,
//! Δ̄ = 1/5 − (−1)/4 = 0.45.

use daa_core::preference::{sigmoid, softplus};
use daa_core::{
    LossHyperParams, LossName, NllNormalisation, NllTerm, PairLogps, PairLoss, PreferenceLoss, PreferenceLossParams,
    pair_loss, validate_pair,
};
use daa_tests::fixtures::{SplitMix64, WORKED_PAIR as PAIR, loss_catalog, names_missing_from_loss_catalog};

fn run(loss: PreferenceLoss) -> PairLoss {
    pair_loss(&PAIR, &PreferenceLossParams { loss, nll: None })
}

fn close(got: f64, want: f64, what: &str) {
    assert!((got - want).abs() <= 1e-12 + 1e-12 * want.abs(), "{what}: got {got}, want {want}");
}

#[test]
fn dpo_by_hand() {
    // z = βΔ = 0.5·2 = 1; L = softplus(−1) = ln(1 + e^−1) = 0.313261687518222…
    // ∂L/∂π_w = β·(−σ(−1)) = −0.5·0.268941421369995 = −0.134470710684998
    let out = run(PreferenceLoss::Dpo { beta: 0.5, label_smoothing: 0.0 });
    close(out.loss, 0.313_261_687_518_222_86, "loss");
    close(out.grad_policy_chosen, -0.134_470_710_684_997_55, "grad chosen");
    close(out.grad_policy_rejected, 0.134_470_710_684_997_55, "grad rejected");
    // r_w = 0.5·(−10 + 11) = 0.5, r_l = 0.5·(−12 + 11) = −0.5
    close(out.chosen_reward, 0.5, "r_w");
    close(out.rejected_reward, -0.5, "r_l");
    close(out.margin, 1.0, "margin");
    close(out.accuracy, 1.0, "accuracy");
}

#[test]
fn cdpo_and_robust_dpo_by_hand() {
    // cDPO ε = 0.1: 0.9·softplus(−1) + 0.1·softplus(1) = 0.9·0.3132616875 + 0.1·1.3132616875
    let out = run(PreferenceLoss::Dpo { beta: 0.5, label_smoothing: 0.1 });
    close(out.loss, 0.413_261_687_518_222_9, "cdpo loss");
    // ∂ = β(−0.9σ(−1) + 0.1σ(1)) = 0.5(−0.242047279 + 0.073105858)
    close(out.grad_policy_chosen, -0.084_470_710_684_997_56, "cdpo grad");
    // Robust ε = 0.1: (0.9·softplus(−1) − 0.1·softplus(1)) / 0.8
    let out = run(PreferenceLoss::RobustDpo { beta: 0.5, label_smoothing: 0.1 });
    close(out.loss, 0.188_261_687_518_222_9, "robust loss");
    // ∂ = β(−0.9σ(−1) − 0.1σ(1)) / 0.8
    close(out.grad_policy_chosen, -0.196_970_710_684_997_52, "robust grad");
}

#[test]
fn ipo_both_forms_by_hand() {
    // Paper: (τΔ − ½)² = (0.1·2 − 0.5)² = 0.09; ∂/∂π_w = 2τ(τΔ − ½) = −0.06
    let out = run(PreferenceLoss::Ipo { tau: 0.1 });
    close(out.loss, 0.09, "ipo loss");
    close(out.grad_policy_chosen, -0.06, "ipo grad w");
    close(out.grad_policy_rejected, 0.06, "ipo grad l");
    close(out.chosen_reward, 0.1, "ipo r_w = τ(π_w − ρ_w)");
    // TRL: (Δ̄ − 1/(2τ))² = (0.45 − 1)² = 0.3025; ∂/∂π_w = 2(−0.55)/5, ∂/∂π_l = −2(−0.55)/4
    let out = run(PreferenceLoss::IpoMean { tau: 0.5 });
    close(out.loss, 0.3025, "ipo-mean loss");
    close(out.grad_policy_chosen, -0.22, "ipo-mean grad w");
    close(out.grad_policy_rejected, 0.275, "ipo-mean grad l");
    close(out.chosen_reward, 0.1, "ipo-mean r_w = τ(π_w − ρ_w)/n_w = 0.5·1/5");
}

#[test]
fn hinge_both_forms_by_hand() {
    // Paper, γ = 1.5, α = 0.5: hinge max(0, 1.5 − (−2 + 3)) = 0.5;
    // regulariser u = 1 − (−2 + 2.2) = 0.8, 0.5·softplus(0.8) = 0.5·1.171100665947778.
    let out = run(PreferenceLoss::Hinge { gamma: 1.5, alpha: 0.5 });
    close(out.loss, 1.085_550_332_973_889, "hinge loss");
    // ∂/∂π_w = (−1 − 0.5·σ(0.8))/5, ∂/∂π_l = +1/4
    close(out.grad_policy_chosen, -0.268_997_448_112_761_3, "hinge grad w");
    close(out.grad_policy_rejected, 0.25, "hinge grad l");
    close(out.margin, 1.0, "hinge margin ℓ̄_w − ℓ̄_l");
    // Past the margin the hinge is flat: γ = 1 gives slack 0, gradient 0 (no α).
    let flat = run(PreferenceLoss::Hinge { gamma: 1.0, alpha: 0.0 });
    close(flat.loss, 0.0, "flat hinge");
    close(flat.grad_policy_chosen, 0.0, "flat hinge grad");
    // TRL: max(0, 1 − βΔ) = 1 − 0.1·2 = 0.8, ∂/∂π_w = −β
    let out = run(PreferenceLoss::HingeTrl { beta: 0.1 });
    close(out.loss, 0.8, "hinge-trl loss");
    close(out.grad_policy_chosen, -0.1, "hinge-trl grad");
}

#[test]
fn simpo_and_orpo_by_hand() {
    // SimPO β = 2, γ = 0.5: z = 2(−2 + 3) − 0.5 = 1.5; softplus(−1.5) = 0.2014132779827524
    // ∂/∂π_w = β(−σ(−1.5))/5, ∂/∂π_l = βσ(−1.5)/4
    let out = run(PreferenceLoss::Simpo { beta: 2.0, gamma: 0.5, label_smoothing: 0.0 });
    close(out.loss, 0.201_413_277_982_752_4, "simpo loss");
    close(out.grad_policy_chosen, -0.072_970_209_522_542_55, "simpo grad w");
    close(out.grad_policy_rejected, 0.091_212_761_903_178_17, "simpo grad l");
    close(out.chosen_reward, -4.0, "simpo r_w = β ℓ̄_w");
    // ORPO β = 0.1: logodds(−2) = −2 − ln(1 − e^−2) = −1.854586542131141,
    // logodds(−3) = −2.948930819057298, difference 1.094344276926157;
    // L = 0.1·softplus(−1.0943…) = 0.028875078434461788.
    let out = run(PreferenceLoss::Orpo { beta: 0.1 });
    close(out.loss, 0.028_875_078_434_461_788, "orpo loss");
    // ∂/∂π_w = −0.1σ(−d)/(1 − e^−2)/5, ∂/∂π_l = 0.1σ(−d)/(1 − e^−3)/4
    assert!((out.grad_policy_chosen - -0.005_801_118_072_830_529).abs() < 1e-15);
    assert!((out.grad_policy_rejected - 0.006_598_550_109_630_679).abs() < 1e-15);
}

#[test]
fn nll_term_adds_to_any_loss() {
    let base = run(PreferenceLoss::Dpo { beta: 0.5, label_smoothing: 0.0 });
    let sum = pair_loss(
        &PAIR,
        &PreferenceLossParams {
            loss: PreferenceLoss::Dpo { beta: 0.5, label_smoothing: 0.0 },
            nll: Some(NllTerm { weight: 0.2, normalisation: NllNormalisation::Sum }),
        },
    );
    // + 0.2·10 = 2, gradient −0.2 on π_w only
    close(sum.loss, base.loss + 2.0, "nll sum");
    close(sum.grad_policy_chosen, base.grad_policy_chosen - 0.2, "nll sum grad");
    close(sum.grad_policy_rejected, base.grad_policy_rejected, "nll leaves π_l");
    let mean = pair_loss(
        &PAIR,
        &PreferenceLossParams {
            loss: PreferenceLoss::Dpo { beta: 0.5, label_smoothing: 0.0 },
            nll: Some(NllTerm { weight: 0.2, normalisation: NllNormalisation::Mean }),
        },
    );
    // + 0.2·10/5 = 0.4, gradient −0.2/5
    close(mean.loss, base.loss + 0.4, "nll mean");
    close(mean.grad_policy_chosen, base.grad_policy_chosen - 0.04, "nll mean grad");
}

#[test]
fn the_shared_catalog_has_every_loss() {
    assert_eq!(names_missing_from_loss_catalog(), [], "losses missing from daa_tests::fixtures::loss_catalog");
}

#[test]
fn gradients_match_central_finite_differences() {
    let mut rng = SplitMix64::new(77);
    let mut checked = 0;
    for loss in loss_catalog() {
        for nll in [None, Some(NllTerm { weight: 0.5, normalisation: NllNormalisation::Mean })] {
            let params = PreferenceLossParams { loss, nll };
            for _ in 0..40 {
                let x = PairLogps {
                    policy_chosen: -1.0 - rng.uniform() * 60.0,
                    policy_rejected: -1.0 - rng.uniform() * 60.0,
                    reference_chosen: -1.0 - rng.uniform() * 60.0,
                    reference_rejected: -1.0 - rng.uniform() * 60.0,
                    chosen_tokens: 1.0 + rng.below(40) as f64,
                    rejected_tokens: 1.0 + rng.below(40) as f64,
                };
                validate_pair(0, &x, &params).unwrap();
                let h = 1e-5;
                let f = |dw: f64, dl: f64| {
                    let mut y = x;
                    y.policy_chosen += dw;
                    y.policy_rejected += dl;
                    pair_loss(&y, &params).loss
                };
                // Skip points within h of a hinge kink, where the derivative is one-sided.
                let kink = (f(h, 0.0) - 2.0 * f(0.0, 0.0) + f(-h, 0.0)).abs() > 1e-7
                    || (f(0.0, h) - 2.0 * f(0.0, 0.0) + f(0.0, -h)).abs() > 1e-7;
                if kink {
                    continue;
                }
                let fd_w = (f(h, 0.0) - f(-h, 0.0)) / (2.0 * h);
                let fd_l = (f(0.0, h) - f(0.0, -h)) / (2.0 * h);
                let out = pair_loss(&x, &params);
                for (name, fd, an) in
                    [("chosen", fd_w, out.grad_policy_chosen), ("rejected", fd_l, out.grad_policy_rejected)]
                {
                    assert!(
                        (fd - an).abs() <= 1e-6 + 1e-5 * an.abs(),
                        "{}: d/d{name} finite difference {fd} vs analytic {an} at {x:?}",
                        loss.name()
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 600, "only {checked} points checked");
}

#[test]
fn losses_stay_finite_at_extreme_margins() {
    for loss in loss_catalog() {
        for delta in [-5000.0, 5000.0] {
            let x = PairLogps {
                policy_chosen: -1.0 - if delta > 0.0 { 0.0 } else { -delta },
                policy_rejected: -1.0 - if delta > 0.0 { delta } else { 0.0 },
                reference_chosen: -1.0,
                reference_rejected: -1.0,
                chosen_tokens: 3.0,
                rejected_tokens: 3.0,
            };
            let out = pair_loss(&x, &PreferenceLossParams { loss, nll: None });
            let all = [out.loss, out.grad_policy_chosen, out.grad_policy_rejected, out.margin];
            assert!(all.iter().all(|v| v.is_finite()), "{} at Δ = {delta}: {out:?}", loss.name());
        }
    }
    assert!(softplus(800.0).is_finite() && softplus(-800.0) >= 0.0);
    assert_eq!(sigmoid(-800.0), 0.0);
}

#[test]
fn names_parameters_and_inputs_are_checked() {
    for name in LossName::ALL {
        let loss = PreferenceLoss::with_defaults(name, LossHyperParams::default()).unwrap();
        assert_eq!(loss.name(), name);
        assert_eq!(name.as_str().parse::<LossName>().unwrap(), name);
        // The `[loss]` form (serde, tagged by `name`) gives the same defaults.
        let parsed: PreferenceLoss = serde_json::from_value(serde_json::json!({ "name": name.as_str() })).unwrap();
        assert_eq!(parsed, loss, "{name}");
        assert_eq!(serde_json::to_value(loss).unwrap()["name"], name.as_str());
    }
    assert_eq!(LossName::ALL.iter().collect::<std::collections::HashSet<_>>().len(), LossName::ALL.len());
    let err = "kto".parse::<LossName>().unwrap_err().to_string();
    assert!(err.contains("`loss` = kto") && err.contains("dpo, robust-dpo"), "{err}");
    let err = PreferenceLoss::with_defaults(LossName::Dpo, LossHyperParams { beta: Some(-1.0), ..Default::default() })
        .unwrap_err();
    assert!(err.to_string().contains("`beta` = -1"), "{err}");
    let smoothing = LossHyperParams { label_smoothing: Some(0.5), ..Default::default() };
    let err = PreferenceLoss::with_defaults(LossName::Dpo, smoothing).unwrap_err();
    assert!(err.to_string().contains("label_smoothing"), "{err}");
    // A hyper-parameter of another loss is an error naming it and the accepted ones.
    let err = serde_json::from_value::<PreferenceLoss>(serde_json::json!({ "name": "ipo", "beta": 0.1 }))
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `beta`") && err.contains("tau"), "{err}");
    let err = serde_json::from_value::<PreferenceLoss>(serde_json::json!({ "name": "kto" })).unwrap_err().to_string();
    assert!(err.contains("kto") && err.contains("ipo-mean"), "{err}");
    let params = PreferenceLossParams { loss: PreferenceLoss::Orpo { beta: 0.1 }, nll: None };
    let zero_tokens = PairLogps { chosen_tokens: 0.0, ..PAIR };
    let err = validate_pair(3, &zero_tokens, &params).unwrap_err().to_string();
    assert!(err.contains("pair 3: `chosen_tokens` = 0"), "{err}");
    let certain = PairLogps { policy_chosen: 0.0, ..PAIR };
    let err = validate_pair(0, &certain, &params).unwrap_err().to_string();
    assert!(err.contains("infinite odds"), "{err}");
    let positive = PairLogps { reference_rejected: 0.5, ..PAIR };
    let dpo = PreferenceLossParams { loss: PreferenceLoss::Dpo { beta: 0.1, label_smoothing: 0.0 }, nll: None };
    assert!(validate_pair(0, &positive, &dpo).unwrap_err().to_string().contains("log-probability <= 0"));
}
