//! LoRA runs end to end: `[lora]` saves PEFT adapter folders (PEFT's keys,
//! names and shapes) that an independent f64 forward — reading
//! `adapter_config.json` and `adapter_model.safetensors` and merging as PEFT
//! defines it — scores as daa does; merging; resuming; the adapter-off
//! reference; bad adapter folders.

use std::path::Path;

use burn::backend::Flex;
use daa_tests::metrics::assert_same_metrics;
use daa_train::batch::{Sequence, TokenBatch};
use daa_train::checkpoint::{load_model, save_model};
use daa_train::model::CausalLm;
use daa_train::objective::CompletionLogits;
use daa_train::run::config::TINY_CONFIG;
use daa_train::run::{Silent, TrainConfig};
use daa_train::tiny_run::TINY_VOCAB;
use serde_json::Value;

use super::naive::{Weights, token_logprobs};

/// The tiny run with LoRA of rank 4 on three kinds of layer.
fn tiny_config(dir: &Path, extra: &[&str]) -> TrainConfig {
    let lora =
        ["lora.rank=4", "lora.alpha=8", "lora.target_modules=[\"q_proj\", \"v_proj\", \"down_proj\"]", "train.lr=3e-2"];
    super::train::tiny_config(dir, &[&lora[..], extra].concat())
}

fn train(config: TrainConfig, resume: Option<&Path>) -> anyhow::Result<daa_train::run::RunOutcome> {
    daa_train::run::train(config, resume.map(Path::to_path_buf), &mut Silent)
}

fn metrics(run: &Path) -> Vec<Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Every adapter tensor of a folder: name, shape, values.
fn adapter_tensors(dir: &Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<_> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            let values = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            (name, view.shape().to_vec(), values)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Token ids of the tiny byte-level model.
fn sequences() -> Vec<Sequence> {
    let a: Vec<u32> = "<x>What is 12+30? 42, says daa.".bytes().map(u32::from).collect();
    let b: Vec<u32> = "<y>short".bytes().map(u32::from).collect();
    vec![Sequence { ids: a, completion_start: 1 }, Sequence { ids: b, completion_start: 1 }]
}

/// daa's log-probabilities of every token after the first of [`sequences`], row by row.
fn daa_logprobs(model: &CausalLm<Flex>) -> Vec<f64> {
    let seqs = sequences();
    let batch = TokenBatch::new(&seqs.iter().collect::<Vec<_>>(), 0, TINY_VOCAB).unwrap();
    let scored = CompletionLogits::of(model, &batch, &Default::default()).unwrap();
    scored.token_logps().into_data().convert::<f64>().into_vec().unwrap()
}

fn naive_logprobs(config: &Value, weights: &Weights) -> Vec<f64> {
    sequences().iter().flat_map(|s| token_logprobs(config, weights, &s.ids)).collect()
}

fn max_difference(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// The keys peft 0.13's `LoraConfig` (with `PeftConfig`'s) reads.
const PEFT_KEYS: [&str; 24] = [
    "alpha_pattern",
    "auto_mapping",
    "base_model_name_or_path",
    "bias",
    "fan_in_fan_out",
    "inference_mode",
    "init_lora_weights",
    "layer_replication",
    "layers_pattern",
    "layers_to_transform",
    "loftq_config",
    "lora_alpha",
    "lora_dropout",
    "megatron_config",
    "megatron_core",
    "modules_to_save",
    "peft_type",
    "r",
    "rank_pattern",
    "revision",
    "target_modules",
    "task_type",
    "use_dora",
    "use_rslora",
];

#[test]
fn a_lora_run_saves_peft_adapters_scored_like_an_independent_merge_and_resumes_exactly() {
    let whole = tempfile::tempdir().unwrap();
    train(tiny_config(whole.path(), &["train.max_steps=6"]), None).unwrap();
    let run = whole.path().join("run");
    let checkpoint = run.join("checkpoint-000006");
    for f in ["adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "optimizer.safetensors"] {
        assert!(checkpoint.join(f).exists(), "the LoRA checkpoint lacks {f}");
    }
    assert!(!checkpoint.join("model.safetensors").exists(), "a LoRA checkpoint holds the adapters only");

    // adapter_config.json: PEFT's keys only, the run's settings, the base model's path.
    let config = json(&checkpoint.join("adapter_config.json"));
    for key in config.as_object().unwrap().keys() {
        assert!(PEFT_KEYS.contains(&key.as_str()), "`{key}` is not a key peft 0.13 knows");
    }
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["task_type"], "CAUSAL_LM");
    assert_eq!(config["r"], 4);
    assert_eq!(config["lora_alpha"], 8.0);
    assert_eq!(config["target_modules"], serde_json::json!(["down_proj", "q_proj", "v_proj"]));
    let base = run.join("builtin/model");
    assert_eq!(config["base_model_name_or_path"], base.canonicalize().unwrap().display().to_string());

    // PEFT's names and shapes: lora_A [r, in], lora_B [out, r], per block and target.
    let model_config = json(&base.join("config.json"));
    let (d, layers) = (model_config["hidden_size"].as_u64().unwrap() as usize, 2usize);
    let inter = model_config["intermediate_size"].as_u64().unwrap() as usize;
    let kv = d / model_config["num_attention_heads"].as_u64().unwrap() as usize
        * model_config["num_key_value_heads"].as_u64().unwrap() as usize;
    assert_eq!(model_config["num_hidden_layers"].as_u64(), Some(layers as u64));
    let tensors = adapter_tensors(&checkpoint);
    assert_eq!(tensors.len(), 2 * 3 * layers);
    for i in 0..layers {
        for (path, d_in, d_out) in
            [("self_attn.q_proj", d, d), ("self_attn.v_proj", d, kv), ("mlp.down_proj", inter, d)]
        {
            let prefix = format!("base_model.model.model.layers.{i}.{path}");
            let find = |part: &str| tensors.iter().find(|t| t.0 == format!("{prefix}.{part}.weight")).unwrap();
            assert_eq!(find("lora_A").1, [4, d_in], "{prefix}");
            assert_eq!(find("lora_B").1, [d_out, 4], "{prefix}");
            assert!(find("lora_B").2.iter().any(|&x| x != 0.0), "{prefix}: B was trained from 0");
        }
    }

    // An independent check of the format: the f64 forward with the adapter merged as PEFT
    // defines it scores what daa's LoRA model scores (loaded from the adapter folder, which
    // names its base) — and differs from the base model's scores.
    let adapted: CausalLm<Flex> = load_model(&checkpoint, &Default::default()).unwrap();
    assert!(adapted.lora().is_some());
    let daa = daa_logprobs(&adapted);
    let naive_base = naive_logprobs(&model_config, &Weights::read(&base));
    let naive = naive_logprobs(&model_config, &Weights::read(&base).with_peft_adapter(&checkpoint));
    let moved = max_difference(&naive, &naive_base);
    assert!(moved > 1e-3, "the adapter moves the log-probabilities by only {moved}");
    let off = max_difference(&daa, &naive);
    assert!(off < 2e-4 * (1.0 + moved), "daa vs the naive PEFT merge: {off} (the adapter moves them {moved})");

    // Merged into a full checkpoint: the same scores, no adapter left.
    let merged_dir = tempfile::tempdir().unwrap();
    save_model(&adapted.merge_adapters(), merged_dir.path(), &base).unwrap();
    assert!(
        merged_dir.path().join("model.safetensors").exists() && !merged_dir.path().join("adapter_config.json").exists()
    );
    let merged = naive_logprobs(&model_config, &Weights::read(merged_dir.path()));
    assert!(max_difference(&merged, &naive) < 1e-5, "the merged checkpoint scores like base + adapter");

    // Interrupted after 4 steps (checkpoint at 3), resumed: the same records and adapters.
    let split = tempfile::tempdir().unwrap();
    train(tiny_config(split.path(), &["train.max_steps=4"]), None).unwrap();
    let split_run = split.path().join("run");
    train(tiny_config(split.path(), &["train.max_steps=6"]), Some(&split_run)).unwrap();
    assert_same_metrics(&metrics(&run), &metrics(&split_run));
    for (a, b) in tensors.iter().zip(adapter_tensors(&split_run.join("checkpoint-000006"))) {
        assert_eq!(a.0, b.0);
        assert!(
            max_difference(
                &a.2.iter().map(|&x| f64::from(x)).collect::<Vec<_>>(),
                &b.2.iter().map(|&x| f64::from(x)).collect::<Vec<_>>()
            ) < 1e-6,
            "{}",
            a.0
        );
    }
    // A resume with other LoRA settings is refused, naming the section.
    let e = train(tiny_config(split.path(), &["train.max_steps=6", "lora.rank=8"]), Some(&split_run)).unwrap_err();
    assert!(format!("{e:#}").contains("differs from the checkpoint's in lora"), "{e:#}");
}

#[test]
fn the_adapter_off_reference_trains_like_the_cached_reference_without_a_cache() {
    let cached = tempfile::tempdir().unwrap();
    train(tiny_config(cached.path(), &["train.max_steps=3"]), None).unwrap();
    let live = tempfile::tempdir().unwrap();
    train(tiny_config(live.path(), &["train.max_steps=3", "loss.reference=\"model\""]), None).unwrap();
    assert!(!live.path().join("cache").exists(), "the adapter-off reference needs no cache");
    assert_same_metrics(&metrics(&cached.path().join("run")), &metrics(&live.path().join("run")));
    // In bf16 the frozen base is loaded straight into bf16; the adapters stay f32 and are saved so.
    let bf16 = tempfile::tempdir().unwrap();
    let extra = ["train.max_steps=3", "loss.reference=\"model\"", "train.precision=\"bf16\""];
    train(tiny_config(bf16.path(), &extra), None).unwrap();
    let records = metrics(&bf16.path().join("run"));
    let first_eval = records.iter().find(|r| r["type"] == "eval").unwrap();
    assert!((first_eval["eval_loss"].as_f64().unwrap() - 2f64.ln()).abs() < 1e-3, "{first_eval}");
    assert!(records.iter().filter(|r| r["type"] == "train").all(|r| r["loss"].as_f64().unwrap().is_finite()));
    assert_eq!(adapter_tensors(&bf16.path().join("run/checkpoint-000003")).len(), 2 * 3 * 2);
}

#[test]
fn lora_settings_and_adapter_folders_that_daa_cannot_honour_are_refused_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let overrides = ["lora.dropout=0.1".to_string(), "train.activation_checkpointing=true".to_string()];
    let e = TrainConfig::parse(TINY_CONFIG, "tiny", &overrides).unwrap_err();
    assert!(format!("{e:#}").contains("lora.dropout"), "{e:#}");
    let e = TrainConfig::parse(TINY_CONFIG, "tiny", &["lora.target_modules=[\"qkv\"]".to_string()]).unwrap_err();
    assert!(format!("{e:#}").contains("`lora.target_modules`: `qkv`"), "{e:#}");
    // One name alone, as PEFT also takes it.
    let one = TrainConfig::parse(TINY_CONFIG, "tiny", &["lora.target_modules=\"all-linear\"".to_string()]).unwrap();
    assert_eq!(one.lora.unwrap().target_modules, ["all-linear"]);

    // A real adapter folder, then damaged copies of it.
    train(tiny_config(dir.path(), &["train.max_steps=3"]), None).unwrap();
    let good = dir.path().join("run/checkpoint-000003");
    let damaged = |name: &str, edit: &dyn Fn(&Path)| {
        let copy = dir.path().join(name);
        std::fs::create_dir_all(&copy).unwrap();
        for f in ["adapter_config.json", "adapter_model.safetensors", "tokenizer.json"] {
            std::fs::copy(good.join(f), copy.join(f)).unwrap();
        }
        edit(&copy);
        format!("{:#}", load_model::<Flex>(&copy, &Default::default()).unwrap_err())
    };
    let set = |key: &'static str, value: Value| {
        move |copy: &Path| {
            let mut config = json(&copy.join("adapter_config.json"));
            config[key] = value.clone();
            std::fs::write(copy.join("adapter_config.json"), config.to_string()).unwrap();
        }
    };
    let e = damaged("dora", &set("use_dora", Value::Bool(true)));
    assert!(e.contains("adapter_config.json") && e.contains("use_dora"), "{e}");
    let e = damaged("ranks", &set("rank_pattern", serde_json::json!({"q_proj": 8})));
    assert!(e.contains("rank_pattern"), "{e}");
    let e = damaged("regex", &set("target_modules", Value::String(".*proj".into())));
    assert!(e.contains("target_modules"), "{e}");
    let e = damaged("bias", &set("lora_bias", Value::Bool(true)));
    assert!(e.contains("`lora_bias` is true"), "{e}");
    let e = damaged("pissa", &set("init_lora_weights", Value::String("pissa".into())));
    assert!(e.contains("init_lora_weights"), "{e}");
    let e = damaged("rank", &set("r", Value::from(5)));
    assert!(e.contains("q_proj.lora_A.weight") && e.contains("expected shape [5, 64] (rank r = 5"), "{e}");
    let e = damaged("gone", &set("base_model_name_or_path", Value::String("/nowhere/model".into())));
    assert!(e.contains("/nowhere/model") && e.contains("set `base_model_name_or_path` there"), "{e}");
    let e = damaged("truncated", &|copy: &Path| {
        let path = copy.join("adapter_model.safetensors");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    });
    assert!(e.contains("adapter_model.safetensors"), "{e}");
}
