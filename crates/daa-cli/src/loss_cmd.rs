//! `daa loss`: the loss catalog as a calculator over JSON Lines.

use std::io::BufReader;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use daa_cli::loss_lines::parse_lines;
use daa_core::io::write_atomic;
use daa_core::{
    Backend, HostTensor, LossHyperParams, LossName, NllNormalisation, NllTerm, PairLoss, PreferenceLoss,
    PreferenceLossParams,
};
use serde_json::{Value, json};

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
