//! The fused operations' CPU kernels: one pass over contiguous f32 rows,
//! split across rayon's threads, where burn's Flex backend would run one
//! single-threaded pass per primitive (often over a strided view). Used by
//! the operations when the inner backend is Flex and the tensors are f32;
//! other dtypes and backends run the tensor operations. Each kernel computes
//! what its operation's module docs say, with the f32 operations of the
//! tensor composition in the same order where it can (RoPE); tests compare
//! them within rounding (`tests/integration/fused.rs`). The attention has its
//! own kernel, [`super::cpu_flash`].

use burn::backend::Flex;
use burn::backend::flex::{FlexDevice, FlexTensor};
use burn::tensor::{DType, Tensor, TensorData};
use rayon::prelude::*;

use super::downcast;

/// Rows per rayon task: at least this many elements each.
const MIN_TASK_ELEMENTS: usize = 1 << 14;

/// A Flex tensor of `shape` holding `values` (no copy).
pub(crate) fn tensor<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Tensor<Flex, D> {
    Tensor::from_data(TensorData::new(values, shape), &FlexDevice)
}

/// `t` as a Flex tensor, when the backend `B` is Flex and `t` is f32.
pub(crate) fn on_flex<B: burn::tensor::backend::Backend, const D: usize>(
    t: Tensor<B, D>,
) -> Result<Tensor<Flex, D>, Tensor<B, D>> {
    if t.dtype() != DType::F32 {
        return Err(t);
    }
    downcast::<_, Tensor<Flex, D>>(t)
}

/// Whether the backend `B` is Flex.
pub(crate) fn is_flex<B: burn::tensor::backend::Backend>() -> bool {
    std::any::TypeId::of::<B>() == std::any::TypeId::of::<Flex>()
}

/// `t` back on the backend `B`, which is Flex (the caller checked with [`on_flex`]).
pub(crate) fn to_backend<B: burn::tensor::backend::Backend, const D: usize>(t: Tensor<Flex, D>) -> Tensor<B, D> {
    downcast(t).unwrap_or_else(|_| unreachable!("the backend is Flex"))
}

/// `tensors` as contiguous f32 Flex tensors when `B` is Flex and every one
/// is f32: the same buffers where they already are (no copy), a contiguous
/// copy of a strided view; `None` otherwise (nothing consumed: clones).
pub(crate) fn contiguous_all<B: burn::tensor::backend::Backend, const D: usize, const N: usize>(
    tensors: [&Tensor<B, D>; N],
) -> Option<[FlexTensor; N]> {
    if !is_flex::<B>() || tensors.iter().any(|t| t.dtype() != DType::F32) {
        return None;
    }
    let flex = tensors.map(|t| on_flex(t.clone()).ok().map(|t| t.into_primitive().tensor()));
    if flex.iter().any(Option::is_none) {
        return None;
    }
    Some(flex.map(|t| {
        let t: FlexTensor = t.expect("checked above");
        if t.as_slice::<f32>().is_some() { t } else { t.to_contiguous() }
    }))
}

/// The elements of a tensor from [`contiguous_all`], row-major.
pub(crate) fn elements(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().unwrap_or(&[])
}

/// `rot(x)[c] = sign · x[partner]`: halves pair `c` with `c ± h/2`
/// (`(−x[c + h/2], x[c − h/2])`), interleaved `2j` with `2j + 1`.
#[inline]
fn partner(c: usize, h: usize, interleaved: bool) -> (usize, f32) {
    if interleaved {
        if c.is_multiple_of(2) { (c + 1, -1.0) } else { (c - 1, 1.0) }
    } else if c < h / 2 {
        (c + h / 2, -1.0)
    } else {
        (c - h / 2, 1.0)
    }
}

/// RoPE over `x` `[rows_x, t, h]` (the heads of a batch row together) with
/// tables `[rows_table, t, h]` (`rows_table` 1 or one per batch row; a
/// batch row spans `heads` consecutive rows of `x`): `forward`
/// `y = x ⊙ cos + rot(x) ⊙ sin`, else `dx = dy ⊙ cos − rot(dy ⊙ sin)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rope(
    x: &[f32],
    cos: &[f32],
    sin: &[f32],
    heads: usize,
    t: usize,
    h: usize,
    interleaved: bool,
    forward: bool,
) -> Vec<f32> {
    let plane = t * h;
    let tables = cos.len() / plane.max(1);
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(plane).zip(x.par_chunks(plane)).enumerate().for_each(|(row, (out, x))| {
        let table = if tables == 1 { 0 } else { row / heads };
        let (cos, sin) = (&cos[table * plane..][..plane], &sin[table * plane..][..plane]);
        for i in 0..t {
            let at = i * h;
            for c in 0..h {
                let (p, sign) = partner(c, h, interleaved);
                out[at + c] = if forward {
                    x[at + c] * cos[at + c] + (sign * x[at + p]) * sin[at + c]
                } else {
                    x[at + c] * cos[at + c] - sign * (x[at + p] * sin[at + p])
                };
            }
        }
    });
    out
}

/// `h = silu(a) ⊙ u`, `silu(a) = a · σ(a)`.
pub(crate) fn swiglu_forward(a: &[f32], u: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; a.len()];
    out.par_chunks_mut(MIN_TASK_ELEMENTS)
        .zip(a.par_chunks(MIN_TASK_ELEMENTS))
        .zip(u.par_chunks(MIN_TASK_ELEMENTS))
        .for_each(|((out, a), u)| {
            let sigma = sigmoid(a);
            for i in 0..out.len() {
                out[i] = a[i] * sigma[i] * u[i];
            }
        });
    out
}

/// `σ(a) = 1 / (1 + e⁻ᵃ)` of every element (the vectorised `exp` of
/// `fused/cpu_flash.rs`).
fn sigmoid(a: &[f32]) -> Vec<f32> {
    let mut sigma: Vec<f32> = a.iter().map(|&x| -x).collect();
    super::cpu_flash::exp_in_place(&mut sigma);
    sigma.iter_mut().for_each(|e| *e = 1.0 / (1.0 + *e));
    sigma
}

/// `(da, du)` of SwiGLU for `dh`: `du = dh ⊙ a σ(a)`, `da = dh ⊙ u ⊙ σ(a)(1 + a(1 − σ(a)))`.
pub(crate) fn swiglu_backward(a: &[f32], u: &[f32], dh: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (mut da, mut du) = (vec![0f32; a.len()], vec![0f32; a.len()]);
    let n = MIN_TASK_ELEMENTS;
    da.par_chunks_mut(n)
        .zip(du.par_chunks_mut(n))
        .zip(a.par_chunks(n))
        .zip(u.par_chunks(n))
        .zip(dh.par_chunks(n))
        .for_each(|((((da, du), a), u), dh)| {
            let sigmas = sigmoid(a);
            for i in 0..a.len() {
                let sigma = sigmas[i];
                du[i] = dh[i] * a[i] * sigma;
                da[i] = dh[i] * u[i] * sigma * (1.0 + a[i] * (1.0 - sigma));
            }
        });
    (da, du)
}

/// `ℓ_r = z[r, y_r] − m_r − ln Σ_j exp(z[r, j] − m_r)`, `m_r = max_j z[r, j]`,
/// of every row `r` of `z` `[rows, v]` (`rows = targets.len()`): the
/// log-softmax at the targets, one multi-threaded pass over the rows with
/// the vectorised `exp` (Flex's `log_softmax` forms the whole `[rows, v]`
/// result on one thread before the gather picks one column).
pub(crate) fn log_softmax_at(z: &[f32], v: usize, targets: &[usize]) -> Vec<f32> {
    use super::cpu_flash::{exp_in_place, row_max, row_sum};
    let mut out = vec![0f32; targets.len()];
    out.par_iter_mut().zip(z.par_chunks(v.max(1))).zip(targets.par_iter()).for_each_init(
        || vec![0f32; v],
        |shifted, ((out, row), &y)| {
            let max = row_max(row);
            shifted.iter_mut().zip(row).for_each(|(s, &x)| *s = x - max);
            exp_in_place(shifted);
            *out = (row[y] - max) - row_sum(shifted).ln();
        },
    );
    out
}