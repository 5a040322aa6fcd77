//! The seed corpus: small inputs in the real formats, one folder per target
//! (`daa-fuzz seeds fuzz/corpus` writes them; they are committed).

use std::path::Path;

use anyhow::{Context, Result};
use burn::backend::Flex;
use daa_train::checkpoint::{NamedTensor, model_tensors, safetensors_bytes};
use daa_train::model::{CausalLm, ModelConfig, RandomWeights};
use daa_train::tiny_run::{
    TINY_CHAT_TEMPLATE, arithmetic_rows, byte_level_tokenizer, cohere_config, llama_config, preference_parquet,
};
use serde_json::{Value, json};

use crate::split::join;

/// A Llama 3 style template: system prompt, header tokens, `raise_exception`
/// on a bad role order, and a namespace (what Hub templates look like).
const LLAMA3_STYLE_TEMPLATE: &str = "{%- set ns = namespace(system='') -%}\
{%- if messages[0]['role'] == 'system' -%}{%- set ns.system = messages[0]['content'] | trim -%}{%- endif -%}\
{{ bos_token }}{%- if ns.system %}<|start_header_id|>system<|end_header_id|>\n\n{{ ns.system }}<|eot_id|>{% endif -%}\
{%- for message in messages if message['role'] != 'system' -%}\
{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}{{ raise_exception('roles must alternate user/assistant') }}{%- endif -%}\
<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>\
{%- endfor -%}{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif -%}";

/// A template that never ends (a macro calling itself), to keep the limits exercised.
const RECURSIVE_TEMPLATE: &str = "{% macro f(n) %}{{ n }}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}";

/// A template that loops far longer than one conversation needs.
const LONG_LOOP_TEMPLATE: &str =
    "{% for i in range(100000) %}{% for j in range(100000) %}{{ messages[0]['content'] }}{% endfor %}{% endfor %}";

fn tiny_model(config: &Value, seed: u64) -> Result<Vec<NamedTensor>> {
    let config = ModelConfig::from_json(&config.to_string())?;
    let device = Default::default();
    let model = CausalLm::<Flex>::from_weights(&config, &mut RandomWeights { seed, std: 0.02 }, &device)?;
    Ok(model_tensors(&model)?)
}

fn conversation(messages: &[(&str, &str)]) -> Vec<u8> {
    let list: Vec<Value> = messages.iter().map(|(role, content)| json!({"role": role, "content": content})).collect();
    serde_json::to_vec(&list).unwrap_or_default()
}

fn lines(values: &[Value]) -> Vec<u8> {
    values.iter().map(|v| format!("{v}\n")).collect::<String>().into_bytes()
}

/// Every target's seeds: `(target, file name, bytes)`.
pub fn seeds() -> Result<Vec<(&'static str, String, Vec<u8>)>> {
    let mut out: Vec<(&'static str, String, Vec<u8>)> = Vec::new();
    let mut add = |target: &'static str, name: &str, bytes: Vec<u8>| out.push((target, name.to_string(), bytes));

    // safetensors and checkpoints: tiny Llama and Command R models.
    let llama = llama_config(16, 8, 1);
    let cohere = cohere_config(16, 8, 1);
    let llama_tensors = tiny_model(&llama, 1)?;
    let cohere_tensors = tiny_model(&cohere, 2)?;
    let llama_file = safetensors_bytes(&llama_tensors, &[])?;
    let cohere_file = safetensors_bytes(&cohere_tensors, &[])?;
    add("safetensors", "llama-f32", llama_file.clone());
    let mixed = [
        NamedTensor::f64("f64", vec![2, 3], &[1.0, -2.0, f64::INFINITY, f64::NAN, 0.0, 1e300]),
        NamedTensor::i64("i64", vec![3], &[0, -1, i64::MAX]),
        NamedTensor::f32("scalar", vec![], &[7.0]),
        NamedTensor::f32("empty", vec![0, 4], &[]),
    ];
    // (One metadata entry: safetensors orders several as a HashMap does, so
    // the bytes would differ from run to run.)
    add("safetensors", "mixed-dtypes", safetensors_bytes(&mixed, &[])?);
    add("safetensors", "no-tensors", safetensors_bytes(&[], &[])?);

    let config_bytes = |c: &Value| serde_json::to_vec_pretty(c).unwrap_or_default();
    add("checkpoint", "llama-single", join(&[&config_bytes(&llama), b"", &llama_file]));
    add("checkpoint", "cohere-single", join(&[&config_bytes(&cohere), b"", &cohere_file]));
    let half = llama_tensors.len() / 2;
    let (first, second) = llama_tensors.split_at(half);
    let shard = |i: usize| format!("model-0000{i}-of-00002.safetensors");
    let weight_map: serde_json::Map<String, Value> = first
        .iter()
        .map(|t| (t.name.clone(), json!(shard(1))))
        .chain(second.iter().map(|t| (t.name.clone(), json!(shard(2)))))
        .collect();
    let index = json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    add(
        "checkpoint",
        "llama-sharded",
        join(&[
            &config_bytes(&llama),
            &serde_json::to_vec_pretty(&index)?,
            &safetensors_bytes(first, &[])?,
            &safetensors_bytes(second, &[])?,
        ]),
    );

    // Tokenizer files.
    let tokenizer = byte_level_tokenizer()?.to_string(false).map_err(|e| anyhow::anyhow!("{e}"))?;
    let tokenizer_config = json!({
        "bos_token": "<|bos|>", "eos_token": {"content": "<|end|>"}, "pad_token": "<|end|>",
        "chat_template": TINY_CHAT_TEMPLATE,
    });
    let listed = json!({"bos_token": "<|bos|>", "eos_token": "<|end|>",
        "chat_template": [{"name": "default", "template": LLAMA3_STYLE_TEMPLATE}, {"name": "tool_use", "template": "{{ 1 }}"}]});
    let generation = json!({"eos_token_id": [257, 258], "bos_token_id": 256, "do_sample": true});
    add(
        "tokenizer",
        "tiny-all-files",
        join(&[
            tokenizer.as_bytes(),
            &serde_json::to_vec(&tokenizer_config)?,
            &serde_json::to_vec(&generation)?,
            "What is 2 plus 3? <|end|> é 漢".as_bytes(),
        ]),
    );
    add(
        "tokenizer",
        "template-list",
        join(&[tokenizer.as_bytes(), &serde_json::to_vec(&listed)?, br#"{"eos_token_id": 257}"#, b"hi"]),
    );
    add("tokenizer", "tokenizer-only", join(&[tokenizer.as_bytes(), b"", b"", b"plain text"]));

    // Preference rows.
    let rows = arithmetic_rows(3, 7);
    add("rows_jsonl", "ultrafeedback-layout", lines(&rows));
    add(
        "rows_jsonl",
        "other-layouts",
        lines(&[
            json!({"prompt": "2+2=", "chosen": " 4", "rejected": " 5"}),
            json!({"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                   "chosen": [{"role": "assistant", "content": "Hello."}], "rejected": [{"role": "assistant", "content": "Go away."}]}),
            json!({"prompt": "same", "chosen": "x", "rejected": "x"}),
            json!({"prompt": 3, "chosen": null}),
        ]),
    );
    add("rows_parquet", "ultrafeedback-layout", preference_parquet(&rows)?);

    // The training configuration.
    add(
        "train_config",
        "tiny",
        join(&[daa_train::run::config::TINY_CONFIG.as_bytes(), b"train.lr=3e-3\nloss.name=\"ipo\"\nloss.tau=0.1"]),
    );
    for name in ["llama-dpo", "command-r-ipo", "testbed"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs").join(format!("{name}.toml"));
        let text = std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?;
        add("train_config", name, join(&[&text, b"train.skip_nonfinite=2\nmonitor.top_k=5"]));
    }

    // Chat templates.
    let chat = conversation(&[
        ("system", "Be brief."),
        ("user", "What is 2 plus 3?"),
        ("assistant", "5."),
        ("user", "And 4 plus 4?"),
    ]);
    add("chat_template", "tiny", join(&[TINY_CHAT_TEMPLATE.as_bytes(), &chat]));
    add("chat_template", "llama3-style", join(&[LLAMA3_STYLE_TEMPLATE.as_bytes(), &chat]));
    add("chat_template", "recursive", join(&[RECURSIVE_TEMPLATE.as_bytes(), &chat]));
    add("chat_template", "long-loop", join(&[LONG_LOOP_TEMPLATE.as_bytes(), &chat]));

    // daa loss input: the first byte picks the loss.
    let pairs = lines(&[
        json!({"id": "a", "policy_chosen": -12.5, "policy_rejected": -14.0, "reference_chosen": -13.0, "reference_rejected": -13.5, "chosen_tokens": 5, "rejected_tokens": 6}),
        json!({"policy_chosen": -1e3, "policy_rejected": -0.5, "reference_chosen": -2.0, "reference_rejected": -700.0, "chosen_tokens": 1, "rejected_tokens": 900}),
    ]);
    for (i, name) in daa_core::LossName::ALL.iter().enumerate() {
        let mut bytes = vec![i as u8];
        bytes.extend_from_slice(&pairs);
        add("loss_lines", &format!("{name:?}").to_lowercase(), bytes);
    }

    // metrics.jsonl as daa train writes it (the demo's sample run).
    // The demo's file has one line cut short on purpose (the viewer names it).
    let sample = include_str!("../../../web/tests/sample-metrics.jsonl");
    add("metrics", "sample-run-one-bad-line", sample.as_bytes().to_vec());
    let whole: String = sample.lines().filter(|l| l.ends_with('}')).map(|l| format!("{l}\n")).collect();
    add("metrics", "sample-run", whole.into_bytes());
    Ok(out)
}

/// Writes the seeds under `root/<target>/<name>`; returns how many.
pub fn write_seeds(root: &Path) -> Result<usize> {
    let seeds = seeds()?;
    for (target, name, bytes) in &seeds {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
        daa_core::io::write_bytes_atomic(&dir.join(name), bytes)?;
    }
    Ok(seeds.len())
}
