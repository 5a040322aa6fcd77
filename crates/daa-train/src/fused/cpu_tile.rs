//! The fused attention's forward and backward on Flex f32 tensors through
//! [`super::cpu_flash`]: the tensors' elements in, the results back as
//! tensors (anything else is left to the tile-by-tile tensor operations).

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::attention::{AttentionArgs, Geometry, Normaliser};
use super::cpu::{self, View4};
use super::cpu_flash::{self, FlashDims};
use burn::backend::flex::FlexTensor;

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
/// and `q`, `k`, `v` are f32 (read where they lie); the output comes laid
/// out in `q`'s axis order, and the normaliser keeps it for the backward.
pub(crate) fn flash_forward<B: Backend>(a: &AttentionArgs<B>, g: Geometry) -> Option<(Tensor<B, 4>, Normaliser<B>)> {
    let tensors = cpu::strided_all([&a.q, &a.k, &a.v])?;
    let hidden = mask_values(a)?;
    let d = flash_dims(a, g);
    let [q, k, v] = views(&tensors)?;
    if !shapes_agree(g, a.hidden.as_ref().map(|m| m.dims()), [&q, &k, &v], &[]) {
        return None;
    }
    let out_strides = q.dense_strides();
    let (out, max, sum) = cpu_flash::forward((q, k, v), hidden.as_deref(), d, a.scale as f32, out_strides);
    let rows = [g.b, g.kv, g.groups, g.t];
    let out: Tensor<B, 4> = cpu::strided_tensor(out, q.shape, out_strides);
    let normaliser = Normaliser {
        max: cpu::to_backend(cpu::tensor(max, rows)),
        sum: cpu::to_backend(cpu::tensor(sum, rows)),
        output: Some(out.clone()),
    };
    Some((out, normaliser))
}

/// `(dq, dk, dv)` through [`cpu_flash::backward`] when the forward ran
/// [`flash_forward`] (the normaliser holds the output) and every tensor is
/// Flex f32; each gradient laid out in its input's axis order.
pub(crate) fn flash_backward<B: Backend>(
    a: &AttentionArgs<B>,
    g: Geometry,
    normaliser: &Normaliser<B>,
    d_out: &Tensor<B, 4>,
) -> Option<(Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>)> {
    let out = normaliser.output.as_ref()?;
    let tensors = cpu::strided_all([&a.q, &a.k, &a.v, out, d_out])?;
    let rows = cpu::contiguous_all([&normaliser.max, &normaliser.sum])?;
    let [max, sum] = rows.each_ref().map(cpu::elements);
    let hidden = mask_values(a)?;
    let d = flash_dims(a, g);
    let [q, k, v, out, d_out] = views(&tensors)?;
    if !shapes_agree(g, a.hidden.as_ref().map(|m| m.dims()), [&q, &k, &v], &[&out, &d_out])
        || max.len() != q.shape[..3].iter().product::<usize>()
        || sum.len() != max.len()
    {
        return None;
    }
    let strides = [q, k, v].map(|view| view.dense_strides());
    let up = cpu_flash::Upstream { out, d_out, max, sum };
    let (dq, dk, dv) = cpu_flash::backward((q, k, v), hidden.as_deref(), up, d, a.scale as f32, strides);
    Some((
        cpu::strided_tensor(dq, q.shape, strides[0]),
        cpu::strided_tensor(dk, k.shape, strides[1]),
        cpu::strided_tensor(dv, v.shape, strides[2]),
    ))
}

/// Whether `q` `[b, K·G, t, h]`, `k`, `v` `[b, K, s, h]` (`s ≥ t`) and any
/// `more` tensors of `q`'s shape, and the mask `[b or 1, 1, t, s]`, agree
/// with the call's sizes: the kernels' buffers are sized from them.
fn shapes_agree(g: Geometry, mask: Option<[usize; 4]>, [q, k, v]: [&View4<'_>; 3], more: &[&View4<'_>]) -> bool {
    let q_shape = [g.b, g.kv * g.groups, g.t, g.h];
    let kv_shape = [g.b, g.kv, g.s, g.h];
    g.kv > 0
        && g.s >= g.t
        && mask.is_none_or(|m| {
            let [rows, one, t, s] = m;
            (rows == 1 || rows == g.b) && one == 1 && t == g.t && s == g.s
        })
        && q.shape == q_shape
        && k.shape == kv_shape
        && v.shape == kv_shape
        && more.iter().all(|m| m.shape == q_shape)
}

/// The views of tensors from [`cpu::strided_all`].
fn views<const N: usize>(tensors: &[FlexTensor; N]) -> Option<[View4<'_>; N]> {
    let views = tensors.each_ref().map(View4::of);
    if views.iter().any(Option::is_none) {
        return None;
    }
    Some(views.map(|v| v.expect("checked above")))
}
