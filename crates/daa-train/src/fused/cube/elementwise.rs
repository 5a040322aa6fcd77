//! SwiGLU, RoPE and AdamW on burn's GPU backends through
//! [`super::elementwise_kernels`]: one kernel per forward, backward or
//! update, where the tensor operations run several (RoPE: slices, a
//! negation and a concatenation per call; AdamW: thirteen passes).

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Shape, Tensor};
use burn_cubecl::CubeRuntime;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::ops::reshape;
use burn_cubecl::tensor::CubeTensor;
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::CubeDim;

use super::custom_op::{FusedTensor, custom_op};
use super::elementwise_kernels::{adamw_kernel, rope_kernel, swiglu_backward_kernel, swiglu_forward_kernel};
use super::{OnCube, as_rows, float, on_cube, tensor};
use crate::fused::adamw::AdamWStep;

/// A new contiguous tensor like `t` (its shape, or `shape`), of `dtype`.
fn empty_like<R: CubeRuntime>(t: &CubeTensor<R>, shape: Shape, dtype: DType) -> CubeTensor<R> {
    empty_device_contiguous_dtype(t.client.clone(), t.device.clone(), shape, dtype)
}

/// `(cube_count, cube_dim)` for one unit per element of `t`.
fn per_element<R: CubeRuntime>(t: &CubeTensor<R>) -> (cubecl::prelude::CubeCount, CubeDim) {
    let n = t.meta.shape().num_elements().max(1);
    let cube_dim = CubeDim::new(&t.client, n);
    (calculate_cube_count_elemwise(&t.client, n, cube_dim), cube_dim)
}

struct SwigluForward;

impl OnCube<2, 1> for SwigluForward {
    fn run<R: CubeRuntime>(&self, inputs: [FusedTensor<R>; 2]) -> [FusedTensor<R>; 1] {
        let (shape, dtype) = (inputs[0].shape.clone(), inputs[0].dtype);
        custom_op("daa_swiglu_forward", inputs, [(shape.clone(), dtype)], move |[a, u]| {
            let (a, u) = (as_rows(a), as_rows(u));
            let h = empty_like(&a, a.meta.shape().clone(), a.dtype);
            let (count, dim) = per_element(&h);
            let dtype = a.dtype.into();
            swiglu_forward_kernel::launch::<R>(
                &h.client.clone(),
                count,
                dim,
                a.into_tensor_arg(),
                u.into_tensor_arg(),
                h.clone().into_tensor_arg(),
                dtype,
            );
            [reshape(h, shape.clone())]
        })
    }
}

struct SwigluBackward;

impl OnCube<3, 2> for SwigluBackward {
    fn run<R: CubeRuntime>(&self, inputs: [FusedTensor<R>; 3]) -> [FusedTensor<R>; 2] {
        let (shape, dtype) = (inputs[0].shape.clone(), inputs[0].dtype);
        let outputs = [(shape.clone(), dtype), (shape.clone(), dtype)];
        custom_op("daa_swiglu_backward", inputs, outputs, move |[a, u, dh]| {
            let (a, u, dh) = (as_rows(a), as_rows(u), as_rows(dh));
            let da = empty_like(&a, a.meta.shape().clone(), a.dtype);
            let du = empty_like(&a, a.meta.shape().clone(), a.dtype);
            let (count, dim) = per_element(&da);
            let dtype = a.dtype.into();
            swiglu_backward_kernel::launch::<R>(
                &da.client.clone(),
                count,
                dim,
                a.into_tensor_arg(),
                u.into_tensor_arg(),
                dh.into_tensor_arg(),
                da.clone().into_tensor_arg(),
                du.clone().into_tensor_arg(),
                dtype,
            );
            [reshape(da, shape.clone()), reshape(du, shape.clone())]
        })
    }
}

/// `silu(a) ⊙ u` when `X` is burn's `Wgpu` or `Cuda`.
pub(crate) fn swiglu_forward<X: Backend>(a: &Tensor<X, 3>, u: &Tensor<X, 3>) -> Option<Tensor<X, 3>> {
    // One dtype for the kernel: it reads every tensor as `a`'s.
    if u.dtype() != a.dtype() {
        return None;
    }
    let [h] = on_cube::<X, 2, 1>(&SwigluForward, [float(a), float(u)]).ok()?;
    Some(tensor(h))
}

/// `(da, du)` when `X` is burn's `Wgpu` or `Cuda`.
pub(crate) fn swiglu_backward<X: Backend>(
    a: &Tensor<X, 3>,
    u: &Tensor<X, 3>,
    dh: &Tensor<X, 3>,
) -> Option<(Tensor<X, 3>, Tensor<X, 3>)> {
    if u.dtype() != a.dtype() || dh.dtype() != a.dtype() {
        return None;
    }
    let [da, du] = on_cube::<X, 3, 2>(&SwigluBackward, [float(a), float(u), float(dh)]).ok()?;
    Some((tensor(da), tensor(du)))
}

struct Rope {
    interleaved: bool,
    forward: bool,
}

impl OnCube<3, 1> for Rope {
    fn run<R: CubeRuntime>(&self, inputs: [FusedTensor<R>; 3]) -> [FusedTensor<R>; 1] {
        let (shape, dtype) = (inputs[0].shape.clone(), inputs[0].dtype);
        let (interleaved, forward) = (self.interleaved, self.forward);
        custom_op("daa_rope", inputs, [(shape.clone(), dtype)], move |[x, cos, sin]| {
            let y = empty_like(&x, shape.clone(), x.dtype);
            let (count, dim) = per_element(&y);
            let dtype = x.dtype.into();
            rope_kernel::launch::<R>(
                &y.client.clone(),
                count,
                dim,
                x.into_tensor_arg(),
                cos.into_tensor_arg(),
                sin.into_tensor_arg(),
                y.clone().into_tensor_arg(),
                interleaved,
                forward,
                dtype,
            );
            [y]
        })
    }
}

/// RoPE's forward (`y`) or backward (`dx`, with `x` = `dy`) when `X` is
/// burn's `Wgpu` or `Cuda`; the caller checked the tables: `[1 or b, 1, t, h]`
/// of `x`'s dtype, `h` even.
pub(crate) fn rope<X: Backend>(
    x: &Tensor<X, 4>,
    (cos, sin): (&Tensor<X, 4>, &Tensor<X, 4>),
    interleaved: bool,
    forward: bool,
) -> Option<Tensor<X, 4>> {
    let op = Rope { interleaved, forward };
    let [y] = on_cube::<X, 3, 1>(&op, [float(x), float(cos), float(sin)]).ok()?;
    Some(tensor(y))
}

struct AdamW(AdamWStep);

impl OnCube<4, 3> for AdamW {
    fn run<R: CubeRuntime>(&self, inputs: [FusedTensor<R>; 4]) -> [FusedTensor<R>; 3] {
        let s = self.0;
        let shape = inputs[0].shape.clone();
        let outputs = [(shape.clone(), DType::F32), (shape.clone(), DType::F32), (shape, DType::F32)];
        custom_op("daa_adamw", inputs, outputs, move |[theta, g, m, v]| {
            let [theta, g, m, v] = [theta, g, m, v].map(into_contiguous);
            let new = || empty_like(&theta, theta.meta.shape().clone(), DType::F32);
            let (theta_out, m_out, v_out) = (new(), new(), new());
            let (count, dim) = per_element(&theta_out);
            let dtype = g.dtype.into();
            // The scalars as the tensor operations convert them: to f32 first.
            adamw_kernel::launch::<R>(
                &theta_out.client.clone(),
                count,
                dim,
                theta.into_tensor_arg(),
                g.into_tensor_arg(),
                m.into_tensor_arg(),
                v.into_tensor_arg(),
                theta_out.clone().into_tensor_arg(),
                m_out.clone().into_tensor_arg(),
                v_out.clone().into_tensor_arg(),
                s.scale as f32,
                s.beta1 as f32,
                (1.0 - s.beta1) as f32,
                s.beta2 as f32,
                (1.0 - s.beta2) as f32,
                (1.0 - s.beta1.powi(s.t)) as f32,
                (1.0 - s.beta2.powi(s.t)) as f32,
                (1.0 - s.lr * s.decay) as f32,
                s.lr as f32,
                s.eps as f32,
                dtype,
            );
            [theta_out, m_out, v_out]
        })
    }
}

/// The updated `(θ, m, v)` when `X` is burn's `Wgpu` or `Cuda` and `θ`,
/// `m`, `v` are f32.
pub(crate) fn adamw<X: Backend>(
    [theta, g, m, v]: [&Tensor<X, 1>; 4],
    step: AdamWStep,
) -> Option<(Tensor<X, 1>, Tensor<X, 1>, Tensor<X, 1>)> {
    if [theta, m, v].iter().any(|t| t.dtype() != DType::F32) {
        return None;
    }
    let [theta, m, v] = on_cube::<X, 4, 3>(&AdamW(step), [float(theta), float(g), float(m), float(v)]).ok()?;
    Some((tensor(theta), tensor(m), tensor(v)))
}
