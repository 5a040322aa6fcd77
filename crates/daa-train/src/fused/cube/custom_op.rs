//! A CubeCL computation as one custom operation of burn's fusion stream.
//!
//! burn's `Wgpu` and `Cuda` backends are `Fusion<CubeBackend<R, …>>`: tensor
//! operations are recorded on a stream and compiled into fused kernels when
//! the stream runs. A custom operation takes its place on that stream like
//! any other (the stream is not drained to run it): when it executes, its
//! inputs are `CubeTensor`s and it registers its outputs' `CubeTensor`s.

use std::fmt;
use std::sync::Arc;

use burn::tensor::{DType, Shape};
use burn_cubecl::fusion::FusionCubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, CubeRuntime};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{FusionRuntime, FusionTensor};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};

/// A float tensor of burn's fusion backend over the CubeCL runtime `R`.
pub(crate) type FusedTensor<R> = FusionTensor<FusionCubeRuntime<R>>;

/// The backend whose handles the stream holds. The element types only name
/// defaults: a handle carries its own dtype.
type Inner<R> = CubeBackend<R, f32, i32, u32>;

/// What an operation computes from its inputs' tensors.
type Kernel<R, const I: usize, const O: usize> = dyn Fn([CubeTensor<R>; I]) -> [CubeTensor<R>; O] + Send + Sync;

struct CustomOp<R: CubeRuntime, const I: usize, const O: usize> {
    desc: CustomOpIr,
    run: Arc<Kernel<R, I, O>>,
}

impl<R: CubeRuntime, const I: usize, const O: usize> fmt::Debug for CustomOp<R, I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CustomOp").field("id", &self.desc.id).finish()
    }
}

impl<R: CubeRuntime, const I: usize, const O: usize> Operation<FusionCubeRuntime<R>> for CustomOp<R, I, O> {
    fn execute(&self, handles: &mut HandleContainer<<FusionCubeRuntime<R> as FusionRuntime>::FusionHandle>) {
        let (inputs, outputs) = self.desc.as_fixed::<I, O>();
        let tensors = inputs.each_ref().map(|ir| handles.get_float_tensor::<Inner<R>>(ir));
        for (ir, tensor) in outputs.iter().zip((self.run)(tensors)) {
            handles.register_float_tensor::<Inner<R>>(&ir.id, tensor);
        }
    }
}

/// Records `run` on the inputs' stream as the operation `name`, with outputs
/// of the given shapes and dtypes (what `run` must return, in order).
pub(crate) fn custom_op<R: CubeRuntime, const I: usize, const O: usize>(
    name: &'static str,
    inputs: [FusedTensor<R>; I],
    outputs: [(Shape, DType); O],
    run: impl Fn([CubeTensor<R>; I]) -> [CubeTensor<R>; O] + Send + Sync + 'static,
) -> [FusedTensor<R>; O] {
    let client = inputs[0].client.clone();
    let streams = OperationStreams::with_inputs(&inputs);
    let outputs = outputs.map(|(shape, dtype)| TensorIr::uninit(client.create_empty_handle(), shape, dtype));
    let inputs = inputs.map(FusionTensor::into_ir);
    let desc = CustomOpIr::new(name, &inputs, &outputs);
    let op = CustomOp::<R, I, O> { desc: desc.clone(), run: Arc::new(run) };
    let tensors = client.register(streams, OperationIr::Custom(desc), op);
    tensors.try_into().unwrap_or_else(|t: Vec<_>| unreachable!("{name}: {} outputs registered, not {O}", t.len()))
}
