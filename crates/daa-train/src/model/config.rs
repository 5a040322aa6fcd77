//! The model description read from a Hugging Face `config.json`.
//!
//! Two families share one decoder ([`super::CausalLm`]); the flags below say
//! where they differ:
//!
//! | | Llama / Mistral / Qwen2 | Cohere Command R |
//! |---|---|---|
//! | norm | RMSNorm `x / √(mean(x²) + ε) · w` | LayerNorm without bias `(x − μ) / √(σ² + ε) · w` |
//! | block | sequential: `h = x + attn(n₁(x))`, `y = h + mlp(n₂(h))` | parallel: `y = x + attn(n(x)) + mlp(n(x))` |
//! | RoPE | halves rotated (`[x₁, x₂] → [−x₂, x₁]`) | adjacent pairs rotated |
//! | head | untied unless `tie_word_embeddings` | tied, logits × `logit_scale` |
//!
//! `…ForSequenceClassification` checkpoints of the Llama family (reward
//! models) have the same decoder and a `score` head instead of `lm_head`
//! ([`OutputHead`]).

use serde_json::{Map, Value};

use crate::error::ModelError;

/// The model families daa can train.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// `LlamaForCausalLM`, `MistralForCausalLM`, `Qwen2ForCausalLM`.
    Llama,
    /// `CohereForCausalLM` (Command R).
    Cohere,
}

/// The `architectures` entries daa accepts, for error messages.
pub const SUPPORTED_ARCHITECTURES: [&str; 7] = [
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "CohereForCausalLM",
    "LlamaForSequenceClassification",
    "MistralForSequenceClassification",
    "Qwen2ForSequenceClassification",
];

/// What the last hidden state feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputHead {
    /// Next-token logits (`lm_head`, or the embedding when tied).
    LanguageModel,
    /// `score.weight` `[num_labels, d]` without bias, read at a sequence's
    /// last token (Hugging Face's `…ForSequenceClassification`; a reward
    /// model has one label).
    SequenceClassification {
        /// Outputs of the score head (`id2label`'s size; Hugging Face's default 2 without it).
        num_labels: usize,
    },
}

/// How RoPE frequencies are rescaled for long contexts (`rope_scaling`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Position interpolation: every frequency divided by `factor`.
    Linear {
        /// Divisor of every frequency.
        factor: f64,
    },
    /// Llama 3.1: low frequencies divided by `factor`, high ones kept, a
    /// smooth blend between (see [`super::rope::inverse_frequencies`]).
    Llama3 {
        /// Divisor of the low frequencies.
        factor: f64,
        /// Wavelengths above `original_max_position_embeddings / low_freq_factor` are scaled.
        low_freq_factor: f64,
        /// Wavelengths below `original_max_position_embeddings / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// The context length the model was pre-trained with.
        original_max_position_embeddings: f64,
    },
}

/// The normalisation layer of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    /// `x / √(mean(x²) + ε) · w`.
    Rms,
    /// `(x − mean(x)) / √(var(x) + ε) · w`, no bias (Cohere).
    LayerNormNoBias,
}

/// Everything the decoder needs from `config.json`, plus the file itself so
/// checkpoints write it back unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Family.
    pub architecture: Architecture,
    /// The `architectures[0]` string.
    pub architecture_name: String,
    /// Vocabulary size `V`.
    pub vocab_size: usize,
    /// Model width `d`.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Decoder blocks.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than query heads).
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// ε of the norms.
    pub norm_eps: f64,
    /// Which norm.
    pub norm: NormKind,
    /// RoPE base θ.
    pub rope_theta: f64,
    /// RoPE frequency scaling.
    pub rope_scaling: RopeScaling,
    /// Rotate adjacent pairs (Cohere) rather than halves (Llama).
    pub rope_interleaved: bool,
    /// Longest sequence the model supports.
    pub max_position_embeddings: usize,
    /// Attention sees at most this many previous positions (Mistral).
    pub sliding_window: Option<usize>,
    /// The output head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Language-model head or sequence-classification (reward) head.
    pub head: OutputHead,
    /// q, k, v projections have biases (Qwen2, Llama `attention_bias`).
    pub qkv_bias: bool,
    /// The output projection has a bias (Llama `attention_bias`).
    pub o_bias: bool,
    /// MLP projections have biases (Llama `mlp_bias`).
    pub mlp_bias: bool,
    /// Parallel attention and MLP on one norm (Cohere).
    pub parallel_block: bool,
    /// Logits are multiplied by this (Cohere `logit_scale`, 1 otherwise).
    pub logit_scale: f64,
    /// The `config.json` object as read.
    pub raw: Map<String, Value>,
}

fn field<'a>(raw: &'a Map<String, Value>, name: &str) -> Result<&'a Value, ModelError> {
    raw.get(name).filter(|v| !v.is_null()).ok_or_else(|| ModelError::Config(format!("missing field `{name}`")))
}

fn usize_field(raw: &Map<String, Value>, name: &str) -> Result<usize, ModelError> {
    let value = field(raw, name)?;
    value
        .as_u64()
        .filter(|&v| v > 0)
        .map(|v| v as usize)
        .ok_or_else(|| ModelError::Config(format!("field `{name}` must be a positive integer, found {value}")))
}

fn optional_usize(raw: &Map<String, Value>, name: &str) -> Result<Option<usize>, ModelError> {
    match raw.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => usize_field(raw, name).map(Some),
    }
}

fn f64_field(raw: &Map<String, Value>, name: &str, default: f64) -> Result<f64, ModelError> {
    match raw.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_f64()
            .filter(|x| x.is_finite())
            .ok_or_else(|| ModelError::Config(format!("field `{name}` must be a finite number, found {v}"))),
    }
}

fn bool_field(raw: &Map<String, Value>, name: &str, default: bool) -> Result<bool, ModelError> {
    match raw.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => {
            v.as_bool().ok_or_else(|| ModelError::Config(format!("field `{name}` must be true or false, found {v}")))
        }
    }
}

/// `(θ, scaling)` of RoPE: transformers ≥ 5 writes one `rope_parameters`
/// object (`rope_theta`, `rope_type` and the scaling fields); earlier
/// versions write `rope_theta` and an optional `rope_scaling` object.
fn rope(raw: &Map<String, Value>) -> Result<(f64, RopeScaling), ModelError> {
    if let Some(parameters) = raw.get("rope_parameters").filter(|v| !v.is_null()) {
        let Some(object) = parameters.as_object() else {
            return Err(ModelError::Config(format!("field `rope_parameters` must be an object, found {parameters}")));
        };
        let theta = match object.get("rope_theta") {
            Some(v) => v.as_f64().filter(|x| x.is_finite() && *x > 0.0).ok_or_else(|| {
                ModelError::Config(format!("`rope_parameters.rope_theta` must be a positive number, found {v}"))
            })?,
            None => f64_field(raw, "rope_theta", 10_000.0)?,
        };
        return Ok((theta, rope_scaling(object, "rope_parameters")?));
    }
    let scaling = match raw.get("rope_scaling").filter(|v| !v.is_null()) {
        None => RopeScaling::None,
        Some(scaling) => match scaling.as_object() {
            Some(object) => rope_scaling(object, "rope_scaling")?,
            None => {
                return Err(ModelError::Config(format!("field `rope_scaling` must be an object, found {scaling}")));
            }
        },
    };
    Ok((f64_field(raw, "rope_theta", 10_000.0)?, scaling))
}

/// The scaling described by `scaling` (the object called `field`).
fn rope_scaling(scaling: &Map<String, Value>, field: &str) -> Result<RopeScaling, ModelError> {
    let kind = scaling.get("rope_type").or_else(|| scaling.get("type")).and_then(Value::as_str).unwrap_or("default");
    let number = |name: &str| -> Result<f64, ModelError> {
        scaling
            .get(name)
            .and_then(Value::as_f64)
            .filter(|x| x.is_finite() && *x > 0.0)
            .ok_or_else(|| ModelError::Config(format!("`{field}.{name}` must be a positive number")))
    };
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear { factor: number("factor")? }),
        "llama3" => {
            let scaling = RopeScaling::Llama3 {
                factor: number("factor")?,
                low_freq_factor: number("low_freq_factor")?,
                high_freq_factor: number("high_freq_factor")?,
                original_max_position_embeddings: number("original_max_position_embeddings")?,
            };
            if let RopeScaling::Llama3 { low_freq_factor, high_freq_factor, .. } = scaling
                && high_freq_factor <= low_freq_factor
            {
                return Err(ModelError::Config(format!("`{field}.high_freq_factor` must exceed `low_freq_factor`")));
            }
            Ok(scaling)
        }
        other => Err(ModelError::Config(format!(
            "`{field}.rope_type` `{other}` is not supported (daa supports default, linear, llama3)"
        ))),
    }
}

/// The architecture `config.json` names (`architectures[0]`, else from
/// `model_type`), and the family daa implements it with.
fn architecture_of(raw: &Map<String, Value>) -> Result<(String, Architecture), ModelError> {
    let name = match raw.get("architectures").and_then(Value::as_array).and_then(|a| a.first()) {
        Some(Value::String(name)) => name.clone(),
        _ => match raw.get("model_type").and_then(Value::as_str).unwrap_or("") {
            "llama" => "LlamaForCausalLM",
            "mistral" => "MistralForCausalLM",
            "qwen2" => "Qwen2ForCausalLM",
            "cohere" => "CohereForCausalLM",
            _ => "",
        }
        .to_string(),
    };
    let architecture = match name.as_str() {
        "LlamaForCausalLM"
        | "MistralForCausalLM"
        | "Qwen2ForCausalLM"
        | "LlamaForSequenceClassification"
        | "MistralForSequenceClassification"
        | "Qwen2ForSequenceClassification" => Architecture::Llama,
        "CohereForCausalLM" => Architecture::Cohere,
        other => {
            let model_type = raw.get("model_type").and_then(Value::as_str).unwrap_or("?");
            let shown = if other.is_empty() { "(none)" } else { other };
            return Err(ModelError::UnknownArchitecture {
                found: format!("{shown} (model_type `{model_type}`)"),
                supported: SUPPORTED_ARCHITECTURES.join(", "),
            });
        }
    };
    Ok((name, architecture))
}

/// Widths and head counts of the attention.
struct AttentionShape {
    hidden_size: usize,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

/// The attention's shape, checked: query heads a multiple of key/value
/// heads, an even head width that divides `hidden_size` unless given.
fn attention_shape(raw: &Map<String, Value>) -> Result<AttentionShape, ModelError> {
    let hidden_size = usize_field(raw, "hidden_size")?;
    let num_heads = usize_field(raw, "num_attention_heads")?;
    let num_kv_heads = optional_usize(raw, "num_key_value_heads")?.unwrap_or(num_heads);
    if num_heads % num_kv_heads != 0 {
        return Err(ModelError::Config(format!(
            "`num_attention_heads` ({num_heads}) must be a multiple of `num_key_value_heads` ({num_kv_heads})"
        )));
    }
    let head_dim = optional_usize(raw, "head_dim")?.unwrap_or(hidden_size / num_heads);
    if head_dim % 2 != 0 || (raw.get("head_dim").is_none() && hidden_size % num_heads != 0) {
        return Err(ModelError::Config(format!(
            "head width {head_dim} (hidden_size {hidden_size} / num_attention_heads {num_heads}) must be even and divide hidden_size"
        )));
    }
    Ok(AttentionShape { hidden_size, num_heads, num_kv_heads, head_dim })
}

/// The language-model head, or a reward model's score head with its labels.
fn output_head(raw: &Map<String, Value>, architecture_name: &str) -> Result<OutputHead, ModelError> {
    if !architecture_name.ends_with("ForSequenceClassification") {
        return Ok(OutputHead::LanguageModel);
    }
    let num_labels = match raw.get("id2label") {
        Some(Value::Object(labels)) => labels.len(),
        _ => optional_usize(raw, "num_labels")?.unwrap_or(2),
    };
    if num_labels == 0 {
        return Err(ModelError::Config("`id2label` is empty: the score head needs at least one label".into()));
    }
    Ok(OutputHead::SequenceClassification { num_labels })
}

impl ModelConfig {
    /// Parses a `config.json` text. Errors name the field at fault.
    pub fn from_json(text: &str) -> Result<Self, ModelError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| ModelError::Config(format!("not valid JSON: {e}")))?;
        let Value::Object(raw) = value else {
            return Err(ModelError::Config("expected a JSON object".into()));
        };
        Self::from_map(raw)
    }

    /// Builds the description from a parsed `config.json` object.
    pub fn from_map(raw: Map<String, Value>) -> Result<Self, ModelError> {
        let (architecture_name, architecture) = architecture_of(&raw)?;
        let act = raw.get("hidden_act").and_then(Value::as_str).unwrap_or("silu");
        if act != "silu" {
            return Err(ModelError::Config(format!("field `hidden_act` is `{act}`; daa supports `silu` (SwiGLU)")));
        }
        let AttentionShape { hidden_size, num_heads, num_kv_heads, head_dim } = attention_shape(&raw)?;
        let is_qwen2 = architecture_name.starts_with("Qwen2For");
        let head = output_head(&raw, &architecture_name)?;
        let is_cohere = architecture == Architecture::Cohere;
        let (rope_theta, rope_scaling) = rope(&raw)?;
        if is_cohere && bool_field(&raw, "use_qk_norm", false)? {
            return Err(ModelError::Config(
                "field `use_qk_norm` is true (Command R+): per-head query/key norms are not supported yet".into(),
            ));
        }
        if is_qwen2 && bool_field(&raw, "use_sliding_window", false)? {
            return Err(ModelError::Config(
                "field `use_sliding_window` is true: Qwen2's per-layer sliding window is not supported yet".into(),
            ));
        }
        let attention_bias = bool_field(&raw, "attention_bias", false)?;
        let sliding_window =
            if architecture_name.starts_with("MistralFor") { optional_usize(&raw, "sliding_window")? } else { None };
        Ok(Self {
            architecture,
            vocab_size: usize_field(&raw, "vocab_size")?,
            hidden_size,
            intermediate_size: usize_field(&raw, "intermediate_size")?,
            num_layers: usize_field(&raw, "num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            norm_eps: if is_cohere {
                f64_field(&raw, "layer_norm_eps", 1e-5)?
            } else {
                f64_field(&raw, "rms_norm_eps", 1e-6)?
            },
            norm: if is_cohere { NormKind::LayerNormNoBias } else { NormKind::Rms },
            rope_theta,
            rope_scaling,
            rope_interleaved: is_cohere,
            max_position_embeddings: optional_usize(&raw, "max_position_embeddings")?.unwrap_or(2048),
            sliding_window,
            tie_word_embeddings: bool_field(&raw, "tie_word_embeddings", is_cohere)?,
            head,
            qkv_bias: attention_bias || is_qwen2,
            o_bias: attention_bias,
            mlp_bias: bool_field(&raw, "mlp_bias", false)?,
            parallel_block: is_cohere,
            logit_scale: if is_cohere { f64_field(&raw, "logit_scale", 0.0625)? } else { 1.0 },
            architecture_name,
            raw,
        })
    }

    /// The `config.json` text to write beside saved weights: the original
    /// fields, with `torch_dtype` naming the saved dtype.
    pub fn to_json(&self, torch_dtype: &str) -> String {
        let mut raw = self.raw.clone();
        raw.insert("torch_dtype".into(), Value::String(torch_dtype.into()));
        serde_json::to_string_pretty(&Value::Object(raw)).unwrap_or_default()
    }

    /// Number of trainable parameters.
    pub fn parameter_count(&self) -> usize {
        let d = self.hidden_size;
        let head = match self.head {
            OutputHead::LanguageModel if !self.tie_word_embeddings => self.vocab_size * d,
            OutputHead::LanguageModel => 0,
            OutputHead::SequenceClassification { num_labels } => num_labels * d,
        };
        self.num_layers * self.block_parameter_count() + self.vocab_size * d + head + d
    }

    /// Parameters of one decoder block: attention (with biases where the
    /// architecture has them), MLP, norms.
    pub fn block_parameter_count(&self) -> usize {
        let (d, hd) = (self.hidden_size, self.head_dim);
        let q = d * self.num_heads * hd + usize::from(self.qkv_bias) * self.num_heads * hd;
        let kv = 2 * (d * self.num_kv_heads * hd + usize::from(self.qkv_bias) * self.num_kv_heads * hd);
        let o = self.num_heads * hd * d + usize::from(self.o_bias) * d;
        let mlp = 3 * d * self.intermediate_size + usize::from(self.mlp_bias) * (2 * self.intermediate_size + d);
        let norms = if self.parallel_block { d } else { 2 * d };
        q + kv + o + mlp + norms
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{ModelConfig, RopeScaling};
    use crate::model::tiny_configs::llama_config;

    fn parse(edit: impl FnOnce(&mut serde_json::Value)) -> Result<ModelConfig, String> {
        let mut config = llama_config(64, 32, 1);
        edit(&mut config);
        ModelConfig::from_json(&config.to_string()).map_err(|e| e.to_string())
    }

    #[test]
    fn rope_parameters_of_transformers_5_read_like_rope_theta_and_rope_scaling() {
        let scaling = json!({"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 8192, "rope_type": "llama3"});
        let legacy = parse(|c| {
            c["rope_theta"] = json!(500000.0);
            c["rope_scaling"] = scaling.clone();
        })
        .unwrap();
        let v5 = parse(|c| {
            c.as_object_mut().unwrap().remove("rope_theta");
            let mut parameters = scaling.clone();
            parameters["rope_theta"] = json!(500000.0);
            c["rope_parameters"] = parameters;
        })
        .unwrap();
        assert_eq!((v5.rope_theta, v5.rope_scaling), (500000.0, legacy.rope_scaling));
        assert_eq!(legacy.rope_theta, 500000.0);
        assert!(matches!(v5.rope_scaling, RopeScaling::Llama3 { factor: 8.0, .. }));
        // What transformers 5 writes for a plain Llama.
        let plain = parse(|c| {
            c.as_object_mut().unwrap().remove("rope_theta");
            c["rope_parameters"] = json!({"rope_theta": 10000.0, "rope_type": "default"});
        })
        .unwrap();
        assert_eq!((plain.rope_theta, plain.rope_scaling), (10000.0, RopeScaling::None));
        let e = parse(|c| c["rope_parameters"] = json!({"rope_theta": 1e4, "rope_type": "yarn", "factor": 4.0}))
            .unwrap_err();
        assert!(e.contains("`rope_parameters.rope_type` `yarn` is not supported"), "{e}");
        let e = parse(|c| c["rope_parameters"] = json!({"rope_theta": -1.0})).unwrap_err();
        assert!(e.contains("`rope_parameters.rope_theta` must be a positive number"), "{e}");
    }
}
