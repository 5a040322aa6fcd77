//! The attention tile's softmax and its backward on Flex tensors through
//! the row kernels of [`super::cpu`] (f32 only; anything else is handed
//! back for the tensor operations).

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::attention::Geometry;
use super::cpu::{self, TileRows};

/// `(P, M, Z)`.
type Probabilities<B> = (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>);

fn layout<B: Backend>(g: Geometry, (t0, n): (usize, usize), bias: Option<&Tensor<B, 4>>) -> TileRows {
    let [bias_rows, _, bias_queries, bias_keys] = bias.map_or([1, 1, 0, 0], |b| b.dims());
    TileRows { queries: n, first_query: t0, per_batch_row: g.kv * g.groups * n, bias_rows, bias_queries, bias_keys }
}

/// [`cpu::softmax_rows`] of `c · raw + bias` when both are Flex f32; `bias`
/// is the call's whole `[b or 1, 1, t, s]` (read in place), the tile's
/// queries `t0..t0 + n`.
pub(crate) fn softmax<B: Backend>(
    raw: Tensor<B, 4>,
    bias: Option<&Tensor<B, 4>>,
    g: Geometry,
    tile: (usize, usize),
    scale: f64,
) -> Result<Probabilities<B>, Tensor<B, 4>> {
    let shape = raw.dims();
    if bias.is_some_and(|b| b.dtype() != burn::tensor::DType::F32) {
        return Err(raw);
    }
    let raw = cpu::on_flex(raw)?;
    let rows = layout(g, tile, bias);
    let raw = cpu::values(raw).unwrap_or_default();
    let keys = shape[3];
    let run = |bias: Option<&[f32]>| cpu::softmax_rows(&raw, bias, keys, rows, scale as f32);
    let (p, max, sum) = match bias {
        Some(bias) => cpu::with_elements(bias, |b| run(Some(b))).unwrap_or_else(|| run(None)),
        None => run(None),
    };
    let column = [shape[0], shape[1], shape[2], 1];
    Ok((
        cpu::to_backend(cpu::tensor(p, shape)),
        cpu::to_backend(cpu::tensor(max, column)),
        cpu::to_backend(cpu::tensor(sum, column)),
    ))
}

/// A tile's backward arguments handed back.
type Backward<B> = (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>);

/// [`cpu::softmax_backward_rows`]: `(P, dS)` when every tensor is Flex f32
/// (`bias` as in [`softmax`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<B: Backend>(
    raw: Tensor<B, 4>,
    bias: Option<&Tensor<B, 4>>,
    (max, sum): (Tensor<B, 4>, Tensor<B, 4>),
    dp: Tensor<B, 4>,
    g: Geometry,
    tile: (usize, usize),
    scale: f64,
) -> Result<(Tensor<B, 4>, Tensor<B, 4>), Backward<B>> {
    let shape = raw.dims();
    let is_f32 = |t: &Tensor<B, 4>| t.dtype() == burn::tensor::DType::F32;
    if !cpu::is_flex::<B>() || ![&raw, &max, &sum, &dp].into_iter().all(is_f32) || bias.is_some_and(|b| !is_f32(b)) {
        return Err((raw, max, sum, dp));
    }
    let rows = layout(g, tile, bias);
    let values = |t: Tensor<B, 4>| cpu::on_flex(t).ok().and_then(cpu::values).unwrap_or_default();
    let (raw, max, sum, dp) = (values(raw), values(max), values(sum), values(dp));
    let keys = shape[3];
    let run =
        |bias: Option<&[f32]>| cpu::softmax_backward_rows(&raw, bias, (&max, &sum), &dp, keys, rows, scale as f32);
    let (p, ds) = match bias {
        Some(bias) => cpu::with_elements(bias, |b| run(Some(b))).unwrap_or_else(|| run(None)),
        None => run(None),
    };
    Ok((cpu::to_backend(cpu::tensor(p, shape)), cpu::to_backend(cpu::tensor(ds, shape))))
}
