//! Reading rows and normalising the schema.
//!
//! Accepted (as in binarized UltraFeedback and TRL's preference datasets):
//! - `prompt`, `chosen`, `rejected` as plain strings;
//! - `prompt` a string or a list of messages `{role, content}`, and `chosen` /
//!   `rejected` lists of messages: either the whole conversation (the prompt
//!   turns, then the assistant reply, as UltraFeedback stores them) or only
//!   the reply.
//!
//! Other fields are kept in each [`Example`] variant's `extra` map.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Message {
    /// `system`, `user`, `assistant`, …
    pub role: String,
    /// Text.
    pub content: String,
}

/// One row as read: its 1-based line (JSONL) or row (Parquet) number and
/// its value, or why it could not be parsed.
#[derive(Debug, Clone)]
pub struct RawRow {
    /// 1-based position in the file.
    pub row: usize,
    /// The parsed object, or the parse error.
    pub value: Result<Value, String>,
}

/// A row in normal form.
#[derive(Debug, Clone, PartialEq)]
pub enum Example {
    /// A conversation and two assistant replies.
    Chat {
        /// The turns before the reply.
        prompt: Vec<Message>,
        /// The preferred reply.
        chosen: Message,
        /// The dispreferred reply.
        rejected: Message,
        /// Fields other than prompt, chosen, rejected.
        extra: Map<String, Value>,
    },
    /// Plain text: the completion follows the prompt directly.
    Text {
        /// Prompt text.
        prompt: String,
        /// Preferred completion.
        chosen: String,
        /// Dispreferred completion.
        rejected: String,
        /// Fields other than prompt, chosen, rejected.
        extra: Map<String, Value>,
    },
}

/// Reads every row of a `.jsonl` / `.json` (one object per line) or
/// `.parquet` file.
pub fn read_rows(path: &Path) -> Result<Vec<RawRow>> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "jsonl" | "json" | "ndjson" => read_jsonl(path),
        "parquet" => super::parquet_rows::read_parquet(path),
        _ => bail!("{}: unknown data format (expected .jsonl or .parquet)", path.display()),
    }
}

fn read_jsonl(path: &Path) -> Result<Vec<RawRow>> {
    let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut rows = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{}: line {}: cannot read", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let value = serde_json::from_str::<Value>(&line).map_err(|e| format!("not valid JSON ({e})"));
        rows.push(RawRow { row: i + 1, value });
    }
    Ok(rows)
}

fn messages(field: &str, value: &Value) -> Result<Vec<Message>, String> {
    let Some(list) = value.as_array() else {
        return Err(format!("`{field}` must be a string or a list of messages"));
    };
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let text = |key: &str| m.get(key).and_then(Value::as_str).map(str::to_string);
            match (text("role"), text("content")) {
                (Some(role), Some(content)) => Ok(Message { role, content }),
                _ => Err(format!("`{field}[{i}]` must be an object with string `role` and `content`")),
            }
        })
        .collect()
}

/// A prompt to continue (generation): plain text, or a conversation that the
/// assistant answers next.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Plain text: the completion follows directly.
    Text(String),
    /// Chat messages, rendered with the checkpoint's template.
    Chat(Vec<Message>),
}

impl Prompt {
    /// The `prompt` field of a row: a string or a non-empty list of messages.
    pub fn parse(value: &Value) -> Result<Self, String> {
        let Some(prompt) = value.as_object().and_then(|o| o.get("prompt")).filter(|v| !v.is_null()) else {
            return Err(if value.is_object() {
                "missing field `prompt`".into()
            } else {
                "row is not a JSON object".into()
            });
        };
        Self::from_field("prompt", prompt)
    }

    /// A string or a non-empty list of messages found in `field`.
    pub fn from_field(field: &str, value: &Value) -> Result<Self, String> {
        match value {
            Value::String(text) => Ok(Prompt::Text(text.clone())),
            other => {
                let turns = messages(field, other)?;
                if turns.is_empty() {
                    return Err(format!("`{field}` has no messages"));
                }
                Ok(Prompt::Chat(turns))
            }
        }
    }

    /// What a judge reads of the prompt: the text, or the conversation's
    /// last user message (`None` when it has none).
    pub fn judge_text(&self) -> Option<&str> {
        match self {
            Prompt::Text(text) => Some(text),
            Prompt::Chat(turns) => turns.iter().rev().find(|m| m.role == "user").map(|m| m.content.as_str()),
        }
    }
}

/// Splits a chosen/rejected conversation into (turns before, reply).
fn reply(field: &str, mut list: Vec<Message>) -> Result<(Vec<Message>, Message), String> {
    let Some(last) = list.pop() else {
        return Err(format!("`{field}` is an empty list"));
    };
    if last.role != "assistant" {
        return Err(format!("the last message of `{field}` has role `{}`, expected `assistant`", last.role));
    }
    Ok((list, last))
}

impl Example {
    /// Normalises one row. The error says what is wrong with it (missing
    /// field, empty completion, chosen identical to rejected, …).
    pub fn parse(value: &Value) -> Result<Self, String> {
        let Some(object) = value.as_object() else {
            return Err("row is not a JSON object".into());
        };
        let get =
            |name: &str| object.get(name).filter(|v| !v.is_null()).ok_or_else(|| format!("missing field `{name}`"));
        let (prompt, chosen, rejected) = (get("prompt")?, get("chosen")?, get("rejected")?);
        let extra: Map<String, Value> = object
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "prompt" | "chosen" | "rejected"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let example = match (prompt, chosen, rejected) {
            (Value::String(p), Value::String(c), Value::String(r)) => {
                Example::Text { prompt: p.clone(), chosen: c.clone(), rejected: r.clone(), extra }
            }
            _ => {
                let (chosen_turns, chosen) = reply("chosen", messages("chosen", chosen)?)?;
                let (rejected_turns, rejected) = reply("rejected", messages("rejected", rejected)?)?;
                let prompt = if !chosen_turns.is_empty() {
                    if chosen_turns != rejected_turns {
                        return Err("`chosen` and `rejected` continue different conversations".into());
                    }
                    chosen_turns
                } else {
                    match prompt {
                        Value::String(p) => vec![Message { role: "user".into(), content: p.clone() }],
                        other => messages("prompt", other)?,
                    }
                };
                if prompt.is_empty() {
                    return Err("the prompt has no messages".into());
                }
                Example::Chat { prompt, chosen, rejected, extra }
            }
        };
        let (c, r) = example.completions();
        if c.trim().is_empty() {
            return Err("empty `chosen` completion".into());
        }
        if r.trim().is_empty() {
            return Err("empty `rejected` completion".into());
        }
        if c == r {
            return Err("`chosen` and `rejected` are identical".into());
        }
        Ok(example)
    }

    /// The chosen and rejected completion texts.
    pub fn completions(&self) -> (&str, &str) {
        match self {
            Example::Chat { chosen, rejected, .. } => (&chosen.content, &rejected.content),
            Example::Text { chosen, rejected, .. } => (chosen, rejected),
        }
    }
}
