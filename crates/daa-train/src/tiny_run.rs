//! The built-in tiny model and preference task, generated on the fly in the
//! real Hugging Face formats (so the run exercises the same loading code as a
//! downloaded checkpoint): a byte-level BPE `tokenizer.json`, a
//! `tokenizer_config.json` with a chat template, a Llama or Command R
//! `config.json` with random `model.safetensors`, and a JSON Lines dataset in
//! binarized UltraFeedback's schema.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use burn::backend::NdArray;
use serde_json::{Value, json};
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use daa_core::io::{write_bytes_atomic as write_bytes, write_dir_atomic as write_dir};

use crate::checkpoint::save_model;
pub use crate::model::tiny_configs::{cohere_config, llama_config};
use crate::model::{CausalLm, ModelConfig, RandomWeights};
use crate::rng::splitmix64;

/// Special tokens after the 256 byte tokens, in id order.
pub const SPECIAL_TOKENS: [&str; 5] = ["<|bos|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"];

/// Vocabulary of the byte-level tokenizer: 256 bytes + specials.
pub const TINY_VOCAB: usize = 256 + SPECIAL_TOKENS.len();

/// A chat template in the style of Llama 3's, for the tiny tokenizer.
pub const TINY_CHAT_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] | trim }}<|end|>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}";

/// GPT-2's reversible byte → printable character map (what byte-level BPE
/// vocabularies are written in).
fn byte_chars() -> Vec<char> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut extra = 0;
    (0..256u32)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap_or('?')
            } else {
                extra += 1;
                char::from_u32(255 + extra).unwrap_or('?')
            }
        })
        .collect()
}

/// A byte-level BPE tokenizer with no merges: every byte is a token, and
/// [`SPECIAL_TOKENS`] follow.
pub fn byte_level_tokenizer() -> Result<Tokenizer> {
    let vocab: tokenizers::models::bpe::Vocab =
        byte_chars().into_iter().enumerate().map(|(i, c)| (c.to_string(), i as u32)).collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, vec![])
        .build()
        .map_err(|e| anyhow!("building the byte-level BPE: {e}"))?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    let specials: Vec<AddedToken> = SPECIAL_TOKENS.iter().map(|t| AddedToken::from(*t, true)).collect();
    tokenizer.add_special_tokens(&specials);
    Ok(tokenizer)
}

/// Writes `tokenizer.json` and `tokenizer_config.json` (with the chat template) into `dir`.
pub fn write_tokenizer(dir: &Path) -> Result<()> {
    let tokenizer = byte_level_tokenizer()?;
    let text = tokenizer.to_string(true).map_err(|e| anyhow!("serialising the tokenizer: {e}"))?;
    write_bytes(&dir.join("tokenizer.json"), text.as_bytes())?;
    let config = json!({
        "bos_token": "<|bos|>",
        "eos_token": "<|end|>",
        "pad_token": "<|end|>",
        "chat_template": TINY_CHAT_TEMPLATE,
        "model_max_length": 2048,
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    Ok(write_bytes(&dir.join("tokenizer_config.json"), serde_json::to_string_pretty(&config)?.as_bytes())?)
}

/// Writes a complete checkpoint folder (config, random weights `N(0, std²)`, tokenizer).
pub fn write_checkpoint(dir: &Path, config: &Value, seed: u64, std: f32) -> Result<()> {
    let config = ModelConfig::from_json(&config.to_string())?;
    let device = burn::backend::ndarray::NdArrayDevice::Cpu;
    let model = CausalLm::<NdArray<f32>>::from_weights(&config, &mut RandomWeights { seed, std }, &device)?;
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    write_tokenizer(dir)?;
    save_model(&model, dir, dir)
}

/// The built-in task, `rows` pairs: "What is a plus b?" with the right sum
/// chosen and a wrong one rejected, in UltraFeedback's layout (`prompt`
/// string, `chosen`/`rejected` as whole conversations, extra fields).
pub fn arithmetic_rows(rows: usize, seed: u64) -> Vec<Value> {
    let mut state = seed ^ 0x5EED;
    (0..rows)
        .map(|i| {
            let a = splitmix64(&mut state) % 50;
            let b = splitmix64(&mut state) % 50;
            let offset = 1 + splitmix64(&mut state) % 9;
            let wrong =
                if splitmix64(&mut state).is_multiple_of(2) { a + b + offset } else { (a + b).abs_diff(offset) };
            let prompt = format!("What is {a} plus {b}?");
            let conversation = |answer: u64| {
                json!([
                    {"role": "user", "content": prompt},
                    {"role": "assistant", "content": format!("{a} plus {b} is {answer}.")},
                ])
            };
            json!({
                "prompt": prompt,
                "prompt_id": format!("arith-{i:05}"),
                "chosen": conversation(a + b),
                "rejected": conversation(wrong),
                "score_chosen": 10.0,
                "score_rejected": 1.0,
            })
        })
        .collect()
}

/// Preference rows (as [`arithmetic_rows`] makes them) as a Parquet file's
/// bytes, with `chosen`/`rejected` as lists of message structs the way the
/// Hub stores binarized UltraFeedback (written column by column: each message
/// list is one repetition level, every field required).
pub fn preference_parquet(rows: &[Value]) -> Result<Vec<u8>> {
    use std::sync::Arc;

    use parquet::data_type::{ByteArray, ByteArrayType, DoubleType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;

    const SCHEMA: &str = "message preference {
        REQUIRED BYTE_ARRAY prompt (UTF8);
        REQUIRED BYTE_ARRAY prompt_id (UTF8);
        REQUIRED group chosen (LIST) { REPEATED group list { REQUIRED group element {
            REQUIRED BYTE_ARRAY content (UTF8); REQUIRED BYTE_ARRAY role (UTF8); } } }
        REQUIRED group rejected (LIST) { REPEATED group list { REQUIRED group element {
            REQUIRED BYTE_ARRAY content (UTF8); REQUIRED BYTE_ARRAY role (UTF8); } } }
        REQUIRED DOUBLE score_chosen;
        REQUIRED DOUBLE score_rejected;
    }";
    let text = |r: &Value, field: &str| -> Result<ByteArray> {
        r.as_str().map(ByteArray::from).ok_or_else(|| anyhow!("`{field}` must be a string, found {r}"))
    };
    // One leaf column at a time, in schema order: (values, repetition levels).
    let strings = |field: &str| -> Result<(Vec<ByteArray>, Option<Vec<i16>>)> {
        Ok((rows.iter().map(|r| text(&r[field], field)).collect::<Result<_>>()?, None))
    };
    let messages = |field: &str, key: &str| -> Result<(Vec<ByteArray>, Option<Vec<i16>>)> {
        let (mut values, mut repetition) = (Vec::new(), Vec::new());
        for r in rows {
            let list = r[field].as_array().ok_or_else(|| anyhow!("`{field}` must be a list of messages"))?;
            for (i, m) in list.iter().enumerate() {
                values.push(text(&m[key], key)?);
                repetition.push(i16::from(i > 0));
            }
        }
        Ok((values, Some(repetition)))
    };
    let leaves = [
        strings("prompt")?,
        strings("prompt_id")?,
        messages("chosen", "content")?,
        messages("chosen", "role")?,
        messages("rejected", "content")?,
        messages("rejected", "role")?,
    ];
    let schema = Arc::new(parquet::schema::parser::parse_message_type(SCHEMA)?);
    let properties = Arc::new(WriterProperties::builder().set_compression(parquet::basic::Compression::SNAPPY).build());
    let mut writer = SerializedFileWriter::new(Vec::new(), schema, properties)?;
    let mut group = writer.next_row_group()?;
    for (values, repetition) in leaves {
        let mut column = group.next_column()?.ok_or_else(|| anyhow!("the Parquet schema has fewer columns"))?;
        let definition = repetition.as_ref().map(|r| vec![1i16; r.len()]);
        column.typed::<ByteArrayType>().write_batch(&values, definition.as_deref(), repetition.as_deref())?;
        column.close()?;
    }
    for field in ["score_chosen", "score_rejected"] {
        let mut column = group.next_column()?.ok_or_else(|| anyhow!("the Parquet schema has fewer columns"))?;
        let values: Vec<f64> = rows
            .iter()
            .map(|r| r[field].as_f64().ok_or_else(|| anyhow!("`{field}` must be a number")))
            .collect::<Result<_>>()?;
        column.typed::<DoubleType>().write_batch(&values, None, None)?;
        column.close()?;
    }
    group.close()?;
    Ok(writer.into_inner()?)
}

/// Generates the built-in model and data under `dir` (once; later calls
/// reuse them). Returns the checkpoint folder and the data file.
pub fn materialize(dir: &Path, seed: u64) -> Result<(PathBuf, PathBuf)> {
    let model_dir = dir.join("model");
    let data = dir.join("data.jsonl");
    if !model_dir.join("model.safetensors").exists() {
        if model_dir.exists() {
            std::fs::remove_dir_all(&model_dir).with_context(|| format!("{}: cannot clear", model_dir.display()))?;
        }
        write_dir(&model_dir, |tmp| write_checkpoint(tmp, &llama_config(TINY_VOCAB, 64, 2), seed, 0.02))?;
    }
    if !data.exists() {
        let text: String = arithmetic_rows(1024, seed).iter().map(|r| format!("{r}\n")).collect();
        write_bytes(&data, text.as_bytes())?;
    }
    Ok((model_dir, data))
}
