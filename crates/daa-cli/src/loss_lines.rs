//! `daa loss`'s input: JSON Lines of summed log-probabilities, one pair per
//! line, validated before any loss is computed.

use std::io::BufRead;

use anyhow::{Context, Result, anyhow, bail};
use daa_core::{PairLogps, PreferenceLossParams};
use serde_json::{Map, Value};

/// One parsed input line.
#[derive(Debug, Clone)]
pub struct PairLine {
    /// 1-based line number in the input.
    pub line: usize,
    /// The line's `id` field, copied to the output.
    pub id: Option<Value>,
    /// The pair's log-probabilities and token counts.
    pub logps: PairLogps,
}

/// Reads a number field; `needed` says whether its absence is an error, else `default`.
fn number(obj: &Map<String, Value>, field: &str, needed: bool, default: f64, at: &str) -> Result<f64> {
    match obj.get(field) {
        Some(Value::Number(n)) => n.as_f64().ok_or_else(|| anyhow!("{at}: `{field}` is not a finite number")),
        Some(other) => bail!("{at}: `{field}` is {other}, expected a number"),
        None if needed => bail!("{at}: field `{field}` is missing"),
        None => Ok(default),
    }
}

/// Parses `daa loss` input: one JSON object per line (blank lines skipped),
/// each pair validated for `params`; errors name `source` and the line.
pub fn parse_lines(reader: impl BufRead, source: &str, params: &PreferenceLossParams) -> Result<Vec<PairLine>> {
    let uses_reference = params.loss.uses_reference();
    let uses_counts = params.uses_token_counts();
    let mut pairs = Vec::new();
    for (index, line) in reader.lines().enumerate() {
        let line_no = index + 1;
        let at = format!("{source}:{line_no}");
        let text = line.with_context(|| format!("{at}: cannot read"))?;
        if text.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(&text).map_err(|e| anyhow!("{at}: malformed JSON: {e}"))?;
        let Value::Object(obj) = value else { bail!("{at}: expected a JSON object") };
        let logps = PairLogps {
            policy_chosen: number(&obj, "policy_chosen", true, 0.0, &at)?,
            policy_rejected: number(&obj, "policy_rejected", true, 0.0, &at)?,
            reference_chosen: number(&obj, "reference_chosen", uses_reference, 0.0, &at)?,
            reference_rejected: number(&obj, "reference_rejected", uses_reference, 0.0, &at)?,
            chosen_tokens: number(&obj, "chosen_tokens", uses_counts, 1.0, &at)?,
            rejected_tokens: number(&obj, "rejected_tokens", uses_counts, 1.0, &at)?,
        };
        daa_core::validate_pair(0, &logps, params)
            .map_err(|e| anyhow!("{at}: {}", strip_pair_prefix(&e.to_string())))?;
        pairs.push(PairLine { line: line_no, id: obj.get("id").cloned(), logps });
    }
    Ok(pairs)
}

/// `validate_pair` says "pair 0: …"; on the command line the line number says where.
fn strip_pair_prefix(message: &str) -> &str {
    message.strip_prefix("pair 0: ").unwrap_or(message)
}
