//! `KL(π‖π_ref)` on the policy's own samples, token by token: for each
//! sampled sequence `x, y`, teacher-forced through the policy and the
//! reference, every completion position's whole-vocabulary divergence
//!
//! ```text
//! KL_t = Σ_v p_t(v) [log p_t(v) − log q_t(v)],   p_t = softmax(z^π_t),  q_t = softmax(z^ref_t)
//! ```
//!
//! summed over the sequence's completion positions, and the sequence's
//! log-ratio `Σ_t [log p_t(y_t) − log q_t(y_t)]` beside it (daa-core's
//! [`daa_core::kl`] turns them into estimates). The positions run through
//! both models' output heads in chunks ([`crate::fused_head`]), so no
//! `[positions × V]` logits exist at once; each chunk's divergences are
//! computed on the device (burn tensor operations, every backend) and only
//! `C` values per chunk come back to the host.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use crate::batch::{Sequence, TokenBatch};
use crate::error::{ModelError, read_vec};
use crate::fused_head::{FusedHead, default_chunk_rows};
use crate::model::CausalLm;
use crate::objective::scored_hidden;

/// One sample's sums over its completion positions.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SampleKl {
    /// `Σ_t KL_t` (nats, `≥ 0`).
    pub token_kl: f64,
    /// `Σ_t [log p_t(y_t) − log q_t(y_t)] = log π(y|x) − log π_ref(y|x)` (nats).
    pub log_ratio: f64,
    /// Completion positions summed.
    pub positions: usize,
}

/// `KL_t` and the log-ratio of the target of each row of one chunk:
/// `policy` and `reference` logits `[C, V]` (f32), `targets` `[C]`; two `[C]`
/// tensors. Terms with `p_t(v) = 0` contribute 0 (also where the reference's
/// logit is −inf); a token the policy can emit and the reference cannot gives
/// an infinite divergence, which the caller reports.
pub fn chunk_kl<B: Backend>(
    policy: Tensor<B, 2>,
    reference: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let [rows, _] = policy.dims();
    let (log_p, log_q) = (log_softmax(policy, 1), log_softmax(reference, 1));
    let p = log_p.clone().exp();
    let impossible = p.clone().equal_elem(0.0);
    let terms = (p * (log_p.clone() - log_q.clone())).mask_fill(impossible, 0.0);
    let kl = terms.sum_dim(1).reshape([rows]);
    let y = targets.reshape([rows, 1]);
    let log_ratio = (log_p.gather(1, y.clone()) - log_q.gather(1, y)).reshape([rows]);
    (kl, log_ratio)
}

/// The per-sample sums of `sequences` (prompt + sampled completion, scored
/// from `completion_start`) under `policy` against `reference`, `batch`
/// sequences per forward pass and `head_chunk_rows` positions per head
/// chunk (0: a quarter of [`crate::fused_head::default_chunk_rows`] of the
/// vocabulary, since a chunk's divergence keeps about six `[C, V]` tensors
/// alive). Errors name the sample whose divergence is not finite.
pub fn sample_kl<B: Backend>(
    policy: &CausalLm<B>,
    reference: &CausalLm<B>,
    sequences: &[Sequence],
    batch: usize,
    pad_id: u32,
    head_chunk_rows: usize,
) -> Result<Vec<SampleKl>, ModelError> {
    let vocab = policy.config().vocab_size;
    if reference.config().vocab_size != vocab {
        return Err(ModelError::Config(format!(
            "the policy's vocabulary has {vocab} tokens, the reference's {}",
            reference.config().vocab_size
        )));
    }
    let device = policy.embed.weight.device();
    let rows =
        if head_chunk_rows == 0 { (default_chunk_rows::<B>(vocab, &device) / 4).max(1) } else { head_chunk_rows };
    let policy_head = FusedHead::of_model(policy).with_chunk_rows(rows);
    let reference_head = FusedHead::of_model(reference).with_chunk_rows(rows);
    let mut out = vec![SampleKl::default(); sequences.len()];
    for (first, chunk) in sequences.chunks(batch.max(1)).enumerate().map(|(i, c)| (i * batch.max(1), c)) {
        let refs: Vec<&Sequence> = chunk.iter().collect();
        let tokens = TokenBatch::new(&refs, pad_id, vocab)?;
        let (policy_hidden, positions) = scored_hidden(policy, &tokens, &device)?;
        let (reference_hidden, _) = scored_hidden(reference, &tokens, &device)?;
        let targets = positions.target_index::<B>(&device);
        for (start, len) in policy_head.chunks(positions.count()) {
            let (kl, log_ratio) = chunk_kl(
                policy_head.logits(policy_hidden.clone().narrow(0, start, len)),
                reference_head.logits(reference_hidden.clone().narrow(0, start, len)),
                targets.clone().narrow(0, start, len),
            );
            let kl: Vec<f32> = read_vec(kl, "per-token KL")?;
            let log_ratio: Vec<f32> = read_vec(log_ratio, "per-token log-ratio")?;
            for (i, (k, r)) in kl.iter().zip(&log_ratio).enumerate() {
                let sample = &mut out[first + positions.row_of[start + i]];
                // Rounding can leave a divergence a hair below 0; NaN stays NaN.
                sample.token_kl += f64::from(if *k < 0.0 { 0.0 } else { *k });
                sample.log_ratio += f64::from(*r);
                sample.positions += 1;
            }
        }
    }
    if let Some(i) = out.iter().position(|s| !(s.token_kl.is_finite() && s.log_ratio.is_finite())) {
        return Err(ModelError::Batch(format!(
            "sample {i}: KL(π‖π_ref) summed over its completion is {}, its log-ratio {}: a logit of the policy or \
             the reference is not finite, or the reference gives probability 0 to a token the policy can produce",
            out[i].token_kl, out[i].log_ratio
        )));
    }
    Ok(out)
}
