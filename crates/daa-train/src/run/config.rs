//! The run configuration: a TOML file (`configs/*.toml`), every field
//! overridable with `--set section.field=value`, validated before anything
//! runs, with errors that name the field.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use daa_core::preference::{LossName, NllNormalisation, NllTerm, PreferenceLoss, PreferenceLossParams};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};

use crate::backend::ComputeBackend;
use crate::optim::{AdamWConfig, LrSchedule};
use crate::schedule::Cadence;
use crate::trainer::TrainerOptions;

/// The testbed's configuration (`configs/testbed.toml`): what `daa train`
/// (and `cargo xtask train`) run without `--config`, and the base of `daa experiment`.
pub const TESTBED_CONFIG: &str = include_str!("../../../../configs/testbed.toml");

/// The configuration of `daa train` without `--config`.
pub const BUILTIN_CONFIG: &str = TESTBED_CONFIG;

/// The built-in tiny run (`configs/tiny.toml`): a random model on arithmetic
/// pairs, the trainer's smoke test (no SFT, no sampling).
pub const TINY_CONFIG: &str = include_str!("../../../../configs/tiny.toml");

/// Value of `model.path` / `data.path` that selects the built-in tiny model and task.
pub const BUILTIN: &str = "builtin:tiny";

/// Value of `model.path` / `data.path` that selects the over-optimisation
/// testbed: its SFT reference policy and its gold-labelled pairs (training
/// and held-out), made once per `[testbed]` specification and cached.
pub const BUILTIN_TESTBED: &str = "builtin:testbed";

/// A whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Model and compute.
    pub model: ModelSection,
    /// Data.
    pub data: DataSection,
    /// Objective.
    pub loss: LossSection,
    /// Optimisation.
    pub train: TrainSection,
    /// Monitoring.
    #[serde(default)]
    pub monitor: MonitorSection,
    /// `[testbed]`: the synthetic task, its SFT reference and its pairs, for
    /// `model.path = data.path = "builtin:testbed"`.
    #[serde(default)]
    pub testbed: crate::testbed::TestbedSpec,
    /// `[lora]`: train LoRA adapters on a frozen model instead of every weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<crate::model::LoraConfig>,
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Hugging Face checkpoint folder, `builtin:tiny` or `builtin:testbed`.
    pub path: String,
    /// `cpu` (burn's Flex backend), `wgpu` or `cuda`.
    #[serde(default)]
    pub backend: ComputeBackend,
    /// GPU index for `cuda` / `wgpu`.
    #[serde(default)]
    pub device: usize,
}

/// `[data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Training data: a `.jsonl` or `.parquet` file, a folder of them
    /// (shards; a dataset snapshot's `data/` layout), a Hub dataset id in
    /// the local Hugging Face cache, `builtin:tiny` or `builtin:testbed`.
    pub path: String,
    /// The split read from a folder of shards holding several
    /// (`train_prefs` for `data/train_prefs-00000-of-00001.parquet`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<String>,
    /// Held-out data (as `path`); when absent and `eval_split` is absent
    /// too, `eval_size` pairs are taken from `path`.
    #[serde(default)]
    pub eval_path: Option<String>,
    /// The held-out split: of `eval_path`, or of `path` when `eval_path` is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_split: Option<String>,
    /// Held-out pairs split off the training data.
    #[serde(default = "default_eval_size")]
    pub eval_size: usize,
    /// Longest prompt + completion, in tokens.
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    /// Longest prompt kept when a pair is too long.
    #[serde(default = "default_max_prompt_length")]
    pub max_prompt_length: usize,
    /// Stop at the first bad row.
    #[serde(default)]
    pub strict: bool,
}

/// `[loss]`: the catalog loss by `name` with its hyper-parameters beside it
/// (`name = "ipo"`, `tau = 0.1`; see [`PreferenceLoss`] for each loss's and
/// their defaults), plus the NLL term and the reference's source.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LossSection {
    /// The preference term.
    #[serde(flatten)]
    pub loss: PreferenceLoss,
    /// λ of the NLL term on the chosen completion (0 = none).
    pub nll_weight: f64,
    /// `sum` or `mean` (per token) NLL.
    pub nll_normalisation: NllNormalisation,
    /// Where the reference log-probabilities come from.
    pub reference: ReferenceMode,
}

/// `loss.reference`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReferenceMode {
    /// Computed once with the initial model and stored on disk (keyed by the
    /// model, data and length limits), before the policy is loaded.
    #[default]
    Cache,
    /// A frozen copy of the initial model in memory, run on each micro-batch.
    Model,
}

/// The fields of `[loss]` that every loss has.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LossCommon {
    #[serde(default)]
    nll_weight: f64,
    #[serde(default)]
    nll_normalisation: NllNormalisation,
    #[serde(default)]
    reference: ReferenceMode,
}

impl<'de> Deserialize<'de> for LossSection {
    /// The common fields are taken out first; the rest must be exactly one
    /// catalog loss's (`name` and its hyper-parameters), so a hyper-parameter
    /// of another loss is an error naming it and the accepted ones.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut fields: serde_json::Map<String, serde_json::Value> = Deserialize::deserialize(deserializer)?;
        let mut common = serde_json::Map::new();
        for key in ["nll_weight", "nll_normalisation", "reference"] {
            if let Some(value) = fields.remove(key) {
                common.insert(key.to_string(), value);
            }
        }
        let common: LossCommon = serde_json::from_value(serde_json::Value::Object(common)).map_err(D::Error::custom)?;
        let name = match fields.get("name") {
            None => return Err(D::Error::custom("missing field `name` (the loss)")),
            Some(serde_json::Value::String(name)) => name.parse::<LossName>().map_err(|_| {
                D::Error::custom(format!("`name` = `{name}` is not a loss; expected one of {}", LossName::list()))
            })?,
            Some(other) => return Err(D::Error::custom(format!("`name` must be a string, found {other}"))),
        };
        let loss: PreferenceLoss = serde_json::from_value(serde_json::Value::Object(fields))
            .map_err(|e| D::Error::custom(format!("{e} (the parameters of `{name}`)")))?;
        Ok(Self {
            loss,
            nll_weight: common.nll_weight,
            nll_normalisation: common.nll_normalisation,
            reference: common.reference,
        })
    }
}

/// `[train]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Run folder (metrics, checkpoints).
    pub output_dir: String,
    /// Peak learning rate.
    pub lr: f64,
    /// Pairs per optimizer step.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Pairs per forward pass (gradients accumulate over `batch_size / micro_batch_size` passes).
    #[serde(default = "default_micro_batch_size")]
    pub micro_batch_size: usize,
    /// Passes over the training data.
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Stop after this many steps (0 = the whole schedule).
    #[serde(default)]
    pub max_steps: u64,
    /// Warm-up steps.
    #[serde(default = "default_warmup")]
    pub warmup_steps: u64,
    /// Final learning rate as a fraction of the peak.
    #[serde(default = "default_final_lr_fraction")]
    pub final_lr_fraction: f64,
    /// AdamW β₁.
    #[serde(default = "default_beta1")]
    pub adam_beta1: f64,
    /// AdamW β₂.
    #[serde(default = "default_beta2")]
    pub adam_beta2: f64,
    /// AdamW ε.
    #[serde(default = "default_adam_eps")]
    pub adam_eps: f64,
    /// Decoupled weight decay (matrices only).
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    /// Global gradient-norm clip (0 = off).
    #[serde(default = "default_clip")]
    pub clip_norm: f64,
    /// Seed of the data order and split.
    #[serde(default)]
    pub seed: u64,
    /// Save a checkpoint every this many steps (0 = only at the end).
    #[serde(default)]
    pub checkpoint_every: u64,
    /// Steps with a non-finite log-probability or gradient that may be
    /// skipped (not applied, each reported) before the run stops; 0: the
    /// first one stops the run.
    #[serde(default)]
    pub skip_nonfinite: u64,
    /// Folder of the reference log-probability cache (default `$DAA_CACHE_DIR`
    /// or `~/.cache/daa`).
    #[serde(default)]
    pub cache_dir: Option<String>,
    /// The fused LM head + objective: no `[tokens × V]` logits kept (default true).
    #[serde(default = "default_true")]
    pub fused_head: bool,
    /// Positions per chunk of the fused head (0 = 64 MiB of f32 logits).
    #[serde(default)]
    pub head_chunk_tokens: usize,
    /// Recompute every decoder block in backward instead of keeping its activations.
    #[serde(default)]
    pub activation_checkpointing: bool,
    /// Padding-free micro-batches: several sequences per row, one after
    /// another, in rows as long as the longest (first-fit in decreasing
    /// length); positions restart at each sequence and attention stays
    /// within it. The same losses as padded rows, fewer tokens computed.
    #[serde(default)]
    pub packing: bool,
    /// `"f32"` (default) or `"bf16"`: the dtype of the weights and
    /// activations while training; bf16 keeps f32 master weights, gradient
    /// sums and AdamW moments (`daa_train::precision`).
    #[serde(default)]
    pub precision: crate::precision::Precision,
    /// Memory the step may use (`"80GiB"`); default: the host's available
    /// memory on `cpu`, unchecked on GPU backends.
    #[serde(default)]
    pub device_memory: Option<String>,
    /// Run `daa plan`'s estimate first and refuse a step that will not fit.
    #[serde(default = "default_true")]
    pub memory_check: bool,
    /// Write TensorBoard event files beside `metrics.jsonl`
    /// (`<run>/tensorboard/`; default true).
    #[serde(default = "default_true")]
    pub tensorboard: bool,
    /// What is divided over the ranks of a run of several processes:
    /// `"none"` (every rank holds everything, gradients all-reduced),
    /// `"optimizer"` (ZeRO-1: f32 masters and AdamW moments sharded),
    /// `"gradients"` (ZeRO-2: also the gradient sums, reduce-scattered each
    /// micro-batch), `"parameters"` (ZeRO-3: also the weights, each decoder
    /// block gathered when it runs; needs `activation_checkpointing`).
    #[serde(default)]
    pub sharding: crate::plan::Sharding,
    /// Seconds a collective may wait for the other ranks before the run
    /// stops, naming the operation and the ranks that did not arrive.
    #[serde(default = "default_collective_timeout")]
    pub collective_timeout: f64,
    /// Over which ranks `train.sharding` divides the state: `"all"`, or
    /// `"node"` (HSDP: the ranks of each node, replicated across nodes).
    #[serde(default)]
    pub shard_within: ShardWithin,
    /// What the ranks exchange values through: `"auto"` (NCCL on the CUDA
    /// backend, the host collective otherwise), `"host"` (TCP, or MPI under
    /// `mpirun`) or `"nccl"` (CUDA only).
    #[serde(default)]
    pub collective: CollectiveChoice,
}

/// `train.shard_within`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShardWithin {
    /// Every rank of the run.
    #[default]
    All,
    /// The ranks of each node (`LOCAL_WORLD_SIZE` of them), replicated
    /// across nodes (HSDP).
    Node,
}

/// `train.collective`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CollectiveChoice {
    /// NCCL on the CUDA backend, the host collective otherwise.
    #[default]
    Auto,
    /// TCP between the ranks (MPI under `mpirun` with the `mpi` feature).
    Host,
    /// NCCL (the CUDA backend only).
    Nccl,
}

impl TrainSection {
    /// How the trainer lays out a micro-batch's sequences (`train.packing`).
    pub fn batch_layout(&self) -> crate::batch::BatchLayout {
        if self.packing { crate::batch::BatchLayout::Packed } else { crate::batch::BatchLayout::Padded }
    }

    /// The memory/compute trade-offs the trainer applies.
    pub fn memory_options(&self) -> crate::backward::MemoryOptions {
        crate::backward::MemoryOptions {
            fused_head: self.fused_head,
            head_chunk_rows: self.head_chunk_tokens,
            activation_checkpointing: self.activation_checkpointing,
        }
    }
}

/// `[monitor]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorSection {
    /// Evaluate every this many steps (and before the first and after the last).
    #[serde(default = "default_eval_every")]
    pub eval_every: u64,
    /// Every this many optimizer steps, the step's own batch gets the
    /// top-k statistics too (`train/topk_entropy`, `train/topk_mass`,
    /// `train/entropy` in its record; 0 = never): computed from the
    /// training forward pass's logits, no extra forward pass.
    #[serde(default)]
    pub train_stats_every: u64,
    /// `k` of top-k entropy and mass.
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    /// Base of the top-k entropy (2 = bits, as the paper).
    #[serde(default = "default_entropy_base")]
    pub entropy_base: f64,
    /// Pairs per evaluation forward pass.
    #[serde(default = "default_micro_batch_size")]
    pub eval_batch_size: usize,
    /// `[monitor.samples]`: evaluation on the policy's own samples (win
    /// probability, KL, diversity); off unless a judge is named.
    #[serde(default)]
    pub samples: Option<SampleSection>,
    /// `[monitor.turning]`: turning points of top-k entropy and mass.
    #[serde(default)]
    pub turning: TurningSection,
    /// Stop the run at the first confirmed turning point (the checkpoint of
    /// the last healthy evaluation is in `best-indicator/` either way).
    #[serde(default)]
    pub early_stop: bool,
    /// `[monitor.adaptive]`: adapt the NLL weight (and β) to the
    /// indicators, by the rule its `rule` names.
    #[serde(default)]
    pub adaptive: Option<AdaptiveSection>,
    /// `[monitor.entropy_floor]`: the top-k entropy floor term with its
    /// multiplier by dual ascent (needs `[monitor.samples]`).
    #[serde(default)]
    pub entropy_floor: Option<EntropyFloorSection>,
}

impl Default for MonitorSection {
    fn default() -> Self {
        Self {
            eval_every: default_eval_every(),
            train_stats_every: 0,
            top_k: default_top_k(),
            entropy_base: default_entropy_base(),
            eval_batch_size: default_micro_batch_size(),
            samples: None,
            turning: TurningSection::default(),
            early_stop: false,
            adaptive: None,
            entropy_floor: None,
        }
    }
}

/// `[monitor.samples]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleSection {
    /// `gold` (the testbed's gold reward) or a reward model checkpoint folder.
    pub judge: String,
    /// Held-out prompts sampled at every evaluation (the first ones of the held-out pairs).
    #[serde(default = "default_sample_prompts")]
    pub prompts: usize,
    /// Sampling temperature (the paper: 0.5).
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// Nucleus mass (the paper: 0.75).
    #[serde(default = "default_top_p")]
    pub top_p: f64,
    /// Generated tokens at most.
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    /// Seed of the draws (the same at every evaluation).
    #[serde(default)]
    pub seed: u64,
    /// Prompts sampled together.
    #[serde(default = "default_sample_batch")]
    pub batch_size: usize,
}

/// `[monitor.turning]`: see `daa_core::monitor`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TurningSection {
    /// EMA weight of the newest evaluation, (0, 1].
    pub smoothing: f64,
    /// How far (bits) below its peak the smoothed top-k entropy must stay.
    pub entropy_margin: f64,
    /// How far below its peak the smoothed top-k mass must stay.
    pub mass_margin: f64,
    /// Consecutive evaluations that confirm a turn.
    pub patience: usize,
}

impl Default for TurningSection {
    fn default() -> Self {
        let d = daa_core::monitor::TurningPointConfig::default();
        Self {
            smoothing: d.smoothing,
            entropy_margin: d.entropy_margin,
            mass_margin: d.mass_margin,
            patience: d.patience,
        }
    }
}

impl MonitorSection {
    /// `k` and the entropy's base of the top-k statistics.
    pub fn stats_params(&self) -> daa_core::TokenStatsParams {
        daa_core::TokenStatsParams { k: self.top_k, entropy_base: self.entropy_base }
    }
}

impl TurningSection {
    /// As daa-core's detector settings.
    pub fn detector(&self) -> daa_core::monitor::TurningPointConfig {
        daa_core::monitor::TurningPointConfig {
            smoothing: self.smoothing,
            entropy_margin: self.entropy_margin,
            mass_margin: self.mass_margin,
            patience: self.patience,
        }
    }
}

/// Which rule `[monitor.adaptive]` follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdaptiveRule {
    /// The baseline (`daa_core::monitor::AdaptiveRegulariser`): λ (and β)
    /// up whenever top-k entropy or mass falls by more than its tolerance.
    RaiseNllOnFallingEntropy,
    /// `daa_core::controllers::DirectionAwareNll`: λ up on likelihood
    /// displacement or tail leakage, down when entropy is short, thresholds
    /// of `threshold_sds` noise standard deviations.
    DirectionAware,
}

/// `[monitor.adaptive]`: see `daa_core::monitor` and `daa_core::controllers`;
/// λ starts at `loss.nll_weight`.
///
/// The noise defaults were measured on the testbed's small sweep (DPO, IPO
/// and hinge at λ ∈ {0, 0.1}, two seeds each, 17 evaluations, 2026-12-02)
/// with `daa_core::controllers::evaluation_noise`: chosen log-likelihood per
/// token 0.015–0.025, top-k entropy 0.003–0.024 (bits), top-k mass
/// 0.002–0.004, sample top-k entropy 0.003–0.013.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdaptiveSection {
    /// The rule.
    pub rule: AdaptiveRule,
    /// EMA weight of the newest evaluation, (0, 1].
    pub smoothing: f64,
    /// A fall of the smoothed top-k entropy larger than this warns.
    pub entropy_tolerance: f64,
    /// A fall of the smoothed top-k mass larger than this warns.
    pub mass_tolerance: f64,
    /// `λ_on`: the first NLL weight a warning switches on.
    pub nll_switch_on: f64,
    /// `λ_max`.
    pub nll_max: f64,
    /// Growth factor per warning evaluation (> 1).
    pub up: f64,
    /// Decay factor per calm evaluation (in (0, 1)).
    pub down: f64,
    /// Adapt the NLL weight λ (starting at `loss.nll_weight`).
    pub adapt_nll: bool,
    /// Adapt β (losses with a β), between β and `beta_max_factor`·β.
    pub adapt_beta: bool,
    /// β's ceiling as a multiple of the configured β.
    pub beta_max_factor: f64,
    /// Direction-aware rule: thresholds in noise standard deviations.
    pub threshold_sds: f64,
    /// Direction-aware rule: evaluation-to-evaluation noise of the held-out
    /// chosen log-likelihood per token (nats).
    pub noise_chosen_loglik: f64,
    /// Direction-aware rule: noise of the held-out top-k entropy.
    pub noise_topk_entropy: f64,
    /// Direction-aware rule: noise of the held-out top-k mass.
    pub noise_topk_mass: f64,
}

impl Default for AdaptiveSection {
    fn default() -> Self {
        Self {
            rule: AdaptiveRule::RaiseNllOnFallingEntropy,
            smoothing: 0.5,
            entropy_tolerance: 0.0,
            mass_tolerance: 0.0,
            nll_switch_on: 0.1,
            nll_max: 1.0,
            up: 2.0,
            down: 0.5,
            adapt_nll: true,
            adapt_beta: false,
            beta_max_factor: 4.0,
            threshold_sds: 2.0,
            noise_chosen_loglik: 0.02,
            noise_topk_entropy: 0.02,
            noise_topk_mass: 0.0035,
        }
    }
}

/// `[monitor.entropy_floor]`: see `daa_core::controllers` and
/// `daa_core::entropy_floor`. The floor is the reference's top-k entropy on
/// its own samples (the first evaluation) minus `margin`; `step_size` and
/// `max` are not tuned (a study picks them on selection prompts).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EntropyFloorSection {
    /// `m`: how far below the reference's sample top-k entropy the floor lies.
    pub margin: f64,
    /// `η`: μ's change per unit of entropy gap per evaluation.
    pub step_size: f64,
    /// `μ_max`.
    pub max: f64,
    /// Evaluation-to-evaluation noise of the sample top-k entropy.
    pub noise: f64,
    /// The dead band in noise standard deviations.
    pub threshold_sds: f64,
}

impl Default for EntropyFloorSection {
    fn default() -> Self {
        Self { margin: 0.05, step_size: 5.0, max: 10.0, noise: 0.011, threshold_sds: 2.0 }
    }
}

impl EntropyFloorSection {
    /// The controller's settings.
    pub fn controller(&self) -> daa_core::controllers::EntropyFloorConfig {
        daa_core::controllers::EntropyFloorConfig {
            margin: self.margin,
            step_size: self.step_size,
            max: self.max,
            noise: self.noise,
            threshold_sds: self.threshold_sds,
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_sample_prompts() -> usize {
    64
}
fn default_temperature() -> f64 {
    daa_core::sampling::SamplingParams::PAPER.temperature
}
fn default_top_p() -> f64 {
    daa_core::sampling::SamplingParams::PAPER.top_p
}
fn default_max_new_tokens() -> usize {
    64
}
fn default_sample_batch() -> usize {
    16
}

fn default_eval_size() -> usize {
    64
}
fn default_max_length() -> usize {
    512
}
fn default_max_prompt_length() -> usize {
    256
}
fn default_batch_size() -> usize {
    32
}
fn default_micro_batch_size() -> usize {
    4
}
fn default_epochs() -> usize {
    1
}
fn default_warmup() -> u64 {
    128
}
fn default_final_lr_fraction() -> f64 {
    0.1
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.95
}
fn default_adam_eps() -> f64 {
    1e-8
}
fn default_weight_decay() -> f64 {
    0.1
}
fn default_clip() -> f64 {
    1.0
}
fn default_collective_timeout() -> f64 {
    600.0
}
fn default_eval_every() -> u64 {
    50
}
fn default_top_k() -> usize {
    10
}
fn default_entropy_base() -> f64 {
    2.0
}

/// Sets `section.field = value` (or `section.sub.field = value`, e.g.
/// `monitor.samples.judge`) in a parsed TOML table. `value` is read as a
/// TOML value (`1e-6`, `true`, `"text"`), or as a string when it is not
/// one. Returns the `(section, field)` it set (`field` with its dots).
fn apply_override(table: &mut toml::Table, assignment: &str) -> Result<(String, String)> {
    let Some((key, raw)) = assignment.split_once('=') else {
        bail!("--set {assignment}: expected section.field=value");
    };
    let (key, raw) = (key.trim(), raw.trim());
    let Some((section, field)) = key.split_once('.') else {
        bail!("--set {assignment}: `{key}` must be section.field (e.g. train.lr)");
    };
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        bail!("--set {assignment}: `{key}` has an empty part");
    }
    let (last, tables) = parts.split_last().expect("at least two parts");
    let mut current = table;
    for (depth, name) in tables.iter().enumerate() {
        let entry = current.entry(name.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(next) = entry.as_table_mut() else {
            bail!("--set {assignment}: `{}` is not a section", parts[..=depth].join("."));
        };
        current = next;
    }
    current.insert(last.to_string(), value);
    Ok((section.to_string(), field.to_string()))
}

/// When an override changes `loss.name`, the file's hyper-parameters were
/// meant for the file's loss: they are dropped (the new loss takes its
/// defaults, or the values given with `--set`). Hyper-parameters given with
/// `--set` are kept, so one the new loss does not take is still an error.
fn drop_file_hyper_parameters(table: &mut toml::Table, file_loss: Option<&toml::Value>, set: &[(String, String)]) {
    let Some(loss) = table.get_mut("loss").and_then(toml::Value::as_table_mut) else {
        return;
    };
    if file_loss.is_none() || loss.get("name") == file_loss {
        return;
    }
    let given = |field: &str| set.iter().any(|(s, f)| s == "loss" && f == field);
    loss.retain(|field, _| matches!(field, "name" | "nll_weight" | "nll_normalisation" | "reference") || given(field));
}

impl TrainConfig {
    /// Parses TOML `text` (from `origin`, for messages), applies `overrides`
    /// and validates.
    pub fn parse(text: &str, origin: &str, overrides: &[String]) -> Result<Self> {
        let mut table: toml::Table = toml::from_str(text).with_context(|| format!("{origin}: not valid TOML"))?;
        let file_loss = table.get("loss").and_then(|l| l.get("name")).cloned();
        let set = overrides.iter().map(|o| apply_override(&mut table, o)).collect::<Result<Vec<_>>>()?;
        drop_file_hyper_parameters(&mut table, file_loss.as_ref(), &set);
        let config: Self = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| anyhow!("`{}`: {}", e.path(), e.inner()))
            .with_context(|| format!("{origin}: invalid configuration"))?;
        config.validate().with_context(|| format!("{origin}: invalid configuration"))?;
        Ok(config)
    }

    /// Reads a configuration file, or the built-in one when `path` is `None`.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Self> {
        match path {
            None => Self::parse(BUILTIN_CONFIG, "built-in configs/testbed.toml", overrides),
            Some(p) => {
                let text = std::fs::read_to_string(p).with_context(|| format!("{}: cannot read", p.display()))?;
                Self::parse(&text, &p.display().to_string(), overrides)
            }
        }
    }

    /// Semantic checks; each message names its field.
    pub fn validate(&self) -> Result<()> {
        let t = &self.train;
        let positive = |name: &str, v: f64| -> Result<()> {
            if !(v.is_finite() && v > 0.0) {
                bail!("`{name}` must be a positive number, found {v}");
            }
            Ok(())
        };
        positive("train.lr", t.lr)?;
        if t.sharding == crate::plan::Sharding::Parameters {
            if !t.activation_checkpointing {
                bail!(
                    "`train.sharding` = \"parameters\" (ZeRO-3) gathers each decoder block's weights for its forward pass and again for its recomputation in backward: set `train.activation_checkpointing` = true"
                );
            }
            if self.lora.is_some() {
                bail!(
                    "`train.sharding` = \"parameters\" (ZeRO-3) shards a full fine-tune's weights; `[lora]` trains adapters only: use \"optimizer\" or \"none\""
                );
            }
        }
        if t.shard_within == ShardWithin::Node && t.sharding == crate::plan::Sharding::None {
            bail!(
                "`train.shard_within` = \"node\" divides sharded state within each node: set `train.sharding` to \"optimizer\", \"gradients\" or \"parameters\""
            );
        }
        if t.collective == CollectiveChoice::Nccl && self.model.backend != crate::backend::ComputeBackend::Cuda {
            bail!(
                "`train.collective` = \"nccl\" needs `model.backend` = \"cuda\" (this run's: {})",
                self.model.backend
            );
        }
        if !(t.collective_timeout.is_finite() && t.collective_timeout > 0.0 && t.collective_timeout <= 1e7) {
            bail!(
                "`train.collective_timeout` must be a positive number of seconds up to 1e7 (about 4 months), got {}",
                t.collective_timeout
            );
        }
        if t.batch_size == 0 || t.micro_batch_size == 0 || !t.batch_size.is_multiple_of(t.micro_batch_size) {
            bail!(
                "`train.batch_size` ({}) must be a positive multiple of `train.micro_batch_size` ({})",
                t.batch_size,
                t.micro_batch_size
            );
        }
        if t.epochs == 0 {
            bail!("`train.epochs` must be at least 1");
        }
        for (name, v) in [("train.adam_beta1", t.adam_beta1), ("train.adam_beta2", t.adam_beta2)] {
            if !(0.0..1.0).contains(&v) {
                bail!("`{name}` must lie in [0, 1), found {v}");
            }
        }
        positive("train.adam_eps", t.adam_eps)?;
        if !(t.weight_decay >= 0.0 && t.clip_norm >= 0.0) {
            bail!("`train.weight_decay` and `train.clip_norm` must be ≥ 0");
        }
        if !(0.0..=1.0).contains(&t.final_lr_fraction) {
            bail!("`train.final_lr_fraction` must lie in [0, 1], found {}", t.final_lr_fraction);
        }
        if self.data.max_length < 2
            || self.data.max_prompt_length == 0
            || self.data.max_prompt_length >= self.data.max_length
        {
            bail!(
                "`data.max_prompt_length` ({}) must be at least 1 and smaller than `data.max_length` ({})",
                self.data.max_prompt_length,
                self.data.max_length
            );
        }
        if self.monitor.eval_every == 0 || self.monitor.eval_batch_size == 0 {
            bail!("`monitor.eval_every` and `monitor.eval_batch_size` must be at least 1");
        }
        if self.monitor.top_k == 0 || self.monitor.top_k > daa_core::MAX_TOP_K {
            bail!("`monitor.top_k` must lie in 1..={}, found {}", daa_core::MAX_TOP_K, self.monitor.top_k);
        }
        if !(self.monitor.entropy_base > 1.0) {
            bail!("`monitor.entropy_base` must exceed 1, found {}", self.monitor.entropy_base);
        }
        if let Some(samples) = &self.monitor.samples {
            daa_core::sampling::SamplingParams { temperature: samples.temperature, top_p: samples.top_p }
                .validate()
                .context("`monitor.samples`")?;
            if samples.prompts == 0 || samples.max_new_tokens == 0 || samples.batch_size == 0 {
                bail!("`monitor.samples.prompts`, `max_new_tokens` and `batch_size` must be at least 1");
            }
        }
        daa_core::monitor::TurningPointDetector::new(self.monitor.turning.detector()).context("`monitor.turning`")?;
        if self.monitor.adaptive.is_some() {
            self.adaptive_config()?;
            self.direction_aware_config()?;
        }
        if let Some(floor) = &self.monitor.entropy_floor {
            if self.samples().is_none() {
                bail!(
                    "`monitor.entropy_floor` reads the top-k entropy of the policy's own samples: it needs \
                     `[monitor.samples]` with a judge that scores this data (the gold judge scores only the \
                     testbed's prompts: name a reward model in `monitor.samples.judge`)"
                );
            }
            daa_core::controllers::EntropyFloorMultiplier::new(floor.controller())
                .context("`monitor.entropy_floor`")?;
        }
        if let Some(lora) = &self.lora {
            lora.validate()?;
            if lora.dropout > 0.0 && t.activation_checkpointing {
                bail!(
                    "`lora.dropout` ({}) with `train.activation_checkpointing`: the recomputed blocks would draw \
                     other dropout masks than the forward pass; set lora.dropout = 0 or turn checkpointing off",
                    lora.dropout
                );
            }
        }
        self.loss_params()?;
        Ok(())
    }

    /// Where the held-out pairs (and the sample evaluation's prompts) come
    /// from: `data.eval_path`, else `data.path`.
    fn held_out_spec(&self) -> &str {
        self.data.eval_path.as_deref().unwrap_or(&self.data.path)
    }

    /// The sample evaluation the run does: `[monitor.samples]`, except that
    /// the gold judge applies only to the testbed's data (the built-in
    /// configuration names it; on other data the evaluation is off, and
    /// [`Self::notices`] says so).
    pub fn samples(&self) -> Option<&SampleSection> {
        self.monitor.samples.as_ref().filter(|s| s.judge != "gold" || self.held_out_spec() == BUILTIN_TESTBED)
    }

    /// One-line notices on settings that do not apply to this run's data.
    pub fn notices(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.monitor.samples.is_some() && self.samples().is_none() {
            notes.push(format!(
                "sample evaluation off: the gold judge scores only the testbed's prompts, and the held-out data is \
                 {}; name a reward model (`--set monitor.samples.judge=DIR`) to sample and judge the policy",
                self.held_out_spec()
            ));
        }
        notes
    }

    /// The catalog loss and NLL term.
    pub fn loss_params(&self) -> Result<PreferenceLossParams> {
        let l = &self.loss;
        if !(l.nll_weight >= 0.0 && l.nll_weight.is_finite()) {
            bail!("`loss.nll_weight` must be ≥ 0, found {}", l.nll_weight);
        }
        let nll = (l.nll_weight > 0.0).then_some(NllTerm { weight: l.nll_weight, normalisation: l.nll_normalisation });
        let params = PreferenceLossParams { loss: l.loss, nll };
        params.validate().with_context(|| format!("`loss` ({})", l.loss.name()))?;
        Ok(params)
    }

    /// The adaptive regulariser's settings, when `[monitor.adaptive]` is
    /// present: λ from `loss.nll_weight`, β from the loss (an error when
    /// `adapt_beta` is set for a loss without β).
    pub fn adaptive_config(&self) -> Result<Option<daa_core::monitor::AdaptiveConfig>> {
        let Some(a) = self.monitor.adaptive.filter(|a| a.rule == AdaptiveRule::RaiseNllOnFallingEntropy) else {
            return Ok(None);
        };
        let a = &a;
        let beta = if a.adapt_beta {
            let Some(beta) = self.loss.loss.beta() else {
                bail!("`monitor.adaptive.adapt_beta`: loss `{}` has no β", self.loss.loss.name());
            };
            Some(daa_core::monitor::AdaptiveBounds {
                initial: beta,
                switch_on: beta,
                max: beta * a.beta_max_factor,
                up: a.up,
                down: a.down,
            })
        } else {
            None
        };
        let config = daa_core::monitor::AdaptiveConfig {
            smoothing: a.smoothing,
            entropy_tolerance: a.entropy_tolerance,
            mass_tolerance: a.mass_tolerance,
            nll_weight: a.adapt_nll.then_some(daa_core::monitor::AdaptiveBounds {
                initial: self.loss.nll_weight,
                switch_on: a.nll_switch_on,
                max: a.nll_max,
                up: a.up,
                down: a.down,
            }),
            beta,
        };
        daa_core::monitor::AdaptiveRegulariser::new(config).context("`monitor.adaptive`")?;
        Ok(Some(config))
    }

    /// The direction-aware rule's settings, when `[monitor.adaptive]` names
    /// it: λ from `loss.nll_weight` (β is not adapted by this rule: an
    /// error when `adapt_beta` is set).
    pub fn direction_aware_config(&self) -> Result<Option<daa_core::controllers::DirectionAwareConfig>> {
        let Some(a) = self.monitor.adaptive.filter(|a| a.rule == AdaptiveRule::DirectionAware) else {
            return Ok(None);
        };
        if a.adapt_beta || !a.adapt_nll {
            bail!("`monitor.adaptive`: the direction_aware rule adapts λ only (adapt_nll = true, adapt_beta = false)");
        }
        let config = daa_core::controllers::DirectionAwareConfig {
            smoothing: a.smoothing,
            bounds: daa_core::monitor::AdaptiveBounds {
                initial: self.loss.nll_weight,
                switch_on: a.nll_switch_on,
                max: a.nll_max,
                up: a.up,
                down: a.down,
            },
            noise: daa_core::controllers::IndicatorNoise {
                chosen_loglik: a.noise_chosen_loglik,
                topk_entropy: a.noise_topk_entropy,
                topk_mass: a.noise_topk_mass,
            },
            threshold_sds: a.threshold_sds,
        };
        daa_core::controllers::DirectionAwareNll::new(config).context("`monitor.adaptive`")?;
        Ok(Some(config))
    }

    /// AdamW settings.
    pub fn adamw(&self) -> AdamWConfig {
        let t = &self.train;
        AdamWConfig {
            beta1: t.adam_beta1,
            beta2: t.adam_beta2,
            eps: t.adam_eps,
            weight_decay: t.weight_decay,
            clip_norm: (t.clip_norm > 0.0).then_some(t.clip_norm),
        }
    }

    /// The schedule for `total` steps.
    pub fn schedule(&self, total: u64) -> LrSchedule {
        LrSchedule {
            peak: self.train.lr,
            warmup: self.train.warmup_steps,
            total,
            final_fraction: self.train.final_lr_fraction,
        }
    }

    /// The last step of a schedule of `total` steps: `train.max_steps`
    /// when set and smaller.
    pub fn last_step(&self, total: u64) -> u64 {
        if self.train.max_steps > 0 { total.min(self.train.max_steps) } else { total }
    }

    /// When a run of `total` steps evaluates, saves and records step
    /// statistics, and where it ends.
    pub fn cadence(&self, total: u64) -> Result<Cadence> {
        let m = &self.monitor;
        Ok(Cadence::new(m.eval_every, self.train.checkpoint_every, m.train_stats_every, self.last_step(total))?)
    }

    /// The trainer's options for a run of `total` steps with objective
    /// `loss` and padding id `pad_id`.
    pub fn trainer_options(&self, loss: PreferenceLossParams, total: u64, pad_id: u32) -> TrainerOptions {
        TrainerOptions {
            loss,
            optimizer: self.adamw(),
            schedule: self.schedule(total),
            micro_batch_size: self.train.micro_batch_size,
            pad_id,
            memory: self.train.memory_options(),
            precision: self.train.precision,
        }
    }

    /// The run folder.
    pub fn output_dir(&self) -> PathBuf {
        PathBuf::from(&self.train.output_dir)
    }
}

#[cfg(test)]
mod tests {
    use daa_core::preference::PreferenceLoss;

    use super::TrainConfig;

    fn built_in(overrides: &[&str]) -> anyhow::Result<TrainConfig> {
        TrainConfig::load(None, &overrides.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn switching_the_loss_drops_the_file_s_hyper_parameters_but_not_the_command_line_s() {
        // configs/testbed.toml sets `beta` for DPO.
        assert_eq!(built_in(&[]).unwrap().loss.loss, PreferenceLoss::Dpo { beta: 0.1, label_smoothing: 0.0 });
        assert_eq!(built_in(&["loss.name=ipo"]).unwrap().loss.loss, PreferenceLoss::Ipo { tau: 0.1 });
        assert_eq!(built_in(&["loss.name=ipo", "loss.tau=0.05"]).unwrap().loss.loss, PreferenceLoss::Ipo { tau: 0.05 });
        let e = format!("{:#}", built_in(&["loss.name=ipo", "loss.beta=0.2"]).unwrap_err());
        assert!(e.contains("unknown field `beta`, expected `tau`"), "{e}");
        // The common fields stay.
        let c = built_in(&["loss.nll_weight=0.5", "loss.name=hinge"]).unwrap();
        assert_eq!(c.loss.nll_weight, 0.5);
        assert_eq!(c.loss.loss, PreferenceLoss::Hinge { gamma: 1.0, alpha: 0.0 });
    }

    #[test]
    fn nested_sections_take_overrides_and_the_gold_judge_applies_to_testbed_data_only() {
        let c = built_in(&["monitor.samples.judge=\"rm\"", "monitor.turning.patience=5"]).unwrap();
        assert_eq!(c.monitor.samples.as_ref().unwrap().judge, "rm");
        assert_eq!(c.monitor.turning.patience, 5);
        let e = format!("{:#}", built_in(&["monitor.eval_every.x=1"]).unwrap_err());
        assert!(e.contains("`monitor.eval_every` is not a section"), "{e}");
        // The built-in configuration on one's own data: no sampling, one notice.
        let own = built_in(&["data.path=\"prefs.jsonl\"", "model.path=\"model\""]).unwrap();
        assert!(own.monitor.samples.is_some() && own.samples().is_none());
        let notices = own.notices();
        assert!(notices.len() == 1 && notices[0].contains("the gold judge scores only the testbed's prompts"));
        assert!(built_in(&[]).unwrap().samples().is_some() && built_in(&[]).unwrap().notices().is_empty());
        // A reward model judges any data.
        let judged = built_in(&["data.path=\"prefs.jsonl\"", "monitor.samples.judge=\"rm\""]).unwrap();
        assert!(judged.samples().is_some() && judged.notices().is_empty());
        // The entropy floor needs samples a judge can score: refused before anything loads.
        let e =
            format!("{:#}", built_in(&["data.path=\"prefs.jsonl\"", "monitor.entropy_floor.margin=0.05"]).unwrap_err());
        assert!(e.contains("`monitor.entropy_floor`") && e.contains("name a reward model"), "{e}");
    }

    #[test]
    fn the_collective_is_chosen_per_backend_and_nccl_needs_cuda() {
        assert_eq!(built_in(&[]).unwrap().train.collective, super::CollectiveChoice::Auto);
        let host = built_in(&["train.collective=\"host\""]).unwrap();
        assert_eq!(host.train.collective, super::CollectiveChoice::Host);
        let e = format!("{:#}", built_in(&["train.collective=\"nccl\""]).unwrap_err());
        assert!(e.contains("`train.collective` = \"nccl\" needs `model.backend` = \"cuda\" (this run's: cpu)"), "{e}");
        let e = format!("{:#}", built_in(&["train.shard_within=\"node\""]).unwrap_err());
        assert!(e.contains("set `train.sharding` to \"optimizer\", \"gradients\" or \"parameters\""), "{e}");
        let e = format!("{:#}", built_in(&["train.sharding=\"parameters\""]).unwrap_err());
        assert!(e.contains("set `train.activation_checkpointing` = true"), "{e}");
        let zero3 = built_in(&["train.sharding=\"parameters\"", "train.activation_checkpointing=true"]).unwrap();
        assert_eq!(zero3.train.sharding, crate::plan::Sharding::Parameters);
        let hsdp = built_in(&["train.shard_within=\"node\"", "train.sharding=\"gradients\""]).unwrap();
        assert_eq!(hsdp.train.shard_within, super::ShardWithin::Node);
        let e = format!("{:#}", built_in(&["train.collective=\"gloo\""]).unwrap_err());
        assert!(e.contains("unknown variant `gloo`, expected one of `auto`, `host`, `nccl`"), "{e}");
    }

    #[test]
    fn typed_fields_name_the_field_and_the_accepted_values() {
        let e = format!("{:#}", built_in(&["model.backend=tpu"]).unwrap_err());
        assert!(e.contains("`model.backend`: unknown variant `tpu`, expected one of `cpu`, `wgpu`, `cuda`"), "{e}");
        let e = format!("{:#}", built_in(&["loss.nll_normalisation=median"]).unwrap_err());
        assert!(e.contains("`loss`") && e.contains("unknown variant `median`"), "{e}");
        let e = format!("{:#}", built_in(&["loss.name=kto"]).unwrap_err());
        assert!(e.contains("`name` = `kto` is not a loss; expected one of dpo, robust-dpo"), "{e}");
        // The configuration survives a round trip through trainer_state.json.
        let c = built_in(&["loss.name=simpo", "loss.gamma=0.3"]).unwrap();
        let back: TrainConfig = serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
}
