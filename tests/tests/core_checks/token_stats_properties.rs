//! Properties of `token_stats` over random inputs, for the reference and the
//! fast CPU backend, and the logits gradient against finite differences.

use daa_core::{Backend, Cpu, HostTensor, Specification, TokenStatsParams, TokenStatsRow};
use proptest::prelude::*;

/// Logits rows with occasional −inf and huge (±1e4) entries.
fn rows_strategy() -> impl Strategy<Value = (usize, usize, Vec<f32>)> {
    (1usize..4, 1usize..300).prop_flat_map(|(rows, vocab)| {
        let value = prop_oneof![
            8 => -30.0f32..30.0,
            1 => Just(f32::NEG_INFINITY),
            1 => prop_oneof![Just(1e4f32), Just(-1e4f32)],
        ];
        (Just(rows), Just(vocab), proptest::collection::vec(value, rows * vocab))
    })
}

/// Makes sure every row has a finite logit (else it has no distribution).
fn with_finite_rows(rows: usize, vocab: usize, mut x: Vec<f32>) -> Vec<f32> {
    for r in 0..rows {
        if x[r * vocab..(r + 1) * vocab].iter().all(|v| *v == f32::NEG_INFINITY) {
            x[r * vocab] = 0.0;
        }
    }
    x
}

fn stats<B: Backend<Tensor = HostTensor>>(
    b: &B,
    x: &[f32],
    rows: usize,
    vocab: usize,
    k: usize,
    base: f64,
) -> Vec<TokenStatsRow> {
    let logits = HostTensor::from_f32(x.to_vec(), &[rows, vocab]).unwrap();
    // Target: the first finite logit of each row.
    let t: Vec<i64> = (0..rows)
        .map(|r| x[r * vocab..(r + 1) * vocab].iter().position(|v| v.is_finite()).unwrap_or(0) as i64)
        .collect();
    let targets = HostTensor::from_i64(t, &[rows]).unwrap();
    let out = b.token_stats(&logits, &targets, None, &TokenStatsParams { k, entropy_base: base }).unwrap();
    TokenStatsRow::rows_of(&out).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn mass_and_entropies_stay_in_range((rows, vocab, x) in rows_strategy(), k_seed in 0usize..1000) {
        let x = with_finite_rows(rows, vocab, x);
        let k = 1 + k_seed % vocab.min(256);
        for row in stats(&Cpu::new(), &x, rows, vocab, k, 2.0).into_iter().chain(stats(&Specification, &x, rows, vocab, k, 2.0)) {
            prop_assert!(row.active);
            let all = [row.target_logprob, row.entropy, row.topk_mass, row.topk_entropy, row.topk_entropy_raw];
            prop_assert!(all.iter().all(|v| v.is_finite()), "{row:?}");
            prop_assert!(row.topk_mass > 0.0 && row.topk_mass <= 1.0 + 1e-6, "{row:?}");
            prop_assert!(row.topk_entropy >= 0.0 && f64::from(row.topk_entropy) <= (k as f64).log2() + 1e-5, "{row:?} k={k}");
            prop_assert!(row.entropy >= 0.0 && f64::from(row.entropy) <= (vocab as f64).ln() + 1e-5, "{row:?}");
            prop_assert!(row.target_logprob <= 1e-6, "{row:?}");
        }
    }

    #[test]
    fn adding_a_constant_to_a_row_changes_nothing((rows, vocab, x) in rows_strategy(), shift in -50.0f32..50.0) {
        let x = with_finite_rows(rows, vocab, x);
        // Keep the shift exact in f32: drop ±1e4 entries and round to a multiple of 1/8.
        let x: Vec<f32> = x.iter().map(|v| if v.abs() == 1e4 { 3.0 } else { *v }).collect();
        let shift = (shift * 8.0).round() / 8.0;
        let shifted: Vec<f32> = x.iter().map(|v| v + shift).collect();
        let k = vocab.min(10);
        for backend_rows in [
            (stats(&Cpu::new(), &x, rows, vocab, k, 2.0), stats(&Cpu::new(), &shifted, rows, vocab, k, 2.0)),
            (stats(&Specification, &x, rows, vocab, k, 2.0), stats(&Specification, &shifted, rows, vocab, k, 2.0)),
        ] {
            for (a, b) in backend_rows.0.iter().zip(&backend_rows.1) {
                for (u, v) in [(a.target_logprob, b.target_logprob), (a.entropy, b.entropy), (a.topk_mass, b.topk_mass),
                               (a.topk_entropy, b.topk_entropy), (a.topk_entropy_raw, b.topk_entropy_raw)] {
                    prop_assert!((u - v).abs() <= 2e-4 + 2e-5 * u.abs(), "{a:?} vs {b:?}");
                }
            }
        }
    }

    #[test]
    fn k_equal_to_vocab_gives_the_full_distribution((rows, vocab, x) in rows_strategy(), base in prop_oneof![Just(2.0), Just(std::f64::consts::E), Just(10.0)]) {
        let x = with_finite_rows(rows, vocab, x);
        let k = vocab.min(256);
        prop_assume!(k == vocab);
        for row in stats(&Cpu::new(), &x, rows, vocab, k, base).into_iter().chain(stats(&Specification, &x, rows, vocab, k, base)) {
            prop_assert!((row.topk_mass - 1.0).abs() < 1e-5, "{row:?}");
            let full_in_base = f64::from(row.entropy) / base.ln();
            prop_assert!((f64::from(row.topk_entropy) - full_in_base).abs() < 1e-4, "{row:?}");
            prop_assert!((f64::from(row.topk_entropy_raw) - full_in_base).abs() < 1e-4, "{row:?}");
        }
    }
}

#[test]
fn uniform_and_one_hot_rows_by_hand() {
    // Uniform over 8: entropy ln 8 nats; top-4 mass 1/2; renormalised top-4 entropy log2 4 = 2 bits;
    // raw partial −Σ_4 (1/8) log2(1/8) = 4·(1/8)·3 = 1.5 bits; log p_t = −ln 8.
    // The specification and the fast CPU backend, each.
    let mut x = vec![f32::NEG_INFINITY; 70];
    x[0] = 1e4;
    for (name, uniform, point) in [
        ("spec", stats(&Specification, &[0.5; 8], 1, 8, 4, 2.0)[0], stats(&Specification, &x, 1, 70, 10, 2.0)[0]),
        ("cpu", stats(&Cpu::new(), &[0.5; 8], 1, 8, 4, 2.0)[0], stats(&Cpu::new(), &x, 1, 70, 10, 2.0)[0]),
    ] {
        let r = uniform;
        assert!((f64::from(r.entropy) - 8f64.ln()).abs() < 1e-6, "{name}");
        assert!((r.topk_mass - 0.5).abs() < 1e-6, "{name}");
        assert!((r.topk_entropy - 2.0).abs() < 1e-6, "{name}");
        assert!((r.topk_entropy_raw - 1.5).abs() < 1e-6, "{name}");
        assert!((f64::from(r.target_logprob) + 8f64.ln()).abs() < 1e-6, "{name}");
        // One finite logit among −inf: a point mass, every entropy 0, mass 1.
        let r = point;
        assert_eq!((r.entropy, r.topk_entropy, r.topk_mass, r.target_logprob), (0.0, 0.0, 1.0, 0.0), "{name}");
    }
}

#[test]
fn logits_gradient_matches_finite_differences() {
    // L = g · log softmax(x)_t; ∂L/∂x_j by central differences in f64 on the reference's definition.
    let x = vec![0.3f32, -1.2, 2.5, 0.0, f32::NEG_INFINITY, 1.1, -0.7];
    let (t, g) = (2usize, -0.8f64);
    let logp = |x: &[f64]| {
        let m = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        x[t] - (m + x.iter().map(|v| (v - m).exp()).sum::<f64>().ln())
    };
    let logits = HostTensor::from_f32(x.clone(), &[1, 7]).unwrap();
    let targets = HostTensor::from_i64(vec![t as i64], &[1]).unwrap();
    let grad = HostTensor::from_f64(vec![g], &[1]).unwrap();
    for backend_out in [
        Cpu::new().logits_backward(&logits, &targets, None, &grad).unwrap(),
        Specification.logits_backward(&logits, &targets, None, &grad).unwrap(),
    ] {
        let got = backend_out.to_f64_vec("grad").unwrap();
        for j in 0..x.len() {
            let mut plus: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
            let mut minus = plus.clone();
            if plus[j].is_infinite() {
                assert_eq!(got[j], 0.0, "a −inf logit has zero gradient");
                continue;
            }
            plus[j] += 1e-6;
            minus[j] -= 1e-6;
            let fd = g * (logp(&plus) - logp(&minus)) / 2e-6;
            assert!((fd - got[j]).abs() < 1e-6, "x_{j}: finite difference {fd} vs {}", got[j]);
        }
    }
}
