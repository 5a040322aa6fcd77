//! RoPE with its own backward. For `x` `[b, heads, t, h]` and the position
//! tables `cos`, `sin` (`[b or 1, 1, t, h]`, laid out for the pairing):
//!
//! ```text
//! y  = x ⊙ cos + R(x) ⊙ sin          R: each pair (p, q) ↦ (−q, p)
//! dx = dy ⊙ cos − R(dy ⊙ sin)        (Rᵀ = −R: a rotation by −θ)
//! ```
//!
//! The node keeps only the tables (which the model keeps anyway); the
//! unfused composition's backward runs through the halves' slices, the
//! negation and the concatenation. On the CPU (Flex, f32) forward and
//! backward are one multi-threaded pass each (`fused/cpu.rs`) reading `x`
//! where it lies (the model's head-split view, `[b, t, H, h]` in memory)
//! and writing the result in the same axis order, on burn's GPU
//! backends one CubeCL kernel each reading `x` through its strides
//! (`fused/cube`); both the same operations as the composition.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};

use super::{cpu, return_on_autodiff};

/// One rotation's inputs.
#[derive(Debug, Clone)]
pub struct RopeArgs<B: Backend> {
    /// `x`, `[b, heads, t, h]`.
    pub x: Tensor<B, 4>,
    /// `cos`, `[b or 1, 1, t, h]`.
    pub cos: Tensor<B, 4>,
    /// `sin`, `[b or 1, 1, t, h]`.
    pub sin: Tensor<B, 4>,
    /// Pairs are adjacent coordinates `(2j, 2j + 1)` (Cohere), else halves `(j, j + h/2)`.
    pub interleaved: bool,
}

/// `x ⊙ cos + R(x) ⊙ sin`, with its own backward on the autodiff backends daa trains on.
pub fn rope<B: Backend>(x: Tensor<B, 4>, cos: Tensor<B, 4>, sin: Tensor<B, 4>, interleaved: bool) -> Tensor<B, 4> {
    let args = RopeArgs { x, cos, sin, interleaved };
    if !super::enabled() {
        return unfused(args);
    }
    if !B::ad_enabled(&args.x.device()) {
        // Inference (scoring, generation, a checkpointed block's first pass): the same kernels.
        return one_pass(&args.x, &args.cos, &args.sin, interleaved, true).unwrap_or_else(|| unfused(args));
    }
    let args = return_on_autodiff!(RopeArgs, args, node);
    unfused(args)
}

/// `R(x)`: each pair `(p, q)` of the last axis to `(−q, p)`.
pub fn rotate<B: Backend>(x: Tensor<B, 4>, interleaved: bool) -> Tensor<B, 4> {
    let [b, heads, t, h] = x.dims();
    if interleaved {
        let pairs = x.reshape([b, heads, t, h / 2, 2]);
        let even = pairs.clone().narrow(4, 0, 1);
        let odd = pairs.narrow(4, 1, 1);
        Tensor::cat(vec![odd.neg(), even], 4).reshape([b, heads, t, h])
    } else {
        let first = x.clone().narrow(3, 0, h / 2);
        let second = x.narrow(3, h / 2, h / 2);
        Tensor::cat(vec![second.neg(), first], 3)
    }
}

/// `y = x ⊙ cos + rot(x) ⊙ sin` (`forward`) or `dx = dy ⊙ cos − rot(dy ⊙ sin)`
/// in one pass on the CPU (Flex, f32) or one CubeCL kernel on burn's GPU
/// backends, else `None`.
fn one_pass<B: Backend>(
    x: &Tensor<B, 4>,
    cos: &Tensor<B, 4>,
    sin: &Tensor<B, 4>,
    interleaved: bool,
    forward: bool,
) -> Option<Tensor<B, 4>> {
    // The kernels read tables `[1 or b, 1, t, h]` of `x`'s dtype, pairs whole.
    let shape @ [batch, _, t, h] = x.dims();
    let [rows, heads_axis, table_t, table_h] = cos.dims();
    let fits = cos.dims() == sin.dims() && heads_axis == 1 && table_t == t && table_h == h;
    if !fits || !(rows == 1 || rows == batch) || h % 2 != 0 || cos.dtype() != x.dtype() || sin.dtype() != x.dtype() {
        return None;
    }
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    if let Some(done) = super::cube::elementwise::rope(x, (cos, sin), interleaved, forward) {
        return Some(done);
    }
    let [x] = cpu::strided_all([x])?;
    let tables = cpu::contiguous_all([cos, sin])?;
    let x = cpu::View4::of(&x)?;
    let out_strides = x.dense_strides();
    let [cos, sin] = tables.each_ref().map(cpu::elements);
    Some(cpu::strided_tensor(cpu::rope(x, (cos, sin), interleaved, forward, out_strides), shape, out_strides))
}

/// The composition autodiff differentiates op by op.
pub fn unfused<B: Backend>(a: RopeArgs<B>) -> Tensor<B, 4> {
    let rotated = rotate(a.x.clone(), a.interleaved);
    a.x * a.cos + rotated * a.sin
}

#[derive(Debug)]
struct RopeBackward;

/// What the node keeps: the tables and the pairing.
#[derive(Debug, Clone)]
struct RopeState<X: Backend> {
    cos: Tensor<X, 4>,
    sin: Tensor<X, 4>,
    interleaved: bool,
}

impl<X: Backend> Backward<X, 1> for RopeBackward {
    type State = RopeState<X>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let state = ops.state;
        unary::<X, _>(ops.parents, ops.node, grads, |dy| {
            let dy = Tensor::<X, 4>::from_primitive(TensorPrimitive::Float(dy));
            let dx = match one_pass(&dy, &state.cos, &state.sin, state.interleaved, false) {
                Some(dx) => dx,
                None => dy.clone() * state.cos - rotate(dy * state.sin, state.interleaved),
            };
            dx.into_primitive().tensor()
        });
    }
}

fn node<X: Backend>(a: RopeArgs<Autodiff<X>>) -> Tensor<Autodiff<X>, 4> {
    let x = a.x.into_primitive().tensor();
    let nodes = [x.node.clone()];
    let args = RopeArgs {
        x: Tensor::<X, 4>::from_primitive(TensorPrimitive::Float(x.primitive)),
        cos: a.cos.inner(),
        sin: a.sin.inner(),
        interleaved: a.interleaved,
    };
    let state = RopeState { cos: args.cos.clone(), sin: args.sin.clone(), interleaved: args.interleaved };
    let out = match one_pass(&args.x, &args.cos, &args.sin, args.interleaved, true) {
        Some(out) => out,
        None => unfused(args),
    };
    let out = out.into_primitive().tensor();
    let out = match RopeBackward.prepare::<NoCheckpointing>(nodes).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(state, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}
