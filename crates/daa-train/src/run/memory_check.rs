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

/// Checks the plan of `config`'s step for `model`; returns what to tell the user.
pub(crate) fn check_memory(config: &TrainConfig, model: &ModelConfig) -> Result<String> {
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
    let Some((capacity, source)) = capacity else {
        return Ok(format!(
            "memory plan: not checked (the {} backend's memory is not known here; set train.device_memory, e.g. \
             \"80GiB\", to check it)",
            config.model.backend
        ));
    };
    let setup = PlanSetup {
        gpus: 1,
        shard_group: 1,
        sharding: crate::plan::Sharding::None,
        gpu_memory: capacity,
        pairs: config.train.micro_batch_size as u64,
        seq_len: config.data.max_length as u64,
        micro_batches: config.train.batch_size.div_ceil(config.train.micro_batch_size.max(1)) as u64,
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
