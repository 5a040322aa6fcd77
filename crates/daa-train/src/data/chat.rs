//! The tokenizer and the chat template of a checkpoint.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use minijinja::{Environment, ErrorKind, context};
use serde_json::Value;
use tokenizers::Tokenizer;

use super::library_panics::catching_panics;
use super::rows::Message;

/// The date templates see (`date_string`, `strftime_now`): fixed, so that a
/// dataset tokenises the same way every day and its cache key stays valid.
pub const TEMPLATE_DATE: &str = "26 Jul 2024";

/// Instructions one rendering may execute: a template from the Hub is a
/// program, and one that loops or recurses without end stops here with an
/// error instead of hanging the run. Llama 3's template spends about 60 per
/// message, so this allows conversations of thousands of turns.
pub const TEMPLATE_FUEL: u64 = 2_000_000;

/// Bytes one rendering may produce (a conversation to tokenise, not a book).
pub const TEMPLATE_MAX_OUTPUT: usize = 16 << 20;

/// A Jinja chat template from `tokenizer_config.json`, rendered with
/// minijinja (with Python string methods, as Hugging Face templates use).
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// The template source (part of the data cache key).
    pub source: String,
}

fn token_text(config: &Value, key: &str) -> String {
    match config.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(o)) => o.get("content").and_then(Value::as_str).unwrap_or("").to_string(),
        _ => String::new(),
    }
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token` / `eos_token` are what the template sees.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
        });
        env.add_function("strftime_now", |_format: String| TEMPLATE_DATE.to_string());
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.add_template_owned("chat", source.to_string()).context("the chat template does not compile")?;
        Ok(Self { env, bos_token: bos_token.into(), eos_token: eos_token.into(), source: source.into() })
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends where the
    /// assistant's reply begins.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let template = self.env.get_template("chat").context("the chat template is missing")?;
        let mut out = LimitedOutput { text: Vec::new(), overflow: false };
        let rendered = template.render_captured_to(
            context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
                date_string => TEMPLATE_DATE,
            },
            &mut out,
        );
        if out.overflow {
            bail!(
                "rendering the chat template: its output passed {TEMPLATE_MAX_OUTPUT} bytes (the limit for one conversation)"
            );
        }
        match rendered {
            Err(e) if e.kind() == ErrorKind::OutOfFuel => bail!(
                "rendering the chat template: it ran more than {TEMPLATE_FUEL} instructions for one conversation \
                 (a loop or recursion without end?)"
            ),
            Err(e) => Err(e).context("rendering the chat template"),
            Ok(_) => String::from_utf8(out.text).context("rendering the chat template: the output is not UTF-8"),
        }
    }
}

/// What a rendering writes, refused past [`TEMPLATE_MAX_OUTPUT`] bytes.
struct LimitedOutput {
    text: Vec<u8>,
    overflow: bool,
}

impl std::io::Write for LimitedOutput {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.text.len() + bytes.len() > TEMPLATE_MAX_OUTPUT {
            self.overflow = true;
            return Err(std::io::Error::other("chat template output limit"));
        }
        self.text.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A checkpoint's tokenizer with its special tokens and chat template.
#[derive(Debug)]
pub struct TextEncoder {
    /// The `tokenizers` tokenizer.
    pub tokenizer: Tokenizer,
    /// The chat template, when the checkpoint has one.
    pub template: Option<ChatTemplate>,
    /// Beginning-of-sequence id (prepended to plain-text prompts).
    pub bos_id: Option<u32>,
    /// End-of-sequence id (appended to plain-text completions).
    pub eos_id: Option<u32>,
    /// Id used for padding (never scored).
    pub pad_id: u32,
    /// Ids that end a generated reply: the EOS id and every `eos_token_id`
    /// of `generation_config.json` (Llama 3 lists its end-of-turn there).
    pub stop_ids: Vec<u32>,
}

/// `eos_token_id` of `dir/generation_config.json` (a number or a list), if
/// the file exists.
fn generation_stop_ids(dir: &Path) -> Result<Vec<u32>> {
    let path = dir.join("generation_config.json");
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    let config: Value = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?;
    let id = |v: &Value| {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| anyhow!("{}: `eos_token_id` must be token ids, found {v}", path.display()))
    };
    match config.get("eos_token_id") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(list)) => list.iter().map(id).collect(),
        Some(one) => Ok(vec![id(one)?]),
    }
}

impl TextEncoder {
    /// Reads `tokenizer.json` and `tokenizer_config.json` of `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        // tokenizers 0.22.2 panics on some malformed files (a `decoder` whose
        // JSON is cut short: "Helper: Error(...)"), found by fuzzing.
        let tokenizer = catching_panics("tokenizers", || Tokenizer::from_file(&path))
            .and_then(|loaded| loaded.map_err(|e| e.to_string()))
            .map_err(|e| anyhow!("{}: cannot load the tokenizer: {e}", path.display()))?;
        let config_path = dir.join("tokenizer_config.json");
        let config: Value = if config_path.exists() {
            let text = std::fs::read_to_string(&config_path)
                .with_context(|| format!("{}: cannot read", config_path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", config_path.display()))?
        } else {
            Value::Null
        };
        let (bos, eos, pad) =
            (token_text(&config, "bos_token"), token_text(&config, "eos_token"), token_text(&config, "pad_token"));
        let id = |text: &str| if text.is_empty() { None } else { tokenizer.token_to_id(text) };
        let template_source = match config.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template").and_then(Value::as_str))
                .map(str::to_string),
            _ => {
                let jinja = dir.join("chat_template.jinja");
                if jinja.exists() {
                    Some(std::fs::read_to_string(&jinja).with_context(|| format!("{}: cannot read", jinja.display()))?)
                } else {
                    None
                }
            }
        };
        let template = match template_source {
            Some(source) => {
                Some(ChatTemplate::new(&source, &bos, &eos).with_context(|| format!("{}", config_path.display()))?)
            }
            None => None,
        };
        let (bos_id, eos_id) = (id(&bos), id(&eos));
        let pad_id = id(&pad).or(eos_id).unwrap_or(0);
        let mut stop_ids: Vec<u32> = eos_id.into_iter().collect();
        for extra in generation_stop_ids(dir)? {
            if !stop_ids.contains(&extra) {
                stop_ids.push(extra);
            }
        }
        Ok(Self { tokenizer, template, bos_id, eos_id, pad_id, stop_ids })
    }

    /// Token ids of `text`, special-token strings included as written (the
    /// template already placed them), no extra special tokens added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self.tokenizer.encode(text, false).map_err(|e| anyhow!("tokenizing: {e}"))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of generated ids, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids, true).map_err(|e| anyhow!("decoding token ids: {e}"))
    }

    /// Renders a conversation; fails when the checkpoint has no template.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        match &self.template {
            Some(t) => t.render(messages, add_generation_prompt),
            None => bail!("the data is conversational but tokenizer_config.json has no `chat_template`"),
        }
    }
}
