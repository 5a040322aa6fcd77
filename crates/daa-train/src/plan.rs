//! Memory plan of one preference-training step on each GPU, by component
//! (`daa plan`). An estimate from `config.json` alone, in bytes:
//!
//! With `P` parameters, `N` GPUs over which weights, gradients and optimizer
//! state are sharded (as FSDP / ZeRO-3 do), weight bytes `w` (2 for bf16, 4
//! for f32), `B` pairs per micro-batch on one GPU (`S = 2B` sequences of `T`
//! tokens), width `d`, key/value width `d_kv`, MLP width `I`, `a` query
//! heads, `L` blocks and vocabulary `V`:
//!
//! ```text
//! weights            P·w / N
//! master weights     P·4 / N             (bf16 only: f32 copy the optimizer updates)
//! gradients          P·w / N             (one backward pass's)
//! gradient sums      P·4 / N             (only with several micro-batches per step: f32 sums)
//! optimizer state    P·8 / N             (AdamW m and v in f32)
//! reference model    P·w / N             (only with loss.reference = "model")
//! activations        L·S·T·A + 2·S·T·d·w              without checkpointing
//!                    L·S·T·d·w + S·T·A + 2·S·T·d·w    with one checkpoint per block
//!   A = (9d + 3d_kv + 4I)·w + 2·a·T·w                 per token and block: norms, q/k/v
//!                                                     (and RoPE'd q, k), attention output,
//!                                                     MLP gate/up/act/product, residuals,
//!                                                     and the attention scores and
//!                                                     probabilities (no flash attention)
//! logits             S·T·V·4·3           unfused: f32 logits, log-softmax, their gradient
//!                    C·V·4·3             fused head: chunks of C = min(S·T, a GPU's chunk:
//!                                        ⌊512 MiB / 4V⌋ in whole 128-row tiles, 128..=1024)
//!                                        rows (logits, probabilities, their gradient)
//! ```
//!
//! With LoRA of rank `r` on some linear layers (`P_a = L · Σ r·(in + out)`
//! adapter parameters, f32), the base weights are frozen: gradients, their
//! sums and AdamW's state are the adapters' (`P_a·4`, `P_a·4`, `P_a·8`, not
//! sharded), no master weights, the reference is the base model itself (no
//! second copy), and each adapted layer adds `(in·4·[w < 4] + r·4)` bytes per
//! token and block to the activations (its f32 input and `x A`).
//!
//! Bounds, not measurements: every position is counted as a completion
//! position (the objective computes the head only on completion tokens),
//! allocator fragmentation and the CUDA context (~0.5–1 GiB) are not.

use serde::Serialize;

use crate::model::{LoraTarget, ModelConfig};

pub use crate::precision::Precision;

/// What is trained, where.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PlanSetup {
    /// GPUs the states are sharded over (`N`).
    pub gpus: u64,
    /// Memory of one GPU, bytes.
    pub gpu_memory: u64,
    /// Preference pairs per micro-batch on one GPU (`B`).
    pub pairs: u64,
    /// Tokens per sequence (`T`).
    pub seq_len: u64,
    /// Micro-batches per optimizer step (gradient accumulation when above 1).
    pub micro_batches: u64,
    /// Weight precision.
    pub precision: Precision,
    /// A frozen reference model in memory (`loss.reference = "model"`).
    pub reference_live: bool,
    /// One activation checkpoint per decoder block.
    pub activation_checkpointing: bool,
    /// The fused LM head + loss (no `[tokens × V]` logits kept).
    pub fused_head: bool,
    /// LoRA adapters instead of full training.
    pub lora: Option<PlanLora>,
}

/// LoRA in a plan: the rank and which layers of each block are adapted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PlanLora {
    /// `r`.
    pub rank: u64,
    /// Adapted layers, in [`LoraTarget::ALL`]'s order.
    pub targets: [bool; 7],
}

impl PlanLora {
    /// Rank `rank` on `targets`.
    pub fn new(rank: u64, targets: &[LoraTarget]) -> Self {
        Self { rank, targets: LoraTarget::ALL.map(|t| targets.contains(&t)) }
    }

    /// `(in, out)` of each adapted layer of one block.
    fn layers(&self, config: &ModelConfig) -> Vec<(u64, u64)> {
        let (d, i) = (config.hidden_size as u64, config.intermediate_size as u64);
        let (q, kv) = ((config.num_heads * config.head_dim) as u64, (config.num_kv_heads * config.head_dim) as u64);
        let shapes = [(d, q), (d, kv), (d, kv), (q, d), (d, i), (d, i), (i, d)];
        shapes.into_iter().zip(self.targets).filter(|(_, on)| *on).map(|(shape, _)| shape).collect()
    }

    /// `P_a`: adapter parameters of the whole model.
    pub fn parameters(&self, config: &ModelConfig) -> u64 {
        config.num_layers as u64 * self.layers(config).iter().map(|(i, o)| self.rank * (i + o)).sum::<u64>()
    }
}

/// One line of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanLine {
    /// What it is.
    pub component: &'static str,
    /// Bytes on each GPU.
    pub bytes: u64,
    /// Counted in the total (alternatives are shown, not counted).
    pub counted: bool,
}

/// The plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemoryPlan {
    /// The setup planned for.
    pub setup: PlanSetup,
    /// `P`.
    pub parameters: u64,
    /// `P_a` (0 without LoRA).
    pub adapter_parameters: u64,
    /// Every component, the alternatives included.
    pub lines: Vec<PlanLine>,
    /// Sum of the counted lines.
    pub total: u64,
    /// Whether the total fits in one GPU's memory.
    pub fits: bool,
}

impl MemoryPlan {
    /// The plan of `setup` for the model of `config` (module documentation).
    pub fn new(config: &ModelConfig, setup: PlanSetup) -> Result<Self, String> {
        if setup.gpus == 0
            || setup.pairs == 0
            || setup.seq_len == 0
            || setup.gpu_memory == 0
            || setup.micro_batches == 0
        {
            return Err("plan: GPUs, GPU memory, pairs, sequence length and micro-batches must be at least 1".into());
        }
        let p = config.parameter_count() as u64;
        let w = setup.precision.bytes();
        let shard = |bytes_per_param: u64| (p * bytes_per_param).div_ceil(setup.gpus);
        let (d, l, v) = (config.hidden_size as u64, config.num_layers as u64, config.vocab_size as u64);
        let d_kv = (config.num_kv_heads * config.head_dim) as u64;
        let (i, a, t) = (config.intermediate_size as u64, config.num_heads as u64, setup.seq_len);
        let tokens = 2 * setup.pairs * t;
        let adapter_inputs = |lora: &PlanLora| -> u64 {
            let widened = if w < 4 { 4 } else { 0 };
            lora.layers(config).iter().map(|(input, _)| input * widened + lora.rank * 4).sum()
        };
        let per_token_block =
            (9 * d + 3 * d_kv + 4 * i) * w + 2 * a * t * w + setup.lora.as_ref().map_or(0, adapter_inputs);
        let ends = 2 * tokens * d * w;
        let full = l * tokens * per_token_block + ends;
        let checkpointed = l * tokens * d * w + tokens * per_token_block + ends;
        let unfused = tokens * v * 4 * 3;
        // A GPU's chunk (crate::fused_head::gpu_chunk_rows).
        let fused = tokens.min(crate::fused_head::gpu_chunk_rows(v as usize) as u64) * v * 4 * 3;
        let ckpt = setup.activation_checkpointing;
        let trained = match &setup.lora {
            // Adapters: f32, every GPU holds them whole.
            Some(lora) => {
                let adapters = lora.parameters(config);
                vec![
                    PlanLine { component: "weights (frozen)", bytes: shard(w), counted: true },
                    PlanLine { component: "LoRA adapters (f32)", bytes: adapters * 4, counted: true },
                    PlanLine { component: "gradients (adapters)", bytes: adapters * 4, counted: true },
                    PlanLine {
                        component: "gradient sums (f32, accumulation)",
                        bytes: if setup.micro_batches > 1 { adapters * 4 } else { 0 },
                        counted: true,
                    },
                    PlanLine { component: "optimizer state (AdamW, f32)", bytes: adapters * 8, counted: true },
                ]
            }
            None => vec![
                PlanLine { component: "weights", bytes: shard(w), counted: true },
                PlanLine {
                    component: "master weights (f32)",
                    bytes: if setup.precision == Precision::Bf16 { shard(4) } else { 0 },
                    counted: true,
                },
                PlanLine { component: "gradients", bytes: shard(w), counted: true },
                PlanLine {
                    component: "gradient sums (f32, accumulation)",
                    bytes: if setup.micro_batches > 1 { shard(4) } else { 0 },
                    counted: true,
                },
                PlanLine { component: "optimizer state (AdamW, f32)", bytes: shard(8), counted: true },
                PlanLine {
                    component: "reference model",
                    bytes: if setup.reference_live { shard(w) } else { 0 },
                    counted: true,
                },
            ],
        };
        let mut lines = trained;
        lines.extend([
            PlanLine { component: "activations, checkpoint per block", bytes: checkpointed, counted: ckpt },
            PlanLine { component: "activations, no checkpointing", bytes: full, counted: !ckpt },
            PlanLine { component: "logits, fused head", bytes: fused, counted: setup.fused_head },
            PlanLine { component: "logits, unfused", bytes: unfused, counted: !setup.fused_head },
        ]);
        lines.retain(|line| line.bytes > 0);
        let total = lines.iter().filter(|line| line.counted).map(|line| line.bytes).sum();
        let adapter_parameters = setup.lora.as_ref().map_or(0, |lora| lora.parameters(config));
        Ok(Self { setup, parameters: p, adapter_parameters, lines, total, fits: total <= setup.gpu_memory })
    }

    /// The plan as a table for people (GiB).
    pub fn table(&self) -> String {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        let s = &self.setup;
        let mut out = format!(
            "{:.2} B parameters{}; {} GPU(s) of {:.1} GiB; {} pair(s) × {} tokens per GPU; {}{}{}{}\n",
            self.parameters as f64 / 1e9,
            match &s.lora {
                Some(lora) => format!(
                    ", LoRA rank {} on {} ({:.1} M trained)",
                    lora.rank,
                    LoraTarget::ALL
                        .iter()
                        .zip(lora.targets)
                        .filter(|(_, on)| *on)
                        .map(|(t, _)| t.peft_name())
                        .collect::<Vec<_>>()
                        .join(", "),
                    self.adapter_parameters as f64 / 1e6
                ),
                None => String::new(),
            },
            s.gpus,
            gib(s.gpu_memory),
            s.pairs,
            s.seq_len,
            match s.precision {
                Precision::Bf16 => "bf16 weights, f32 state",
                Precision::F32 => "f32",
            },
            match (s.lora.is_some(), s.reference_live) {
                (true, true) => ", reference = adapters off",
                (false, true) => ", reference model in memory",
                (_, false) => ", cached reference",
            },
            if s.activation_checkpointing { ", activation checkpointing" } else { "" },
            if s.fused_head { ", fused head" } else { ", unfused head" },
        );
        out += &format!("{:<36} {:>12}\n", "per GPU", "GiB");
        for line in &self.lines {
            let mark = if line.counted { "" } else { " (not counted)" };
            out += &format!("{:<36} {:>12.2}{mark}\n", line.component, gib(line.bytes));
        }
        out += &format!("{:<36} {:>12.2}\n", "total", gib(self.total));
        out += &if self.fits {
            format!("fits: {:.2} GiB of {:.2} GiB", gib(self.total), gib(s.gpu_memory))
        } else {
            format!(
                "does not fit: {:.2} GiB needed, {:.2} GiB per GPU (more GPUs, checkpointing, the fused head, \
                 a cached reference or fewer tokens per micro-batch lower it)",
                gib(self.total),
                gib(s.gpu_memory)
            )
        };
        out
    }
}

/// Reads a size like `80GiB`, `80 GB`, `512MiB` or a number of bytes.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("size {text:?}: expected a number and a unit, e.g. 80GiB"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024f64.powi(2),
        "gib" => 1024f64.powi(3),
        "tib" => 1024f64.powi(4),
        other => return Err(format!("size {text:?}: unknown unit {other:?} (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")),
    };
    let bytes = value * scale;
    if !(bytes.is_finite() && bytes >= 1.0) {
        return Err(format!("size {text:?} must be at least one byte"));
    }
    Ok(bytes.round() as u64)
}
