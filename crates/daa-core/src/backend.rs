//! The backend trait: what a device can hold and the handful of ops daa needs.

use crate::error::Result;
use crate::preference::PreferenceLossParams;
use crate::segment::SegmentReduction;
use crate::tensor::HostTensor;
use crate::token_stats::TokenStatsParams;

/// A compute backend: a place tensors live (`upload`/`download`) and the ops
/// daa runs there. Every result can be downloaded, so every backend can be
/// compared with [`crate::Specification`].
///
/// Shapes and element types each op accepts are documented on the op; a
/// backend that cannot run an op on some input returns a clear
/// [`crate::DaaError`], never panics.
pub trait Backend {
    /// A tensor resident on this backend's device.
    type Tensor: std::fmt::Debug;

    /// Short name (`reference`, `cpu`, `wgpu`, `cuda`).
    fn name(&self) -> &'static str;

    /// Copies a host tensor to the device.
    fn upload(&self, host: &HostTensor) -> Result<Self::Tensor>;

    /// Copies a device tensor back to the host.
    fn download(&self, tensor: &Self::Tensor) -> Result<HostTensor>;

    /// Per-row next-token statistics (see [`crate::token_stats`]).
    ///
    /// `logits`: `[N, V]` or `[B, T, V]`, f32 (f16/bf16 where the backend
    /// supports them); `targets`: the leading dimensions, any integer type;
    /// `mask`: optional, same shape, non-zero keeps. Returns `[rows, 6]` f32
    /// in the column order of [`crate::TokenStat`].
    fn token_stats(
        &self,
        logits: &Self::Tensor,
        targets: &Self::Tensor,
        mask: Option<&Self::Tensor>,
        params: &TokenStatsParams,
    ) -> Result<Self::Tensor>;

    /// Weighted per-segment sums, counts and means of `values` (`[N]` or
    /// `[N, C]`, f32) over contiguous segments given by `offsets` (`[S + 1]`,
    /// integer), with optional per-token `weights` (`[N]`). See [`crate::segment`].
    fn segment_reduce(
        &self,
        values: &Self::Tensor,
        offsets: &Self::Tensor,
        weights: Option<&Self::Tensor>,
    ) -> Result<SegmentReduction<Self::Tensor>>;

    /// Per-pair preference loss, gradients and rewards (see [`crate::preference`]).
    /// `pairs`: `[P, 6]` float in the column order of [`crate::PairLogps`];
    /// returns `[P, 7]` in the order of [`crate::PairLoss`] (f64 on CPU
    /// backends, f32 on GPU backends).
    fn preference_loss(&self, pairs: &Self::Tensor, params: &PreferenceLossParams) -> Result<Self::Tensor>;

    /// `∂L/∂logits = g · (onehot(target) − softmax(logits))` per row, as a new
    /// f32 tensor shaped like `logits` (see [`crate::logits_backward`]).
    /// `grad_logprob` holds `g = ∂L/∂log p_target`, one value per row.
    fn logits_backward(
        &self,
        logits: &Self::Tensor,
        targets: &Self::Tensor,
        mask: Option<&Self::Tensor>,
        grad_logprob: &Self::Tensor,
    ) -> Result<Self::Tensor>;

    /// The same gradient written over `logits` in their own element type,
    /// so no second `[rows, V]` buffer is allocated.
    fn logits_backward_in_place(
        &self,
        logits: &mut Self::Tensor,
        targets: &Self::Tensor,
        mask: Option<&Self::Tensor>,
        grad_logprob: &Self::Tensor,
    ) -> Result<()>;
}
