//! TensorBoard event files, read back by TensorBoard's own reader (the
//! Python `tensorboard` package's plugin event accumulator: `scripts/setup.sh`
//! installs it into `$DAA_PY_DIR`, default `/var/tmp/daa-py`; CI sets
//! `DAA_REQUIRE_TENSORBOARD=1` so a missing package fails instead of
//! skipping).

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use super::{daa, read_jsonl, stderr, temp_dir};

/// What TensorBoard reads from `dir` (read_tensorboard.py's JSON), or
/// `None` when the package is missing and not required.
fn read_with_tensorboard(dir: &Path) -> Option<Value> {
    let py_dir = std::env::var("DAA_PY_DIR").unwrap_or_else(|_| "/var/tmp/daa-py".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cli/read_tensorboard.py");
    let out = Command::new("python3").env("PYTHONPATH", &py_dir).arg(&script).arg(dir).output().expect("python3");
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && err.contains("No module named 'tensorboard'") {
        assert!(
            std::env::var_os("DAA_REQUIRE_TENSORBOARD").is_none(),
            "TensorBoard is not installed in {py_dir} (scripts/setup.sh installs it)"
        );
        eprintln!("skipped: TensorBoard's reader is not installed in {py_dir} (scripts/setup.sh installs it)");
        return None;
    }
    assert!(out.status.success(), "{err}");
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

/// The built-in tiny run of `steps` steps into `run`, evaluated and
/// monitored every step (a turning point confirmed by any fall), a
/// checkpoint every `checkpoint_every` steps.
fn tiny_run(dir: &Path, run: &Path, steps: u64, checkpoint_every: u64, extra: &[&str]) {
    let config = dir.join("tiny.toml");
    std::fs::write(&config, daa_train::run::config::TINY_CONFIG).unwrap();
    let cache = format!("train.cache_dir={:?}", dir.join("cache").display().to_string());
    let every = format!("train.checkpoint_every={checkpoint_every}");
    let steps = steps.to_string();
    let mut args = vec!["train", "--config", config.to_str().unwrap(), "--out", run.to_str().unwrap()];
    args.extend(["--max-steps", &steps]);
    for set in [
        cache.as_str(),
        &every,
        "train.batch_size=8",
        "train.micro_batch_size=4",
        "data.eval_size=16",
        "monitor.eval_every=1",
        "monitor.turning={smoothing=1.0, entropy_margin=0.0, mass_margin=0.0, patience=1}",
    ] {
        args.extend(["--set", set]);
    }
    args.extend(extra);
    let out = daa(&args);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Every numeric field of every record of `metrics` is TensorBoard's scalar
/// at its step (its f32 rounding), once; every monitor event a text at its step.
fn assert_tensorboard_matches(metrics: &[Value], read: &Value) {
    let mut expected_scalars = serde_json::Map::new();
    let mut expected_texts = serde_json::Map::new();
    for record in metrics {
        let step = record["step"].as_u64().unwrap();
        let kind = record["type"].as_str().unwrap();
        if let Some(event) = record["event"].as_str() {
            let entry = expected_texts.entry(event.to_string()).or_insert_with(|| Value::Array(vec![]));
            entry.as_array_mut().unwrap().push(Value::from(step));
            continue;
        }
        for (key, value) in record.as_object().unwrap() {
            let Some(v) = value.as_f64().filter(|_| key != "step") else { continue };
            let tag = daa_train::run::tensorboard::scalar_tag(kind, key);
            let entry = expected_scalars.entry(tag).or_insert_with(|| Value::Array(vec![]));
            entry.as_array_mut().unwrap().push(serde_json::json!([step, v]));
        }
    }
    let scalars = read["scalars"].as_object().unwrap();
    assert_eq!(
        scalars.keys().collect::<std::collections::BTreeSet<_>>(),
        expected_scalars.keys().collect::<std::collections::BTreeSet<_>>()
    );
    for (tag, expected) in &expected_scalars {
        let got = scalars[tag].as_array().unwrap();
        let expected = expected.as_array().unwrap();
        assert_eq!(got.len(), expected.len(), "{tag}: {got:?}");
        for (g, e) in got.iter().zip(expected) {
            assert_eq!(g[0], e[0], "{tag}");
            // TensorBoard holds the f32 nearest the record's f64: within half
            // an f32 step of it (a value halfway between two f32s may go
            // either way once printed and parsed again).
            let (got, want) = (g[1].as_f64().unwrap(), e[1].as_f64().unwrap());
            let half_step = f64::from((want as f32).abs().max(f32::MIN_POSITIVE)) * f64::from(f32::EPSILON) / 2.0;
            assert!(
                (got - want).abs() <= half_step * (1.0 + 1e-6),
                "{tag} at step {}: TensorBoard {got}, metrics.jsonl {want}",
                e[0]
            );
        }
    }
    let texts = read["texts"].as_object().unwrap();
    assert_eq!(texts.len(), expected_texts.len(), "{texts:?}");
    for (tag, steps) in &expected_texts {
        let got: Vec<Value> = texts[tag].as_array().unwrap().iter().map(|t| t[0].clone()).collect();
        assert_eq!(&got, steps.as_array().unwrap(), "{tag}");
    }
}

#[test]
fn tensorboard_reads_every_scalar_and_event_and_drops_what_a_resumed_run_redid() {
    let dir = temp_dir();
    let run = dir.path().join("run");
    // 6 steps, checkpoints at 4 and 6; then the last checkpoint lost, as
    // if the run had been killed before writing it: --resume continues
    // from step 4, redoing steps 5 and 6 into a second event file.
    tiny_run(dir.path(), &run, 6, 4, &[]);
    let metrics = read_jsonl(&run.join("metrics.jsonl"));
    let Some(read) = read_with_tensorboard(&run.join("tensorboard")) else { return };
    assert_tensorboard_matches(&metrics, &read);
    let events: Vec<&Value> = metrics.iter().filter(|r| r["type"] == "event").collect();
    assert!(!events.is_empty(), "no monitor event to check: {metrics:?}");
    let first = &events[0];
    let text = &read["texts"][first["event"].as_str().unwrap()][0][1];
    assert!(
        text.as_str().unwrap().contains(&format!("- indicator: {}", first["indicator"].as_str().unwrap())),
        "{text}"
    );

    std::fs::remove_dir_all(run.join("checkpoint-000006")).unwrap();
    std::fs::remove_file(run.join("summary.json")).ok();
    let run_str = run.to_str().unwrap().to_string();
    tiny_run(dir.path(), &run, 6, 4, &["--resume", &run_str]);
    let resumed = read_jsonl(&run.join("metrics.jsonl"));
    daa_tests::metrics::assert_same_metrics(&metrics, &resumed);
    assert_eq!(std::fs::read_dir(run.join("tensorboard")).unwrap().count(), 2);
    assert_tensorboard_matches(&resumed, &read_with_tensorboard(&run.join("tensorboard")).unwrap());
}

#[test]
fn train_tensorboard_false_writes_no_event_file() {
    let dir = temp_dir();
    let run = dir.path().join("run");
    tiny_run(dir.path(), &run, 1, 0, &["--set", "train.tensorboard=false"]);
    assert!(run.join("metrics.jsonl").exists());
    assert!(!run.join("tensorboard").exists());
}
