//! The fuzz targets: bytes in, the parser run as `daa` runs it, a panic only
//! on a defect (see the crate documentation).

use std::io::Cursor;
use std::path::Path;
use std::sync::OnceLock;

use burn::backend::Flex;
use daa_core::io::SafetensorsFile;
use daa_core::{Backend, Cpu, HostTensor, LossHyperParams, LossName, PreferenceLoss, PreferenceLossParams};
use daa_train::checkpoint::{SafetensorsWeights, load_model, read_config};
use daa_train::data::{EncodeOptions, Message, TextEncoder, encode_rows, read_rows};
use daa_train::records::MetricsRecord;
use daa_train::run::TrainConfig;
use daa_train::run::metrics::read_metrics;

use crate::scratch::{fresh_dir, put};
use crate::split::parts;

/// Tensors larger than this are not converted (a fuzzer's 4 GiB tensor is
/// a valid file that would only measure the machine's memory).
const MAX_CONVERTED_ELEMENTS: usize = 1 << 20;

/// An error for bad input must say which file it was about.
fn assert_names(error: &anyhow::Error, file: &Path) -> Verdict {
    let message = format!("{error:#}");
    let name = file.display().to_string();
    assert!(message.contains(&name), "the error does not name {name}: {message}");
    Rejected
}

/// What a parser made of an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Read, and everything done with it succeeded.
    Accepted,
    /// Refused with an error (the expected outcome for bad input).
    Rejected,
}

use Verdict::{Accepted, Rejected};

fn verdict(ok: bool) -> Verdict {
    if ok { Accepted } else { Rejected }
}

fn nonempty(part: &[u8]) -> Option<&[u8]> {
    (!part.is_empty()).then_some(part)
}

/// A `.safetensors` file: header, every tensor's dtype and shape, and the
/// small ones converted to host tensors.
pub fn safetensors(data: &[u8]) -> Verdict {
    let dir = fresh_dir("safetensors");
    let path = put(&dir, "model.safetensors", Some(data));
    let file = match SafetensorsFile::open(&path) {
        Ok(file) => file,
        Err(e) => return assert_names(&anyhow::Error::new(e), &path),
    };
    for name in file.names() {
        let Some(tensor) = file.get(&name) else { panic!("`{name}` is listed but not found") };
        assert_eq!(tensor.shape().iter().product::<usize>(), tensor.len(), "`{name}`: len is not the shape's product");
        if tensor.dtype().is_ok()
            && tensor.len() <= MAX_CONVERTED_ELEMENTS
            && let Ok(host) = tensor.host()
        {
            assert_eq!(host.len(), tensor.len(), "`{name}`: the host tensor has another length");
        }
        let _ = file.require(&name, "any");
    }
    let _ = file.metadata("format");
    Accepted
}

/// A checkpoint folder: `config.json`, then either `model.safetensors` (no
/// index part) or `model.safetensors.index.json` and two shards; the model
/// is loaded on burn's CPU backend.
pub fn checkpoint(data: &[u8]) -> Verdict {
    let [config, index, first, second] = parts(data, 4)[..] else { unreachable!() };
    let dir = fresh_dir("checkpoint");
    put(&dir, "config.json", nonempty(config));
    if index.is_empty() {
        put(&dir, "model.safetensors", Some(first));
    } else {
        put(&dir, "model.safetensors.index.json", Some(index));
        put(&dir, "model-00001-of-00002.safetensors", Some(first));
        put(&dir, "model-00002-of-00002.safetensors", nonempty(second));
    }
    let _ = read_config(&dir);
    if let Ok(weights) = SafetensorsWeights::open(&dir) {
        let _ = weights.names().count();
    }
    match load_model::<Flex>(&dir, &Default::default()) {
        Ok(_) => Accepted,
        Err(e) => {
            assert!(!format!("{e:#}").is_empty());
            Rejected
        }
    }
}

/// `tokenizer.json`, `tokenizer_config.json` and `generation_config.json`
/// (the last two absent when empty), then a text (the fourth part) encoded,
/// decoded and, when there is a template, rendered as a conversation.
pub fn tokenizer(data: &[u8]) -> Verdict {
    let [tokenizer, config, generation, text] = parts(data, 4)[..] else { unreachable!() };
    let dir = fresh_dir("tokenizer");
    put(&dir, "tokenizer.json", Some(tokenizer));
    put(&dir, "tokenizer_config.json", nonempty(config));
    put(&dir, "generation_config.json", nonempty(generation));
    let encoder = match TextEncoder::open(&dir) {
        Ok(encoder) => encoder,
        Err(e) => {
            assert!(format!("{e:#}").contains(&dir.display().to_string()), "the error names no file: {e:#}");
            return Rejected;
        }
    };
    let text = String::from_utf8_lossy(text);
    let Ok(ids) = encoder.encode(&text) else { return Rejected };
    let decoded = encoder.decode(&ids).is_ok();
    if encoder.template.is_none() {
        return verdict(decoded);
    }
    let conversation = [
        Message { role: "user".into(), content: text.to_string() },
        Message { role: "assistant".into(), content: "ok".into() },
    ];
    verdict(decoded && encoder.render(&conversation, false).is_ok())
}

/// The tokenizer every rows target encodes with: the built-in byte-level one
/// and its chat template.
fn tiny_encoder() -> &'static TextEncoder {
    static ENCODER: OnceLock<TextEncoder> = OnceLock::new();
    ENCODER.get_or_init(|| {
        let dir = fresh_dir("tiny-tokenizer");
        daa_train::tiny_run::write_tokenizer(&dir).expect("the tiny tokenizer");
        TextEncoder::open(&dir).expect("the tiny tokenizer opens")
    })
}

fn rows(file_name: &str, data: &[u8]) -> Verdict {
    let dir = fresh_dir("rows");
    let path = put(&dir, file_name, Some(data));
    let rows = match read_rows(&path) {
        Ok(rows) => rows,
        Err(e) => return assert_names(&e, &path),
    };
    let mut result = Accepted;
    for strict in [false, true] {
        let options = EncodeOptions { max_length: 64, max_prompt_length: 32, strict };
        match encode_rows(&rows, tiny_encoder(), &options, &path.display().to_string()) {
            Ok(set) => assert_eq!(set.pairs.len() + set.skipped_total(), rows.len(), "every row is kept or skipped"),
            Err(e) => result = assert_names(&e, &path),
        }
    }
    result
}

/// Preference rows as JSON Lines, read and encoded (bad rows skipped, then
/// under `strict`).
pub fn rows_jsonl(data: &[u8]) -> Verdict {
    rows("rows.jsonl", data)
}

/// Preference rows as a Parquet file, read and encoded.
pub fn rows_parquet(data: &[u8]) -> Verdict {
    rows("rows.parquet", data)
}

/// The training configuration: TOML text, then `--set` overrides one per
/// line; parsed, validated, and its loss built.
pub fn train_config(data: &[u8]) -> Verdict {
    let [text, overrides] = parts(data, 2)[..] else { unreachable!() };
    let Ok(text) = std::str::from_utf8(text) else { return Rejected };
    let overrides: Vec<String> = String::from_utf8_lossy(overrides).lines().map(str::to_string).collect();
    let Ok(config) = TrainConfig::parse(text, "fuzz.toml", &overrides) else { return Rejected };
    verdict(config.validate().is_ok() && config.loss_params().is_ok())
}

/// A chat template (first part) rendering a conversation (second part, a
/// JSON list of `{role, content}`), with and without the generation prompt.
pub fn chat_template(data: &[u8]) -> Verdict {
    let [source, messages] = parts(data, 2)[..] else { unreachable!() };
    let source = String::from_utf8_lossy(source);
    let Ok(template) = daa_train::data::ChatTemplate::new(&source, "<s>", "</s>") else { return Rejected };
    let messages: Vec<Message> = serde_json::from_slice::<serde_json::Value>(messages)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|m| Message {
            role: m["role"].as_str().unwrap_or("user").to_string(),
            content: m["content"].as_str().unwrap_or("").to_string(),
        })
        .collect();
    let mut result = Accepted;
    for add_generation_prompt in [false, true] {
        if let Err(e) = template.render(&messages, add_generation_prompt) {
            assert!(format!("{e:#}").contains("chat template"), "the error does not say where: {e:#}");
            result = Rejected;
        }
    }
    result
}

/// `daa loss` input: the first byte picks the catalog loss, the rest is
/// JSON Lines; every validated pair must give a finite loss and gradient.
pub fn loss_lines(data: &[u8]) -> Verdict {
    let Some((&pick, lines)) = data.split_first() else { return Rejected };
    let name = LossName::ALL[usize::from(pick) % LossName::ALL.len()];
    let loss = PreferenceLoss::with_defaults(name, LossHyperParams::default()).expect("catalog defaults");
    let params = PreferenceLossParams { loss, nll: None };
    let Ok(pairs) = daa_cli::loss_lines::parse_lines(Cursor::new(lines), "fuzz.jsonl", &params) else {
        return Rejected;
    };
    if pairs.is_empty() {
        return Rejected;
    }
    let flat: Vec<f64> = pairs.iter().flat_map(|p| p.logps.to_columns()).collect();
    let cpu = Cpu::with_threads(1).expect("a one-thread CPU backend");
    let tensor = HostTensor::from_f64(flat, &[pairs.len(), 6]).expect("pairs × 6");
    let out = cpu.preference_loss(&cpu.upload(&tensor).expect("upload"), &params).expect("validated pairs compute");
    let out = cpu.download(&out).expect("download").to_f64_vec("loss").expect("f64 output");
    for (pair, row) in pairs.iter().zip(out.chunks_exact(daa_core::preference::PAIR_OUTPUT_COLUMNS)) {
        assert!(row.iter().all(|v| v.is_finite()), "line {}: validated, yet {row:?} is not finite", pair.line);
    }
    Accepted
}

/// `metrics.jsonl`: every record, and what the experiment report takes
/// from them (evaluations with samples, turning points).
pub fn metrics(data: &[u8]) -> Verdict {
    let dir = fresh_dir("metrics");
    let path = put(&dir, "metrics.jsonl", Some(data));
    match read_metrics(&path) {
        Ok(records) => {
            let evals = records.iter().filter_map(MetricsRecord::eval).filter(|e| e.samples.is_some()).count();
            let events = records.iter().filter_map(MetricsRecord::event).count();
            let steps = records.iter().map(MetricsRecord::step).max();
            assert!(evals + events <= records.len() && (records.is_empty() || steps.is_some()));
            Accepted
        }
        Err(e) => assert_names(&e, &path),
    }
}
