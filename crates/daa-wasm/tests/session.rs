//! The browser demo's session, run natively: the same code the wasm build
//! runs. It must train exactly like `daa train` on the same pairs (the
//! tokenizer, the chat template, the checkpoint, reference scores, batch
//! order and the step), go through every phase with finite figures, and
//! match the first-step loss pinned in `web/tests/first-step.json`, which
//! the browser test checks the wasm build against.

use std::time::Instant;

use burn::backend::{Autodiff, NdArray};
use daa_train::checkpoint::{load_model, save_model};
use daa_train::data::{EncodeOptions, TextEncoder, encode_rows, read_rows};
use daa_train::records::MetricsRecord;
use daa_train::rng::permutation;
use daa_train::run::config::TrainConfig;
use daa_train::score::score_pairs;
use daa_train::testbed::ultrafeedback_row;
use daa_train::tiny_run::write_tokenizer;
use daa_train::{ReferencePolicy, StepPair, Trainer, TrainerOptions};
use daa_wasm::{DemoConfig, Phase, Session};

fn clock() -> f64 {
    thread_local!(static START: Instant = Instant::now());
    START.with(|s| s.elapsed().as_secs_f64())
}

/// A run small enough for a test: every phase, a few steps.
fn small_settings() -> &'static str {
    r#"{
        "testbed": { "hidden_size": 32, "layers": 1, "sft_prompts": 96, "sft_steps": 8, "sft_batch": 8,
                     "pairs": 40, "eval_pairs": 12 },
        "batch_size": 4, "steps": 5, "eval_every": 2, "sample_prompts": 6, "pair_chunk": 16, "lr": 1e-3
    }"#
}

fn run_until_training(session: &mut Session) -> usize {
    let mut calls = 0;
    while session.phase() != Phase::Train {
        session.step().expect("setup step");
        calls += 1;
    }
    calls
}

#[test]
fn a_demo_step_equals_daa_trains_step_on_the_same_pairs() {
    let config = DemoConfig::from_json(small_settings()).unwrap();
    let mut session = Session::new(config.clone(), clock).unwrap();
    run_until_training(&mut session);

    // The reference checkpoint and the pairs in the real formats.
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("reference");
    std::fs::create_dir_all(&model_dir).unwrap();
    write_tokenizer(&model_dir).unwrap();
    save_model(session.reference().unwrap(), &model_dir, &model_dir).unwrap();
    let data = dir.path().join("train.jsonl");
    let rows: String = session
        .training_pairs()
        .iter()
        .map(|p| {
            let row = ultrafeedback_row(
                &format!("testbed-{:06}", p.index),
                &p.prompt.to_text(),
                (p.chosen.text.as_str(), p.chosen.reward),
                (p.rejected.text.as_str(), p.rejected.reward),
            );
            format!("{row}\n")
        })
        .collect();
    std::fs::write(&data, rows).unwrap();

    // `daa train`'s path: tokenizer + chat template, checkpoint, reference scores.
    let encoder = TextEncoder::open(&model_dir).unwrap();
    let options = EncodeOptions { max_length: 64, max_prompt_length: 48, strict: false };
    let encoded = encode_rows(&read_rows(&data).unwrap(), &encoder, &options, "train.jsonl").unwrap();
    let native_pairs: Vec<_> = encoded.pairs.iter().map(|p| p.pair.clone()).collect();
    assert_eq!(native_pairs.as_slice(), session.training_sequences(), "token ids differ from daa train's");
    assert_eq!(encoder.pad_id, daa_train::testbed::byte_chat::END);
    let device = Default::default();
    let reference: daa_train::model::CausalLm<NdArray<f32>> = load_model(&model_dir, &device).unwrap();
    let refs: Vec<_> = native_pairs.iter().collect();
    let native_scores = score_pairs(&reference, &refs, 8, encoder.pad_id, &mut |_| {}).unwrap();
    for (i, (a, b)) in native_scores.iter().zip(session.training_scores()).enumerate() {
        assert!(
            (a.chosen - b.chosen).abs() < 1e-4 && (a.rejected - b.rejected).abs() < 1e-4,
            "pair {i}: {a:?} vs {b:?}"
        );
        assert_eq!((a.chosen_tokens, a.rejected_tokens), (b.chosen_tokens, b.rejected_tokens));
    }

    // `daa train`'s configuration of the same run and its first step.
    let toml = format!(
        "[model]\npath = \"{}\"\n[data]\npath = \"{}\"\n[loss]\nname = \"dpo\"\nbeta = {}\n\
         [train]\noutput_dir = \"unused\"\nlr = {}\nwarmup_steps = {}\nweight_decay = 0.0\nbatch_size = {}\nmicro_batch_size = {}\nseed = {}\n",
        model_dir.display(),
        data.display(),
        config.beta,
        config.lr,
        config.warmup_steps,
        config.batch_size,
        config.batch_size,
        config.seed
    );
    let native = TrainConfig::parse(&toml, "test", &[]).unwrap();
    let policy = load_model::<Autodiff<NdArray<f32>>>(&model_dir, &device).unwrap();
    let trainer_options = TrainerOptions {
        loss: native.loss_params().unwrap(),
        optimizer: native.adamw(),
        schedule: native.schedule(config.steps),
        micro_batch_size: native.train.micro_batch_size,
        pad_id: encoder.pad_id,
        memory: native.train.memory_options(),
        precision: native.train.precision,
    };
    let mut trainer = Trainer::new(policy, trainer_options, ReferencePolicy::Given).unwrap();
    let order = permutation(native_pairs.len(), native.train.seed, 0);
    let batch: Vec<StepPair> = order[..config.batch_size]
        .iter()
        .map(|&i| StepPair { sequences: &native_pairs[i], reference: Some(native_scores[i]) })
        .collect();
    let expected = trainer.step(&batch).unwrap();

    session.evaluate().unwrap();
    let got = session.step().unwrap().train.unwrap().step;
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * (1.0 + b.abs());
    assert!(close(got.loss, expected.loss), "loss {} vs daa train's {}", got.loss, expected.loss);
    assert!(close(got.grad_norm, expected.grad_norm), "gradient norm {} vs {}", got.grad_norm, expected.grad_norm);
    assert!(close(got.margin, expected.margin), "margin {} vs {}", got.margin, expected.margin);
    assert!(close(got.lr, expected.lr));
    assert_eq!(got.tokens, expected.tokens);
}

#[test]
fn a_demo_run_goes_through_every_phase_with_finite_figures() {
    let settings = small_settings().replace("\"lr\": 1e-3", "\"lr\": 1e-3, \"regularisation\": \"adaptive\"");
    let mut session = Session::new(DemoConfig::from_json(&settings).unwrap(), clock).unwrap();
    assert_eq!(session.phase(), Phase::Sft);
    assert!(session.side_by_side(2).is_err(), "no samples before training");
    let calls = run_until_training(&mut session);
    // 8 SFT steps, then (40 + 12) prompts in chunks of 16: 3 + 1 calls.
    assert_eq!(calls, 8 + 4);
    assert!(session.eval_due());
    let err = session.step().unwrap_err().to_string();
    assert!(err.contains("evaluate() first"), "{err}");
    let mut evals = vec![];
    while session.phase() != Phase::Done {
        if session.eval_due() {
            evals.push(session.evaluate().unwrap());
        } else {
            let p = session.step().unwrap();
            assert!(p.train.unwrap().step.loss.is_finite());
        }
    }
    // Step 0, 2, 4 and the last (5).
    let steps: Vec<u64> = evals.iter().map(|e| e.record.step).collect();
    assert_eq!(steps, vec![0, 2, 4, 5]);
    for e in &evals {
        let json = serde_json::to_value(e.record).unwrap();
        for (name, value) in json.as_object().unwrap() {
            assert!(value.as_f64().is_some_and(f64::is_finite), "{name} = {value}");
        }
        assert!(e.nll_weight.is_some(), "adaptive λ is reported");
        let samples = e.record.samples.unwrap();
        assert!(samples.kl >= 0.0 && samples.kl_se.is_some_and(|se| se >= 0.0), "{samples:?}");
        assert!(samples.kl_sequence.is_some() && samples.tempered_log_ratio.is_some(), "{samples:?}");
    }
    assert!(evals[0].record.samples.unwrap().kl.abs() < 1e-3, "the policy starts at the reference");
    assert!(session.step().unwrap_err().to_string().contains("done"));
    let pairs = session.side_by_side(3).unwrap();
    assert_eq!(pairs.len(), 3);
    assert!(pairs.iter().all(|p| p.prompt.starts_with("need ") && p.reference.reward <= 1.0));
    // The snapshot is `metrics.jsonl`: every line a record daa's tools read.
    let text = session.metrics_jsonl();
    let records: Vec<MetricsRecord> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.iter().filter(|r| r.eval().is_some()).count(), 4);
    assert_eq!(records.iter().filter(|r| matches!(r, MetricsRecord::Train(_))).count(), 5);
}

#[test]
fn bad_settings_name_the_field() {
    let err = DemoConfig::from_json(r#"{"testbed": {"hidden": 3}}"#).unwrap_err();
    assert!(err.contains("testbed") && err.contains("hidden"), "{err}");
    let err = DemoConfig::from_json(r#"{"loss": "kto"}"#).unwrap_err();
    assert!(err.contains("loss") && err.contains("kto"), "{err}");
    let err = DemoConfig::from_json(r#"{"regularisation": "adaptive", "nll_weight": 0}"#).unwrap_err();
    assert!(err.contains("nll_weight"), "{err}");
    let err = DemoConfig::from_json(r#"{"testbed": {"hidden_size": 12}}"#).unwrap_err();
    assert!(err.contains("hidden_size"), "{err}");
    let err = DemoConfig::from_json(r#"{"beta": -1}"#).unwrap_err();
    assert!(err.contains('β') || err.contains("beta"), "{err}");
}

/// The figures of the first DPO step the browser test compares with the
/// wasm build's: its gradient norm, the chosen and rejected
/// log-probabilities (which depend on the 10 SFT steps before it and the
/// sampled pairs) and the tokens of its batch. Its loss is ln 2 whatever
/// the weights (the policy starts as the reference). Later steps are not
/// pinned: Adam's first update, `m̂/√v̂ ≈ sign(g)`, turns rounding-level
/// differences of gradient entries that cancel between chosen and rejected
/// into full-size steps (wasm and native agree to 5e-6 on this gradient's
/// norm, then differ by 1e-4 in the second step's rejected log-probability).
pub fn first_step(settings: &str) -> [f64; 4] {
    let mut session = Session::new(DemoConfig::from_json(settings).unwrap(), clock).unwrap();
    run_until_training(&mut session);
    session.evaluate().unwrap();
    let first = session.step().unwrap().train.unwrap().step;
    [first.grad_norm, first.chosen_logps, first.rejected_logps, first.tokens as f64]
}

/// The browser test runs the settings of `web/tests/first-step.json` in
/// wasm and compares its first step with the figures there; this test
/// keeps those figures what the native build computes.
#[test]
fn the_pinned_first_step_is_what_the_native_build_computes() {
    let path = manifest_dir().join("../../web/tests/first-step.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let pinned: serde_json::Value = serde_json::from_str(&text).unwrap();
    let got = first_step(&pinned["settings"].to_string());
    let tolerance = pinned["relative_tolerance"].as_f64().unwrap();
    let wrong: Vec<String> = ["grad_norm", "logps_chosen", "logps_rejected", "tokens"]
        .iter()
        .zip(got)
        .filter_map(|(name, value)| {
            let expected = pinned[name].as_f64().unwrap();
            ((value - expected).abs() > tolerance * expected.abs())
                .then(|| format!("`{name}` is {value:.9} here, the file says {expected:.9}"))
        })
        .collect();
    assert!(wrong.is_empty(), "{} (relative tolerance {tolerance}): {}", path.display(), wrong.join("; "));
}

/// This package's folder: the `CARGO_MANIFEST_DIR` cargo sets when it runs
/// the test (the path compiled in may be another clone's when clones share a
/// target folder), else the one compiled in.
fn manifest_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
}
