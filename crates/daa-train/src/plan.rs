//! Memory plan of one preference-training step on each GPU, by component
//! (`daa plan`). An estimate from `config.json` alone, in bytes:
//!
//! With `P` parameters, a sharding group of `N` GPUs (every GPU of the run,
//! or of one node with `shard_within_node`: HSDP), weight bytes `w` (2 for
//! bf16, 4 for f32), `B` pairs per micro-batch on one GPU (`S = 2B` sequences
//! of `T` tokens), width `d`, key/value width `d_kv`, MLP width `I`, `a`
//! query heads, `L` blocks and vocabulary `V`; `/N` applies from the
//! [`Sharding`] stage that divides that state on (optimizer: masters and
//! AdamW; gradients: also gradients and their sums; parameters: also the
//! weights and a live reference), and is `/1` before it:
//!
//! ```text
//! weights            P·w / N
//! master weights     P·4 / N             (bf16 only: f32 copy the optimizer updates)
//! gradients          P·w / N             (one backward pass's)
//! gradient sums      P·4 / N             (only with several micro-batches per step: f32 sums)
//! optimizer state    P·8 / N             (AdamW m and v in f32)
//! reference model    P·w / N             (only with loss.reference = "model")
//! gathered units     max(3·U_b, 2·U_e)·w  parameters stage, N > 1: a block's weights gathered,
//!                                        the next one's prefetched, the block's whole gradient
//!                                        before its reduce-scatter (U_b: a block's parameters);
//!                                        the embedding/head gathered with its gradient (U_e = V·d)
//!                    U_b·w               gradients stage, N > 1: a block's whole gradient
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

/// Which training state is divided over the GPUs of a sharding group
/// (`train.sharding`): each stage divides what the one before it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sharding {
    /// Nothing (DDP): every GPU holds everything; gradients all-reduced.
    #[default]
    None,
    /// ZeRO-1: f32 master weights and AdamW state.
    Optimizer,
    /// ZeRO-2: also the gradients (reduce-scattered block by block).
    Gradients,
    /// ZeRO-3 / FSDP: also the weights (all-gathered block by block).
    Parameters,
}

impl Sharding {
    /// Every stage, in order.
    pub const ALL: [Sharding; 4] = [Sharding::None, Sharding::Optimizer, Sharding::Gradients, Sharding::Parameters];

    /// The configuration's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Sharding::None => "none",
            Sharding::Optimizer => "optimizer",
            Sharding::Gradients => "gradients",
            Sharding::Parameters => "parameters",
        }
    }
}

impl std::str::FromStr for Sharding {
    type Err = String;
    fn from_str(name: &str) -> Result<Self, String> {
        Sharding::ALL
            .into_iter()
            .find(|s| s.as_str() == name)
            .ok_or_else(|| format!("sharding {name:?}: expected none, optimizer, gradients or parameters"))
    }
}

/// What is trained, where.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PlanSetup {
    /// GPUs of the run.
    pub gpus: u64,
    /// GPUs each state is divided over (`N`): `gpus`, or the GPUs of one
    /// node (HSDP: shard inside a node, replicate across nodes).
    pub shard_group: u64,
    /// What is divided.
    pub sharding: Sharding,
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
        if setup.shard_group == 0 || !setup.gpus.is_multiple_of(setup.shard_group) {
            return Err(format!(
                "plan: the sharding group ({} GPUs) must divide the run's {} GPUs",
                setup.shard_group, setup.gpus
            ));
        }
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
        let by_stage = |from: Sharding, bytes_per_param: u64| {
            let n = if setup.sharding as u8 >= from as u8 { setup.shard_group } else { 1 };
            (p * bytes_per_param).div_ceil(n)
        };
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
        // Sharded weights or gradients exist whole for one unit at a time.
        let (block, embedding) = (config.block_parameter_count() as u64, v * d);
        let gathered = match setup.sharding {
            _ if setup.shard_group == 1 => 0,
            Sharding::Parameters => (3 * block).max(2 * embedding) * w,
            Sharding::Gradients => block * w,
            _ => 0,
        };
        let trained = match &setup.lora {
            // Adapters: f32, every GPU holds them whole.
            Some(lora) => {
                let adapters = lora.parameters(config);
                vec![
                    PlanLine { component: "weights (frozen)", bytes: by_stage(Sharding::Parameters, w), counted: true },
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
                PlanLine { component: "weights", bytes: by_stage(Sharding::Parameters, w), counted: true },
                PlanLine {
                    component: "master weights (f32)",
                    bytes: if setup.precision == Precision::Bf16 { by_stage(Sharding::Optimizer, 4) } else { 0 },
                    counted: true,
                },
                PlanLine { component: "gradients", bytes: by_stage(Sharding::Gradients, w), counted: true },
                PlanLine {
                    component: "gradient sums (f32, accumulation)",
                    bytes: if setup.micro_batches > 1 { by_stage(Sharding::Gradients, 4) } else { 0 },
                    counted: true,
                },
                PlanLine {
                    component: "optimizer state (AdamW, f32)",
                    bytes: by_stage(Sharding::Optimizer, 8),
                    counted: true,
                },
                PlanLine {
                    component: "reference model",
                    bytes: if setup.reference_live { by_stage(Sharding::Parameters, w) } else { 0 },
                    counted: true,
                },
                PlanLine { component: "gathered units (transient)", bytes: gathered, counted: true },
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
            "{:.2} B parameters{}; {} GPU(s) of {:.1} GiB, {}; {} pair(s) × {} tokens per GPU; {}{}{}{}\n",
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
            match (s.sharding, s.shard_group == s.gpus) {
                (_, _) if s.gpus == 1 => "one GPU".to_string(),
                (Sharding::None, _) => "data parallel (nothing sharded)".to_string(),
                (stage, true) => format!("{} sharded over all {}", stage.as_str(), s.gpus),
                (stage, false) => format!("{} sharded within nodes of {} (HSDP)", stage.as_str(), s.shard_group),
            },
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

/// The links and compute a step is timed against in [`MemoryPlan::communication`]
/// (`daa plan`'s flags; the defaults describe an H100/H200 SXM node: NVLink 4
/// at 450 GB/s per direction, one 400 Gb/s NIC per GPU, 989.4 TFLOP/s dense
/// bf16, 40 % MFU). Nominal speeds: NCCL's measured bus bandwidth is lower.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Cluster {
    /// GPUs per node.
    pub gpus_per_node: u64,
    /// GB/s one GPU sends to the others of its node.
    pub nvlink_gb_s: f64,
    /// GB/s one GPU sends to other nodes.
    pub network_gb_s: f64,
    /// Dense bf16 peak, TFLOP/s.
    pub peak_tflops: f64,
    /// Model FLOPs utilisation assumed for the compute time.
    pub mfu: f64,
}

/// One collective of a step: bytes one GPU sends, over which link, how long.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommunicationLine {
    /// What moves.
    pub what: &'static str,
    /// Bytes each GPU sends per optimizer step.
    pub bytes: u64,
    /// `NVLink` or `network`.
    pub link: &'static str,
    /// `bytes / bandwidth`, seconds.
    pub seconds: f64,
}

/// A step's communication per GPU beside its compute.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommunicationPlan {
    /// Each collective.
    pub lines: Vec<CommunicationLine>,
    /// Their sum, seconds (nothing overlapped).
    pub seconds: f64,
    /// Model FLOPs of one GPU's step at the assumed MFU, seconds.
    pub compute_seconds: f64,
}

impl MemoryPlan {
    /// One optimizer step's communication per GPU, ring collectives (a
    /// reduce-scatter or all-gather of `X` bytes over `n` GPUs sends
    /// `(n−1)/n·X` per GPU, an all-reduce twice that), gradients in f32
    /// (daa sums them in f32), weights in the training precision, `m`
    /// micro-batches per step:
    ///
    /// ```text
    /// none         all-reduce of the gradients once per step          2·(n−1)/n·P·4
    /// optimizer    reduce-scatter of the gradients once per step       (n−1)/n·P·4
    ///              all-gather of the updated weights                   (n−1)/n·P·w
    /// gradients    reduce-scatter per micro-batch                    m·(n−1)/n·P·4
    ///              all-gather of the updated weights                   (n−1)/n·P·w
    /// parameters   all-gather for the forward and again for the
    ///              recompute and backward, per micro-batch           2m·(n−1)/n·P·w
    ///              reduce-scatter per micro-batch                    m·(n−1)/n·P·4
    /// HSDP         all-reduce of each GPU's gradient shard across
    ///              the R nodes' replicas                         2·(R−1)/R·P·4/n
    /// ```
    ///
    /// Traffic inside a sharding group that fits one node goes over NVLink,
    /// otherwise over the network (a ring across nodes runs at the network's
    /// speed). Compute: `(6P + 12·L·d·T)` FLOPs per token (`4P + 6P_a` with
    /// LoRA, whose communication is the adapters' alone), `2·B·T·m` tokens.
    pub fn communication(&self, config: &ModelConfig, cluster: &Cluster) -> CommunicationPlan {
        let s = &self.setup;
        let (n, replicas) = (s.shard_group, s.gpus / s.shard_group);
        let trained = if s.lora.is_some() { self.adapter_parameters } else { self.parameters };
        let (w, m) = (if s.lora.is_some() { 4 } else { s.precision.bytes() }, s.micro_batches);
        let ring = |group: u64, bytes: u64| if group <= 1 { 0 } else { bytes * (group - 1) / group };
        let group_link = if n <= cluster.gpus_per_node { "NVLink" } else { "network" };
        let mut lines = Vec::new();
        let mut line = |what: &'static str, bytes: u64, link: &'static str| {
            if bytes > 0 {
                let gb_s = if link == "NVLink" { cluster.nvlink_gb_s } else { cluster.network_gb_s };
                lines.push(CommunicationLine { what, bytes, link, seconds: bytes as f64 / (gb_s * 1e9) });
            }
        };
        let (grads, weights) = (trained * 4, trained * w);
        match s.sharding {
            Sharding::None => line("all-reduce of the gradients", 2 * ring(n, grads), group_link),
            Sharding::Optimizer => {
                line("reduce-scatter of the gradients", ring(n, grads), group_link);
                line("all-gather of the updated weights", ring(n, weights), group_link);
            }
            Sharding::Gradients => {
                line("reduce-scatter of the gradients, per micro-batch", m * ring(n, grads), group_link);
                line("all-gather of the updated weights", ring(n, weights), group_link);
            }
            Sharding::Parameters => {
                line("all-gather of the weights, forward and backward", 2 * m * ring(n, weights), group_link);
                line("reduce-scatter of the gradients, per micro-batch", m * ring(n, grads), group_link);
            }
        }
        if s.sharding != Sharding::None {
            line("all-reduce of the gradient shards across nodes", 2 * ring(replicas, grads / n), "network");
        }
        let seconds = lines.iter().map(|l| l.seconds).sum();
        let (d, l) = (config.hidden_size as f64, config.num_layers as f64);
        let per_token = match s.lora {
            Some(_) => 4.0 * self.parameters as f64 + 6.0 * self.adapter_parameters as f64,
            None => 6.0 * self.parameters as f64,
        } + 12.0 * l * d * s.seq_len as f64;
        let tokens = (2 * s.pairs * s.seq_len * m) as f64;
        let compute_seconds = per_token * tokens / (cluster.peak_tflops * 1e12 * cluster.mfu);
        CommunicationPlan { lines, seconds, compute_seconds }
    }
}

impl CommunicationPlan {
    /// The plan as lines for people.
    pub fn table(&self) -> String {
        let mut out = format!("{:<52} {:>10} {:>8} {:>9}\n", "communication per GPU per step", "GB", "link", "seconds");
        for l in &self.lines {
            out += &format!("{:<52} {:>10.2} {:>8} {:>9.3}\n", l.what, l.bytes as f64 / 1e9, l.link, l.seconds);
        }
        out += &format!(
            "communication {:.3} s (not overlapped) beside compute {:.3} s at the assumed MFU",
            self.seconds, self.compute_seconds
        );
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
