//! PEFT adapter folders: what a LoRA run saves, what `peft`'s
//! `PeftModel.from_pretrained(base, folder)` loads onto the base model in
//! transformers, and what daa loads back (generation, scoring, resuming,
//! `daa merge`).
//!
//! A folder holds `adapter_config.json` (PEFT's `LoraConfig`, with only keys
//! peft 0.13 knows), `adapter_model.safetensors` (f32 tensors
//! `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`
//! `[r, in]` and `….lora_B.weight` `[out, r]`) and the base model's
//! tokenizer files. The base model is named by `base_model_name_or_path`: the
//! absolute path of the checkpoint the run trained from.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::FloatDType;
use burn::tensor::backend::Backend;
use serde_json::{Value, json};

use crate::checkpoint::{SafetensorsWeights, copy_tokenizer_files, load_model_in, safetensors_bytes, visited_tensors};
use crate::model::{CausalLm, LoraConfig};

/// The adapter's configuration file.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// The adapter's weights.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// Whether `dir` is a PEFT adapter folder (it has [`ADAPTER_CONFIG`]).
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join(ADAPTER_CONFIG).is_file()
}

/// Whether `dir` is an adapter folder holding no model of its own (no
/// `config.json`): what loads as its base with the adapters attached.
pub fn is_adapter_only(dir: &Path) -> bool {
    is_adapter_dir(dir) && !dir.join("config.json").exists()
}

/// `adapter_config.json` as PEFT writes it for `config` on the base model
/// `base` at `revision` (keys of peft 0.13's `LoraConfig`; `target_modules`
/// sorted, as PEFT writes its set).
pub fn adapter_config_json(config: &LoraConfig, base: &str, revision: Option<&str>) -> Result<String> {
    let mut targets: Vec<&str> = config.targets()?.iter().map(|t| t.peft_name()).collect();
    targets.sort_unstable();
    let value = json!({
        "alpha_pattern": {},
        "base_model_name_or_path": base,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "layers_pattern": null,
        "layers_to_transform": null,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "modules_to_save": null,
        "peft_type": "LORA",
        "r": config.rank,
        "rank_pattern": {},
        "revision": revision,
        "target_modules": targets,
        "task_type": "CAUSAL_LM",
        "use_dora": false,
        "use_rslora": config.use_rslora,
    });
    Ok(serde_json::to_string_pretty(&value)?)
}

/// Reads `adapter_config.json` of `dir`: the LoRA configuration and the
/// base model it names. Settings daa does not implement (DoRA, biases,
/// per-layer ranks, `fan_in_fan_out`, some layers only, extra trained
/// modules, regular-expression targets) are refused, naming the key.
pub fn read_adapter_config(dir: &Path) -> Result<(LoraConfig, String)> {
    let path = dir.join(ADAPTER_CONFIG);
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    let v: Value = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?;
    let bad = |key: &str, expected: &str| {
        anyhow::anyhow!(
            "{}: `{key}` is {}; daa reads {expected}",
            path.display(),
            v.get(key).map_or("missing".to_string(), Value::to_string)
        )
    };
    if v.get("peft_type").and_then(Value::as_str) != Some("LORA") {
        return Err(bad("peft_type", "LoRA adapters (\"LORA\")"));
    }
    let is_false = |key: &str| v.get(key).is_none_or(|x| x.is_null() || x == &Value::Bool(false));
    let is_empty = |key: &str| {
        v.get(key).is_none_or(|x| x.is_null() || x.as_object().is_some_and(|o| o.is_empty()) || x == &json!([]))
    };
    for key in ["use_dora", "fan_in_fan_out"] {
        if !is_false(key) {
            return Err(bad(key, "false"));
        }
    }
    for key in ["rank_pattern", "alpha_pattern", "layers_to_transform", "modules_to_save", "layer_replication"] {
        if !is_empty(key) {
            return Err(bad(key, "none (one rank and α for every adapted layer of every block, nothing else trained)"));
        }
    }
    if v.get("bias").is_some_and(|b| !b.is_null() && b.as_str() != Some("none")) {
        return Err(bad("bias", "\"none\""));
    }
    // Newer peft's options that change what the folder means when not at their defaults.
    for key in ["lora_bias", "use_qalora"] {
        if !is_false(key) {
            return Err(bad(key, "false"));
        }
    }
    for key in ["trainable_token_indices", "exclude_modules", "target_parameters"] {
        if !is_empty(key) {
            return Err(bad(key, "none"));
        }
    }
    // PiSSA, OLoRA, LoftQ, EVA and CorDA initialisations change the base model itself.
    if v.get("init_lora_weights").is_some_and(|i| !(i.is_boolean() || i == "gaussian" || i.is_null())) {
        return Err(bad("init_lora_weights", "true, false or \"gaussian\" (the base model unchanged)"));
    }
    if v.get("use_rslora").is_some_and(|x| !x.is_boolean() && !x.is_null()) {
        return Err(bad("use_rslora", "true or false"));
    }
    let rank = v.get("r").and_then(Value::as_u64).ok_or_else(|| bad("r", "a positive integer"))? as usize;
    let alpha = v.get("lora_alpha").and_then(Value::as_f64).ok_or_else(|| bad("lora_alpha", "a positive number"))?;
    let dropout = match v.get("lora_dropout") {
        None | Some(Value::Null) => 0.0,
        Some(x) => x.as_f64().ok_or_else(|| bad("lora_dropout", "a number in [0, 1)"))?,
    };
    let target_modules = match v.get("target_modules") {
        Some(Value::String(s)) if s == "all-linear" => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|x| x.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("target_modules", "a list of layer names"))?,
        _ => return Err(bad("target_modules", "a list of layer names or \"all-linear\"")),
    };
    let use_rslora = v.get("use_rslora").and_then(Value::as_bool).unwrap_or(false);
    let config = LoraConfig { rank, alpha, dropout, target_modules, use_rslora };
    config.validate().with_context(|| format!("{}", path.display()))?;
    let mut base = v.get("base_model_name_or_path").and_then(Value::as_str).unwrap_or_default().to_string();
    // A Hub id pinned to a revision: `org/name@revision`, as daa's Hub ids are written.
    if let Some(revision) = v.get("revision").and_then(Value::as_str)
        && !Path::new(&base).exists()
        && crate::hub::HubId::parse(&base).is_some()
    {
        base = format!("{base}@{revision}");
    }
    Ok((config, base))
}

/// Writes `model`'s adapters as a PEFT folder into the existing folder
/// `dir`, naming `base_dir` (the checkpoint trained from) as the base model
/// and copying its tokenizer files.
pub fn save_adapter<B: Backend>(model: &CausalLm<B>, dir: &Path, base_dir: &Path) -> Result<()> {
    let Some(config) = model.lora() else { bail!("the model has no LoRA adapters to save") };
    let tensors = visited_tensors(|f| model.visit_adapters(f))?;
    let weights = dir.join(ADAPTER_WEIGHTS);
    std::fs::write(&weights, safetensors_bytes(&tensors, &[])?)
        .with_context(|| format!("{}: write failed", weights.display()))?;
    // A base read from the Hugging Face cache is named by its Hub id and
    // commit (what peft resolves anywhere), else by its absolute path.
    let base = base_dir.canonicalize().unwrap_or_else(|_| base_dir.to_path_buf());
    let (name, revision) = match crate::hub::model_of_snapshot(&base) {
        Some(id) => (id.repo, Some(id.revision)),
        None => (base.display().to_string(), None),
    };
    let config_path = dir.join(ADAPTER_CONFIG);
    std::fs::write(&config_path, adapter_config_json(config, &name, revision.as_deref())?)
        .with_context(|| format!("{}: write failed", config_path.display()))?;
    copy_tokenizer_files(base_dir, dir)
}

/// The base model folder of the adapter in `dir`: `base` when given, else
/// its `base_model_name_or_path` (a folder, or a Hub id in the local cache).
pub fn base_model_dir(dir: &Path, base: Option<&Path>) -> Result<PathBuf> {
    if let Some(base) = base {
        return Ok(base.to_path_buf());
    }
    let (_, named) = read_adapter_config(dir)?;
    let config = dir.join(ADAPTER_CONFIG);
    let fix =
        "set `base_model_name_or_path` there to the base model's folder or Hub id (daa merge also takes --base DIR)";
    if named.is_empty() {
        bail!("{}: no `base_model_name_or_path`; {fix}", config.display());
    }
    crate::hub::resolve_model(&named, "base_model_name_or_path")
        .with_context(|| format!("{}: the base model is not here; {fix}", config.display()))
}

/// Where the tokenizer of the model in `dir` is: `dir` itself, or for an
/// adapter folder without tokenizer files (peft saves none), its base's.
pub fn tokenizer_dir(dir: &Path) -> Result<PathBuf> {
    if is_adapter_dir(dir) && !dir.join("tokenizer.json").exists() {
        return base_model_dir(dir, None);
    }
    Ok(dir.to_path_buf())
}

/// `model` (the base, without adapters) with the adapters of the PEFT folder `dir`.
pub fn attach_adapter<B: Backend>(model: CausalLm<B>, dir: &Path) -> Result<CausalLm<B>> {
    let (config, _) = read_adapter_config(dir)?;
    let mut weights = SafetensorsWeights::open_file(&dir.join(ADAPTER_WEIGHTS))?;
    model
        .with_saved_lora(&config, &mut weights)
        .with_context(|| format!("loading {}", dir.join(ADAPTER_WEIGHTS).display()))
}

/// The base model (`base`, or the one the adapter names; its weights in
/// `dtype`) with the adapters of the PEFT folder `dir`, onto `device`.
pub fn load_adapted<B: Backend>(
    dir: &Path,
    base: Option<&Path>,
    device: &B::Device,
    dtype: FloatDType,
) -> Result<CausalLm<B>> {
    let base = base_model_dir(dir, base)?;
    if is_adapter_only(&base) {
        bail!("{}: the base model {} is itself an adapter folder", dir.display(), base.display());
    }
    attach_adapter(load_model_in(&base, device, dtype)?, dir)
}
