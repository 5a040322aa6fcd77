//! LoRA from the command line: `daa train --set lora.rank=…` saves PEFT
//! adapter checkpoints, `daa generate` samples from one (it names its base),
//! `daa merge` folds one into a full checkpoint and refuses to overwrite,
//! `daa plan --lora` counts the adapters, and settings daa cannot honour
//! exit 2 before anything is made.

use std::path::Path;

use super::{daa, read_jsonl, stderr, temp_dir};

fn model_and_data(dir: &Path) -> (String, String) {
    let model = dir.join("base");
    let config = daa_train::tiny_run::llama_config(daa_train::tiny_run::TINY_VOCAB, 32, 2);
    daa_train::tiny_run::write_checkpoint(&model, &config, 1, 0.3).unwrap();
    let rows = daa_train::tiny_run::arithmetic_rows(60, 1);
    let data = dir.join("prefs.jsonl");
    std::fs::write(&data, rows.iter().map(|r| format!("{r}\n")).collect::<String>()).unwrap();
    (model.display().to_string(), data.display().to_string())
}

#[test]
fn a_lora_run_saves_adapters_that_generate_and_merge() {
    let dir = temp_dir();
    let (model, data) = model_and_data(dir.path());
    let run = dir.path().join("run");
    let cache = format!("train.cache_dir={:?}", dir.path().join("cache").display().to_string());
    let train = |run: &Path, extra: &[&str]| {
        let mut args = vec!["train", "--model", &model, "--data", &data, "--out", run.to_str().unwrap()];
        args.extend(["--max-steps", "2", "--set", &cache, "--set", "lora.rank=4", "--set", "train.lr=5e-2"]);
        args.extend(extra);
        daa(&args)
    };
    let out = train(&run, &["--set", "lora.target_modules=[\"all-linear\"]"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    // 2 blocks × 4 × Σ(in + out): q 64, k 48, v 48 (GQA: 16 wide), o 64, gate, up, down 117 each.
    assert!(err.contains("LoRA rank 4 α 8 on all-linear: 0.005 M trained"), "{err}");
    let checkpoint = run.join("checkpoint-000002");
    assert!(checkpoint.join("adapter_model.safetensors").exists(), "{err}");

    // Sampling from the adapter folder (its base named inside) and from the merged checkpoint.
    let prompts = dir.path().join("prompts.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"What is 2+3?\"}\n{\"prompt\": \"And 40+2?\"}\n").unwrap();
    // Greedy: the adapter folder and the merged checkpoint pick the same tokens.
    let generate = |model: &Path, out: &Path| {
        super::generate(model, &prompts, out, &["--max-new-tokens", "8", "--temperature", "0"])
    };
    let sampled = generate(&checkpoint, &dir.path().join("adapter.jsonl"));
    assert!(sampled.status.success(), "{}", stderr(&sampled));
    assert_eq!(read_jsonl(&dir.path().join("adapter.jsonl")).len(), 2);

    // An adapter folder as peft saves it (no tokenizer files): the tokenizer is its base's.
    let bare = dir.path().join("bare-adapter");
    std::fs::create_dir_all(&bare).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(checkpoint.join(f), bare.join(f)).unwrap();
    }
    let sampled = generate(&bare, &dir.path().join("bare.jsonl"));
    assert!(sampled.status.success(), "{}", stderr(&sampled));
    // An adapter folder is not a model to train from; the message says what to do.
    let from_adapter = dir.path().join("run-from-adapter");
    let out = daa(&[
        "train",
        "--model",
        checkpoint.to_str().unwrap(),
        "--data",
        &data,
        "--out",
        from_adapter.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("is a PEFT adapter folder, not a model"), "{}", stderr(&out));

    let merged = dir.path().join("merged");
    let out = daa(&["merge", "--adapter", checkpoint.to_str().unwrap(), "--out", merged.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    for f in ["model.safetensors", "config.json", "tokenizer.json"] {
        assert!(merged.join(f).exists(), "the merged checkpoint lacks {f}");
    }
    assert!(!merged.join("adapter_config.json").exists());
    let sampled = generate(&merged, &dir.path().join("merged.jsonl"));
    assert!(sampled.status.success(), "{}", stderr(&sampled));
    let completions = |file: &str| -> Vec<serde_json::Value> {
        read_jsonl(&dir.path().join(file)).iter().map(|r| r["completion_ids"].clone()).collect()
    };
    assert_eq!(completions("merged.jsonl"), completions("adapter.jsonl"));
    assert_eq!(completions("bare.jsonl"), completions("adapter.jsonl"));
    // A second merge into the same folder is refused; so is a folder that is no adapter.
    let out = daa(&["merge", "--adapter", checkpoint.to_str().unwrap(), "--out", merged.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    let out = daa(&["merge", "--adapter", &model, "--out", dir.path().join("m2").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not a PEFT adapter folder"), "{}", stderr(&out));

    // Dropout with checkpointing is refused before the run folder exists.
    let refused = dir.path().join("refused");
    let out = train(&refused, &["--set", "lora.dropout=0.1", "--set", "train.activation_checkpointing=true"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("lora.dropout"), "{}", stderr(&out));
    assert!(!refused.exists());
}

#[test]
fn plan_counts_lora_adapters() {
    let dir = temp_dir();
    let (model, _) = model_and_data(dir.path());
    let out = daa(&["plan", "--model", &model, "--lora", "8", "--lora-targets", "q_proj,v_proj"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    // 2 blocks × 8 × ((32 + 32) + (32 + 16)): q maps 32 → 32, v 32 → 16 (GQA).
    assert!(text.contains("LoRA rank 8 on q_proj, v_proj (0.0 M trained)"), "{text}");
    assert!(text.contains("LoRA adapters (f32)"), "{text}");
    let json = daa(&["plan", "--model", &model, "--lora", "8", "--json"]);
    let plan: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(plan["adapter_parameters"], 2 * 8 * (64 + 48));
    let out = daa(&["plan", "--model", &model, "--lora", "8", "--lora-targets", "qkv"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("`qkv`"), "{}", stderr(&out));
}
