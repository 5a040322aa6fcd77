//! SwiGLU's gate, `h = silu(a) ⊙ u` with `silu(a) = a · σ(a)`, with its own
//! backward:
//!
//! ```text
//! du = dh ⊙ a σ(a)
//! da = dh ⊙ u ⊙ σ(a) (1 + a (1 − σ(a)))
//! ```
//!
//! in the activations' dtype, as the unfused composition computes. The node
//! keeps `a` and `u`; the unfused one keeps `σ(a)`, `silu(a)` too. On the CPU
//! (Flex, f32) forward and backward are one multi-threaded pass each
//! (`fused/cpu.rs`); on burn's GPU backends one CubeCL kernel each
//! (`fused/cube`).

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::activation::{sigmoid, silu};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};

use super::{cpu, return_on_autodiff};

/// The gate's inputs: `a = gate(x)`, `u = up(x)`, `[batch, seq, m]`.
#[derive(Debug, Clone)]
pub struct SwigluArgs<B: Backend> {
    /// `a`.
    pub gate: Tensor<B, 3>,
    /// `u`.
    pub up: Tensor<B, 3>,
}

/// `silu(a) ⊙ u`, with its own backward on the autodiff backends daa trains on.
pub fn swiglu<B: Backend>(gate: Tensor<B, 3>, up: Tensor<B, 3>) -> Tensor<B, 3> {
    let args = SwigluArgs { gate, up };
    if !super::enabled() {
        return unfused(args);
    }
    if !B::ad_enabled(&args.gate.device()) {
        // Inference (scoring, generation, a checkpointed block's first pass): the same kernels.
        return forward(args);
    }
    let args = return_on_autodiff!(SwigluArgs, args, node);
    unfused(args)
}

/// The composition autodiff differentiates op by op.
pub fn unfused<B: Backend>(a: SwigluArgs<B>) -> Tensor<B, 3> {
    silu(a.gate) * a.up
}

/// `(da, du)` for the output's gradient `dh` (module docs).
fn backward<B: Backend>(a: &SwigluArgs<B>, dh: Tensor<B, 3>) -> (Tensor<B, 3>, Tensor<B, 3>) {
    let shape = dh.dims();
    if let Some(tensors) = cpu::contiguous_all([&a.gate, &a.up, &dh]) {
        let [gate, up, dh] = tensors.each_ref().map(cpu::elements);
        let (da, du) = cpu::swiglu_backward(gate, up, dh);
        return (cpu::to_backend(cpu::tensor(da, shape)), cpu::to_backend(cpu::tensor(du, shape)));
    }
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    if let Some(done) = super::cube::elementwise::swiglu_backward(&a.gate, &a.up, &dh) {
        return done;
    }
    let sig = sigmoid(a.gate.clone());
    let du = dh.clone() * a.gate.clone() * sig.clone();
    let slope = (sig.clone().neg().add_scalar(1.0) * a.gate.clone()).add_scalar(1.0) * sig;
    (dh * a.up.clone() * slope, du)
}

#[derive(Debug)]
struct SwigluBackward;

impl<X: Backend> Backward<X, 2> for SwigluBackward {
    type State = SwigluArgs<X>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dh = Tensor::<X, 3>::from_primitive(TensorPrimitive::Float(grads.consume::<X>(&ops.node)));
        let (da, du) = backward(&ops.state, dh);
        for (parent, grad) in ops.parents.iter().zip([da, du]) {
            if let Some(parent) = parent {
                grads.register::<X>(parent.id, grad.into_primitive().tensor());
            }
        }
    }
}

fn node<X: Backend>(a: SwigluArgs<Autodiff<X>>) -> Tensor<Autodiff<X>, 3> {
    let [gate, up] = [a.gate, a.up].map(|t| t.into_primitive().tensor());
    let nodes = [gate.node.clone(), up.node.clone()];
    let inner = |p| Tensor::<X, 3>::from_primitive(TensorPrimitive::Float(p));
    let args = SwigluArgs { gate: inner(gate.primitive), up: inner(up.primitive) };
    let out = forward(args.clone()).into_primitive().tensor();
    let out = match SwigluBackward.prepare::<NoCheckpointing>(nodes).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(args, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// `silu(a) ⊙ u` on a backend without autodiff: the CPU kernel on Flex
/// (f32), the CubeCL kernel on burn's GPU backends, else the composition.
fn forward<X: Backend>(args: SwigluArgs<X>) -> Tensor<X, 3> {
    let shape = args.gate.dims();
    match cpu::contiguous_all([&args.gate, &args.up]) {
        Some([gate, up]) => {
            cpu::to_backend(cpu::tensor(cpu::swiglu_forward(cpu::elements(&gate), cpu::elements(&up)), shape))
        }
        None => on_gpu(&args).unwrap_or_else(|| unfused(args)),
    }
}

/// The forward through the CubeCL kernel on burn's GPU backends.
fn on_gpu<X: Backend>(args: &SwigluArgs<X>) -> Option<Tensor<X, 3>> {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    return super::cube::elementwise::swiglu_forward(&args.gate, &args.up);
    #[cfg(not(any(feature = "wgpu", feature = "cuda")))]
    {
        let _ = args;
        None
    }
}
