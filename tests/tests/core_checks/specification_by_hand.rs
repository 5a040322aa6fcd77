//! The f64 specification backend against numbers derived by hand (its
//! token statistics: `token_stats_properties`; the loss formulas themselves:
//! `losses`). The fast backends are judged against this backend, so it is
//! judged against arithmetic written out here.

use daa_core::{Backend, HostTensor, PairLogps, PreferenceLoss, PreferenceLossParams, Specification};
use daa_tests::fixtures::WORKED_PAIR;

fn close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 1e-12 + 1e-12 * w.abs(), "{what}[{i}]: got {g}, want {w}");
    }
}

#[test]
fn segment_sums_counts_and_means_by_hand() {
    // Tokens 0..5 in segments [0, 2), [2, 2) (empty), [2, 5); two columns;
    // token 3 is masked (weight 0: its NaN is never read), token 4 weighs 2.
    let values = [1.0, 10.0, 2.0, 20.0, 3.0, 30.0, f32::NAN, f32::NAN, 4.0, 40.0];
    let values = HostTensor::from_f32(values.to_vec(), &[5, 2]).unwrap();
    let offsets = HostTensor::from_i64(vec![0, 2, 2, 5], &[4]).unwrap();
    let weights = HostTensor::from_f32(vec![1.0, 1.0, 1.0, 0.0, 2.0], &[5]).unwrap();
    let out = Specification.segment_reduce(&values, &offsets, Some(&weights)).unwrap();
    // Segment 0: 1 + 2 = 3, 10 + 20 = 30 over 2 tokens; segment 2: 3 + 2·4 = 11,
    // 30 + 2·40 = 110 over a weight of 1 + 2 = 3; the empty segment is 0.
    close(&out.sums.to_f64_vec("sums").unwrap(), &[3.0, 30.0, 0.0, 0.0, 11.0, 110.0], "sums");
    close(&out.counts.to_f64_vec("counts").unwrap(), &[2.0, 0.0, 3.0], "counts");
    close(&out.means.to_f64_vec("means").unwrap(), &[1.5, 15.0, 0.0, 0.0, 11.0 / 3.0, 110.0 / 3.0], "means");
}

#[test]
fn preference_loss_rows_by_hand() {
    // The losses' worked pair (π_w −10, π_l −12, ρ_w = ρ_l = −11, n_w 5, n_l 4):
    // Δ = 2; DPO with β = 0.5: z = βΔ = 1, L = softplus(−1) = 0.313261687518222…,
    // ∂L/∂π_w = −β·σ(−1) = −0.134470710684998 = −∂L/∂π_l, rewards ±0.5, margin 1,
    // accuracy 1. A second pair with the roles swapped mirrors it: z = −1,
    // L = softplus(1) = 1.313261687518222…, ∂L/∂π_w = −β·σ(1) = −0.365529289315002.
    let pair = WORKED_PAIR;
    let swapped = PairLogps { policy_chosen: -12.0, policy_rejected: -10.0, ..pair };
    let flat: Vec<f64> = [pair, swapped].iter().flat_map(|p| p.to_columns()).collect();
    let pairs = HostTensor::from_f64(flat, &[2, 6]).unwrap();
    let params = PreferenceLossParams { loss: PreferenceLoss::Dpo { beta: 0.5, label_smoothing: 0.0 }, nll: None };
    let out = Specification.preference_loss(&pairs, &params).unwrap().to_f64_vec("out").unwrap();
    let (g1, g2) = (0.134_470_710_684_997_55, 0.365_529_289_315_002_4);
    #[rustfmt::skip]
    let want = [
        0.313_261_687_518_222_86, -g1, g1, 0.5, -0.5, 1.0, 1.0,
        1.313_261_687_518_222_8, -g2, g2, -0.5, 0.5, -1.0, 0.0,
    ];
    close(&out, &want, "dpo rows");
}

#[test]
fn logits_gradient_by_hand() {
    // Logits (0, ln 3): p = (1/4, 3/4). L = g·log p_t with t = 0, g = 2:
    // ∂L/∂x_j = g·([j = t] − p_j) = (2·3/4, −2·3/4) = (1.5, −1.5).
    // A masked row (target −100) gets zeros.
    let logits = HostTensor::from_f32(vec![0.0, 3f32.ln(), 5.0, 7.0], &[2, 2]).unwrap();
    let targets = HostTensor::from_i64(vec![0, -100], &[2]).unwrap();
    let grad = HostTensor::from_f64(vec![2.0, 1.0], &[2]).unwrap();
    let out = Specification.logits_backward(&logits, &targets, None, &grad).unwrap();
    let got = out.to_f64_vec("grad").unwrap();
    // ln 3 is rounded to f32: p_1 = 3/4 within 1e-7.
    for (g, w) in got.iter().zip([1.5, -1.5, 0.0, 0.0]) {
        assert!((g - w).abs() < 1e-6, "got {got:?}");
    }
}
