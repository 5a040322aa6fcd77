//! Whole runs: the built-in default, resume, the reference cache, data
//! formats and bad rows.

use std::path::Path;

use daa_tests::metrics::assert_same_metrics;
use daa_train::batch::BatchLayout;
use daa_train::reference_cache::{ScoresKey, read_scores, score_encoded};
use daa_train::run::config::TINY_CONFIG;
use daa_train::run::{RunOutcome, Silent, TrainConfig, prepare};
use serde_json::{Value, json};

fn train(config: TrainConfig, resume: Option<std::path::PathBuf>) -> anyhow::Result<RunOutcome> {
    daa_train::run::train(config, resume, &mut Silent)
}

/// Every line of a `metrics.jsonl` as JSON (what other tools read).
fn read_metrics(path: &Path) -> anyhow::Result<Vec<Value>> {
    Ok(std::fs::read_to_string(path)?.lines().map(serde_json::from_str).collect::<Result<_, _>>()?)
}

use super::write_jsonl;

/// The built-in configuration, shrunk for tests, in `dir`.
pub(crate) fn tiny_config(dir: &Path, extra: &[&str]) -> TrainConfig {
    let mut overrides = vec![
        format!("train.cache_dir={:?}", dir.join("cache").display().to_string()),
        format!("train.output_dir={:?}", dir.join("run").display().to_string()),
        "train.epochs=1".into(),
        "train.batch_size=8".into(),
        "train.micro_batch_size=4".into(),
        "train.checkpoint_every=3".into(),
        "monitor.eval_every=2".into(),
        "data.eval_size=16".into(),
    ];
    overrides.extend(extra.iter().map(|s| s.to_string()));
    TrainConfig::parse(TINY_CONFIG, "configs/tiny.toml", &overrides).unwrap()
}

const TRAIN_FIELDS: [&str; 18] = [
    "step",
    "epoch",
    "learning_rate",
    "loss",
    "grad_norm",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
    "logps/chosen_per_token",
    "logps/rejected_per_token",
    "logits/chosen",
    "logits/rejected",
    "pairs",
    "tokens",
    "elapsed_s",
];
const EVAL_FIELDS: [&str; 8] = [
    "eval_loss",
    "eval_rewards/accuracies",
    "eval_rewards/margins",
    "eval/chosen_token_loglik",
    "eval/rejected_token_loglik",
    "eval/topk_entropy",
    "eval/topk_mass",
    "eval/entropy",
];

#[test]
fn the_built_in_run_writes_every_metric_and_resume_continues_exactly() {
    let whole = tempfile::tempdir().unwrap();
    let config = tiny_config(whole.path(), &["train.max_steps=6", "monitor.train_stats_every=2"]);
    let outcome = train(config.clone(), None).unwrap();
    assert_eq!(outcome.steps, 6);
    let run = whole.path().join("run");
    let records = read_metrics(&run.join("metrics.jsonl")).unwrap();
    let train_records: Vec<&Value> = records.iter().filter(|r| r["type"] == "train").collect();
    let eval_records: Vec<&Value> = records.iter().filter(|r| r["type"] == "eval").collect();
    assert_eq!(train_records.len(), 6);
    assert_eq!(eval_records.iter().map(|r| r["step"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 2, 4, 6]);
    for r in &train_records {
        for f in TRAIN_FIELDS {
            assert!(r[f].is_number(), "train record lacks {f}: {r}");
        }
        assert!(r["loss"].as_f64().unwrap().is_finite());
        // Every second step's batch has its own top-k statistics.
        let step = r["step"].as_u64().unwrap();
        for f in ["train/topk_entropy", "train/topk_mass", "train/entropy"] {
            assert_eq!(r.get(f).is_some(), step % 2 == 0, "step {step}: {f} in {r}");
        }
        if step % 2 == 0 {
            let h = r["train/topk_entropy"].as_f64().unwrap();
            assert!(h > 0.0 && h <= 10f64.log2() + 1e-6, "top-10 entropy {h} bits");
            assert!((0.0..=1.0).contains(&r["train/topk_mass"].as_f64().unwrap()));
        }
    }
    for r in &eval_records {
        for f in EVAL_FIELDS {
            assert!(r[f].as_f64().is_some_and(f64::is_finite), "eval record lacks {f}: {r}");
        }
        let h = r["eval/topk_entropy"].as_f64().unwrap();
        assert!((0.0..=10f64.log2() + 1e-6).contains(&h), "top-10 entropy {h} bits");
        assert!((0.0..=1.0).contains(&r["eval/topk_mass"].as_f64().unwrap()));
    }
    // The reference is the initial model: at step 0 DPO's held-out loss is ln 2
    // (up to f32 rounding: evaluation pads batches differently from the reference pass).
    let first = eval_records[0]["eval_loss"].as_f64().unwrap();
    assert!((first - 2f64.ln()).abs() < 1e-5, "{first}");
    // DPO at the first step: policy = reference, so the loss is ln 2 too.
    let first = train_records[0]["loss"].as_f64().unwrap();
    assert!((first - 2f64.ln()).abs() < 1e-5, "{first}");
    assert!(run.join("summary.json").exists());
    // The records read back typed, the same as written.
    let typed = daa_train::run::metrics::read_metrics(&run.join("metrics.jsonl")).unwrap();
    assert_eq!(typed.len(), records.len());
    assert_eq!(serde_json::to_value(typed[1]).unwrap(), records[1]);
    for f in ["model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "optimizer.safetensors"] {
        assert!(run.join("checkpoint-000006").join(f).exists(), "checkpoint lacks {f}");
    }
    // The saved checkpoint is itself a loadable Hugging Face folder.
    let reloaded: daa_train::model::CausalLm<burn::backend::NdArray<f32>> =
        daa_train::checkpoint::load_model(&run.join("checkpoint-000006"), &Default::default()).unwrap();
    assert_eq!(reloaded.config().architecture_name, "LlamaForCausalLM");

    // Interrupted after 4 steps (checkpoint at 3), then resumed — with
    // activation checkpointing, which changes how a step is computed, not
    // what (so the resume accepts it): same records.
    let split = tempfile::tempdir().unwrap();
    train(tiny_config(split.path(), &["train.max_steps=4", "monitor.train_stats_every=2"]), None).unwrap();
    let split_run = split.path().join("run");
    let resumed = train(
        tiny_config(
            split.path(),
            &["train.max_steps=6", "train.activation_checkpointing=true", "monitor.train_stats_every=2"],
        ),
        Some(split_run.clone()),
    )
    .unwrap();
    assert_eq!(resumed.steps, 6);
    assert_same_metrics(&records, &read_metrics(&split_run.join("metrics.jsonl")).unwrap());

    // A resume with a different objective is refused, naming the field.
    let e = train(tiny_config(split.path(), &["train.max_steps=6", "loss.beta=0.2"]), Some(split_run)).unwrap_err();
    assert!(format!("{e:#}").contains("differs from the checkpoint's in loss.beta"), "{e:#}");
}

#[test]
fn a_bf16_run_trains_near_the_f32_run_saves_its_masters_and_resumes_exactly() {
    let f32_dir = tempfile::tempdir().unwrap();
    train(tiny_config(f32_dir.path(), &["train.max_steps=6"]), None).unwrap();
    let f32_records = read_metrics(&f32_dir.path().join("run/metrics.jsonl")).unwrap();

    let whole = tempfile::tempdir().unwrap();
    let bf16 = ["train.max_steps=6", "train.precision=\"bf16\""];
    let outcome = train(tiny_config(whole.path(), &bf16), None).unwrap();
    assert_eq!(outcome.steps, 6);
    let run = whole.path().join("run");
    let records = read_metrics(&run.join("metrics.jsonl")).unwrap();
    assert_eq!(records.len(), f32_records.len());
    // bf16 rounds each weight and activation by up to 2^-9 relative: the
    // first steps' losses and every held-out figure stay near the f32 run's.
    for (a, b) in f32_records.iter().zip(&records) {
        assert_eq!(a["type"], b["type"]);
        for key in ["loss", "eval_loss", "eval/chosen_token_loglik", "eval/topk_entropy", "eval/topk_mass"] {
            if let (Some(x), Some(y)) = (a[key].as_f64(), b[key].as_f64()) {
                assert!(
                    y.is_finite() && (x - y).abs() <= 0.05 * (1.0 + x.abs()),
                    "step {}: {key} f32 {x} bf16 {y}",
                    a["step"]
                );
            }
        }
    }
    // The checkpoint holds the f32 masters (the tiny model's source is f32),
    // not the bf16 weights the steps ran: some values are not bf16 numbers.
    let bytes = std::fs::read(run.join("checkpoint-000006/model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let weights = file.tensor("model.layers.0.mlp.up_proj.weight").unwrap();
    assert_eq!(weights.dtype(), safetensors::Dtype::F32);
    let values: Vec<f32> =
        weights.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let off_grid = values.iter().filter(|&&v| half::bf16::from_f32(v).to_f32() != v).count();
    assert!(off_grid > values.len() / 2, "{off_grid} of {} saved weights are off bf16's grid", values.len());

    // Interrupted after 4 steps (checkpoint at 3), resumed: the same records.
    let split = tempfile::tempdir().unwrap();
    train(tiny_config(split.path(), &["train.max_steps=4", "train.precision=\"bf16\""]), None).unwrap();
    let split_run = split.path().join("run");
    train(tiny_config(split.path(), &bf16), Some(split_run.clone())).unwrap();
    assert_same_metrics(&records, &read_metrics(&split_run.join("metrics.jsonl")).unwrap());
}

#[test]
fn reference_log_probabilities_are_cached_and_match_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), &["train.max_steps=1"]);
    let run = dir.path().join("run");
    let prepared = prepare(&config, &run).unwrap();
    let key = ScoresKey::new(&prepared.model_dir, &prepared.data, prepared.options).unwrap();
    assert!(!key.cache_path(&dir.path().join("cache")).exists());
    train(config.clone(), None).unwrap();
    let cached = read_scores(&key.cache_path(&dir.path().join("cache"))).unwrap();
    assert_eq!(cached.len(), prepared.train.len() + prepared.eval.len());
    let model: daa_train::model::CausalLm<burn::backend::NdArray<f32>> =
        daa_train::checkpoint::load_model(&prepared.model_dir, &Default::default()).unwrap();
    let direct = score_encoded(&model, &prepared.eval[..4], 3, prepared.encoder.pad_id, &mut |_| {}).unwrap();
    for (pair, want) in prepared.eval[..4].iter().zip(direct) {
        let got = cached[&pair.row];
        assert!((got.chosen - want.chosen).abs() < 1e-4 && (got.rejected - want.rejected).abs() < 1e-4);
        assert_eq!((got.chosen_tokens, got.rejected_tokens), (want.chosen_tokens, want.rejected_tokens));
        assert!(got.chosen < 0.0 && got.chosen_tokens > 0);
    }
    // A second run reads the cache (a corrupted cache would be visible as an error).
    let modified = std::fs::metadata(key.cache_path(&dir.path().join("cache"))).unwrap().modified().unwrap();
    train(config, None).unwrap();
    assert_eq!(std::fs::metadata(key.cache_path(&dir.path().join("cache"))).unwrap().modified().unwrap(), modified);
}

#[test]
fn a_frozen_reference_model_trains_like_the_cached_reference() {
    let cached = tempfile::tempdir().unwrap();
    train(tiny_config(cached.path(), &["train.max_steps=3", "train.seed=5"]), None).unwrap();
    let frozen = tempfile::tempdir().unwrap();
    train(tiny_config(frozen.path(), &["train.max_steps=3", "train.seed=5", "loss.reference=\"model\""]), None)
        .unwrap();
    assert!(!frozen.path().join("cache").exists(), "a frozen reference needs no cache");
    let a = read_metrics(&cached.path().join("run/metrics.jsonl")).unwrap();
    let b = read_metrics(&frozen.path().join("run/metrics.jsonl")).unwrap();
    assert_same_metrics(&a, &b);
}

#[test]
fn a_packed_run_trains_like_the_padded_run() {
    // Replies of uneven lengths (a few words to most of `max_length`), so
    // that packed rows hold several sequences.
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<Value> = (0..24)
        .map(|i| {
            let prompt = format!("Count to {i}.");
            let reply = |n: usize| (0..n).map(|k| (k % 10).to_string()).collect::<Vec<_>>().join(" ");
            json!({"prompt": prompt, "chosen": chat(&prompt, &reply(1 + i % 7 * 3)), "rejected": chat(&prompt, &reply(2 + i % 5))})
        })
        .collect();
    let data = dir.path().join("uneven.jsonl");
    write_jsonl(&data, &rows);
    let model_arg = format!("model.path={:?}", dir.path().join("run/builtin/model").display().to_string());
    prepare(&tiny_config(dir.path(), &["train.max_steps=1"]), &dir.path().join("run")).unwrap();
    let run = |name: &str, packing: &str| {
        let out = format!("train.output_dir={:?}", dir.path().join(name).display().to_string());
        let data_arg = format!("data.path={:?}", data.display().to_string());
        let config = tiny_config(
            dir.path(),
            &[
                &model_arg,
                &data_arg,
                &out,
                packing,
                "data.eval_size=4",
                "train.max_steps=2",
                "loss.reference=\"model\"",
            ],
        );
        train(config, None).unwrap();
        read_metrics(&dir.path().join(name).join("metrics.jsonl")).unwrap()
    };
    let padded = run("padded", "train.packing=false");
    let packed = run("packed", "train.packing=true");
    assert_eq!(packed.iter().filter(|r| r["type"] == "train").count(), 2);
    assert_same_metrics(&padded, &packed);
    // The batches really pack: micro-batches of these pairs fill fewer slots than padded ones.
    let config = tiny_config(dir.path(), &[&model_arg, &format!("data.path={:?}", data.display().to_string())]);
    let prepared = prepare(&config, &dir.path().join("run")).unwrap();
    let slots = |layout| -> usize {
        let pairs: Vec<_> = prepared.train.iter().map(|x| &x.pair).collect();
        pairs.chunks(4).map(|micro| daa_train::score::pair_batch_in(micro, 0, 261, layout).unwrap().slots()).sum()
    };
    let (padded, packed) = (slots(BatchLayout::Padded), slots(BatchLayout::Packed));
    assert!(packed < padded * 9 / 10, "{packed} packed slots, {padded} padded");
}

fn chat(prompt: &str, reply: &str) -> Value {
    json!([{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}])
}

#[test]
fn bad_rows_are_counted_or_stop_the_run_under_strict_and_parquet_reads_like_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let mut rows: Vec<Value> = daa_train::tiny_run::arithmetic_rows(40, 3);
    rows[5] = json!({"prompt": "p", "chosen": chat("p", "same"), "rejected": chat("p", "same")});
    rows[9].as_object_mut().unwrap().remove("rejected");
    rows[12] = json!({"prompt": "p", "chosen": "", "rejected": "b"});
    let data = dir.path().join("prefs.jsonl");
    write_jsonl(&data, &rows);
    let mut text = std::fs::read_to_string(&data).unwrap();
    text.push_str("{not json\n");
    std::fs::write(&data, text).unwrap();

    let model_arg = format!("model.path={:?}", dir.path().join("run/builtin/model").display().to_string());
    let data_arg = format!("data.path={:?}", data.display().to_string());
    // Generate the built-in model once (the run folder's builtin/), then point at the file.
    let config = tiny_config(dir.path(), &["train.max_steps=1"]);
    prepare(&config, &dir.path().join("run")).unwrap();
    let config = tiny_config(dir.path(), &[&model_arg, &data_arg, "data.eval_size=4", "train.max_steps=1"]);
    let prepared = prepare(&config, &dir.path().join("run")).unwrap();
    let report = &prepared.train_report;
    assert_eq!(report.rows, 41);
    assert_eq!(report.skipped_total(), 4, "{:?}", report.skipped);
    assert_eq!(report.skipped["`chosen` and `rejected` are identical"], 1);
    assert_eq!(report.skipped["missing field `rejected`"], 1);
    assert_eq!(report.skipped["empty `chosen` completion"], 1);
    assert_eq!(prepared.train.len() + prepared.eval.len(), 37);

    let strict = tiny_config(dir.path(), &[&model_arg, &data_arg, "data.strict=true"]);
    let e = format!("{:#}", prepare(&strict, &dir.path().join("run")).unwrap_err());
    assert!(e.contains("prefs.jsonl: row 6: `chosen` and `rejected` are identical"), "{e}");

    // The same good rows as Parquet (lists of message structs, as on the Hub).
    let good: Vec<Value> =
        rows.iter().enumerate().filter(|(i, _)| ![5, 9, 12].contains(i)).map(|(_, r)| r.clone()).collect();
    let parquet = dir.path().join("prefs.parquet");
    std::fs::write(&parquet, daa_train::tiny_run::preference_parquet(&good).unwrap()).unwrap();
    let parquet_arg = format!("data.path={:?}", parquet.display().to_string());
    let from_parquet =
        prepare(&tiny_config(dir.path(), &[&model_arg, &parquet_arg, "data.eval_size=4"]), &dir.path().join("run"))
            .unwrap();
    assert_eq!(from_parquet.train_report.rows, 37);
    assert_eq!(from_parquet.train_report.skipped_total(), 0);
    let ids = |p: &daa_train::run::Prepared| {
        let mut v: Vec<Vec<u32>> = p.train.iter().chain(&p.eval).map(|x| x.pair.chosen.ids.clone()).collect();
        v.sort();
        v
    };
    assert_eq!(ids(&from_parquet), ids(&prepared));
}

const SAMPLE_FIELDS: [&str; 17] = [
    "eval/win_prob",
    "eval/win_rate",
    "eval/gold_reward",
    "eval/kl",
    "eval/kl_se",
    "eval/kl_sequence",
    "eval/kl_sequence_se",
    "eval/tempered_log_ratio",
    "eval/ead_1",
    "eval/ead_2",
    "eval/ead_3",
    "eval/ead_4",
    "eval/ead_5",
    "eval/ead",
    "eval/sample_topk_entropy",
    "eval/sample_topk_mass",
    "eval/length",
];

/// configs/testbed.toml shrunk for tests, in `dir`.
fn testbed_config(dir: &Path, extra: &[&str]) -> TrainConfig {
    let text = daa_train::run::config::TESTBED_CONFIG;
    let mut overrides = vec![
        format!("train.cache_dir={:?}", dir.join("cache").display().to_string()),
        format!("train.output_dir={:?}", dir.join("run").display().to_string()),
        "train.batch_size=8".into(),
        "train.micro_batch_size=8".into(),
        "train.lr=1e-2".into(),
        "monitor.eval_every=2".into(),
        "testbed.sft_prompts=64".into(),
        "testbed.sft_steps=8".into(),
        "testbed.sft_batch=8".into(),
        "testbed.pairs=48".into(),
        "testbed.eval_pairs=12".into(),
        "testbed.hidden_size=32".into(),
        "testbed.layers=1".into(),
    ];
    overrides.extend(extra.iter().map(|s| s.to_string()));
    let mut config = TrainConfig::parse(text, "configs/testbed.toml", &overrides).unwrap();
    let samples = config.monitor.samples.as_mut().unwrap();
    samples.prompts = 8;
    samples.batch_size = 4;
    config
}

#[test]
fn the_testbed_run_logs_samples_turning_points_and_adaptive_weights() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = testbed_config(dir.path(), &["train.max_steps=12"]);
    config.monitor.turning.smoothing = 1.0;
    config.monitor.turning.patience = 1;
    config.monitor.turning.mass_margin = 0.0;
    config.monitor.adaptive = Some(Default::default());
    let mut notes = Vec::new();
    let inputs = daa_train::run::RunInputs::resolve(&config).unwrap();
    let prepared =
        daa_train::run::prepare_with(&config, &inputs, &dir.path().join("run"), &mut |l| notes.push(l.to_string()))
            .unwrap();
    assert!(notes.iter().any(|n| n.contains("fine-tuning the reference policy")), "{notes:?}");
    assert!(
        prepared.train.len() > 40 && prepared.eval.len() == 12,
        "{} / {}",
        prepared.train.len(),
        prepared.eval.len()
    );
    // The gold-labelled pairs are in UltraFeedback's schema, chosen scored at least as well as rejected mostly.
    let rows: Vec<Value> = std::fs::read_to_string(&prepared.data.files[0])
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let better = rows.iter().filter(|r| r["score_chosen"].as_f64() >= r["score_rejected"].as_f64()).count();
    assert!(better * 10 >= rows.len() * 7, "{better} of {} chosen at least as good", rows.len());
    assert_eq!(rows[0]["chosen"][1]["role"], "assistant");
    // A second preparation reuses the cached reference and pairs.
    let mut again = Vec::new();
    daa_train::run::prepare_with(&config, &inputs, &dir.path().join("run"), &mut |l| again.push(l.to_string()))
        .unwrap();
    assert!(again.iter().any(|n| n.contains("cached reference policy")), "{again:?}");

    let outcome = train(config.clone(), None).unwrap();
    let records = read_metrics(&outcome.run_dir.join("metrics.jsonl")).unwrap();
    let evals: Vec<&Value> = records.iter().filter(|r| r["type"] == "eval").collect();
    assert!(evals.len() >= 2);
    for e in &evals {
        for field in SAMPLE_FIELDS.iter().chain(&EVAL_FIELDS) {
            assert!(e[field].as_f64().is_some_and(f64::is_finite), "{field} in {e}");
        }
        assert!((0.0..=1.0).contains(&e["eval/win_prob"].as_f64().unwrap()));
    }
    // Before any step the policy is the reference: KL 0 (up to batching), win probability near ½.
    assert!(evals[0]["eval/kl"].as_f64().unwrap().abs() < 1e-2, "{}", evals[0]);
    // The per-token KL is never negative, nor is its standard error.
    for e in &evals {
        assert!(e["eval/kl"].as_f64().unwrap() >= 0.0 && e["eval/kl_se"].as_f64().unwrap() >= 0.0, "{e}");
    }
    for t in records.iter().filter(|r| r["type"] == "train") {
        assert!(t["train/nll_weight"].as_f64().is_some_and(|w| (0.0..=1.0).contains(&w)), "{t}");
    }
    let best = outcome.run_dir.join("best-indicator");
    assert!(best.join("model.safetensors").exists() && best.join("step.json").exists());
    // Each event is a turning point after its peak, or the early stop (off here).
    for event in records.iter().filter(|r| r["type"] == "event") {
        assert_eq!(event["event"], "eval/turning_point", "{event}");
        assert!(event["peak_step"].as_u64().unwrap() < event["step"].as_u64().unwrap(), "{event}");
    }
    let summary_steps = outcome.summary.steps;
    assert_eq!(summary_steps, 12);

    // samples.jsonl: one line per held-out prompt per evaluation, in order,
    // finite figures that add up to the evaluation's means.
    let lines = daa_train::run::samples_log::read_samples(&outcome.run_dir.join("samples.jsonl")).unwrap();
    let prompts = config.monitor.samples.as_ref().unwrap().prompts; // 8 of the 12 held-out pairs
    assert_eq!(lines.len(), evals.len() * prompts);
    for (e, group) in evals.iter().zip(lines.chunks(prompts)) {
        assert!(group.iter().enumerate().all(|(i, l)| l.step == e["step"].as_u64().unwrap() && l.sample.index == i));
        for l in group {
            let s = &l.sample;
            let numbers = [s.reward, s.reference_reward, s.log_ratio, s.kl];
            assert!(numbers.iter().all(|x| x.is_finite()) && s.kl >= 0.0, "{l:?}");
            assert!(!s.prompt.is_empty() && s.length <= 16 && s.reference_length <= 16, "{l:?}");
        }
        let mean = |f: fn(&daa_train::sample_eval::EvaluatedSample) -> f64| {
            group.iter().map(|l| f(&l.sample)).sum::<f64>() / group.len() as f64
        };
        let close = |a: f64, field: &str| (a - e[field].as_f64().unwrap()).abs() < 1e-9;
        assert!(close(mean(|s| s.reward), "eval/gold_reward"), "{e}");
        assert!(close(mean(|s| s.kl), "eval/kl"), "{e}");
        assert!(close(mean(|s| s.log_ratio), "eval/tempered_log_ratio"), "{e}");
        assert!(close(mean(|s| s.length as f64), "eval/length"), "{e}");
    }
    // The reference's samples are drawn once: the same at every evaluation.
    let first = &lines[..prompts];
    let last = &lines[lines.len() - prompts..];
    assert!(first.iter().zip(last).all(|(a, b)| a.sample.reference_completion == b.sample.reference_completion));

    // A frozen reference in memory serves the sample evaluation too: KL 0 before the first step.
    let mut frozen = config.clone();
    frozen.loss.reference = daa_train::run::ReferenceMode::Model;
    frozen.train.max_steps = 2;
    frozen.train.output_dir = dir.path().join("frozen").display().to_string();
    let run = train(frozen, None).unwrap();
    let first =
        read_metrics(&run.run_dir.join("metrics.jsonl")).unwrap().into_iter().find(|r| r["type"] == "eval").unwrap();
    assert!(first["eval/kl"].as_f64().unwrap().abs() < 1e-2, "{first}");

    // With early stopping the run ends at its first turning point, when it has one.
    let mut stopping = config;
    stopping.monitor.early_stop = true;
    stopping.train.output_dir = dir.path().join("stopping").display().to_string();
    let stopped = train(stopping, None).unwrap();
    let records = read_metrics(&stopped.run_dir.join("metrics.jsonl")).unwrap();
    let first_turn = records.iter().find(|r| r["event"] == "eval/turning_point").map(|r| r["step"].as_u64().unwrap());
    let stop = records.iter().find(|r| r["event"] == "train/early_stop").map(|r| r["step"].as_u64().unwrap());
    assert_eq!(first_turn, stop, "stops exactly at the first turning point");
    match stop {
        Some(at) => {
            assert_eq!(stopped.summary.steps, at, "the run ends where it stopped");
            assert!(records.iter().all(|r| r["step"].as_u64().unwrap() <= at));
            assert!(stopped.run_dir.join(format!("checkpoint-{at:06}")).exists());
        }
        None => assert_eq!(stopped.summary.steps, 12),
    }
    assert!(turns_seen(&records) <= 2);
}

fn turns_seen(records: &[Value]) -> usize {
    records.iter().filter(|r| r["event"] == "eval/turning_point").count()
}

#[test]
fn a_step_that_will_not_fit_is_refused_with_the_plan_before_anything_loads() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), &["train.device_memory=\"1MiB\""]);
    let error = format!("{:#}", train(config, None).unwrap_err());
    assert!(error.contains("will not fit in train.device_memory"), "{error}");
    for line in ["weights", "AdamW", "logits, fused head", "total", "does not fit"] {
        assert!(error.contains(line), "the refusal shows the plan's `{line}` line:\n{error}");
    }
    assert!(!dir.path().join("run").join("metrics.jsonl").exists(), "nothing trained");
    // The same run with the check off starts (and its plan is said to be unchecked).
    let config =
        tiny_config(dir.path(), &["train.device_memory=\"1MiB\"", "train.memory_check=false", "train.max_steps=1"]);
    train(config, None).unwrap();
}
