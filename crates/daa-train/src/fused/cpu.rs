//! The fused operations' CPU kernels: one pass over contiguous f32 rows,
//! split across rayon's threads, where burn's Flex backend would run one
//! single-threaded pass per primitive (often over a strided view). Used by
//! the operations when the inner backend is Flex and the tensors are f32;
//! other dtypes and backends run the tensor operations. Each kernel computes
//! what its operation's module docs say, with the f32 operations of the
//! tensor composition in the same order where it can (RoPE, the softmax's
//! `c · raw + bias`); tests compare them within rounding
//! (`tests/integration/fused.rs`).

use burn::backend::Flex;
use burn::backend::flex::FlexDevice;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use rayon::prelude::*;

use super::downcast;

/// Rows per rayon task: at least this many elements each.
const MIN_TASK_ELEMENTS: usize = 1 << 14;

/// Rows of `width` per task.
fn rows_per_task(width: usize) -> usize {
    (MIN_TASK_ELEMENTS / width.max(1)).max(1)
}

/// `t`'s elements in row-major order as f32 (a copy when it is a strided view), when it is f32.
pub(crate) fn values<const D: usize>(t: Tensor<Flex, D>) -> Option<Vec<f32>> {
    if t.dtype() != DType::F32 {
        return None;
    }
    let data = t.into_data();
    data.into_vec::<f32>().ok()
}

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

/// `f` of `t`'s elements without a copy when `t` is a contiguous f32 Flex
/// tensor, else of a contiguous copy; `None` when `B` is not Flex or `t` not f32.
pub(crate) fn with_elements<B: burn::tensor::backend::Backend, const D: usize, R>(
    t: &Tensor<B, D>,
    f: impl FnOnce(&[f32]) -> R,
) -> Option<R> {
    let flex = on_flex(t.clone()).ok()?;
    let primitive = flex.into_primitive().tensor();
    match primitive.as_slice::<f32>() {
        Some(elements) => Some(f(elements)),
        None => Some(f(&values(Tensor::<Flex, D>::from_primitive(TensorPrimitive::Float(primitive)))?)),
    }
}

/// `t` back on the backend `B`, which is Flex (the caller checked with [`on_flex`]).
pub(crate) fn to_backend<B: burn::tensor::backend::Backend, const D: usize>(t: Tensor<Flex, D>) -> Tensor<B, D> {
    downcast(t).unwrap_or_else(|_| unreachable!("the backend is Flex"))
}

/// The elements of tensors of backend `B` when `B` is Flex and every one is
/// f32, else `None` (nothing consumed: they are clones).
pub(crate) fn all_values<B: burn::tensor::backend::Backend, const D: usize>(
    tensors: &[&Tensor<B, D>],
) -> Option<Vec<Vec<f32>>> {
    if !is_flex::<B>() || tensors.iter().any(|t| t.dtype() != DType::F32) {
        return None;
    }
    tensors.iter().map(|t| on_flex((*t).clone()).ok().and_then(values)).collect()
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

/// Where a tile's rows find their bias: the bias is the call's whole
/// `[bias_rows, 1, t, s]` (row-major), the scores' rows are `[b, K, G·n]`
/// for queries `t0..t0 + n` (query `i` of a row is its index modulo `n`,
/// its batch row its index over `K·G·n`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TileRows {
    /// Queries in the tile, `n`.
    pub queries: usize,
    /// The tile's first query, `t0`.
    pub first_query: usize,
    /// Score rows per batch row, `K·G·n`.
    pub per_batch_row: usize,
    /// Rows of the bias: 1 (shared) or one per batch row.
    pub bias_rows: usize,
    /// Queries `t` of the whole bias.
    pub bias_queries: usize,
    /// Keys `s` of the whole bias (its row length).
    pub bias_keys: usize,
}

impl TileRows {
    /// Offset of score row `row`'s bias row in the whole bias.
    fn bias_offset(&self, row: usize) -> usize {
        let batch_row = if self.bias_rows == 1 { 0 } else { row / self.per_batch_row };
        (batch_row * self.bias_queries + self.first_query + row % self.queries) * self.bias_keys
    }
}

/// The softmax of each row of `s = c · raw + bias` (`raw` `[rows, keys]`):
/// the probabilities, each row's max `M` and `Z = Σ exp(s − M)`.
pub(crate) fn softmax_rows(
    raw: &[f32],
    bias: Option<&[f32]>,
    keys: usize,
    layout: TileRows,
    scale: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let scores = raw;
    let rows = scores.len() / keys.max(1);
    let mut p = vec![0f32; scores.len()];
    let (mut max, mut sum) = (vec![0f32; rows], vec![0f32; rows]);
    let per_task = rows_per_task(keys);
    p.par_chunks_mut(keys * per_task)
        .zip(max.par_chunks_mut(per_task))
        .zip(sum.par_chunks_mut(per_task))
        .enumerate()
        .for_each(|(task, ((p, max), sum))| {
            for (r, p) in p.chunks_mut(keys).enumerate() {
                let row = task * per_task + r;
                let s = &scores[row * keys..][..keys];
                let bias = bias.map(|b| &b[layout.bias_offset(row)..][..keys]);
                let mut m = f32::NEG_INFINITY;
                for j in 0..keys {
                    p[j] = s[j] * scale + bias.map_or(0.0, |b| b[j]);
                    m = m.max(p[j]);
                }
                let mut z = 0f32;
                for v in p.iter_mut() {
                    *v = (*v - m).exp();
                    z += *v;
                }
                for v in p.iter_mut() {
                    *v /= z;
                }
                (max[r], sum[r]) = (m, z);
            }
        });
    (p, max, sum)
}

/// A tile's backward from `raw` `[rows, keys]` (`q kᵀ`), each row's `M`,
/// `Z`, and `dP = dO vᵀ`: the probabilities `P = exp(c · raw + bias − M) / Z`
/// and `dS = c · P ⊙ (dP − rowsum(P ⊙ dP))`.
pub(crate) fn softmax_backward_rows(
    raw: &[f32],
    bias: Option<&[f32]>,
    (max, sum): (&[f32], &[f32]),
    dp: &[f32],
    keys: usize,
    layout: TileRows,
    scale: f32,
) -> (Vec<f32>, Vec<f32>) {
    let scores = raw;
    let mut p = vec![0f32; scores.len()];
    let mut ds = vec![0f32; scores.len()];
    let per_task = rows_per_task(keys);
    p.par_chunks_mut(keys * per_task).zip(ds.par_chunks_mut(keys * per_task)).enumerate().for_each(
        |(task, (p, ds))| {
            for (r, (p, ds)) in p.chunks_mut(keys).zip(ds.chunks_mut(keys)).enumerate() {
                let row = task * per_task + r;
                let (s, dp) = (&scores[row * keys..][..keys], &dp[row * keys..][..keys]);
                let bias = bias.map(|b| &b[layout.bias_offset(row)..][..keys]);
                let (m, z) = (max[row], sum[row]);
                let mut dot = 0f32;
                for j in 0..keys {
                    p[j] = (s[j] * scale + bias.map_or(0.0, |b| b[j]) - m).exp() / z;
                    dot += p[j] * dp[j];
                }
                for j in 0..keys {
                    ds[j] = p[j] * (dp[j] - dot) * scale;
                }
            }
        },
    );
    (p, ds)
}
