//! Borrowed views of logits in their stored element type, and the host-side
//! checks every CPU backend runs before an op.

use half::{bf16, f16};

use crate::error::{DaaError, Result};
use crate::tensor::{HostTensor, TensorData};
use crate::token_stats::{RowTargets, TokenStatsShape};

/// Logits borrowed in their stored element type.
#[derive(Debug, Clone, Copy)]
pub(crate) enum LogitsRef<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    BF16(&'a [bf16]),
}

impl<'a> LogitsRef<'a> {
    pub(crate) fn of(tensor: &'a HostTensor) -> Result<Self> {
        match tensor.data() {
            TensorData::F32(v) => Ok(Self::F32(v)),
            TensorData::F16(v) => Ok(Self::F16(v)),
            TensorData::BF16(v) => Ok(Self::BF16(v)),
            other => Err(DaaError::DType { tensor: "logits", actual: other.dtype(), expected: "f32, f16 or bf16" }),
        }
    }

    /// Row `row` of a `[rows, vocab]` matrix, widened to f64.
    pub(crate) fn row_f64(&self, row: usize, vocab: usize) -> Vec<f64> {
        let range = row * vocab..(row + 1) * vocab;
        match self {
            Self::F32(v) => v[range].iter().map(|&x| f64::from(x)).collect(),
            Self::F16(v) => v[range].iter().map(|x| x.to_f64()).collect(),
            Self::BF16(v) => v[range].iter().map(|x| x.to_f64()).collect(),
        }
    }
}

/// The checked shape and per-row targets of a `token_stats` or
/// `logits_backward` call on host tensors.
pub(crate) fn check_rows(
    logits: &HostTensor,
    targets: &HostTensor,
    mask: Option<&HostTensor>,
) -> Result<(TokenStatsShape, RowTargets)> {
    LogitsRef::of(logits)?;
    row_targets(logits.shape(), targets, mask)
}

/// Checks the shapes against `logits_shape` and reads which rows are active
/// and their targets from host `targets` and `mask` (GPU backends pass their
/// host copies).
pub(crate) fn row_targets(
    logits_shape: &[usize],
    targets: &HostTensor,
    mask: Option<&HostTensor>,
) -> Result<(TokenStatsShape, RowTargets)> {
    let shape = TokenStatsShape::check(logits_shape, targets.shape(), mask.map(HostTensor::shape))?;
    let rows = RowTargets::from_tensors(targets, mask, shape.vocab)?;
    Ok((shape, rows))
}

/// Why a row could not be computed; turned into a [`DaaError`] with the row index.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum RowFault {
    /// NaN or +inf at `column`.
    NonFinite { column: usize, value: f32 },
    /// Every logit is −inf.
    Empty,
}

impl RowFault {
    pub(crate) fn at_row(self, row: usize) -> DaaError {
        match self {
            RowFault::NonFinite { column, value } => DaaError::NonFiniteLogit { row, column, value },
            RowFault::Empty => DaaError::EmptyDistribution { row },
        }
    }
}

/// Turns the per-row `(code, column)` status words GPU row kernels write
/// (shaders/*/row_status.*, row_common.cuh: 0 ok, 1 NaN, 2 all −inf,
/// 3 +inf) into the CPU backends' errors; `first_row` numbers the first word pair.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub(crate) fn check_row_status(words: &[u32], first_row: usize, backend: &'static str) -> Result<()> {
    for (r, pair) in words.chunks_exact(2).enumerate() {
        let (row, column) = (first_row + r, pair[1] as usize);
        match pair[0] {
            0 => {}
            1 => return Err(DaaError::NonFiniteLogit { row, column, value: f32::NAN }),
            2 => return Err(DaaError::EmptyDistribution { row }),
            3 => return Err(DaaError::NonFiniteLogit { row, column, value: f32::INFINITY }),
            other => {
                return Err(DaaError::Device { backend, message: format!("row {row}: unknown kernel status {other}") });
            }
        }
    }
    Ok(())
}

/// Finds the first NaN or +inf of a row (the cold path after a fast pass flagged one).
pub(crate) fn first_bad_logit(row: impl Iterator<Item = f32>) -> Option<RowFault> {
    row.enumerate().find(|(_, x)| !(*x < f32::INFINITY)).map(|(column, value)| RowFault::NonFinite { column, value })
}

/// Reads `grad_logprob` (any float type) as f64 and checks it is finite.
pub(crate) fn read_grad_logprob(grad: &HostTensor, rows: usize) -> Result<Vec<f64>> {
    crate::logits_backward::check_grad_shape(grad.shape(), rows)?;
    let g = grad.to_f64_vec("grad_logprob")?;
    if let Some((row, value)) = g.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(DaaError::Parameter {
            name: "grad_logprob",
            value: format!("{value} at row {row}"),
            expected: "expected finite upstream gradients".into(),
        });
    }
    Ok(g)
}
