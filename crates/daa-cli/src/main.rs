//! `daa`: Direct Alignment Algorithm diagnostics and losses from the command line.
//!
//! Every failure prints one line, `error: …`, naming the file, tensor, row or
//! line at fault, and exits with status 2; output files are written to a
//! temporary name and renamed, so a failed run leaves none behind. `daa
//! train` stopped by SIGTERM or SIGINT writes a complete checkpoint first and
//! exits with 128 + the signal (143, 130).

mod backend_choice;
mod bench_cmd;
#[cfg(feature = "train")]
mod experiment_arms;
#[cfg(feature = "train")]
mod experiment_cmd;
#[cfg(feature = "train")]
mod experiment_report;
#[cfg(feature = "train")]
mod experiment_splits;
#[cfg(feature = "train")]
mod experiment_study;
#[cfg(feature = "train")]
mod fit;
#[cfg(feature = "train")]
mod generate_cmd;
#[cfg(feature = "train")]
mod judge_cmd;
#[cfg(all(feature = "train", unix))]
mod launcher;
#[cfg(feature = "train")]
mod logps_cmd;
mod loss_cmd;
#[cfg(feature = "train")]
mod merge_cmd;
#[cfg(feature = "train")]
mod model_arg;
#[cfg(feature = "train")]
mod plan_cmd;
mod plot;
#[cfg(feature = "train")]
mod progress;
#[cfg(feature = "train")]
mod report_plot;
mod stats_cmd;
#[cfg(feature = "train")]
mod train_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Direct Alignment Algorithms with over-optimisation diagnostics.
#[derive(Debug, Parser)]
#[command(name = "daa", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Per-token statistics (target log-probability, entropy, top-k mass and
    /// top-k entropy) of logits stored in a safetensors file.
    Stats(stats_cmd::StatsArgs),
    /// Per-pair losses, gradients and implicit rewards of the loss catalog,
    /// from per-sequence log-probabilities in JSON Lines.
    Loss(loss_cmd::LossArgs),
    /// How fast `token_stats` runs on this machine's backends, beside the
    /// memory read bandwidth measured in the same run.
    Bench(bench_cmd::BenchArgs),
    #[cfg(feature = "train")]
    /// Train a Hugging Face checkpoint with a Direct Alignment Algorithm,
    /// watching top-k entropy and mass on held-out data. Without --config,
    /// runs the over-optimisation testbed (configs/testbed.toml).
    Train(train_cmd::TrainArgs),
    #[cfg(feature = "train")]
    /// Reference log-probabilities of a preference dataset under a model
    /// (what `daa train` caches), as safetensors.
    Logps(logps_cmd::LogpsArgs),
    #[cfg(feature = "train")]
    /// Sample completions of prompts (JSON Lines or Parquet rows with a
    /// `prompt`) from a checkpoint: temperature, top-p, key/value cache.
    Generate(generate_cmd::GenerateArgs),
    #[cfg(feature = "train")]
    /// Rewards of completions (`prompt` + `completion` rows, or preference
    /// rows) from the testbed's gold reward or a reward model checkpoint.
    Judge(judge_cmd::JudgeArgs),
    #[cfg(feature = "train")]
    /// A sweep on the over-optimisation testbed (losses × values × NLL
    /// regularisation × seeds), in parallel and resumable, with a report.
    Experiment(experiment_cmd::ExperimentArgs),
    #[cfg(feature = "train")]
    /// Memory per GPU of one training step by component (weights, master
    /// weights, gradients, AdamW state, reference, activations with and
    /// without checkpointing, logits with and without the fused head) and
    /// whether it fits, from a model's config.json.
    Plan(plan_cmd::PlanArgs),
    #[cfg(feature = "train")]
    /// Fold a PEFT LoRA adapter (a LoRA run's checkpoint) into its base
    /// model: a full Hugging Face checkpoint.
    Merge(merge_cmd::MergeArgs),
}

/// Prints `message` as the one `error: …` line (multi-line messages from
/// TOML, serde or clap are folded) and returns status 2.
fn fail(message: &str) -> ExitCode {
    let message = message.trim_start_matches("error:").split_whitespace().collect::<Vec<_>>().join(" ");
    eprintln!("error: {message}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    // On a CUDA 13 machine whose NVRTC/NCCL carry only versioned names,
    // restart once with them linked where cudarc looks (see the module).
    #[cfg(feature = "cuda")]
    daa_core::cuda::libraries::relaunch_with_linked_libraries();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            let rendered = e.render().to_string();
            let message = rendered.split("For more information").next().unwrap_or(&rendered);
            return fail(message);
        }
    };
    let result = match cli.command {
        Command::Stats(args) => stats_cmd::run(&args),
        Command::Loss(args) => loss_cmd::run(&args),
        Command::Bench(args) => bench_cmd::run(&args),
        #[cfg(feature = "train")]
        Command::Train(args) => train_cmd::run(&args),
        #[cfg(feature = "train")]
        Command::Logps(args) => logps_cmd::run(&args),
        #[cfg(feature = "train")]
        Command::Generate(args) => generate_cmd::run(&args),
        #[cfg(feature = "train")]
        Command::Judge(args) => judge_cmd::run(&args),
        #[cfg(feature = "train")]
        Command::Experiment(args) => experiment_cmd::run(&args),
        #[cfg(feature = "train")]
        Command::Plan(args) => plan_cmd::run(args),
        #[cfg(feature = "train")]
        Command::Merge(args) => merge_cmd::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        #[cfg(feature = "train")]
        Err(e) if e.downcast_ref::<daa_train::run::interrupt::Interrupted>().is_some() => {
            // Stopped by a signal after a complete checkpoint: 128 + the signal.
            let signal = e.downcast_ref::<daa_train::run::interrupt::Interrupted>().map_or(0, |i| i.signal);
            fail(&e.to_string());
            ExitCode::from(daa_train::run::interrupt::exit_status(signal))
        }
        Err(e) => fail(&e.chain().map(ToString::to_string).collect::<Vec<_>>().join(": ")),
    }
}
