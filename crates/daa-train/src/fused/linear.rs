//! A linear layer `y = x W (+ b)` with its own backward. For `x` `[…, i]`
//! taken as its `r` rows `X` `[r, i]` and `W` `[i, o]` (burn's layout):
//!
//! ```text
//! Y = X W,   dX = dY Wᵀ,   dW = Xᵀ dY,   db = Σ_rows dY
//! ```
//!
//! Each is one product over all `r` rows. burn's linear (its default, which
//! Flex uses) broadcasts `W` over the leading axes instead: one product per
//! sequence forward, and for `dW` one `[i, o]` product per sequence, summed
//! afterwards — `b` of them for a batch of `b` sequences, each with an
//! inner size of one sequence's length. On the CPU (Flex, f32) the products
//! are `fused/cpu_gemm.rs`'s, which write their output where it stays.
//! The node keeps `X` only when `W` takes a gradient and `W` only when `X`
//! does (a frozen base layer under LoRA keeps no activations); the bias,
//! when there is one, is added by burn's addition (its gradient is burn's
//! sum).
//!
//! The products sum in `gemm`'s order, which depends on the sizes: `Y`
//! agrees with burn's linear within rounding, `dW` within the rounding of
//! a sum over `r` rows (`tests/integration/fused.rs`).

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorPrimitive};

use super::cpu_gemm::{self, Operand};
use super::{cpu, return_on_autodiff};

/// One linear layer's inputs, `x` as its rows.
#[derive(Debug, Clone)]
pub struct LinearArgs<B: Backend> {
    /// `X` `[r, i]`.
    pub x: Tensor<B, 2>,
    /// `W` `[i, o]`.
    pub weight: Tensor<B, 2>,
}

/// `x W (+ b)` for `x` `[…, i]`, `W` `[i, o]`, `b` `[o]`: `[…, o]`, with
/// its own backward on the autodiff backends daa trains on (module docs).
pub fn linear<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, D> {
    // The node on the autodiff backends daa trains on; without autodiff the
    // CPU product on Flex (f32). Anything else (ndarray, the browser demo's;
    // inference on a GPU) keeps burn's linear as it is.
    let trains = B::ad_enabled(&x.device()) && super::has_fused_nodes::<B>();
    let on_cpu = !B::ad_enabled(&x.device()) && cpu::is_flex::<B>() && x.dtype() == DType::F32;
    if !super::enabled() || !(trains || on_cpu) {
        return burn::tensor::module::linear(x, weight, bias);
    }
    let dims = x.dims();
    let [i, o] = weight.dims();
    let rows = dims[..D - 1].iter().product::<usize>();
    let y = on_rows(LinearArgs { x: x.reshape([rows, i]), weight });
    let mut out = dims;
    out[D - 1] = o;
    let y = y.reshape(out);
    match bias {
        Some(bias) => y + bias.unsqueeze(),
        None => y,
    }
}

/// `X W`: the node on the autodiff backends daa trains on, the product
/// without autodiff.
fn on_rows<B: Backend>(args: LinearArgs<B>) -> Tensor<B, 2> {
    if !B::ad_enabled(&args.x.device()) {
        return product(&args.x, &args.weight);
    }
    let args = return_on_autodiff!(LinearArgs, args, node);
    unfused(args)
}

/// The composition autodiff differentiates op by op: `X W`.
pub fn unfused<B: Backend>(a: LinearArgs<B>) -> Tensor<B, 2> {
    a.x.matmul(a.weight)
}

/// `a b` of two matrices: `fused/cpu_gemm.rs` on Flex (f32), else burn's product.
fn product<B: Backend>(a: &Tensor<B, 2>, b: &Tensor<B, 2>) -> Tensor<B, 2> {
    matmul(a, false, b, false)
}

/// `op(a) op(b)`, `op` the transpose where asked (`ta`, `tb`): on Flex
/// (f32) `fused/cpu_gemm.rs`'s product reading the transpose in place
/// (unless the fused operations are off), else burn's product of the
/// transposed views.
pub(crate) fn matmul<B: Backend>(a: &Tensor<B, 2>, ta: bool, b: &Tensor<B, 2>, tb: bool) -> Tensor<B, 2> {
    let (sa, sb) = (a.dims(), b.dims());
    if let Some([fa, fb]) = super::enabled().then(|| cpu::contiguous_all([a, b])).flatten() {
        let oa = Operand::row_major(cpu::elements(&fa), sa[0], sa[1]);
        let ob = Operand::row_major(cpu::elements(&fb), sb[0], sb[1]);
        let (oa, ob) = (if ta { oa.t() } else { oa }, if tb { ob.t() } else { ob });
        let shape = [oa.rows, ob.cols];
        return cpu::to_backend(cpu::tensor(cpu_gemm::matmul(oa, ob), shape));
    }
    let a = if ta { a.clone().transpose() } else { a.clone() };
    let b = if tb { b.clone().transpose() } else { b.clone() };
    a.matmul(b)
}

#[derive(Debug)]
struct LinearBackward;

/// What the node keeps: `W` when `X` takes a gradient, `X` when `W` does.
#[derive(Debug, Clone)]
struct LinearState<X: Backend> {
    x: Option<Tensor<X, 2>>,
    weight: Option<Tensor<X, 2>>,
}

impl<X: Backend> Backward<X, 2> for LinearBackward {
    type State = LinearState<X>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = Tensor::<X, 2>::from_primitive(TensorPrimitive::Float(grads.consume::<X>(&ops.node)));
        let LinearState { x, weight } = &ops.state;
        let [node_x, node_w] = &ops.parents;
        if let (Some(node), Some(weight)) = (node_x, weight) {
            // dX = dY Wᵀ
            let dx = matmul(&dy, false, weight, true);
            grads.register::<X>(node.id, dx.into_primitive().tensor());
        }
        if let (Some(node), Some(x)) = (node_w, x) {
            // dW = Xᵀ dY
            let dw = matmul(x, true, &dy, false);
            grads.register::<X>(node.id, dw.into_primitive().tensor());
        }
    }
}

/// The autodiff node on `Autodiff<X>`: `X W` on `X`, [`LinearBackward`] backward.
fn node<X: Backend>(a: LinearArgs<Autodiff<X>>) -> Tensor<Autodiff<X>, 2> {
    let [x, weight] = [a.x, a.weight].map(|t| t.into_primitive().tensor());
    let (x_tracked, w_tracked) = (!x.node.requirement.is_none(), !weight.node.requirement.is_none());
    let nodes = [x.node.clone(), weight.node.clone()];
    let inner = |p| Tensor::<X, 2>::from_primitive(TensorPrimitive::Float(p));
    let args = LinearArgs { x: inner(x.primitive), weight: inner(weight.primitive) };
    let out = product(&args.x, &args.weight).into_primitive().tensor();
    let state = LinearState { x: w_tracked.then_some(args.x), weight: x_tracked.then_some(args.weight) };
    let out = match LinearBackward.prepare::<NoCheckpointing>(nodes).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(state, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}
