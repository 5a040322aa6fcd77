//! The fused operations' CubeCL kernels: one source for burn's `Wgpu` and
//! `Cuda` backends (WGSL, SPIR-V or CUDA C++, compiled at run time by
//! CubeCL). Each kernel is recorded on burn's fusion stream as one custom
//! operation ([`custom_op`]), so the tensor operations around it still fuse.
//! The operations call them when the inner backend is one of those two and
//! fall back to their tensor operations otherwise; the agreement tests
//! (`tests/integration/fused.rs`) run them on wgpu (lavapipe in CI).

mod custom_op;
pub(crate) mod elementwise;
mod elementwise_kernels;
pub(crate) mod norm;
mod norm_kernels;

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Shape, Tensor, TensorPrimitive};
use burn_cubecl::CubeRuntime;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::reshape;
use burn_cubecl::tensor::CubeTensor;

use super::downcast;
use custom_op::FusedTensor;

/// A computation on fused tensors of any CubeCL runtime: `I` in, `O` out.
pub(crate) trait OnCube<const I: usize, const O: usize> {
    fn run<R: CubeRuntime>(&self, inputs: [FusedTensor<R>; I]) -> [FusedTensor<R>; O];
}

/// `op` on `inputs` when the backend `X` is burn's `Wgpu` or `Cuda` (its
/// float tensors are fused tensors of that runtime); the inputs back otherwise.
pub(crate) fn on_cube<X: Backend, const I: usize, const O: usize>(
    op: &impl OnCube<I, O>,
    inputs: [FloatTensor<X>; I],
) -> Result<[FloatTensor<X>; O], [FloatTensor<X>; I]> {
    if !super::cube_kernels_enabled() {
        return Err(inputs);
    }
    #[cfg(feature = "wgpu")]
    let inputs = match on_runtime::<X, cubecl::wgpu::WgpuRuntime, I, O>(op, inputs) {
        Ok(out) => return Ok(out),
        Err(inputs) => inputs,
    };
    #[cfg(feature = "cuda")]
    let inputs = match on_runtime::<X, cubecl::cuda::CudaRuntime, I, O>(op, inputs) {
        Ok(out) => return Ok(out),
        Err(inputs) => inputs,
    };
    Err(inputs)
}

/// Whether [`on_cube`] runs its kernels for the backend `X`.
pub(crate) fn applies<X: Backend>() -> bool {
    use std::any::TypeId;
    if !super::cube_kernels_enabled() {
        return false;
    }
    let id = TypeId::of::<FloatTensor<X>>();
    #[cfg(feature = "wgpu")]
    if id == TypeId::of::<FusedTensor<cubecl::wgpu::WgpuRuntime>>() {
        return true;
    }
    #[cfg(feature = "cuda")]
    if id == TypeId::of::<FusedTensor<cubecl::cuda::CudaRuntime>>() {
        return true;
    }
    let _ = id;
    false
}

fn on_runtime<X: Backend, R: CubeRuntime, const I: usize, const O: usize>(
    op: &impl OnCube<I, O>,
    inputs: [FloatTensor<X>; I],
) -> Result<[FloatTensor<X>; O], [FloatTensor<X>; I]> {
    use std::any::TypeId;
    if TypeId::of::<FloatTensor<X>>() != TypeId::of::<FusedTensor<R>>() {
        return Err(inputs);
    }
    let same = "the float tensors of X are fused tensors of R";
    let fused = inputs.map(|t| downcast::<_, FusedTensor<R>>(t).unwrap_or_else(|_| unreachable!("{same}")));
    Ok(op.run::<R>(fused).map(|t| downcast(t).unwrap_or_else(|_| unreachable!("{same}"))))
}

/// `t` contiguous as `[rows, d]` (`d` its last axis).
fn as_rows<R: CubeRuntime>(t: CubeTensor<R>) -> CubeTensor<R> {
    let shape = t.meta.shape().clone();
    let d = shape[shape.num_dims() - 1];
    let rows = shape.num_elements() / d.max(1);
    reshape(into_contiguous(t), Shape::new([rows, d]))
}

/// `t`'s primitive (a clone: the tensor stays the caller's).
fn float<X: Backend, const D: usize>(t: &Tensor<X, D>) -> FloatTensor<X> {
    t.clone().into_primitive().tensor()
}

fn tensor<X: Backend, const D: usize>(t: FloatTensor<X>) -> Tensor<X, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}
