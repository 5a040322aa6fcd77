//! A new user's own model and data: `daa train --model DIR --data FILE`
//! without `--config` trains (the testbed's gold judge does not apply to
//! their data: sampling is off with a notice); models and datasets by Hub id
//! from a Hugging Face cache folder laid out as `huggingface_hub` lays it
//! out (blobs, refs, snapshots of symbolic links); every configuration
//! error before anything loads.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use super::{read_jsonl, stderr, temp_dir};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// `daa` with the Hugging Face cache at `cache` (`HF_HUB_CACHE`).
fn daa_with_cache(cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_daa"))
        .env("HF_HUB_CACHE", cache)
        .env_remove("HF_HOME")
        .args(args)
        .output()
        .expect("run daa")
}

/// A tiny checkpoint and `rows` arithmetic preference pairs in `dir`.
fn own_model_and_data(dir: &Path, rows: usize) -> (PathBuf, PathBuf, Vec<Value>) {
    let model = dir.join("my-model");
    daa_train::tiny_run::write_checkpoint(
        &model,
        &daa_train::tiny_run::llama_config(daa_train::tiny_run::TINY_VOCAB, 32, 1),
        1,
        0.3,
    )
    .unwrap();
    let rows = daa_train::tiny_run::arithmetic_rows(rows, 1);
    let data = dir.join("my-prefs.jsonl");
    std::fs::write(&data, rows.iter().map(|r| format!("{r}\n")).collect::<String>()).unwrap();
    (model, data, rows)
}

/// Puts `files` (name → bytes) into the cache at `cache` as repository
/// `repo` of `kind` (`models` or `datasets`) at revision `main`: blobs,
/// `refs/main`, and a snapshot of symbolic links.
fn cache_repo(cache: &Path, kind: &str, repo: &str, files: &[(String, Vec<u8>)]) {
    let root = cache.join(format!("{kind}--{}", repo.replace('/', "--")));
    let snapshot = root.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(root.join("blobs")).unwrap();
    std::fs::create_dir_all(root.join("refs")).unwrap();
    std::fs::write(root.join("refs/main"), COMMIT).unwrap();
    for (i, (name, bytes)) in files.iter().enumerate() {
        let blob = root.join("blobs").join(format!("blob{i}"));
        std::fs::write(&blob, bytes).unwrap();
        let link = snapshot.join(name);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&blob, &link).unwrap();
    }
}

fn folder_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap())
        })
        .collect()
}

#[test]
fn own_model_and_data_train_with_the_built_in_defaults() {
    let dir = temp_dir();
    let (model, data, _) = own_model_and_data(dir.path(), 80);
    let run = dir.path().join("run");
    let cache = format!("train.cache_dir={:?}", dir.path().join("cache").display().to_string());
    let args = [
        "train",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--max-steps",
        "1",
        "--set",
        &cache,
    ];
    let out = daa_with_cache(&dir.path().join("hub"), &args);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("sample evaluation off: the gold judge scores only the testbed's prompts"), "{err}");
    assert!(!err.contains("testbed: fine-tuning"), "the testbed is not built for one's own data: {err}");
    let records = read_jsonl(&run.join("metrics.jsonl"));
    assert!(records.iter().any(|r| r["eval/topk_entropy"].is_number()), "held-out figures are computed");
    assert!(records.iter().all(|r| r.get("eval/win_prob").is_none()), "no sample evaluation");

    // The same run with a judge that cannot exist is refused before anything loads.
    let run2 = dir.path().join("run2");
    let mut bad = args.to_vec();
    bad[6] = run2.to_str().unwrap();
    bad.extend(["--set", "monitor.samples.judge=\"/no/such/reward-model\""]);
    let out = daa_with_cache(&dir.path().join("hub"), &bad);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("`monitor.samples.judge` = `/no/such/reward-model`: no such folder"), "{err}");
    assert!(!run2.exists(), "nothing made before the configuration is checked");
}

#[test]
fn models_and_datasets_resolve_through_the_hugging_face_cache() {
    let dir = temp_dir();
    let (model, _, rows) = own_model_and_data(dir.path(), 40);
    let hub = dir.path().join("hub");
    cache_repo(&hub, "models", "acme/tiny-llama", &folder_files(&model));
    let jsonl = |rows: &[Value]| rows.iter().map(|r| format!("{r}\n")).collect::<String>().into_bytes();
    cache_repo(
        &hub,
        "datasets",
        "acme/prefs",
        &[
            ("README.md".into(), b"---\nlicense: mit\n---\n".to_vec()),
            ("data/train-00000-of-00002.jsonl".into(), jsonl(&rows[..16])),
            (
                "data/train-00001-of-00002.parquet".into(),
                daa_train::tiny_run::preference_parquet(&rows[16..32]).unwrap(),
            ),
            ("data/test-00000-of-00001.jsonl".into(), jsonl(&rows[32..])),
        ],
    );
    let run = dir.path().join("run");
    let cache = format!("train.cache_dir={:?}", dir.path().join("cache").display().to_string());
    let train = |model: &str, data: &str, extra: &[&str]| {
        let mut args = vec!["train", "--model", model, "--data", data, "--out", run.to_str().unwrap()];
        args.extend([
            "--max-steps",
            "1",
            "--set",
            &cache,
            "--set",
            "train.batch_size=8",
            "--set",
            "train.micro_batch_size=8",
        ]);
        args.extend_from_slice(extra);
        daa_with_cache(&hub, &args)
    };
    let out = train("acme/tiny-llama", "acme/prefs", &["--set", "data.split=train", "--set", "data.eval_split=test"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("(split train, 2 files): 32 rows, 32 pairs (32 train, 8 held out)"), "{err}");
    assert!(err.contains(&format!("snapshots/{COMMIT}")), "the model is the cached snapshot: {err}");
    // `daa plan` takes the Hub id too.
    let out = daa_with_cache(&hub, &["plan", "--model", "acme/tiny-llama"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // A LoRA run on a cached model names its base as peft would: the Hub id and the commit,
    // and daa finds the base again through the cache.
    std::fs::remove_dir_all(&run).unwrap();
    let out = train(
        "acme/tiny-llama",
        "acme/prefs",
        &["--set", "data.split=train", "--set", "data.eval_split=test", "--set", "lora.rank=2"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let adapter = run.join("checkpoint-000001");
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["base_model_name_or_path"], "acme/tiny-llama");
    assert_eq!(config["revision"], COMMIT);
    let prompts = dir.path().join("prompts.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"1+1=\"}\n").unwrap();
    let out = daa_with_cache(
        &hub,
        &[
            "generate",
            "--model",
            adapter.to_str().unwrap(),
            "--prompts",
            prompts.to_str().unwrap(),
            "--out",
            dir.path().join("samples.jsonl").to_str().unwrap(),
            "--max-new-tokens",
            "4",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // Not cached, a missing revision, a missing split: one line, status 2, nothing made.
    let run_dir_untouched = |out: &Output, needles: &[&str]| {
        let err = stderr(out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        for needle in needles {
            assert!(err.contains(needle), "expected {needle:?} in {err}");
        }
    };
    std::fs::remove_dir_all(&run).unwrap();
    run_dir_untouched(
        &train("meta-llama/Llama-3.2-1B", "acme/prefs", &[]),
        &[
            "`model.path` = `meta-llama/Llama-3.2-1B`: no such file or folder here",
            "$HF_HUB_CACHE",
            "never downloads",
            "`hf download meta-llama/Llama-3.2-1B`",
            "models--meta-llama--Llama-3.2-1B missing",
        ],
    );
    run_dir_untouched(
        &train("acme/tiny-llama@v2", "acme/prefs", &[]),
        &["not its revision `v2` (refs: main; snapshots: 0123456789abcdef"],
    );
    run_dir_untouched(
        &train("acme/tiny-llama", "acme/other", &[]),
        &["`data.path` = `acme/other`", "`hf download acme/other --repo-type dataset`"],
    );
    run_dir_untouched(
        &train("acme/tiny-llama", "acme/prefs", &[]),
        &["holds the splits test, train: set `data.split`"],
    );
    run_dir_untouched(
        &train("acme/tiny-llama", "acme/prefs", &["--set", "data.split=validation"]),
        &["has no split `validation`; its splits: test, train"],
    );
    assert!(!run.exists(), "nothing made before the configuration is checked");
}
