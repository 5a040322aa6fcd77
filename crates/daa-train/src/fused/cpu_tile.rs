//! The attention tile's softmax and its backward on Flex tensors through
//! the row kernels of [`super::cpu`] (f32 only; anything else is handed
//! back for the tensor operations).

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::attention::{AttentionArgs, Geometry, Normaliser};
use super::cpu::{self, TileRows};
use super::cpu_flash::{self, FlashDims};

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

/// Queries per block of [`cpu_flash`], at most (from the call's tile size,
/// so that small tiles give small blocks: the tests' uneven tiles).
const FLASH_BLOCK_QUERIES: usize = 64;

fn flash_dims<B: Backend>(a: &AttentionArgs<B>, g: Geometry) -> FlashDims {
    let block_queries = a.tile_rows.clamp(1, FLASH_BLOCK_QUERIES);
    FlashDims {
        g,
        mask_rows: a.hidden.as_ref().map_or(0, |m| m.dims()[0]),
        block_queries,
        block_keys: 4 * block_queries,
    }
}

/// The mask's elements, row-major.
fn mask_values<B: Backend>(a: &AttentionArgs<B>) -> Option<Option<Vec<bool>>> {
    match &a.hidden {
        None => Some(None),
        Some(m) => m.clone().into_data().into_vec::<bool>().ok().map(Some),
    }
}

/// The whole call through [`cpu_flash::forward`] when the backend is Flex
/// and `q`, `k`, `v` are f32; the normaliser keeps the output for the backward.
pub(crate) fn flash_forward<B: Backend>(a: &AttentionArgs<B>, g: Geometry) -> Option<(Tensor<B, 4>, Normaliser<B>)> {
    let inputs = cpu::all_values(&[&a.q, &a.k, &a.v])?;
    let hidden = mask_values(a)?;
    let d = flash_dims(a, g);
    let (out, max, sum) = cpu_flash::forward(&inputs[0], &inputs[1], &inputs[2], hidden.as_deref(), d, a.scale as f32);
    let rows = [g.b, g.kv, g.groups, g.t];
    let out: Tensor<B, 4> = cpu::to_backend(cpu::tensor(out, [g.b, g.kv * g.groups, g.t, g.h]));
    let normaliser = Normaliser {
        max: cpu::to_backend(cpu::tensor(max, rows)),
        sum: cpu::to_backend(cpu::tensor(sum, rows)),
        output: Some(out.clone()),
    };
    Some((out, normaliser))
}

/// `(dq, dk, dv)` through [`cpu_flash::backward`] when the forward ran
/// [`flash_forward`] (the normaliser holds the output) and every tensor is Flex f32.
pub(crate) fn flash_backward<B: Backend>(
    a: &AttentionArgs<B>,
    g: Geometry,
    normaliser: &Normaliser<B>,
    d_out: &Tensor<B, 4>,
) -> Option<(Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>)> {
    let out = normaliser.output.as_ref()?;
    let inputs = cpu::all_values(&[&a.q, &a.k, &a.v, out, d_out])?;
    let rows = cpu::all_values(&[&normaliser.max, &normaliser.sum])?;
    let hidden = mask_values(a)?;
    let d = flash_dims(a, g);
    let (dq, dk, dv) = cpu_flash::backward(
        (&inputs[0], &inputs[1], &inputs[2]),
        hidden.as_deref(),
        &inputs[3],
        &inputs[4],
        (&rows[0], &rows[1]),
        d,
        a.scale as f32,
    );
    let keys = [g.b, g.kv, g.s, g.h];
    Some((
        cpu::to_backend(cpu::tensor(dq, [g.b, g.kv * g.groups, g.t, g.h])),
        cpu::to_backend(cpu::tensor(dk, keys)),
        cpu::to_backend(cpu::tensor(dv, keys)),
    ))
}
