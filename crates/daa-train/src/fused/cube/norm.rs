//! RMSNorm and LayerNorm (no bias) as CubeCL kernels: the forward and `dx`
//! one cube per row (`d` in strides of the cube's units, sums through shared
//! memory), `dw` as per-block column sums (a cube's units one column each,
//! over 64 rows) that the caller adds up. The formulas are
//! [`crate::fused::norm`]'s: statistics and sums in f32, `x̂` rounded to `x`'s
//! dtype before the weight, `g = dy ⊙ w` formed in `x`'s dtype.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Shape, Tensor};
use burn_cubecl::CubeRuntime;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::ops::reshape;
use cubecl::prelude::{CubeCount, CubeDim};

use super::custom_op::{FusedTensor, custom_op};
use super::norm_kernels::{backward_kernel, forward_kernel, weight_partials_kernel};
use super::{OnCube, as_rows, float, on_cube, tensor};

/// Units per cube of the row kernels (a power of two; WebGPU's default limit).
const CUBE_SIZE: u32 = 256;
/// Rows each cube of the `dw` kernel sums, at least (more where the blocks
/// would exceed a grid axis).
const ROWS_PER_BLOCK: usize = 64;
/// Cubes along one grid axis at most (WebGPU's limit).
const MAX_GRID: usize = 65_535;

/// One cube per row: `rows` cubes over a grid no axis of which exceeds [`MAX_GRID`].
fn row_grid(rows: usize) -> CubeCount {
    let x = rows.clamp(1, MAX_GRID);
    CubeCount::Static(x as u32, rows.div_ceil(x).max(1) as u32, 1)
}

/// The shape of `x` with its last axis 1 (a row statistic's).
fn stat_shape(x: &Shape) -> Shape {
    let mut dims = x.to_vec();
    *dims.last_mut().expect("x has axes") = 1;
    Shape::from(dims)
}

struct Forward {
    layer: bool,
    eps: f32,
}

impl OnCube<2, 3> for Forward {
    fn run<R: CubeRuntime>(&self, [x, weight]: [FusedTensor<R>; 2]) -> [FusedTensor<R>; 3] {
        let (shape, dtype) = (x.shape.clone(), x.dtype);
        let stats = stat_shape(&shape);
        let outputs = [(shape.clone(), dtype), (stats.clone(), DType::F32), (stats.clone(), DType::F32)];
        let (layer, eps) = (self.layer, self.eps);
        custom_op("daa_norm_forward", [x, weight], outputs, move |[x, weight]| {
            let x = as_rows(x);
            let weight = into_contiguous(weight);
            let rows = x.meta.shape()[0];
            let (client, device) = (x.client.clone(), x.device.clone());
            let empty =
                |shape: Shape, dtype| empty_device_contiguous_dtype(client.clone(), device.clone(), shape, dtype);
            let y = empty(x.meta.shape().clone(), x.dtype);
            let (mean, rstd) = (empty(Shape::new([rows]), DType::F32), empty(Shape::new([rows]), DType::F32));
            let dtypes = [x.dtype.into(), weight.dtype.into()];
            forward_kernel::launch::<R>(
                &client,
                row_grid(rows),
                CubeDim::new_1d(CUBE_SIZE),
                x.into_tensor_arg(),
                weight.into_tensor_arg(),
                y.clone().into_tensor_arg(),
                mean.clone().into_tensor_arg(),
                rstd.clone().into_tensor_arg(),
                eps,
                layer,
                CUBE_SIZE,
                dtypes,
            );
            [reshape(y, shape.clone()), reshape(mean, stats.clone()), reshape(rstd, stats.clone())]
        })
    }
}

struct Backward {
    layer: bool,
}

impl OnCube<5, 2> for Backward {
    fn run<R: CubeRuntime>(&self, inputs: [FusedTensor<R>; 5]) -> [FusedTensor<R>; 2] {
        let (shape, dtype) = (inputs[0].shape.clone(), inputs[0].dtype);
        let d = shape[shape.num_dims() - 1];
        let rows = shape.num_elements() / d.max(1);
        let per_block = ROWS_PER_BLOCK.max(rows.div_ceil(MAX_GRID));
        let blocks = rows.div_ceil(per_block).max(1);
        let outputs = [(shape.clone(), dtype), (Shape::new([blocks, d]), DType::F32)];
        let layer = self.layer;
        custom_op("daa_norm_backward", inputs, outputs, move |[x, weight, dy, mean, rstd]| {
            let (x, dy) = (as_rows(x), as_rows(dy));
            let weight = into_contiguous(weight);
            let [mean, rstd] = [mean, rstd].map(|t| reshape(into_contiguous(t), Shape::new([rows])));
            let (client, device) = (x.client.clone(), x.device.clone());
            let dx = empty_device_contiguous_dtype(client.clone(), device.clone(), x.meta.shape().clone(), x.dtype);
            let partial = empty_device_contiguous_dtype(client.clone(), device, Shape::new([blocks, d]), DType::F32);
            let x_dtype = x.dtype;
            backward_kernel::launch::<R>(
                &client,
                row_grid(rows),
                CubeDim::new_1d(CUBE_SIZE),
                x.clone().into_tensor_arg(),
                weight.clone().into_tensor_arg(),
                dy.clone().into_tensor_arg(),
                mean.clone().into_tensor_arg(),
                rstd.clone().into_tensor_arg(),
                dx.clone().into_tensor_arg(),
                layer,
                CUBE_SIZE,
                [x_dtype.into(), weight.dtype.into()],
            );
            let columns = d.div_ceil(CUBE_SIZE as usize).max(1);
            weight_partials_kernel::launch::<R>(
                &client,
                CubeCount::Static(columns as u32, blocks as u32, 1),
                CubeDim::new_1d(CUBE_SIZE),
                x.into_tensor_arg(),
                dy.into_tensor_arg(),
                mean.into_tensor_arg(),
                rstd.into_tensor_arg(),
                partial.clone().into_tensor_arg(),
                layer,
                per_block as u32,
                x_dtype.into(),
            );
            [reshape(dx, shape.clone()), partial]
        })
    }
}

/// `(y, μ, r)` (`μ`, `r` `[batch, seq, 1]`, f32; `μ` for LayerNorm only)
/// through [`forward_kernel`] when `X` is burn's `Wgpu` or `Cuda`.
pub(crate) fn forward<X: Backend>(
    x: &Tensor<X, 3>,
    weight: &Tensor<X, 1>,
    layer: bool,
    eps: f64,
) -> Option<crate::fused::norm::NormOutputs<X>> {
    let op = Forward { layer, eps: eps as f32 };
    let [y, mean, rstd] = on_cube::<X, 2, 3>(&op, [float(x), float(weight)]).ok()?;
    Some((tensor(y), layer.then(|| tensor(mean)), tensor(rstd)))
}

/// `(dx, dw)` through [`backward_kernel`] and [`weight_partials_kernel`]
/// when `X` is burn's `Wgpu` or `Cuda`; `dy` in `x`'s dtype, `dw` in `w`'s.
pub(crate) fn backward<X: Backend>(
    (x, weight, dy): (&Tensor<X, 3>, &Tensor<X, 1>, &Tensor<X, 3>),
    mean: Option<&Tensor<X, 3>>,
    rstd: &Tensor<X, 3>,
) -> Option<(Tensor<X, 3>, Tensor<X, 1>)> {
    let op = Backward { layer: mean.is_some() };
    // RMSNorm's kernel reads no mean: `r` stands in for it.
    let inputs = [float(x), float(weight), float(dy), float(mean.unwrap_or(rstd)), float(rstd)];
    let [dx, partial] = on_cube::<X, 5, 2>(&op, inputs).ok()?;
    let d = x.dims()[2];
    let dw = tensor::<X, 2>(partial).sum_dim(0).reshape([d]).cast(burn::tensor::FloatDType::from(weight.dtype()));
    Some((tensor(dx), dw))
}
