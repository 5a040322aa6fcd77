//! The trainer benchmark's measurement: one DPO optimizer step (forward of
//! chosen and rejected, completion-only log-probabilities, sigmoid DPO
//! against cached reference scores, backward, global-norm clipping, AdamW)
//! and one forward-only scoring pass, on burn's CPU backend (or CUDA, with
//! the `cuda` feature: `scripts/gpu-check.sh`), timed in this process.
//! `benches/trainer_step.rs` runs one measurement per process so that each
//! peak resident memory is its own.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::backend::{Autodiff, Flex, NdArray};
use daa_core::preference::{PreferenceLoss, PreferenceLossParams};
use daa_train::backward::MemoryOptions;
use daa_train::batch::{BatchLayout, LengthLimits, Sequence, SequencePair};
use daa_train::model::{CausalLm, LoraConfig, LoraTarget, ModelConfig, RandomWeights};
use daa_train::optim::{AdamWConfig, LrSchedule};
use daa_train::score::score_pairs;
use daa_train::{Precision, ReferencePolicy, StepPair, Trainer, TrainerOptions};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// burn's CPU backends the benchmark can time (and `cuda` with that feature).
pub const CPU_BACKENDS: [&str; 2] = ["flex", "ndarray"];

/// How one measurement runs.
#[derive(Debug, Clone, Copy)]
pub struct Setup<'a> {
    /// `flex`, `ndarray` or `cuda`.
    pub backend: &'a str,
    /// The training precision (`train.precision`).
    pub precision: Precision,
    /// Per-block activation checkpointing.
    pub checkpointing: bool,
    /// Padding-free packed micro-batches (`train.packing`; steps only).
    pub packing: bool,
    /// LoRA of this rank on every linear layer of the blocks (α = 2r) instead
    /// of full training (steps only).
    pub lora: Option<usize>,
    /// Threads the process was given.
    pub threads: usize,
    /// Timed repetitions after one warm-up.
    pub repeats: usize,
}

/// A model and batch shape of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Name in tables and on the command line.
    pub name: &'static str,
    /// Decoder blocks.
    pub layers: usize,
    /// Model width `d`.
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// MLP width.
    pub mlp: usize,
    /// Vocabulary.
    pub vocab: usize,
    /// Preference pairs per step (2× as many sequences).
    pub pairs: usize,
    /// Tokens per sequence (prompt and completion).
    pub seq_len: usize,
    /// Prompt tokens per sequence; the rest is completion.
    pub prompt_len: usize,
    /// Whether the head is the embedding matrix.
    pub tied: bool,
    /// Every sequence `seq_len` tokens, or lengths drawn like real preference data.
    pub lengths: Lengths,
}

/// How long a shape's sequences are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lengths {
    /// Every sequence `seq_len` tokens, `prompt_len` of them prompt.
    Fixed,
    /// Drawn like UltraFeedback's pairs tokenised for Llama (an approximation
    /// stated, not read from the dataset): prompt, chosen and rejected
    /// completion each log-normal, medians 100, 250 and 220 tokens,
    /// log-standard deviations 0.9, 0.7 and 0.8; cut like TRL to
    /// `seq_len` tokens with at most `prompt_len` of prompt.
    UltraFeedbackLike,
}

/// The built-in run's model and batch (configs/tiny.toml), the 5 M shape of
/// the issue that measured the trainer against PyTorch, a 25 M one, a
/// long-sequence one (2 048 tokens per sequence, where attention
/// dominates), and the 5 M model on 16 pairs of uneven lengths (padded
/// against packed: `--packing`).
pub const SHAPES: [Shape; 5] = [
    Shape {
        name: "tiny",
        layers: 2,
        hidden: 64,
        heads: 4,
        kv_heads: 2,
        mlp: 170,
        vocab: 261,
        pairs: 8,
        seq_len: 64,
        prompt_len: 40,
        tied: false,
        lengths: Lengths::Fixed,
    },
    Shape {
        name: "5m",
        layers: 4,
        hidden: 256,
        heads: 4,
        kv_heads: 2,
        mlp: 680,
        vocab: 4096,
        pairs: 8,
        seq_len: 128,
        prompt_len: 64,
        tied: false,
        lengths: Lengths::Fixed,
    },
    Shape {
        name: "25m",
        layers: 8,
        hidden: 512,
        heads: 8,
        kv_heads: 4,
        mlp: 1376,
        vocab: 32000,
        pairs: 8,
        seq_len: 256,
        prompt_len: 128,
        tied: false,
        lengths: Lengths::Fixed,
    },
    Shape {
        name: "long",
        layers: 4,
        hidden: 256,
        heads: 4,
        kv_heads: 2,
        mlp: 680,
        vocab: 4096,
        pairs: 1,
        seq_len: 2048,
        prompt_len: 1536,
        tied: false,
        lengths: Lengths::Fixed,
    },
    Shape {
        name: "uneven",
        layers: 4,
        hidden: 256,
        heads: 4,
        kv_heads: 2,
        mlp: 680,
        vocab: 4096,
        pairs: 16,
        seq_len: 1024,
        prompt_len: 512,
        tied: false,
        lengths: Lengths::UltraFeedbackLike,
    },
];

/// Shapes of the GPU check (`scripts/gpu-check.sh`): Llama-3.2-1B's
/// (tied head, vocabulary 128 256), 4 pairs × 512 tokens, and Llama-2-7B's,
/// 1 pair × 512 tokens (to show that it fits one GPU in bf16).
pub const GPU_SHAPES: [Shape; 2] = [
    Shape {
        name: "1b",
        layers: 16,
        hidden: 2048,
        heads: 32,
        kv_heads: 8,
        mlp: 8192,
        vocab: 128_256,
        pairs: 4,
        seq_len: 512,
        prompt_len: 128,
        tied: true,
        lengths: Lengths::Fixed,
    },
    Shape {
        name: "7b",
        layers: 32,
        hidden: 4096,
        heads: 32,
        kv_heads: 32,
        mlp: 11008,
        vocab: 32000,
        pairs: 1,
        seq_len: 512,
        prompt_len: 128,
        tied: false,
        lengths: Lengths::Fixed,
    },
];

impl Shape {
    /// The shape called `name`.
    pub fn named(name: &str) -> Result<Shape> {
        SHAPES.into_iter().chain(GPU_SHAPES).find(|s| s.name == name).with_context(|| {
            let names: Vec<&str> = SHAPES.iter().chain(&GPU_SHAPES).map(|s| s.name).collect();
            format!("unknown shape `{name}`; expected one of {}", names.join(", "))
        })
    }

    /// Hugging Face `config.json` of a Llama with this shape (what the
    /// PyTorch baseline builds with transformers).
    pub fn config_json(&self) -> Value {
        json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab,
            "hidden_size": self.hidden,
            "intermediate_size": self.mlp,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "hidden_act": "silu",
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "max_position_embeddings": self.seq_len.max(512),
            "tie_word_embeddings": self.tied,
            "attention_bias": false,
            "mlp_bias": false,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "torch_dtype": "float32",
        })
    }

    /// Parameters of the model.
    pub fn parameters(&self) -> usize {
        let head_dim = self.hidden / self.heads;
        let attention = self.hidden * head_dim * (2 * self.heads + 2 * self.kv_heads);
        let block = attention + 3 * self.hidden * self.mlp + 2 * self.hidden;
        let embeddings = if self.tied { 1 } else { 2 };
        embeddings * self.vocab * self.hidden + self.layers * block + self.hidden
    }

    /// Model FLOPs of one step (`step`) or scoring pass (`score`) over
    /// `pairs`, as MFU counts them (PaLM's appendix B): per token
    /// `6N + 12·L·d·T` to train, `2N + 4·L·d·T` forward only, `N` the
    /// parameters without the input embedding (the head counted), `T` the
    /// token's sequence length; for every real token (padding not counted),
    /// although daa applies the head at completion positions only.
    pub fn model_flops(&self, mode: &str, pairs: &[SequencePair]) -> f64 {
        self.flops(mode, 0, pairs)
    }

    /// [`Self::model_flops`] of a LoRA step with `adapters` parameters: the
    /// frozen weights get no gradient (`4N` per token: forward and the
    /// activations' gradients), the adapters all three products (`6·P_a`).
    pub fn lora_step_flops(&self, adapters: usize, pairs: &[SequencePair]) -> f64 {
        self.flops("lora", adapters, pairs)
    }

    fn flops(&self, mode: &str, adapters: usize, pairs: &[SequencePair]) -> f64 {
        let n = (self.parameters() - self.vocab * self.hidden + if self.tied { self.vocab * self.hidden } else { 0 })
            as f64;
        let sequences = pairs.iter().flat_map(|p| [&p.chosen, &p.rejected]);
        sequences
            .map(|s| {
                let t = s.ids.len() as f64;
                let attention = (self.layers * self.hidden) as f64 * t;
                let per_token = match mode {
                    "step" => 6.0 * n + 12.0 * attention,
                    "lora" => 4.0 * n + 12.0 * attention + 6.0 * adapters as f64,
                    _ => 2.0 * n + 4.0 * attention,
                };
                per_token * t
            })
            .sum()
    }

    /// Random pairs of this shape: the same prompt for chosen and rejected,
    /// different completions, token ids uniform below the vocabulary, lengths
    /// as [`Self::lengths`] says (SplitMix64 from `seed`).
    pub fn random_pairs(&self, seed: u64) -> Vec<SequencePair> {
        let mut state = seed;
        let mut next = move || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let vocab = self.vocab as u64;
        let ids =
            |n: usize, next: &mut dyn FnMut() -> u64| -> Vec<u32> { (0..n).map(|_| (next() % vocab) as u32).collect() };
        (0..self.pairs)
            .map(|_| match self.lengths {
                Lengths::Fixed => {
                    let prompt = ids(self.prompt_len, &mut next);
                    let mut completion = || -> Sequence {
                        let completion = ids(self.seq_len - self.prompt_len, &mut next);
                        Sequence { ids: [&prompt[..], &completion[..]].concat(), completion_start: self.prompt_len }
                    };
                    SequencePair { chosen: completion(), rejected: completion() }
                }
                Lengths::UltraFeedbackLike => {
                    let mut log_normal = |median: f64, sigma: f64| -> usize {
                        // Box–Muller from two uniforms in (0, 1].
                        let u1 = ((next() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
                        let u2 = (next() >> 11) as f64 / (1u64 << 53) as f64;
                        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                        ((median * (sigma * z).exp()).round() as usize).max(1)
                    };
                    let (p, w, l) = (log_normal(100.0, 0.9), log_normal(250.0, 0.7), log_normal(220.0, 0.8));
                    let limits = LengthLimits { max_length: self.seq_len, max_prompt_length: self.prompt_len };
                    let (prompt, chosen, rejected) = (ids(p, &mut next), ids(w, &mut next), ids(l, &mut next));
                    SequencePair::truncated(prompt, chosen, rejected, &limits).0
                }
            })
            .collect()
    }
}

/// Pairs as the PyTorch baseline writes them (`batch.json`).
#[derive(Debug, Serialize, Deserialize)]
pub struct BatchFile {
    /// Per pair: the chosen and rejected token ids and where the completion starts.
    pub pairs: Vec<PairIds>,
}

/// One pair of `batch.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PairIds {
    /// Chosen sequence, prompt first.
    pub chosen: Vec<u32>,
    /// Rejected sequence, prompt first.
    pub rejected: Vec<u32>,
    /// Prompt tokens (the same in both).
    pub prompt_len: usize,
}

/// Reads `batch.json`.
pub fn read_batch(path: &Path) -> Result<Vec<SequencePair>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: BatchFile = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(file
        .pairs
        .into_iter()
        .map(|p| SequencePair {
            chosen: Sequence { ids: p.chosen, completion_start: p.prompt_len },
            rejected: Sequence { ids: p.rejected, completion_start: p.prompt_len },
        })
        .collect())
}

/// What one measurement found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measurement {
    /// `daa` or `pytorch`.
    #[serde(default = "daa")]
    pub engine: String,
    /// Shape name.
    pub shape: String,
    /// `step` (forward, backward, optimizer) or `score` (forward only).
    pub mode: String,
    /// Threads the process was given.
    pub threads: usize,
    /// Median seconds per step or scoring pass.
    pub seconds: f64,
    /// Fastest repetition, seconds.
    pub best_seconds: f64,
    /// Tokens per second at the median.
    pub tokens_per_s: f64,
    /// Peak resident memory of the process on the host (VmHWM), MiB: on a
    /// GPU, not the GPU's memory (the GPU check compares nvidia-smi's peaks).
    pub peak_rss_mib: f64,
    /// Seconds to make the model (random weights or a checkpoint read) and
    /// put it on the device.
    #[serde(default)]
    pub init_seconds: f64,
    /// Seconds of the warm-up repetition (on a GPU: kernel compilation and
    /// autotuning of every new shape, unless cached).
    #[serde(default)]
    pub warmup_seconds: f64,
    /// burn backend (`flex`, `ndarray`, `cuda`; PyTorch's device).
    #[serde(default)]
    pub backend: String,
    /// Training precision.
    #[serde(default = "f32_name")]
    pub precision: String,
    /// LoRA rank of the step (0: full training).
    #[serde(default)]
    pub lora_rank: usize,
    /// Model FLOPs of the step or pass ([`Shape::model_flops`]).
    #[serde(default)]
    pub model_flops: f64,
    /// `daa plan`'s estimate of the step's memory on one GPU, MiB (steps only).
    #[serde(default)]
    pub plan_mib: f64,
    /// `step`: the first step's loss (ln 2 for DPO against the model's own
    /// scores); `score`: the first chosen sequence's log-probability, which
    /// daa and PyTorch must agree on for the same checkpoint.
    pub loss: f64,
}

fn daa() -> String {
    "daa".into()
}

fn f32_name() -> String {
    "f32".into()
}

fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    let n = times.len();
    if n % 2 == 1 { times[n / 2] } else { 0.5 * (times[n / 2 - 1] + times[n / 2]) }
}

/// Where the model comes from.
#[derive(Debug, Clone, Copy)]
pub enum ModelSource<'a> {
    /// Random weights `N(0, 0.02²)` of the shape (seed 0).
    Random,
    /// A Hugging Face checkpoint folder (the PyTorch baseline's).
    Checkpoint(&'a Path),
}

fn model<B: burn::tensor::backend::Backend>(
    shape: &Shape,
    source: &ModelSource<'_>,
    device: &B::Device,
) -> Result<CausalLm<B>> {
    Ok(match source {
        ModelSource::Random => {
            let config = ModelConfig::from_json(&shape.config_json().to_string())?;
            CausalLm::from_weights(&config, &mut RandomWeights { seed: 0, std: 0.02 }, device)?
        }
        ModelSource::Checkpoint(dir) => daa_train::checkpoint::load_model(dir, device)?,
    })
}

/// Times `repeats` steps (after one warm-up) or scoring passes of `pairs`
/// with one forward pass over all of them.
pub fn measure(
    setup: &Setup<'_>,
    shape: &Shape,
    source: &ModelSource<'_>,
    pairs: &[SequencePair],
    mode: &str,
) -> Result<Measurement> {
    let m = match setup.backend {
        "flex" => measure_on::<Flex>(setup, shape, source, pairs, mode, &Default::default())?,
        "ndarray" => measure_on::<NdArray<f32>>(setup, shape, source, pairs, mode, &Default::default())?,
        #[cfg(feature = "cuda")]
        "cuda" => {
            // burn's CUDA runtime panics on a device thread without a driver: say it first.
            if !daa_core::cuda::driver_present() {
                bail!("--backend cuda: CUDA driver not found (libcuda.so could not be loaded; no NVIDIA driver here)");
            }
            if !daa_core::cuda::kernels::nvrtc_available() {
                bail!("--backend cuda: {}", daa_core::cuda::libraries::nvrtc_missing_message());
            }
            if daa_core::cuda::libraries::toolkit_headers().is_none() {
                bail!(
                    "--backend cuda: CUDA headers not found (set CUDA_PATH to a toolkit with include/cuda_runtime.h)"
                );
            }
            daa_train::backend::configure_gpu_caches();
            measure_on::<burn::backend::Cuda>(setup, shape, source, pairs, mode, &Default::default())?
        }
        #[cfg(feature = "wgpu")]
        "wgpu" => {
            daa_core::Wgpu::new().map_err(|e| anyhow::anyhow!("--backend wgpu: {e}"))?;
            daa_train::backend::configure_gpu_caches();
            measure_on::<burn::backend::Wgpu>(setup, shape, source, pairs, mode, &Default::default())?
        }
        other => bail!(
            "unknown backend `{other}`; expected one of {}{}",
            CPU_BACKENDS.join(", "),
            if cfg!(feature = "cuda") { ", cuda" } else { " (cuda: build with --features cuda)" }
        ),
    };
    let plan_mib = if mode == "step" { plan_bytes(setup, shape)? as f64 / (1 << 20) as f64 } else { 0.0 };
    Ok(Measurement {
        backend: setup.backend.into(),
        precision: setup.precision.as_str().into(),
        lora_rank: setup.lora.unwrap_or(0),
        model_flops: match setup.lora {
            Some(rank) if mode == "step" => shape.lora_step_flops(lora_parameters(shape, rank)?, pairs),
            _ => shape.model_flops(mode, pairs),
        },
        plan_mib,
        ..m
    })
}

/// Adapter parameters of [`lora_all_linear`]`(rank)` on `shape`.
fn lora_parameters(shape: &Shape, rank: usize) -> Result<usize> {
    let config = ModelConfig::from_json(&shape.config_json().to_string())?;
    Ok(daa_train::plan::PlanLora::new(rank as u64, &LoraTarget::ALL).parameters(&config) as usize)
}

/// LoRA of `rank` on every linear layer of the blocks, `α = 2r` (a common TRL setting).
fn lora_all_linear(rank: usize) -> LoraConfig {
    LoraConfig { rank, alpha: 2.0 * rank as f64, target_modules: vec!["all-linear".into()], ..LoraConfig::default() }
}

/// `daa plan`'s total for the step of `shape` on one GPU (cached reference, fused head).
fn plan_bytes(setup: &Setup<'_>, shape: &Shape) -> Result<u64> {
    let config = ModelConfig::from_json(&shape.config_json().to_string())?;
    let plan = daa_train::plan::MemoryPlan::new(
        &config,
        daa_train::plan::PlanSetup {
            gpus: 1,
            shard_group: 1,
            sharding: daa_train::plan::Sharding::None,
            gpu_memory: u64::MAX,
            pairs: shape.pairs as u64,
            seq_len: shape.seq_len as u64,
            micro_batches: 1,
            precision: setup.precision,
            reference_live: false,
            activation_checkpointing: setup.checkpointing,
            fused_head: true,
            lora: setup.lora.map(|rank| daa_train::plan::PlanLora::new(rank as u64, &LoraTarget::ALL)),
        },
    )
    .map_err(anyhow::Error::msg)?;
    Ok(plan.total)
}

fn measure_on<B: burn::tensor::backend::Backend>(
    setup: &Setup<'_>,
    shape: &Shape,
    source: &ModelSource<'_>,
    pairs: &[SequencePair],
    mode: &str,
    device: &B::Device,
) -> Result<Measurement> {
    let (threads, repeats) = (setup.threads, setup.repeats);
    if repeats == 0 {
        bail!("--repeats must be at least 1 (one warm-up runs before them)");
    }
    let refs: Vec<&SequencePair> = pairs.iter().collect();
    let tokens: usize = pairs.iter().map(|p| p.chosen.ids.len() + p.rejected.ids.len()).sum();
    let mut times = Vec::with_capacity(repeats);
    let mut loss = f64::NAN;
    let init_seconds;
    match mode {
        "score" => {
            let started = Instant::now();
            let scorer = model::<B>(shape, source, device)?.cast(setup.precision.dtype());
            init_seconds = started.elapsed().as_secs_f64();
            for _ in 0..=repeats {
                let started = Instant::now();
                let scores = score_pairs(&scorer, &refs, pairs.len(), 0, &mut |_| {})?;
                times.push(started.elapsed().as_secs_f64());
                loss = scores[0].chosen;
            }
        }
        "step" => {
            let started = Instant::now();
            let policy = match setup.lora {
                None => model::<Autodiff<B>>(shape, source, device)?,
                Some(rank) => model::<Autodiff<B>>(shape, source, device)?.with_lora(&lora_all_linear(rank), 0)?,
            };
            init_seconds = started.elapsed().as_secs_f64();
            // The cached reference: the initial model's own scores, from the
            // policy's weights without autodiff (no second copy of the model),
            // so the first loss is ln 2 as in PyTorch's baseline.
            let reference =
                score_pairs(&burn::module::AutodiffModule::valid(&policy), &refs, pairs.len(), 0, &mut |_| {})?;
            let options = TrainerOptions {
                loss: PreferenceLossParams { loss: PreferenceLoss::Dpo { beta: 0.1, label_smoothing: 0.0 }, nll: None },
                optimizer: AdamWConfig::default(),
                schedule: LrSchedule { peak: 1e-4, warmup: 0, total: 1000, final_fraction: 0.1 },
                micro_batch_size: pairs.len(),
                pad_id: 0,
                memory: MemoryOptions { activation_checkpointing: setup.checkpointing, ..MemoryOptions::default() },
                precision: setup.precision,
            };
            let layout = if setup.packing { BatchLayout::Packed } else { BatchLayout::Padded };
            let mut trainer = Trainer::new(policy, options, ReferencePolicy::Given)?.with_batch_layout(layout);
            let step: Vec<StepPair<'_>> =
                pairs.iter().zip(&reference).map(|(p, r)| StepPair { sequences: p, reference: Some(*r) }).collect();
            for i in 0..=repeats {
                let started = Instant::now();
                let record = trainer.step(&step)?;
                times.push(started.elapsed().as_secs_f64());
                if i == 0 {
                    loss = record.loss;
                }
            }
        }
        other => bail!("unknown mode `{other}`; expected step or score"),
    }
    let warmup_seconds = times.remove(0);
    let seconds = median(times.clone());
    Ok(Measurement {
        engine: daa(),
        shape: shape.name.into(),
        mode: mode.into(),
        threads,
        seconds,
        best_seconds: times.iter().copied().fold(f64::INFINITY, f64::min),
        tokens_per_s: tokens as f64 / seconds,
        peak_rss_mib: daa_train::run::process::memory_mib("VmHWM").unwrap_or(0.0),
        init_seconds,
        warmup_seconds,
        loss,
        backend: String::new(),
        precision: f32_name(),
        lora_rank: 0,
        model_flops: 0.0,
        plan_mib: 0.0,
    })
}
