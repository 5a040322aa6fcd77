//! The trainer benchmark (`cargo xtask bench --trainer`): one DPO optimizer
//! step and one forward-only scoring pass on burn's CPU backend, for every
//! shape of `daa_benches::trainer::SHAPES`, with 1 and 2 threads; tokens/s
//! and peak resident memory, as a table (`target/daa-bench/trainer.md`) and
//! a chart (`trainer.svg`). With `--torch PYTHON` each shape is also built
//! with transformers and timed in PyTorch by `scripts/torch_dpo_baseline.py`,
//! and daa is timed on that very checkpoint and batch, beside it.
//!
//! Each measurement runs in a process of its own (this binary, `--child`),
//! so that its peak memory is its own and its thread count is set before
//! any thread pool starts.
//!
//! ```text
//! trainer_step [--backend flex|ndarray|cuda|wgpu] [--precision f32|bf16] [--checkpointing] [--packing]
//!              [--lora RANK] [--shapes tiny,5m,25m,long,uneven] [--threads 1,2] [--repeats N] [--torch PYTHON]
//! trainer_step --child --backend B --precision P [--checkpointing] [--packing] [--lora RANK] --shape S --mode step|score
//!              --threads N --repeats R [--checkpoint DIR --batch FILE]
//! trainer_step --write-inputs S DIR     (config.json and batch.json for the baseline)
//! ```
//!
//! `cuda` (feature `cuda`) and the GPU shapes `1b`, `7b` are what
//! `scripts/gpu-check.sh` runs; `wgpu` (feature `wgpu`) measures the long
//! shape's peak memory on lavapipe. `DAA_FUSED_OPS=0` in the environment
//! times the unfused compositions instead of `daa_train::fused`.
//! `--packing` packs each step's sequences several to a row (the `uneven`
//! shape's lengths show what it saves; tokens/s counts real tokens only).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use daa_benches::children::{last_json_line, manifest_dir, target_dir, value, with_threads};
use daa_benches::trainer::{
    BatchFile, CPU_BACKENDS, Lengths, Measurement, ModelSource, PairIds, SHAPES, Setup, Shape, measure, read_batch,
};
use daa_benches::trainer_report::{Row, write_report};
use daa_train::Precision;

/// Seed of the benchmark's random batch.
const BATCH_SEED: u64 = 42;

fn main() {
    daa_core::cuda::libraries::relaunch_with_linked_libraries();
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}

fn number(args: &[String], flag: &str, default: usize) -> Result<usize> {
    value(args, flag).map_or(Ok(default), |v| v.parse().with_context(|| format!("{flag} {v}: not a number")))
}

fn run() -> Result<()> {
    // `cargo bench` adds `--bench`.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    if let Some(i) = args.iter().position(|a| a == "--write-inputs") {
        let (shape, dir) = (args.get(i + 1).context("--write-inputs SHAPE DIR")?, args.get(i + 2));
        return write_inputs(&Shape::named(shape)?, Path::new(dir.context("--write-inputs SHAPE DIR")?));
    }
    if args.iter().any(|a| a == "--child") {
        let shape = Shape::named(value(&args, "--shape").context("--child needs --shape")?)?;
        let (threads, repeats) = (number(&args, "--threads", 1)?, number(&args, "--repeats", 5)?);
        let mode = value(&args, "--mode").unwrap_or("step");
        let setup = setup(&args, threads, repeats)?;
        let m = match (value(&args, "--checkpoint"), value(&args, "--batch")) {
            (Some(dir), Some(batch)) => {
                measure(&setup, &shape, &ModelSource::Checkpoint(Path::new(dir)), &read_batch(Path::new(batch))?, mode)?
            }
            (None, None) => measure(&setup, &shape, &ModelSource::Random, &shape.random_pairs(BATCH_SEED), mode)?,
            _ => bail!("--checkpoint and --batch go together"),
        };
        println!("{}", serde_json::to_string(&m)?);
        return Ok(());
    }

    let shapes: Vec<Shape> = match value(&args, "--shapes") {
        Some(list) => list.split(',').map(Shape::named).collect::<Result<_>>()?,
        None => SHAPES.to_vec(),
    };
    let threads: Vec<usize> = match value(&args, "--threads") {
        Some(list) => {
            list.split(',').map(|t| t.parse().with_context(|| format!("--threads {t}"))).collect::<Result<_>>()?
        }
        None => vec![1, 2],
    };
    let repeats = number(&args, "--repeats", 5)?;
    let base = setup(&args, 1, repeats)?;
    let torch = value(&args, "--torch");
    if torch.is_some() && base.lora.is_some() {
        bail!(
            "--torch with --lora: the PyTorch baseline trains every weight; compare LoRA steps with daa's full steps"
        );
    }
    let out_dir = target_dir().join("daa-bench");
    std::fs::create_dir_all(&out_dir)?;

    let mut rows = Vec::new();
    for shape in &shapes {
        eprintln!(
            "{}: {:.1} M parameters, {} pairs × {} tokens ({} prompt), vocabulary {}",
            shape.name,
            shape.parameters() as f64 / 1e6,
            shape.pairs,
            shape.seq_len,
            shape.prompt_len,
            shape.vocab
        );
        if shape.lengths == Lengths::UltraFeedbackLike {
            eprintln!("  {}", layout_summary(shape)?);
        }
        for &t in &threads {
            // With the baseline, daa runs on the checkpoint and batch PyTorch built.
            let (inputs, torch_step, torch_score) = match torch {
                None => (None, None, None),
                Some(python) => {
                    let dir = out_dir.join(format!("baseline-{}", shape.name));
                    write_inputs(shape, &dir)?;
                    let (step, score) = baseline(python, &dir, t, repeats)?;
                    (Some(dir), Some(step), Some(score))
                }
            };
            let row = Row {
                shape: *shape,
                threads: t,
                step: child(&Setup { threads: t, ..base }, shape, "step", inputs.as_deref())?,
                score: child(&Setup { threads: t, ..base }, shape, "score", inputs.as_deref())?,
                torch_step,
                torch_score,
            };
            eprintln!("  {}", row.summary());
            if row.scores_agree() == Some(false) {
                bail!("{}: daa and PyTorch disagree on the same checkpoint and batch: {}", shape.name, row.summary());
            }
            rows.push(row);
        }
    }
    write_report(&rows, &out_dir)?;
    Ok(())
}

/// `--backend`, `--precision`, `--checkpointing`, `--packing` and `--lora` of the command line.
fn setup<'a>(args: &'a [String], threads: usize, repeats: usize) -> Result<Setup<'a>> {
    let backend = value(args, "--backend").unwrap_or(CPU_BACKENDS[0]);
    if !CPU_BACKENDS.contains(&backend) && backend != "cuda" && backend != "wgpu" {
        bail!("--backend {backend}: expected one of {}, cuda, wgpu", CPU_BACKENDS.join(", "));
    }
    let precision = match value(args, "--precision").unwrap_or("f32") {
        "f32" => Precision::F32,
        "bf16" => Precision::Bf16,
        other => bail!("--precision {other}: expected f32 or bf16"),
    };
    let checkpointing = args.iter().any(|a| a == "--checkpointing");
    let packing = args.iter().any(|a| a == "--packing");
    let lora = match value(args, "--lora") {
        None => None,
        Some(rank) => match rank.parse::<usize>() {
            Ok(r) if r > 0 => Some(r),
            _ => bail!("--lora {rank}: expected a rank of at least 1"),
        },
    };
    Ok(Setup { backend, precision, checkpointing, packing, lora, threads, repeats })
}

/// Runs one measurement in a fresh process with `threads` threads.
fn child(setup: &Setup<'_>, shape: &Shape, mode: &str, inputs: Option<&Path>) -> Result<Measurement> {
    let (threads, repeats) = (setup.threads, setup.repeats);
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["--child", "--backend", setup.backend, "--precision", setup.precision.as_str()]);
    cmd.args(["--shape", shape.name, "--mode", mode]);
    if setup.checkpointing {
        cmd.arg("--checkpointing");
    }
    if setup.packing {
        cmd.arg("--packing");
    }
    if let Some(rank) = setup.lora {
        cmd.args(["--lora", &rank.to_string()]);
    }
    cmd.args(["--threads", &threads.to_string(), "--repeats", &repeats.to_string()]);
    if let Some(dir) = inputs {
        cmd.arg("--checkpoint").arg(dir.join("checkpoint")).arg("--batch").arg(dir.join("batch.json"));
    }
    last_json_line(with_threads(&mut cmd, threads), &format!("{} {mode} ({threads} threads)", shape.name), false)
}

/// PyTorch's step and scoring pass on the inputs in `dir` (it writes `dir/checkpoint`).
fn baseline(python: &str, dir: &Path, threads: usize, repeats: usize) -> Result<(Measurement, Measurement)> {
    let script = manifest_dir().join("../scripts/torch_dpo_baseline.py");
    let mut cmd = Command::new(python);
    cmd.arg(script).arg("--inputs").arg(dir);
    cmd.args(["--threads", &threads.to_string(), "--repeats", &repeats.to_string()]);
    let both: [Measurement; 2] = last_json_line(with_threads(&mut cmd, threads), "the PyTorch baseline", false)?;
    let [step, score] = both;
    Ok((step, score))
}

/// `config.json` of the shape and `batch.json` of the benchmark's pairs.
fn write_inputs(shape: &Shape, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let config = serde_json::to_string_pretty(&shape.config_json())?;
    std::fs::write(dir.join("config.json"), config)?;
    let pairs = shape
        .random_pairs(BATCH_SEED)
        .into_iter()
        .map(|p| PairIds { prompt_len: p.chosen.completion_start, chosen: p.chosen.ids, rejected: p.rejected.ids })
        .collect();
    std::fs::write(dir.join("batch.json"), serde_json::to_string(&BatchFile { pairs })?)?;
    Ok(())
}

/// The benchmark batch's real tokens against the slots a padded and a packed
/// micro-batch compute (`rows × length`).
fn layout_summary(shape: &Shape) -> Result<String> {
    let pairs = shape.random_pairs(BATCH_SEED);
    let sequences: Vec<&daa_train::batch::Sequence> = pairs.iter().flat_map(|p| [&p.chosen, &p.rejected]).collect();
    let real: usize = sequences.iter().map(|s| s.ids.len()).sum();
    let slots = |layout| -> Result<(usize, usize, usize)> {
        let batch = daa_train::batch::TokenBatch::with_layout(&sequences, 0, shape.vocab, layout)?;
        Ok((batch.rows, batch.len, batch.slots()))
    };
    let (padded, packed) =
        (slots(daa_train::batch::BatchLayout::Padded)?, slots(daa_train::batch::BatchLayout::Packed)?);
    let lengths: Vec<usize> = sequences.iter().map(|s| s.ids.len()).collect();
    Ok(format!(
        "{real} real tokens in {} sequences (lengths {}–{}, mean {:.0}); padded {} rows × {} = {} slots ({:.0} % padding), packed {} rows × {} = {} slots ({:.0} %)",
        sequences.len(),
        lengths.iter().min().unwrap_or(&0),
        lengths.iter().max().unwrap_or(&0),
        real as f64 / sequences.len().max(1) as f64,
        padded.0,
        padded.1,
        padded.2,
        100.0 * (1.0 - real as f64 / padded.2.max(1) as f64),
        packed.0,
        packed.1,
        packed.2,
        100.0 * (1.0 - real as f64 / packed.2.max(1) as f64),
    ))
}
