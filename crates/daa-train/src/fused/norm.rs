//! RMSNorm and LayerNorm (no bias) with their own backward.
//!
//! Over the last axis of `x` (`d` wide), statistics in f32 whatever `x`'s
//! dtype, the normalised value rounded back to it before the weight `w`:
//!
//! ```text
//! RMSNorm:    x̂ = x · r,          r = 1/√(mean(x²) + ε)
//! LayerNorm:  x̂ = (x − μ) · r,    r = 1/√(mean((x − μ)²) + ε),  μ = mean(x)
//! y = x̂ ⊙ w
//! ```
//!
//! Backward, for the output's gradient `dy` and `g = dy ⊙ w` (f32):
//!
//! ```text
//! dw = Σ_rows dy ⊙ x̂                                       (summed in f32)
//! RMSNorm:    dx = r · (g − x̂ · mean(g ⊙ x̂))
//! LayerNorm:  dx = r · (g − mean(g) − x̂ · mean(g ⊙ x̂))
//! ```
//!
//! The node keeps `x`, `w`, `r` and `μ` (`[rows, 1]` each) and recomputes
//! `x̂`; the unfused composition keeps about six `[rows, d]` intermediates.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Tensor, TensorPrimitive};

use super::return_on_autodiff;
use crate::model::NormKind;

/// One norm call's inputs.
#[derive(Debug, Clone)]
pub struct NormArgs<B: Backend> {
    /// `x`, `[batch, seq, d]`.
    pub x: Tensor<B, 3>,
    /// `w`, `[d]`.
    pub weight: Tensor<B, 1>,
    /// RMSNorm or LayerNorm.
    pub kind: NormKind,
    /// `ε`.
    pub eps: f64,
}

/// `x̂ ⊙ w` (module docs), with its own backward on the autodiff backends
/// daa trains on.
pub fn norm<B: Backend>(x: Tensor<B, 3>, weight: Tensor<B, 1>, kind: NormKind, eps: f64) -> Tensor<B, 3> {
    let args = NormArgs { x, weight, kind, eps };
    if !super::enabled() {
        return unfused(args);
    }
    if !B::ad_enabled(&args.x.device()) {
        // Inference (scoring, generation, a checkpointed block's first pass): the same kernels.
        return forward(&args.x, &args.weight, kind, eps).0;
    }
    let args = return_on_autodiff!(NormArgs, args, node);
    unfused(args)
}

/// The composition autodiff differentiates op by op (on the CPU also the
/// forward, with autodiff or without: the same operations).
pub fn unfused<B: Backend>(a: NormArgs<B>) -> Tensor<B, 3> {
    let dtype = FloatDType::from(a.x.dtype());
    let stats = Statistics::of(a.x, a.kind, a.eps);
    stats.normalised.cast(dtype) * a.weight.unsqueeze::<3>()
}

/// `x̂` (f32) and what makes it: `μ` (LayerNorm) and `r`, `[batch, seq, 1]`.
struct Statistics<B: Backend> {
    normalised: Tensor<B, 3>,
    mean: Option<Tensor<B, 3>>,
    rstd: Tensor<B, 3>,
}

impl<B: Backend> Statistics<B> {
    fn of(x: Tensor<B, 3>, kind: NormKind, eps: f64) -> Self {
        let x = x.cast(FloatDType::F32);
        let (centred, mean) = match kind {
            NormKind::Rms => (x, None),
            NormKind::LayerNormNoBias => {
                let mean = x.clone().mean_dim(2);
                (x - mean.clone(), Some(mean))
            }
        };
        let rstd = centred.clone().powi_scalar(2).mean_dim(2).add_scalar(eps).sqrt().recip();
        Self { normalised: centred * rstd.clone(), mean, rstd }
    }

    /// `x̂` again from `x` and the kept `μ`, `r`.
    fn normalised(x: Tensor<B, 3>, mean: Option<&Tensor<B, 3>>, rstd: &Tensor<B, 3>) -> Tensor<B, 3> {
        let x = x.cast(FloatDType::F32);
        let centred = match mean {
            Some(mean) => x - mean.clone(),
            None => x,
        };
        centred * rstd.clone()
    }
}

/// `(dx, dw)` for the output's gradient `dy` (module docs).
fn backward<B: Backend>(state: &NormState<B>, dy: Tensor<B, 3>) -> (Tensor<B, 3>, Tensor<B, 1>) {
    let [batch, seq, d] = state.x.dims();
    let dtype = FloatDType::from(state.x.dtype());
    let weight_dtype = FloatDType::from(state.weight.dtype());
    let dy = dy.cast(dtype);
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    if let Some(done) = super::cube::norm::backward((&state.x, &state.weight, &dy), state.mean.as_ref(), &state.rstd) {
        return done;
    }
    let normalised = Statistics::normalised(state.x.clone(), state.mean.as_ref(), &state.rstd);
    let dw = (dy.clone().cast(FloatDType::F32) * normalised.clone())
        .reshape([batch * seq, d])
        .sum_dim(0)
        .reshape([d])
        .cast(weight_dtype);
    let g = (dy * state.weight.clone().unsqueeze::<3>()).cast(FloatDType::F32);
    let projection = normalised.clone() * (g.clone() * normalised).mean_dim(2);
    let centred = match state.mean {
        Some(_) => g.clone() - g.mean_dim(2),
        None => g,
    };
    let dx = ((centred - projection) * state.rstd.clone()).cast(dtype);
    (dx, dw)
}

#[derive(Debug)]
struct NormBackward;

/// What the node keeps: `x`, `w`, `μ`, `r` (inner backend).
#[derive(Debug, Clone)]
struct NormState<X: Backend> {
    x: Tensor<X, 3>,
    weight: Tensor<X, 1>,
    mean: Option<Tensor<X, 3>>,
    rstd: Tensor<X, 3>,
}

impl<X: Backend> Backward<X, 2> for NormBackward {
    type State = NormState<X>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = Tensor::<X, 3>::from_primitive(TensorPrimitive::Float(grads.consume::<X>(&ops.node)));
        let (dx, dw) = backward(&ops.state, dy);
        let [x_parent, w_parent] = &ops.parents;
        if let Some(parent) = x_parent {
            grads.register::<X>(parent.id, dx.into_primitive().tensor());
        }
        if let Some(parent) = w_parent {
            grads.register::<X>(parent.id, dw.into_primitive().tensor());
        }
    }
}

fn node<X: Backend>(a: NormArgs<Autodiff<X>>) -> Tensor<Autodiff<X>, 3> {
    let x = a.x.into_primitive().tensor();
    let w = a.weight.into_primitive().tensor();
    let nodes = [x.node.clone(), w.node.clone()];
    let x = Tensor::<X, 3>::from_primitive(TensorPrimitive::Float(x.primitive));
    let weight = Tensor::<X, 1>::from_primitive(TensorPrimitive::Float(w.primitive));
    let (out, mean, rstd) = forward(&x, &weight, a.kind, a.eps);
    let out = match NormBackward.prepare::<NoCheckpointing>(nodes).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(NormState { x, weight, mean, rstd }, out.into_primitive().tensor()),
        OpsKind::UnTracked(prep) => prep.finish(out.into_primitive().tensor()),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// `(y, μ, r)` on the inner backend: the CubeCL kernel on burn's GPU
/// backends, else the tensor operations.
pub(crate) type NormOutputs<X> = (Tensor<X, 3>, Option<Tensor<X, 3>>, Tensor<X, 3>);

fn forward<X: Backend>(x: &Tensor<X, 3>, weight: &Tensor<X, 1>, kind: NormKind, eps: f64) -> NormOutputs<X> {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    if let Some(done) = super::cube::norm::forward(x, weight, kind == NormKind::LayerNormNoBias, eps) {
        return done;
    }
    let dtype = FloatDType::from(x.dtype());
    let stats = Statistics::of(x.clone(), kind, eps);
    (stats.normalised.cast(dtype) * weight.clone().unsqueeze::<3>(), stats.mean, stats.rstd)
}
