//! Before anything is loaded, `daa train` runs `daa plan`'s estimate
//! ([`crate::plan`]) for the configured step and refuses one that will not
//! fit, with the plan's table, instead of dying of an out-of-memory error
//! minutes later. The capacity is `train.device_memory` when set; otherwise,
//! on the `cpu` backend, the host's available memory (`MemAvailable` of
//! `/proc/meminfo`). A GPU backend without `train.device_memory` is not
//! checked (said in the run's notes).

use anyhow::{Result, bail};

use super::config::{ReferenceMode, TrainConfig};
use crate::backend::ComputeBackend;
use crate::model::ModelConfig;
use crate::plan::{MemoryPlan, PlanLora, PlanSetup, parse_bytes};

/// The ranks a run's step is planned for: every rank of the run, the
/// ranks sharing this host (on the CPU they share its memory).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RankCounts {
    /// Ranks of the run.
    pub world: usize,
    /// Ranks on this node.
    pub local: usize,
}

/// Checks the plan of `config`'s step for `model` on each of `ranks` (the
/// state divided as `train.sharding` and `train.shard_within` say; on the
/// CPU the host's memory divided by the ranks on it); returns what to tell
/// the user.
pub(crate) fn check_memory(config: &TrainConfig, model: &ModelConfig, ranks: RankCounts) -> Result<String> {
    if !config.train.memory_check {
        return Ok("memory plan: not checked (train.memory_check = false)".into());
    }
    let capacity = match &config.train.device_memory {
        Some(text) => Some((parse_bytes(text).map_err(anyhow::Error::msg)?, "train.device_memory")),
        None if config.model.backend == ComputeBackend::Cpu => {
            available_host_memory().map(|b| (b, "the host's available memory (MemAvailable)"))
        }
        None => None,
    };
    let (world, local) = (ranks.world.max(1), ranks.local.clamp(1, ranks.world.max(1)));
    // Ranks on one host share its memory.
    let capacity = match (capacity, config.model.backend) {
        (Some((bytes, _)), ComputeBackend::Cpu) if local > 1 && config.train.device_memory.is_none() => {
            Some((bytes / local as u64, "the host's available memory (MemAvailable) divided by its ranks"))
        }
        (capacity, _) => capacity,
    };
    let Some((capacity, source)) = capacity else {
        return Ok(format!(
            "memory plan: not checked (the {} backend's memory is not known here; set train.device_memory, e.g. \
             \"80GiB\", to check it)",
            config.model.backend
        ));
    };
    let shard_group = match config.train.shard_within {
        super::config::ShardWithin::Node => local,
        super::config::ShardWithin::All => world,
    };
    let pairs_per_rank = config.train.batch_size.div_ceil(world);
    let setup = PlanSetup {
        gpus: world as u64,
        shard_group: shard_group as u64,
        sharding: if world > 1 { config.train.sharding } else { crate::plan::Sharding::None },
        gpu_memory: capacity,
        pairs: config.train.micro_batch_size.min(pairs_per_rank) as u64,
        seq_len: config.data.max_length as u64,
        micro_batches: pairs_per_rank.div_ceil(config.train.micro_batch_size.max(1)) as u64,
        precision: config.train.precision,
        reference_live: config.loss.reference == ReferenceMode::Model,
        activation_checkpointing: config.train.activation_checkpointing,
        fused_head: config.train.fused_head,
        lora: match &config.lora {
            Some(lora) => Some(PlanLora::new(lora.rank as u64, &lora.targets()?)),
            None => None,
        },
    };
    let plan = MemoryPlan::new(model, setup).map_err(anyhow::Error::msg)?;
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    if !plan.fits {
        bail!(
            "the training step will not fit in {source} ({:.2} GiB), by daa plan's estimate:\n{}\n(set \
             train.device_memory to the real capacity, or train.memory_check = false to start anyway)",
            gib(capacity),
            plan.table()
        );
    }
    Ok(format!("memory plan: {:.2} GiB of {:.2} GiB ({source})", gib(plan.total), gib(capacity)))
}

/// `MemAvailable` of `/proc/meminfo`, bytes (Linux).
fn available_host_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::{RankCounts, check_memory};
    use crate::model::ModelConfig;
    use crate::model::tiny_configs::llama_config;
    use crate::run::config::TrainConfig;

    fn config(overrides: &[&str]) -> TrainConfig {
        TrainConfig::load(None, &overrides.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    /// A run that does not fit on one rank fits when eight ranks shard its
    /// state (ZeRO-3); the check plans each rank's share, not the whole.
    #[test]
    fn sharded_ranks_are_checked_for_their_share_of_the_state() {
        let model = ModelConfig::from_json(&llama_config(32_000, 1024, 8).to_string()).unwrap();
        let sets = ["train.sharding=\"parameters\"", "train.activation_checkpointing=true", "train.batch_size=16"];
        let plan = |world: usize| {
            let mut with_memory = sets.to_vec();
            with_memory.push("train.device_memory=\"1TiB\"");
            check_memory(&config(&with_memory), &model, RankCounts { world, local: world }).unwrap()
        };
        // "memory plan: X GiB of 1024.00 GiB …": one rank needs more than eight's share.
        let needs = |text: String| -> f64 { text.split_whitespace().nth(2).unwrap().parse().unwrap() };
        let (one, eight) = (needs(plan(1)), needs(plan(8)));
        assert!(eight < one / 2.0, "8 sharded ranks need {eight} GiB each, one rank {one} GiB");
        let between = format!("train.device_memory=\"{}MiB\"", ((one + eight) / 2.0 * 1024.0) as u64);
        let mut sets = sets.to_vec();
        sets.push(&between);
        let refused = check_memory(&config(&sets), &model, RankCounts { world: 1, local: 1 }).unwrap_err();
        assert!(format!("{refused:#}").contains("will not fit"), "{refused:#}");
        check_memory(&config(&sets), &model, RankCounts { world: 8, local: 8 }).unwrap();
    }
}
