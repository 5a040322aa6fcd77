//! `daa plan`: memory per GPU of one training step, by component, and
//! whether it fits (`daa_train::plan` has the formulas).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use daa_train::checkpoint::read_config;
use daa_train::model::{LoraTarget, ModelConfig};
use daa_train::plan::{Cluster, MemoryPlan, PlanLora, PlanSetup, Precision, Sharding, parse_bytes};

/// Where the reference log-probabilities come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ReferenceArg {
    /// Computed once and cached on disk: no second model in memory.
    Cache,
    /// A frozen copy of the model in memory.
    Model,
}

/// Arguments of `daa plan`.
#[derive(Debug, Args, Clone)]
pub struct PlanArgs {
    /// A checkpoint folder (its config.json), a config.json file, or a Hub
    /// model id in the local Hugging Face cache.
    #[arg(long, value_parser = crate::model_arg::model_path)]
    model: PathBuf,
    /// GPUs of the run (default: --gpus-per-node × --nodes, else 1).
    #[arg(long)]
    gpus: Option<u64>,
    /// GPUs per node.
    #[arg(long)]
    gpus_per_node: Option<u64>,
    /// Nodes.
    #[arg(long, default_value_t = 1)]
    nodes: u64,
    /// What is divided over the GPUs: none (DDP), optimizer (ZeRO-1),
    /// gradients (ZeRO-2) or parameters (ZeRO-3 / FSDP).
    #[arg(long, default_value = "parameters", value_parser = parse_sharding)]
    sharding: Sharding,
    /// Shard inside each node and replicate across nodes (HSDP).
    #[arg(long)]
    shard_within_node: bool,
    /// GB/s one GPU sends to the others of its node (NVLink 4: 450).
    #[arg(long, default_value_t = 450.0)]
    nvlink_gb_s: f64,
    /// GB/s one GPU sends to other nodes (one 400 Gb/s NIC per GPU: 50).
    #[arg(long, default_value_t = 50.0)]
    network_gb_s: f64,
    /// Dense bf16 peak of one GPU, TFLOP/s (H100/H200 SXM: 989.4).
    #[arg(long, default_value_t = 989.4)]
    peak_tflops: f64,
    /// Model FLOPs utilisation assumed for the compute time.
    #[arg(long, default_value_t = 0.4)]
    mfu: f64,
    /// Memory of one GPU (80GiB, 141GiB, 24GB, …).
    #[arg(long, default_value = "80GiB")]
    gpu_memory: String,
    /// Preference pairs per micro-batch on one GPU (two sequences each).
    #[arg(long, default_value_t = 1)]
    batch: u64,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 1024)]
    seq: u64,
    /// Micro-batches per optimizer step (above 1, gradients are summed in f32).
    #[arg(long, default_value_t = 1)]
    micro_batches: u64,
    /// Weight precision.
    #[arg(long, value_enum, default_value_t = Precision::Bf16)]
    precision: Precision,
    /// Reference log-probabilities cached or from a live model.
    #[arg(long, value_enum, default_value_t = ReferenceArg::Cache)]
    reference: ReferenceArg,
    /// Plan without activation checkpointing.
    #[arg(long)]
    no_checkpointing: bool,
    /// Plan with the unfused LM head (full `[tokens × V]` logits).
    #[arg(long)]
    unfused_head: bool,
    /// Plan LoRA of this rank instead of full training (frozen base weights).
    #[arg(long, value_name = "RANK")]
    lora: Option<u64>,
    /// The layers LoRA adapts (PEFT names, comma-separated, or all-linear).
    #[arg(long, value_delimiter = ',', default_value = "q_proj,v_proj", requires = "lora")]
    lora_targets: Vec<String>,
    /// The same numbers as JSON (bytes).
    #[arg(long)]
    json: bool,
}

fn parse_sharding(name: &str) -> std::result::Result<Sharding, String> {
    name.parse()
}

fn model_config(path: &PathBuf) -> Result<ModelConfig> {
    if path.is_dir() {
        return read_config(path);
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    ModelConfig::from_json(&text).with_context(|| format!("{}", path.display()))
}

/// Runs `daa plan`.
pub fn run(args: PlanArgs) -> Result<()> {
    let config = model_config(&args.model)?;
    let gpu_memory = parse_bytes(&args.gpu_memory).map_err(anyhow::Error::msg).context("--gpu-memory")?;
    let gpus = args.gpus.unwrap_or(args.gpus_per_node.unwrap_or(1) * args.nodes);
    let gpus_per_node = args.gpus_per_node.unwrap_or(gpus.div_ceil(args.nodes.max(1)));
    if gpus == 0 || gpus_per_node == 0 || args.nodes == 0 || args.batch == 0 || args.seq == 0 {
        bail!("--gpus, --gpus-per-node, --nodes, --batch and --seq must be at least 1");
    }
    if gpus != gpus_per_node * args.nodes {
        bail!("--gpus {gpus} is not --gpus-per-node {gpus_per_node} × --nodes {}", args.nodes);
    }
    if !(args.mfu > 0.0
        && args.mfu <= 1.0
        && args.peak_tflops > 0.0
        && args.nvlink_gb_s > 0.0
        && args.network_gb_s > 0.0)
    {
        bail!("--mfu must lie in (0, 1]; --peak-tflops, --nvlink-gb-s and --network-gb-s must be positive");
    }
    let lora = match args.lora {
        Some(0) => bail!("--lora: the rank must be at least 1"),
        Some(rank) => {
            let mut targets = Vec::new();
            for name in &args.lora_targets {
                targets.extend(LoraTarget::parse(name.trim()).context("--lora-targets")?);
            }
            Some(PlanLora::new(rank, &targets))
        }
        None => None,
    };
    let setup = PlanSetup {
        gpus,
        shard_group: if args.shard_within_node { gpus_per_node } else { gpus },
        sharding: args.sharding,
        gpu_memory,
        pairs: args.batch,
        seq_len: args.seq,
        micro_batches: args.micro_batches,
        precision: args.precision,
        reference_live: args.reference == ReferenceArg::Model,
        activation_checkpointing: !args.no_checkpointing,
        fused_head: !args.unfused_head,
        lora,
    };
    let plan = MemoryPlan::new(&config, setup).map_err(anyhow::Error::msg)?;
    let cluster = Cluster {
        gpus_per_node,
        nvlink_gb_s: args.nvlink_gb_s,
        network_gb_s: args.network_gb_s,
        peak_tflops: args.peak_tflops,
        mfu: args.mfu,
    };
    let communication = plan.communication(&config, &cluster);
    if args.json {
        // The plan's fields as before, the communication and its assumptions beside them.
        let mut json = serde_json::to_value(&plan)?;
        json["communication"] = serde_json::to_value(&communication)?;
        json["cluster"] = serde_json::to_value(cluster)?;
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        println!("{}: {}", args.model.display(), config.architecture_name);
        println!("{}", plan.table());
        if gpus > 1 {
            println!("\n{}", communication.table());
        }
    }
    Ok(())
}
