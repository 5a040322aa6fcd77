//! `daa stats`: token statistics of logits dumped to a safetensors file.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use daa_core::io::{SafetensorsFile, StoredTensor, write_atomic};
use daa_core::token_stats::TokenStatsShape;
use daa_core::{Backend, DType, HostTensor, TOKEN_STATS_COLUMNS, TokenStat, TokenStatsParams, TokenStatsRow};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::json;

use crate::backend_choice::{BackendArgs, ChosenBackend};
use crate::with_kernel_backend;

/// Bytes of logits per chunk when `--chunk-rows` is not given: what a GPU
/// backend holds at once (the CPU backends read the memory-mapped file in place).
const CHUNK_BYTES: usize = 256 << 20;

/// Arguments of `daa stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// safetensors file with `logits` (`[N, V]` or `[B, T, V]`; f32, f16 or bf16),
    /// `targets` (`[N]` or `[B, T]`; i32 or i64; negative ids are ignored) and an
    /// optional `mask` (same shape as targets; non-zero keeps).
    #[arg(long)]
    pub logits: PathBuf,
    /// How many most probable tokens the top-k statistics use (1..=256).
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// Logarithm base of the top-k entropies (2: bits, 2.718281828459045: nats).
    #[arg(long, default_value_t = 2.0)]
    pub entropy_base: f64,
    /// Write JSON here (atomically) instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also draw histograms of top-k entropy and top-k mass over the active rows (SVG).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Leave out the per-row statistics (keep the summary and per-sequence means).
    #[arg(long)]
    pub summary_only: bool,
    /// Rows per batch sent to the backend (default: 256 MiB of logits). The
    /// CPU backends read the memory-mapped file without copying it; GPU
    /// backends hold one chunk at a time.
    #[arg(long)]
    pub chunk_rows: Option<usize>,
    #[command(flatten)]
    pub backend: BackendArgs,
}

/// Per-segment means of the five statistics over active rows.
#[derive(Debug, Default, Serialize)]
struct StatMeans {
    tokens: f64,
    mean_target_logprob: f64,
    mean_entropy: f64,
    mean_topk_mass: f64,
    mean_topk_entropy: f64,
    mean_topk_entropy_raw: f64,
}

/// Means of the statistics over contiguous runs of `segment_len` rows
/// (a sequence each; `rows.len()` for one overall summary), weighted by
/// the `active` column, through the backend's `segment_reduce`.
fn segment_means<B: Backend>(backend: &B, stats: &[f32], segment_len: usize) -> Result<Vec<StatMeans>> {
    let rows = stats.len() / TOKEN_STATS_COLUMNS;
    let values: Vec<f32> =
        stats.chunks_exact(TOKEN_STATS_COLUMNS).flat_map(|r| r[..TOKEN_STATS_COLUMNS - 1].iter().copied()).collect();
    let weights: Vec<f32> = stats.chunks_exact(TOKEN_STATS_COLUMNS).map(|r| r[TokenStat::Active as usize]).collect();
    // A target logit of −inf gives log p = −inf, a true value: the mean is then −inf (JSON null).
    let offsets: Vec<i64> = (0..=rows)
        .step_by(segment_len.max(1))
        .map(|o| o as i64)
        .chain((!rows.is_multiple_of(segment_len.max(1))).then_some(rows as i64))
        .collect();
    let values = HostTensor::from_f32(values, &[rows, TOKEN_STATS_COLUMNS - 1])?;
    let weights = HostTensor::from_f32(weights, &[rows])?;
    let offsets = HostTensor::from_i64(offsets.clone(), &[offsets.len()])?;
    let reduced = backend.segment_reduce(
        &backend.upload(&values)?,
        &backend.upload(&offsets)?,
        Some(&backend.upload(&weights)?),
    )?;
    let means = backend.download(&reduced.means)?.to_f64_vec("means")?;
    let counts = backend.download(&reduced.counts)?.to_f64_vec("counts")?;
    Ok(counts
        .iter()
        .zip(means.chunks_exact(TOKEN_STATS_COLUMNS - 1))
        .map(|(&tokens, m)| StatMeans {
            tokens,
            mean_target_logprob: m[0],
            mean_entropy: m[1],
            mean_topk_mass: m[2],
            mean_topk_entropy: m[3],
            mean_topk_entropy_raw: m[4],
        })
        .collect())
}

/// Statistics of one chunk of rows starting at file row `start`; errors
/// name the file's row, not the chunk's.
fn stats_of_chunk<B: Backend>(
    b: &B,
    logits: &HostTensor,
    targets: &HostTensor,
    mask: Option<&HostTensor>,
    params: &TokenStatsParams,
    start: usize,
) -> Result<HostTensor> {
    let mask = mask.map(|m| b.upload(m)).transpose()?;
    let out = b
        .token_stats(&b.upload(logits)?, &b.upload(targets)?, mask.as_ref(), params)
        .map_err(|e| e.offset_rows(start))?;
    Ok(b.download(&out)?)
}

/// The tensors of a `daa stats` file, their dtypes and shapes checked.
struct StatsInputs<'f> {
    logits: StoredTensor<'f>,
    targets: StoredTensor<'f>,
    mask: Option<StoredTensor<'f>>,
    shape: TokenStatsShape,
}

impl<'f> StatsInputs<'f> {
    /// `logits` (f32, f16, bf16), `targets` (i32, i64) and the optional
    /// `mask` of `file`; errors name the file and the tensor.
    fn of(file: &'f SafetensorsFile) -> Result<Self> {
        let at = |what: String| format!("{}: {what}", file.path().display());
        let logits = file.require("logits", "[rows, vocab] or [batch, time, vocab] logits")?;
        let targets = file.require("targets", "target token ids shaped like logits without the last dimension")?;
        let mask = file.get("mask");
        if !matches!(logits.dtype(), Ok(DType::F32 | DType::F16 | DType::BF16)) {
            bail!(at(format!("tensor `logits` has dtype {}, expected F32, F16 or BF16", logits.stored_dtype())));
        }
        if !matches!(targets.dtype(), Ok(DType::I32 | DType::I64)) {
            bail!(at(format!("tensor `targets` has dtype {}, expected I32 or I64", targets.stored_dtype())));
        }
        let shape = TokenStatsShape::check(logits.shape(), targets.shape(), mask.as_ref().map(|m| m.shape()))
            .with_context(|| file.path().display().to_string())?;
        Ok(Self { logits, targets, mask, shape })
    }

    /// The statistics of every row, `chunk_rows` rows at a time on `backend`
    /// (borrowed from the memory map: no copy on the CPU backends), with a
    /// progress bar; `[rows, 6]` flattened.
    fn stats_in_chunks(
        &self,
        backend: &ChosenBackend,
        params: &TokenStatsParams,
        chunk_rows: usize,
    ) -> Result<Vec<f32>> {
        let TokenStatsShape { rows, vocab, .. } = self.shape;
        let bar = ProgressBar::new(rows as u64).with_style(
            ProgressStyle::with_template("{spinner} token_stats {bar:40} {pos}/{len} rows {per_sec} eta {eta}")
                .expect("valid template"),
        );
        let mut stats: Vec<f32> = Vec::with_capacity(rows * TOKEN_STATS_COLUMNS);
        for start in (0..rows).step_by(chunk_rows) {
            let end = (start + chunk_rows).min(rows);
            let n = end - start;
            let l = self.logits.host_range(start * vocab..end * vocab, &[n, vocab])?;
            let t = self.targets.host_range(start..end, &[n])?;
            let m = self.mask.as_ref().map(|m| m.host_range(start..end, &[n])).transpose()?;
            let out = with_kernel_backend!(backend, |b| stats_of_chunk(b, &l, &t, m.as_ref(), params, start))?;
            stats.extend_from_slice(out.as_f32("token_stats output")?);
            bar.inc(n as u64);
        }
        bar.finish_and_clear();
        Ok(stats)
    }
}

/// Runs `daa stats`.
pub fn run(args: &StatsArgs) -> Result<()> {
    let file = SafetensorsFile::open(&args.logits)?;
    let inputs = StatsInputs::of(&file)?;
    let (logits, shape) = (&inputs.logits, inputs.shape);
    let params = TokenStatsParams { k: args.k, entropy_base: args.entropy_base };
    params.validate(shape.vocab).with_context(|| file.path().display().to_string())?;
    let row_bytes = logits.bytes().len() / shape.rows.max(1);
    let chunk_rows = match args.chunk_rows {
        Some(0) => bail!("--chunk-rows must be at least 1"),
        Some(n) => n,
        None => (CHUNK_BYTES / row_bytes.max(1)).max(1),
    };
    let backend = args.backend.build()?;
    let started = std::time::Instant::now();
    let stats =
        inputs.stats_in_chunks(&backend, &params, chunk_rows).with_context(|| file.path().display().to_string())?;
    let seconds = started.elapsed().as_secs_f64();

    let (summary, sequences) = with_kernel_backend!(&backend, |b| {
        let summary = segment_means(b, &stats, shape.rows.max(1))?.pop().unwrap_or_default();
        let sequences = match logits.shape() {
            [_, time, _] => Some(segment_means(b, &stats, *time)?),
            _ => None,
        };
        (summary, sequences)
    });
    let rows: Vec<TokenStatsRow> = stats.chunks_exact(TOKEN_STATS_COLUMNS).map(TokenStatsRow::from_columns).collect();
    let bytes_read = logits.bytes().len();
    eprintln!(
        "{} rows ({} active) x {} vocab, {} backend: {:.3} s, {:.2} GB/s of logits; mean top-{} entropy {:.4}, mean top-{} mass {:.4}",
        shape.rows,
        summary.tokens,
        shape.vocab,
        args.backend.backend_name(),
        seconds,
        bytes_read as f64 / seconds / 1e9,
        args.k,
        summary.mean_topk_entropy,
        args.k,
        summary.mean_topk_mass,
    );
    let report = json!({
        "file": file.path().display().to_string(),
        "backend": args.backend.backend_name(),
        "k": args.k,
        "entropy_base": args.entropy_base,
        "rows": shape.rows,
        "vocab": shape.vocab,
        "logits_dtype": logits.stored_dtype(),
        "columns": column_names(),
        "summary": summary,
        "sequences": sequences,
        "per_row": if args.summary_only { None } else { Some(&rows) },
    });
    if let Some(plot) = &args.plot {
        let source = file.path().display().to_string();
        let svg = crate::plot::stats_histograms(&rows, args.k, args.entropy_base, &source)?;
        daa_core::io::write_bytes_atomic(plot, svg.as_bytes())?;
    }
    write_atomic(args.out.as_deref(), |w| -> Result<()> {
        serde_json::to_writer_pretty(&mut *w, &report).context("encoding JSON")?;
        writeln!(w).context("writing output")?;
        Ok(())
    })
}

fn column_names() -> [&'static str; TOKEN_STATS_COLUMNS] {
    ["target_logprob", "entropy", "topk_mass", "topk_entropy", "topk_entropy_raw", "active"]
}
