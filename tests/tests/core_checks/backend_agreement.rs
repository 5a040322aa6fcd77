//! Every fast backend against the f64 specification, one body per op, on sizes that
//! stress the edges: 1, 63, 64, 65 and 4097 rows; vocabularies that are not
//! multiples of 8 or of the CPU block (4096); −inf, ±1e4 logits; masks;
//! f32, f16 and bf16 logits.

use daa_core::{
    Backend, HostTensor, NllNormalisation, NllTerm, PairLogps, PreferenceLossParams, Specification, TokenStatsParams,
};
use daa_tests::backend_cases;
use daa_tests::fixtures::{SplitMix64, lm_logits, loss_catalog, targets};
use daa_tests::tolerance::{
    LOGITS_BACKWARD_CPU, LOGITS_BACKWARD_GPU, PREFERENCE_CPU, PREFERENCE_GPU, SEGMENT_CPU, SEGMENT_GPU,
    TOKEN_STATS_CPU, TOKEN_STATS_GPU, Tolerance, assert_close,
};

/// Logits with the hard cases planted: a row of ±1e4, rows with −inf
/// entries, a row whose only finite logit is the target, ties, a row in
/// ascending order (every logit beats the running top-k threshold: the GPU
/// kernels select once per span) and a row whose k-th largest value is tied
/// across a plateau wider than k.
fn edge_logits(rows: usize, vocab: usize, seed: u64) -> Vec<f32> {
    let mut x = lm_logits(rows, vocab, 3.0, seed);
    let mut rng = SplitMix64::new(seed + 1);
    for r in 0..rows {
        let row = &mut x[r * vocab..(r + 1) * vocab];
        match r % 7 {
            1 => row.iter_mut().enumerate().for_each(|(j, v)| *v = if j % 3 == 0 { 1e4 } else { -1e4 }),
            2 => {
                for _ in 0..vocab / 3 + 1 {
                    row[rng.below(vocab)] = f32::NEG_INFINITY;
                }
                row[0] = 0.5;
            }
            3 => row.iter_mut().for_each(|v| *v = 1.25),
            5 if r % 2 == 1 => row.iter_mut().enumerate().for_each(|(j, v)| *v = j as f32 * 1e-3),
            5 => {
                row.iter_mut().enumerate().for_each(|(j, v)| *v = if j % 5 == 0 { 9.0 } else { (j % 17) as f32 * 0.5 })
            }
            4 => {
                row.iter_mut().for_each(|v| *v = f32::NEG_INFINITY);
                row[vocab / 2] = 2.0;
            }
            _ => {}
        }
    }
    x
}

fn edge_targets(rows: usize, vocab: usize, seed: u64) -> Vec<i64> {
    let mut t = targets(rows, vocab, seed);
    for (r, t) in t.iter_mut().enumerate() {
        match r % 7 {
            2 => *t = 0,
            4 => *t = (vocab / 2) as i64,
            6 => *t = -100, // PyTorch ignore_index: masked
            _ => {}
        }
    }
    t
}

fn stats_on<B: Backend>(
    backend: &B,
    logits: &HostTensor,
    targets: &HostTensor,
    mask: Option<&HostTensor>,
    params: &TokenStatsParams,
) -> Vec<f64> {
    let mask_dev = mask.map(|m| backend.upload(m).unwrap());
    stats_result(
        backend,
        &backend.upload(logits).unwrap(),
        &backend.upload(targets).unwrap(),
        mask_dev.as_ref(),
        params,
    )
    .unwrap_or_else(|e| panic!("{}: {e}", backend.name()))
    .to_f64_vec("out")
    .unwrap()
}

/// Runs token_stats and downloads: kernel-detected row errors surface here on GPU backends.
fn stats_result<B: Backend>(
    backend: &B,
    logits: &B::Tensor,
    targets: &B::Tensor,
    mask: Option<&B::Tensor>,
    params: &TokenStatsParams,
) -> daa_core::Result<HostTensor> {
    backend.download(&backend.token_stats(logits, targets, mask, params)?)
}

/// The tolerance of an op on this backend: the CPU one for `cpu`, the GPU
/// one (f32 throughout) for GPU backends.
fn tolerance_for<B: Backend>(backend: &B, cpu: Tolerance, gpu: Tolerance) -> Tolerance {
    if backend.name() == "cpu" { cpu } else { gpu }
}

fn token_stats_edge_sizes<B: Backend>(backend: &B) {
    // (rows, vocab, k): vocabularies off multiples of 8, one crossing two CPU blocks.
    let cases =
        [(1, 1, 1), (1, 7, 7), (63, 255, 10), (64, 1000, 100), (65, 8195, 256), (4097, 37, 10), (3, 32_003, 10)];
    for (rows, vocab, k) in cases {
        let logits = HostTensor::from_f32(edge_logits(rows, vocab, rows as u64), &[rows, vocab]).unwrap();
        let targets = HostTensor::from_i64(edge_targets(rows, vocab, 3), &[rows]).unwrap();
        let mask: Vec<u8> = (0..rows).map(|r| u8::from(r % 11 != 5)).collect();
        let mask = HostTensor::from_u8(mask, &[rows]).unwrap();
        for base in [2.0, std::f64::consts::E] {
            let params = TokenStatsParams { k: k.min(vocab), entropy_base: base };
            let want = stats_on(&Specification, &logits, &targets, Some(&mask), &params);
            let got = stats_on(backend, &logits, &targets, Some(&mask), &params);
            assert!(got.iter().all(|v| !v.is_nan()), "{}: NaN in output", backend.name());
            let tol = tolerance_for(backend, TOKEN_STATS_CPU, TOKEN_STATS_GPU);
            assert_close(&got, &want, tol, &format!("{} token_stats rows={rows} V={vocab} k={k}", backend.name()));
        }
    }
}

fn token_stats_half_precision<B: Backend>(backend: &B) {
    // 5001 takes the scalar loads; 32 000 and 4 096 (multiples of 8) the
    // CUDA kernel's 16-byte vector loads, over several spans.
    for (rows, vocab, k) in [(9, 5001, 20), (14, 32_000, 256), (3, 4096, 7)] {
        let x = edge_logits(rows, vocab, 11);
        let targets = HostTensor::from_i64(edge_targets(rows, vocab, 5), &[rows, 1]).unwrap();
        let params = TokenStatsParams { k, entropy_base: 2.0 };
        let as_bf16 =
            HostTensor::from_bf16(x.iter().map(|&v| half::bf16::from_f32(v)).collect::<Vec<_>>(), &[rows, 1, vocab]);
        // f16 overflows at 65504: keep the ±1e4 rows, which fit.
        let as_f16 =
            HostTensor::from_f16(x.iter().map(|&v| half::f16::from_f32(v)).collect::<Vec<_>>(), &[rows, 1, vocab]);
        for logits in [as_bf16.unwrap(), as_f16.unwrap()] {
            let want = stats_on(&Specification, &logits, &targets, None, &params);
            let got = stats_on(backend, &logits, &targets, None, &params);
            let tol = tolerance_for(backend, TOKEN_STATS_CPU, TOKEN_STATS_GPU);
            let what = format!("{} token_stats {} V={vocab} k={k}", backend.name(), logits.dtype());
            assert_close(&got, &want, tol, &what);
        }
    }
}

fn segment_reduce_matches<B: Backend>(backend: &B) {
    let (n, c) = (4097, 3);
    let mut rng = SplitMix64::new(9);
    let values: Vec<f32> = (0..n * c).map(|_| rng.normal() as f32).collect();
    let mut offsets = vec![0i64];
    while *offsets.last().unwrap() < n as i64 {
        let next = (*offsets.last().unwrap() + rng.below(130) as i64).min(n as i64);
        offsets.push(next); // includes empty segments
    }
    let weights: Vec<f32> = (0..n).map(|i| if i % 5 == 0 { 0.0 } else { 1.0 }).collect();
    let values = HostTensor::from_f32(values, &[n, c]).unwrap();
    let offsets = HostTensor::from_i64(offsets.clone(), &[offsets.len()]).unwrap();
    let weights = HostTensor::from_f32(weights, &[n]).unwrap();
    let want = Specification.segment_reduce(&values, &offsets, Some(&weights)).unwrap();
    let (v, o, w) =
        (backend.upload(&values).unwrap(), backend.upload(&offsets).unwrap(), backend.upload(&weights).unwrap());
    let got = backend.segment_reduce(&v, &o, Some(&w)).unwrap();
    let tol = tolerance_for(backend, SEGMENT_CPU, SEGMENT_GPU);
    for (name, g, r) in
        [("sums", &got.sums, &want.sums), ("counts", &got.counts, &want.counts), ("means", &got.means, &want.means)]
    {
        let g = backend.download(g).unwrap();
        assert_eq!(g.shape(), r.shape(), "{name} shape");
        assert_close(&g.to_f64_vec(name).unwrap(), &r.to_f64_vec(name).unwrap(), tol, name);
    }
}

fn preference_loss_matches<B: Backend>(backend: &B) {
    let mut rng = SplitMix64::new(21);
    let pairs: Vec<PairLogps> = (0..65)
        .map(|_| PairLogps {
            policy_chosen: -rng.uniform() * 200.0 - 1.0,
            policy_rejected: -rng.uniform() * 200.0 - 1.0,
            reference_chosen: -rng.uniform() * 200.0 - 1.0,
            reference_rejected: -rng.uniform() * 200.0 - 1.0,
            chosen_tokens: 1.0 + rng.below(300) as f64,
            rejected_tokens: 1.0 + rng.below(300) as f64,
        })
        .collect();
    let flat: Vec<f64> = pairs.iter().flat_map(|p| p.to_columns()).collect();
    let tensor = HostTensor::from_f64(flat, &[pairs.len(), 6]).unwrap();
    for loss in loss_catalog() {
        let params =
            PreferenceLossParams { loss, nll: Some(NllTerm { weight: 0.3, normalisation: NllNormalisation::Mean }) };
        let want = Specification.preference_loss(&tensor, &params).unwrap().to_f64_vec("want").unwrap();
        let got = backend.preference_loss(&backend.upload(&tensor).unwrap(), &params).unwrap();
        let got = backend.download(&got).unwrap().to_f64_vec("got").unwrap();
        assert_close(&got, &want, tolerance_for(backend, PREFERENCE_CPU, PREFERENCE_GPU), loss.name().as_str());
    }
}

fn logits_backward_matches<B: Backend>(backend: &B) {
    for (rows, vocab) in [(1, 1), (65, 4099), (4097, 13)] {
        let logits = HostTensor::from_f32(edge_logits(rows, vocab, 5), &[rows, vocab]).unwrap();
        let targets = HostTensor::from_i64(edge_targets(rows, vocab, 8), &[rows]).unwrap();
        let mut rng = SplitMix64::new(4);
        let g = HostTensor::from_f32((0..rows).map(|_| rng.normal() as f32).collect::<Vec<_>>(), &[rows]).unwrap();
        let want = Specification.logits_backward(&logits, &targets, None, &g).unwrap().to_f64_vec("want").unwrap();
        let (t, gd) = (backend.upload(&targets).unwrap(), backend.upload(&g).unwrap());
        let mut dev_logits = backend.upload(&logits).unwrap();
        let out = backend.logits_backward(&dev_logits, &t, None, &gd).unwrap();
        let tol = tolerance_for(backend, LOGITS_BACKWARD_CPU, LOGITS_BACKWARD_GPU);
        let what = format!("{} logits_backward rows={rows} V={vocab}", backend.name());
        assert_close(&backend.download(&out).unwrap().to_f64_vec("got").unwrap(), &want, tol, &what);
        backend.logits_backward_in_place(&mut dev_logits, &t, None, &gd).unwrap();
        let in_place = backend.download(&dev_logits).unwrap().to_f64_vec("in place").unwrap();
        assert_close(&in_place, &want, tol, &format!("{what} in place"));
        // The host tensor that was uploaded is untouched.
        assert_eq!(
            logits.to_f64_vec("logits").unwrap(),
            edge_logits(rows, vocab, 5).iter().map(|&v| f64::from(v)).collect::<Vec<_>>()
        );
    }
}

/// bf16 logits: the gradient in f32 and in place in bf16, against the
/// specification on the same bf16 values (the in-place result is the f32
/// gradient rounded to bf16 once). The WGSL kernel takes f32 logits only and says so.
fn logits_backward_bf16_matches<B: Backend>(backend: &B) {
    for (rows, vocab) in [(3, 4096), (65, 4099), (7, 32_000)] {
        let x: Vec<half::bf16> = edge_logits(rows, vocab, 6).iter().map(|&v| half::bf16::from_f32(v)).collect();
        let logits = HostTensor::from_bf16(x, &[rows, vocab]).unwrap();
        let targets = HostTensor::from_i64(edge_targets(rows, vocab, 2), &[rows]).unwrap();
        let mut rng = SplitMix64::new(12);
        let g = HostTensor::from_f32((0..rows).map(|_| rng.normal() as f32).collect::<Vec<_>>(), &[rows]).unwrap();
        let want = Specification.logits_backward(&logits, &targets, None, &g).unwrap().to_f64_vec("want").unwrap();
        let (t, gd) = (backend.upload(&targets).unwrap(), backend.upload(&g).unwrap());
        let mut dev_logits = backend.upload(&logits).unwrap();
        let what = format!("{} logits_backward bf16 rows={rows} V={vocab}", backend.name());
        let out = match backend.logits_backward(&dev_logits, &t, None, &gd) {
            Err(daa_core::DaaError::DType { tensor: "logits", .. }) if backend.name() == "wgpu" => return,
            other => other.unwrap_or_else(|e| panic!("{what}: {e}")),
        };
        let tol = tolerance_for(backend, LOGITS_BACKWARD_CPU, LOGITS_BACKWARD_GPU);
        assert_close(&backend.download(&out).unwrap().to_f64_vec("got").unwrap(), &want, tol, &what);
        backend.logits_backward_in_place(&mut dev_logits, &t, None, &gd).unwrap();
        let in_place = backend.download(&dev_logits).unwrap();
        assert_eq!(in_place.dtype(), daa_core::DType::BF16, "{what}: in place keeps the dtype");
        // The f32 gradient rounded to bf16 once: within 2^-9 relative, plus the f32 tolerance.
        let bf16_tol = Tolerance { name: "logits_backward in place in bf16", abs: 1e-5, rel: 2f64.powi(-8) };
        assert_close(&in_place.to_f64_vec("in place").unwrap(), &want, bf16_tol, &format!("{what} in place"));
    }
}

fn bad_inputs_are_errors<B: Backend>(backend: &B) {
    let up = |t: HostTensor| backend.upload(&t).unwrap();
    let logits = up(HostTensor::from_f32(vec![0.0, 1.0, f32::NAN, 0.0, 2.0, 3.0], &[2, 3]).unwrap());
    let p = TokenStatsParams { k: 2, entropy_base: 2.0 };
    let t = up(HostTensor::from_i64(vec![0, 1], &[2]).unwrap());
    let err = stats_result(backend, &logits, &t, None, &p).unwrap_err().to_string();
    assert!(err.contains("row 0, column 2: value NaN"), "{err}");
    // The NaN row is masked: no error.
    let masked = up(HostTensor::from_u8(vec![0, 1], &[2]).unwrap());
    stats_result(backend, &logits, &t, Some(&masked), &p).unwrap();
    let plus_inf = up(HostTensor::from_f32(vec![0.0, 1.0, 2.0, 0.0, f32::INFINITY, f32::NAN], &[2, 3]).unwrap());
    let err = stats_result(backend, &plus_inf, &t, None, &p).unwrap_err().to_string();
    assert!(err.contains("row 1, column 1: value inf"), "{err}");
    let t_far = up(HostTensor::from_i32(vec![-100, 3], &[2]).unwrap());
    let err = stats_result(backend, &logits, &t_far, None, &p).unwrap_err().to_string();
    assert!(err.contains("row 1: target id 3 is outside the vocabulary 0..3"), "{err}");
    for k in [0, 4, 300] {
        let err = stats_result(backend, &logits, &t, None, &TokenStatsParams { k, entropy_base: 2.0 }).unwrap_err();
        assert!(err.to_string().contains("parameter `k`"), "{err}");
    }
    let all_inf = up(HostTensor::from_f32(vec![f32::NEG_INFINITY; 3], &[1, 3]).unwrap());
    let t1 = up(HostTensor::from_i64(vec![0], &[1]).unwrap());
    let err = stats_result(backend, &all_inf, &t1, None, &p).unwrap_err().to_string();
    assert!(err.contains("every logit is -inf"), "{err}");
    let wrong = up(HostTensor::from_i64(vec![0, 1, 2], &[3]).unwrap());
    let err = stats_result(backend, &logits, &wrong, None, &p).unwrap_err().to_string();
    assert!(err.contains("`targets` has shape [3], expected [2]"), "{err}");
}

fn token_stats_vocabulary_sizes<B: Backend>(backend: &B) {
    // Few rows for the big vocabularies; k across its range.
    for (vocab, k) in [(1, 1), (7, 7), (255, 100), (32_000, 256), (128_256, 10), (256_000, 100)] {
        let rows = 3;
        let logits = HostTensor::from_f32(edge_logits(rows, vocab, vocab as u64), &[rows, vocab]).unwrap();
        let targets = HostTensor::from_i64(edge_targets(rows, vocab, 1), &[rows]).unwrap();
        let params = TokenStatsParams { k, entropy_base: 2.0 };
        let want = stats_on(&Specification, &logits, &targets, None, &params);
        let got = stats_on(backend, &logits, &targets, None, &params);
        let tol = tolerance_for(backend, TOKEN_STATS_CPU, TOKEN_STATS_GPU);
        assert_close(&got, &want, tol, &format!("{} token_stats V={vocab} k={k}", backend.name()));
    }
}

backend_cases!(
    token_stats_vocabulary_sizes,
    token_stats_edge_sizes,
    token_stats_half_precision,
    segment_reduce_matches,
    preference_loss_matches,
    logits_backward_matches,
    logits_backward_bf16_matches,
);
backend_cases!(with_spec: bad_inputs_are_errors);
