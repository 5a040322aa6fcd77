//! `daa judge`: rewards of completions from the testbed's gold reward or a
//! Hugging Face reward model.
//!
//! Rows with `prompt` and `completion` (what `daa generate` writes) get
//! `reward`; preference rows with `chosen` and `rejected` get
//! `reward_chosen` and `reward_rejected`. A prompt or reply may be a string
//! or chat messages (the prompt's last user message, the reply's last
//! assistant message). A completion whose `finish_reason` is `length` did
//! not end by itself (the gold reward counts that).

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use daa_core::io::write_bytes_atomic;
use daa_train::backend::{BackendTask, ComputeBackend, with_compute_backend};
use daa_train::data::{Prompt, read_rows};
use daa_train::judge::{GoldJudge, Judge, Judged};
use daa_train::reward_model::RewardModelJudge;
use serde_json::{Value, json};

use crate::progress::bar;

/// Arguments of `daa judge`.
#[derive(Debug, Args, Clone)]
pub struct JudgeArgs {
    /// `gold` (the testbed's gold reward) or a reward model checkpoint folder
    /// (`LlamaForSequenceClassification`, one label) or its Hub id in the
    /// local Hugging Face cache.
    #[arg(long)]
    judge: String,
    /// Rows to score (.jsonl or .parquet).
    #[arg(long)]
    data: PathBuf,
    /// Output JSON Lines: the rows with `reward` (or `reward_chosen`, `reward_rejected`).
    #[arg(long)]
    out: PathBuf,
    /// Sequences a reward model scores together.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Where a reward model runs.
    #[arg(long, value_enum, default_value_t = ComputeBackend::Cpu)]
    backend: ComputeBackend,
}

/// The text of a prompt field: a string, or the last user message of a conversation.
fn prompt_text(field: &str, value: &Value) -> Option<String> {
    Prompt::from_field(field, value).ok()?.judge_text().map(str::to_string)
}

/// The text of a reply: a string, or the last assistant message.
fn reply_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Array(turns) => turns
            .last()
            .filter(|m| m.get("role").and_then(Value::as_str) == Some("assistant"))
            .and_then(|m| m.get("content").and_then(Value::as_str))
            .map(str::to_string),
        _ => None,
    }
}

/// What one row asks to be judged: (prompt, completion, ended) items and the fields they fill.
struct RowItems {
    items: Vec<(String, String, bool)>,
    fields: &'static [&'static str],
}

fn row_items(value: &Value) -> Result<RowItems, String> {
    let Some(object) = value.as_object() else {
        return Err("row is not a JSON object".into());
    };
    let field = |name: &str| object.get(name).filter(|v| !v.is_null());
    if let Some(completion) = field("completion") {
        let prompt = field("prompt").ok_or("missing field `prompt` (beside `completion`)")?;
        let prompt = prompt_text("prompt", prompt).ok_or("`prompt` must be a string or messages with a user turn")?;
        let completion = reply_text(completion).ok_or("`completion` must be a string")?;
        let ended = field("finish_reason").and_then(Value::as_str) != Some("length");
        return Ok(RowItems { items: vec![(prompt, completion, ended)], fields: &["reward"] });
    }
    let (Some(chosen), Some(rejected)) = (field("chosen"), field("rejected")) else {
        return Err("expected `prompt` and `completion`, or `chosen` and `rejected`".into());
    };
    let prompt = field("prompt")
        .and_then(|p| prompt_text("prompt", p))
        .or_else(|| prompt_text("chosen", chosen))
        .ok_or("no prompt: neither a `prompt` field nor a user turn in `chosen`")?;
    let reply = |name: &str, v: &Value| {
        reply_text(v).ok_or(format!("`{name}` must be a string or messages ending with the assistant's"))
    };
    Ok(RowItems {
        items: vec![(prompt.clone(), reply("chosen", chosen)?, true), (prompt, reply("rejected", rejected)?, true)],
        fields: &["reward_chosen", "reward_rejected"],
    })
}

impl JudgeArgs {
    /// Reads, judges with `judge` and writes the rows.
    fn judge_with(&self, judge: &mut dyn Judge) -> Result<()> {
        let source = self.data.display().to_string();
        let rows = read_rows(&self.data)?;
        let mut values = Vec::with_capacity(rows.len());
        let mut parts = Vec::with_capacity(rows.len());
        for raw in &rows {
            let value = raw.value.clone().map_err(|e| anyhow!("{source}: row {}: {e}", raw.row))?;
            parts.push(row_items(&value).map_err(|e| anyhow!("{source}: row {}: {e}", raw.row))?);
            values.push(value);
        }
        let bar = bar(rows.len() as u64, "judging");
        let chunk_rows = self.batch_size.max(1);
        let mut text = String::new();
        let (mut sum, mut count, mut agree, mut pairs) = (0.0, 0usize, 0usize, 0usize);
        for (chunk, start) in parts.chunks(chunk_rows).zip((0..).step_by(chunk_rows)) {
            let items: Vec<Judged> = chunk
                .iter()
                .flat_map(|p| p.items.iter())
                .map(|(prompt, completion, ended)| Judged { prompt, completion, ended: *ended })
                .collect();
            let rewards = judge.rewards(&items).map_err(|e| {
                anyhow!("{source}: rows {}–{}: {e}", rows[start].row, rows[start + chunk.len() - 1].row)
            })?;
            let mut next = rewards.into_iter();
            for (offset, p) in chunk.iter().enumerate() {
                let mut row = values[start + offset].as_object().cloned().unwrap_or_default();
                let got: Vec<f64> = p.fields.iter().map(|_| next.next().unwrap_or(f64::NAN)).collect();
                if let Some(bad) = got.iter().find(|r| !r.is_finite()) {
                    bail!("{source}: row {}: the judge gave a non-finite reward ({bad})", rows[start + offset].row);
                }
                for (name, r) in p.fields.iter().zip(&got) {
                    row.insert((*name).to_string(), json!(r));
                }
                sum += got.iter().sum::<f64>();
                count += got.len();
                if got.len() == 2 {
                    pairs += 1;
                    agree += usize::from(got[0] > got[1]);
                }
                text.push_str(&serde_json::to_string(&Value::Object(row))?);
                text.push('\n');
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        write_bytes_atomic(&self.out, text.as_bytes())?;
        eprint!("judged {} rows with {}: mean reward {:.4}", rows.len(), judge.name(), sum / count.max(1) as f64);
        if pairs > 0 {
            eprint!(", chosen above rejected in {agree} of {pairs} pairs");
        }
        eprintln!("; wrote {}", self.out.display());
        Ok(())
    }
}

impl BackendTask for JudgeArgs {
    type Output = ();
    type Error = anyhow::Error;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let dir = PathBuf::from(&self.judge);
        let mut judge = RewardModelJudge::<B::InnerBackend>::open(&dir, self.batch_size, &device)?;
        self.judge_with(&mut judge)
    }
}

/// Runs `daa judge`.
pub fn run(args: &JudgeArgs) -> Result<()> {
    if args.judge == "gold" {
        return args.judge_with(&mut GoldJudge);
    }
    let judge = crate::model_arg::model_path(&args.judge)
        .map_err(|e| {
            anyhow!("--judge {}: neither `gold` nor a reward model folder or cached Hub id ({e})", args.judge)
        })?
        .display()
        .to_string();
    let resolved = JudgeArgs { judge: judge.clone(), ..args.clone() };
    with_compute_backend(args.backend, 0, resolved).with_context(|| format!("judge {judge}"))
}
