//! `daa`: Direct Alignment Algorithm diagnostics and losses from the command line.
//!
//! Every failure prints one line, `error: …`, naming the file, tensor, row or
//! line at fault, and exits with status 2; output files are written to a
//! temporary name and renamed, so a failed run leaves none behind.

use daa_train::atomic_write;
mod backend_choice;
mod logps_cmd;
mod loss_cmd;
mod plot;
mod safetensors_input;
mod stats_cmd;
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
    /// Train a Hugging Face checkpoint with a Direct Alignment Algorithm,
    /// watching top-k entropy and mass on held-out data. Without --config,
    /// runs the built-in tiny model and task.
    Train(train_cmd::TrainArgs),
    /// Reference log-probabilities of a preference dataset under a model
    /// (what `daa train` caches), as safetensors.
    Logps(logps_cmd::LogpsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Stats(args) => stats_cmd::run(&args),
        Command::Loss(args) => loss_cmd::run(&args),
        Command::Train(args) => train_cmd::run(&args),
        Command::Logps(args) => logps_cmd::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let chain: Vec<String> = e.chain().map(ToString::to_string).collect();
            // One line: multi-line messages (TOML, serde) are folded.
            let message = chain.join(": ").split_whitespace().collect::<Vec<_>>().join(" ");
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}
