//! `daa loss`: the loss catalog as a calculator over JSON Lines.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use daa_core::io::write_atomic;
use daa_core::{
    Backend, HostTensor, LossHyperParams, LossName, NllNormalisation, NllTerm, PairLogps, PairLoss, PreferenceLoss,
    PreferenceLossParams,
};
use serde_json::{Map, Value, json};

use crate::backend_choice::BackendArgs;
use crate::with_kernel_backend;

/// Arguments of `daa loss`.
#[derive(Debug, Args)]
pub struct LossArgs {
    /// The catalog loss.
    #[arg(long, value_enum, default_value_t = LossName::Dpo)]
    pub loss: LossName,
    /// β (dpo, robust-dpo, hinge-trl, simpo, orpo).
    #[arg(long)]
    pub beta: Option<f64>,
    /// τ (ipo, ipo-mean).
    #[arg(long)]
    pub tau: Option<f64>,
    /// γ: hinge margin, SimPO target margin.
    #[arg(long)]
    pub gamma: Option<f64>,
    /// α: weight of the paper hinge's reference regulariser.
    #[arg(long)]
    pub alpha: Option<f64>,
    /// ε: label smoothing (dpo, robust-dpo, simpo).
    #[arg(long)]
    pub label_smoothing: Option<f64>,
    /// λ: weight of the NLL term on the chosen completion (0 or absent: none).
    #[arg(long)]
    pub nll: Option<f64>,
    /// How the NLL term is normalised: `sum` λ·(−log π(y_w|x)) (the paper)
    /// or `mean` λ·(−log π(y_w|x) / |y_w|) (TRL `sft`, ORPO).
    #[arg(long, value_enum, default_value_t = NllNormalisation::Sum)]
    pub nll_norm: NllNormalisation,
    /// JSON Lines input, one pair per line, with `policy_chosen`,
    /// `policy_rejected` (summed log-probabilities), `reference_chosen`,
    /// `reference_rejected`, `chosen_tokens`, `rejected_tokens`; other fields
    /// are ignored except `id`, which is copied to the output. `-` reads stdin.
    #[arg(long)]
    pub input: PathBuf,
    /// Write JSON Lines here (atomically) instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub backend: BackendArgs,
}

impl LossArgs {
    fn params(&self) -> Result<PreferenceLossParams> {
        let hyper = LossHyperParams {
            beta: self.beta,
            tau: self.tau,
            gamma: self.gamma,
            alpha: self.alpha,
            label_smoothing: self.label_smoothing,
        };
        let loss = PreferenceLoss::with_defaults(self.loss, hyper)?;
        let nll = match self.nll {
            Some(weight) if weight != 0.0 => Some(NllTerm { weight, normalisation: self.nll_norm }),
            _ => None,
        };
        let params = PreferenceLossParams { loss, nll };
        params.validate()?;
        Ok(params)
    }
}

/// One parsed input line.
struct PairLine {
    line: usize,
    id: Option<Value>,
    logps: PairLogps,
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

fn parse_lines(reader: impl BufRead, source: &str, params: &PreferenceLossParams) -> Result<Vec<PairLine>> {
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

/// Runs `daa loss`.
pub fn run(args: &LossArgs) -> Result<()> {
    let params = args.params()?;
    let source = args.input.display().to_string();
    let pairs = if source == "-" {
        parse_lines(std::io::stdin().lock(), "<stdin>", &params)?
    } else {
        let file = std::fs::File::open(&args.input).with_context(|| format!("{source}: cannot open"))?;
        parse_lines(BufReader::new(file), &source, &params)?
    };
    if pairs.is_empty() {
        bail!("{source}: no pairs (the file is empty)");
    }
    let flat: Vec<f64> = pairs.iter().flat_map(|p| p.logps.to_columns()).collect();
    let tensor = HostTensor::from_f64(flat, &[pairs.len(), 6])?;
    let backend = args.backend.build()?;
    let out = with_kernel_backend!(&backend, |b| {
        let out = b.preference_loss(&b.upload(&tensor)?, &params)?;
        b.download(&out)?
    });
    let out = out.to_f64_vec("preference_loss output")?;
    let results: Vec<PairLoss> =
        out.chunks_exact(daa_core::preference::PAIR_OUTPUT_COLUMNS).map(PairLoss::from_columns).collect();
    let n = results.len() as f64;
    eprintln!(
        "{} pairs, loss {}: mean loss {:.6}, accuracy {:.4}, mean margin {:.6}",
        results.len(),
        params.loss.name(),
        results.iter().map(|r| r.loss).sum::<f64>() / n,
        results.iter().map(|r| r.accuracy).sum::<f64>() / n,
        results.iter().map(|r| r.margin).sum::<f64>() / n,
    );
    write_atomic(args.out.as_deref(), |w| -> Result<()> {
        for (pair, result) in pairs.iter().zip(&results) {
            let mut record = json!({ "line": pair.line });
            if let Some(id) = &pair.id {
                record["id"] = id.clone();
            }
            if let (Value::Object(dst), Value::Object(src)) = (&mut record, serde_json::to_value(result)?) {
                dst.extend(src);
            }
            serde_json::to_writer(&mut *w, &record)?;
            writeln!(w)?;
        }
        Ok(())
    })
}
