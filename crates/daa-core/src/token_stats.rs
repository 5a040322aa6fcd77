//! Per-token statistics of the next-token distribution: the definitions every
//! backend implements, their parameters and their output layout.
//!
//! For one row of logits `x ∈ ℝ^V` (one position of one sequence) with target
//! id `t`, let `p = softmax(x)`, `lse = log Σ_j exp(x_j)` and let `T_k` be the
//! ids of the `k` largest logits (ties broken arbitrarily: the statistics do
//! not depend on the choice).
//!
//! | column | formula | unit |
//! |---|---|---|
//! | `target_logprob` | `log p_t = x_t − lse` | nats |
//! | `entropy` | `H(p) = −Σ_j p_j ln p_j` (full vocabulary) | nats |
//! | `topk_mass` | `M_k = Σ_{i∈T_k} p_i` (not renormalised) | probability |
//! | `topk_entropy` | `H(q) = −Σ_{i∈T_k} q_i log_b q_i`, `q_i = p_i / M_k` | base `b` (bits by default) |
//! | `topk_entropy_raw` | `−Σ_{i∈T_k} p_i log_b p_i` (partial sum, not renormalised) | base `b` |
//! | `active` | 1 when the row was computed, 0 when it was masked | — |
//!
//! The paper ("Understanding Likelihood Over-optimisation in Direct Alignment
//! Algorithms", Shi et al. 2024) defines top-k entropy as "the entropy over the
//! top k tokens" with `k = 10` in base 2 but does not say whether the top-k
//! probabilities are renormalised. daa's default, `topk_entropy`, renormalises
//! (so it lies in `[0, log_b k]` and is a proper entropy); the raw partial sum
//! is reported beside it. Terms with `p_i = 0` (logit −inf) contribute 0.
//!
//! A row is *masked* when its mask value is 0 or its target is negative (the
//! PyTorch `ignore_index = -100` convention). Masked rows are not read; their
//! output columns are all 0, `active` included.

use serde::Serialize;

use crate::error::{DaaError, Result};
use crate::tensor::HostTensor;

/// Largest `k` any backend supports (GPU kernels keep the top-k in registers
/// and workgroup memory).
pub const MAX_TOP_K: usize = 256;

/// Number of output columns per row, in the order of [`TokenStat`].
pub const TOKEN_STATS_COLUMNS: usize = 6;

/// The output columns of `token_stats`, in order. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum TokenStat {
    /// `log p_t`, nats.
    TargetLogprob = 0,
    /// Full-vocabulary entropy, nats.
    Entropy = 1,
    /// Top-k probability mass.
    TopkMass = 2,
    /// Renormalised top-k entropy in the chosen base (daa's default definition).
    TopkEntropy = 3,
    /// Unrenormalised top-k partial entropy sum in the chosen base.
    TopkEntropyRaw = 4,
    /// 1.0 when the row was computed, 0.0 when masked.
    Active = 5,
}

/// Parameters of `token_stats`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenStatsParams {
    /// How many of the most probable tokens enter the top-k statistics, `1..=256` and `≤ V`.
    pub k: usize,
    /// Logarithm base of the top-k entropies (2 gives bits, `e` gives nats).
    pub entropy_base: f64,
}

impl Default for TokenStatsParams {
    /// The paper's setting: `k = 10`, bits.
    fn default() -> Self {
        Self { k: 10, entropy_base: 2.0 }
    }
}

impl TokenStatsParams {
    /// Checks `k` against the vocabulary size and the base.
    pub fn validate(&self, vocab: usize) -> Result<()> {
        if self.k == 0 || self.k > MAX_TOP_K || self.k > vocab {
            return Err(DaaError::Parameter {
                name: "k",
                value: self.k.to_string(),
                expected: format!("expected 1 <= k <= min({MAX_TOP_K}, vocabulary size {vocab})"),
            });
        }
        if !(self.entropy_base.is_finite() && self.entropy_base > 1.0) {
            return Err(DaaError::Parameter {
                name: "entropy_base",
                value: self.entropy_base.to_string(),
                expected: "expected a finite base > 1 (2 for bits, e for nats)".into(),
            });
        }
        Ok(())
    }
}

/// Rows and vocabulary size of a `token_stats` call, checked from the shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenStatsShape {
    /// Number of rows (positions), the product of all but the last logits dimension.
    pub rows: usize,
    /// Vocabulary size, the last logits dimension.
    pub vocab: usize,
}

impl TokenStatsShape {
    /// Checks that `logits` is `[N, V]` or `[B, T, V]` and that `targets`
    /// (and `mask`, if any) have the leading dimensions of `logits`.
    pub fn check(logits: &[usize], targets: &[usize], mask: Option<&[usize]>) -> Result<Self> {
        if !(logits.len() == 2 || logits.len() == 3) || logits.last() == Some(&0) {
            return Err(DaaError::Shape {
                tensor: "logits",
                actual: logits.to_vec(),
                expected: "[rows, vocab] or [batch, time, vocab] with vocab >= 1".into(),
            });
        }
        let leading = &logits[..logits.len() - 1];
        if targets != leading {
            return Err(DaaError::Shape {
                tensor: "targets",
                actual: targets.to_vec(),
                expected: format!("{leading:?}, the leading dimensions of logits {logits:?}"),
            });
        }
        if let Some(mask) = mask
            && mask != leading
        {
            return Err(DaaError::Shape {
                tensor: "mask",
                actual: mask.to_vec(),
                expected: format!("{leading:?}, the leading dimensions of logits {logits:?}"),
            });
        }
        Ok(Self { rows: leading.iter().product(), vocab: logits[logits.len() - 1] })
    }
}

/// Which rows are computed, and their targets: the host-side part of every
/// backend's `token_stats` validation.
#[derive(Debug, Clone)]
pub struct RowTargets {
    /// Per row: `Some(target)` when active, `None` when masked.
    pub targets: Vec<Option<u32>>,
}

impl RowTargets {
    /// Reads `targets` (any integer type) and `mask` (any type, non-zero keeps),
    /// and checks every active target against the vocabulary.
    pub fn from_tensors(targets: &HostTensor, mask: Option<&HostTensor>, vocab: usize) -> Result<Self> {
        let ids = targets.to_i64_vec("targets")?;
        let keep = match mask {
            Some(mask) => Some(mask.to_bool_vec("mask")?),
            None => None,
        };
        let mut out = Vec::with_capacity(ids.len());
        for (row, &id) in ids.iter().enumerate() {
            let masked = keep.as_ref().is_some_and(|k| !k[row]) || id < 0;
            if masked {
                out.push(None);
            } else if id as u64 >= vocab as u64 {
                return Err(DaaError::TargetOutOfRange { row, target: id, vocab });
            } else {
                out.push(Some(id as u32));
            }
        }
        Ok(Self { targets: out })
    }
}

impl RowTargets {
    /// Per-row target ids as the GPU kernels read them: −1 for masked rows.
    pub fn kernel_ids(&self) -> Vec<i32> {
        self.targets.iter().map(|t| t.map_or(-1, |t| t as i32)).collect()
    }
}

/// One row of `token_stats` output, as users read it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TokenStatsRow {
    /// `log p_t`, nats.
    pub target_logprob: f32,
    /// Full entropy, nats.
    pub entropy: f32,
    /// Top-k probability mass.
    pub topk_mass: f32,
    /// Renormalised top-k entropy, in the requested base.
    pub topk_entropy: f32,
    /// Unrenormalised top-k partial entropy, in the requested base.
    pub topk_entropy_raw: f32,
    /// Whether the row was computed (false: masked).
    pub active: bool,
}

impl TokenStatsRow {
    /// Reads one row of the `[rows, 6]` output.
    pub fn from_columns(columns: &[f32]) -> Self {
        Self {
            target_logprob: columns[TokenStat::TargetLogprob as usize],
            entropy: columns[TokenStat::Entropy as usize],
            topk_mass: columns[TokenStat::TopkMass as usize],
            topk_entropy: columns[TokenStat::TopkEntropy as usize],
            topk_entropy_raw: columns[TokenStat::TopkEntropyRaw as usize],
            active: columns[TokenStat::Active as usize] != 0.0,
        }
    }

    /// Reads every row of a downloaded `[rows, 6]` f32 output tensor.
    pub fn rows_of(tensor: &HostTensor) -> Result<Vec<Self>> {
        let values = tensor.as_f32("token_stats output")?;
        if tensor.shape().len() != 2 || tensor.shape()[1] != TOKEN_STATS_COLUMNS {
            return Err(DaaError::Shape {
                tensor: "token_stats output",
                actual: tensor.shape().to_vec(),
                expected: format!("[rows, {TOKEN_STATS_COLUMNS}]"),
            });
        }
        Ok(values.chunks_exact(TOKEN_STATS_COLUMNS).map(Self::from_columns).collect())
    }
}

/// Top-k statistics from the `k` largest logits of a row and the row's
/// log-sum-exp, in f64: `(M_k, H(q) in base b, raw partial entropy in base b)`.
///
/// Shared by the CPU backends so that both finish a row identically; entries
/// equal to −inf (probability 0) contribute nothing.
pub fn topk_summary(top_logits: impl Iterator<Item = f64> + Clone, lse: f64, entropy_base: f64) -> (f64, f64, f64) {
    let mut mass = 0.0;
    let mut p_log_p = 0.0;
    for x in top_logits {
        let log_p = x - lse;
        let p = log_p.exp();
        if p > 0.0 {
            mass += p;
            p_log_p += p * log_p;
        }
    }
    let ln_base = entropy_base.ln();
    // −Σ q ln q with q = p/M equals ln M − (Σ p ln p)/M.
    let renormalised = (mass.ln() - p_log_p / mass).max(0.0) / ln_base;
    let raw = (-p_log_p).max(0.0) / ln_base;
    (mass, renormalised, raw)
}
