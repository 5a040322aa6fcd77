//! One AdamW update of one parameter in a single pass.
//!
//! For the f32 master `θ`, moments `m`, `v`, the gradient `g` (any float
//! dtype), the clipping factor `s`, step `t` and decay `λ` (0 for norms and
//! biases):
//!
//! ```text
//! ĝ = s · g
//! m ← β₁ m + (1 − β₁) ĝ
//! v ← β₂ v + (1 − β₂) ĝ²
//! θ ← θ (1 − η λ) − η · (m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + ε)
//! ```
//!
//! On the CPU (Flex) [`update`] reads `θ`, `m`, `v`, `g` once and writes
//! `θ`, `m`, `v` in place, split across rayon's threads, with the same f32
//! operations in the same order as [`unfused`] (thirteen tensor passes, each
//! with its own allocation): the results agree to the bit. On burn's GPU
//! backends one CubeCL kernel (`fused/cube`) computes the same operations
//! into new `θ`, `m`, `v`; other backends run [`unfused`].

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Tensor, TensorPrimitive};
use rayon::prelude::*;

use super::downcast;
use crate::optim::AdamWConfig;

/// The constants of one update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep {
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// η.
    pub lr: f64,
    /// λ of this parameter.
    pub decay: f64,
    /// `s`, the global-norm clipping factor.
    pub scale: f64,
    /// `t`, 1 at the first step.
    pub t: i32,
}

impl AdamWStep {
    /// The update of step `t` at rate `lr`, decay `decay`, clipping factor `scale`.
    pub fn new(config: &AdamWConfig, lr: f64, decay: f64, scale: f64, t: i32) -> Self {
        Self { beta1: config.beta1, beta2: config.beta2, eps: config.eps, lr, decay, scale, t }
    }
}

/// The updated `(θ, m, v)`; `θ`, `m`, `v` flat f32, `g` flat in any float dtype.
pub fn update<B: Backend>(
    theta: Tensor<B, 1>,
    g: Tensor<B, 1>,
    m: Tensor<B, 1>,
    v: Tensor<B, 1>,
    step: AdamWStep,
) -> (Tensor<B, 1>, Tensor<B, 1>, Tensor<B, 1>) {
    let g = g.cast(FloatDType::F32);
    if !super::enabled() {
        return unfused(theta, g, m, v, step);
    }
    match downcast::<_, [Tensor<Flex, 1>; 4]>([theta, g, m, v]) {
        Ok(on_flex) => {
            let out = update_on_flex(on_flex, step);
            downcast(out).unwrap_or_else(|_| unreachable!("B is Flex"))
        }
        Err([theta, g, m, v]) => on_gpu([&theta, &g, &m, &v], step).unwrap_or_else(|| unfused(theta, g, m, v, step)),
    }
}

/// The update through the CubeCL kernel on burn's GPU backends.
fn on_gpu<B: Backend>(
    tensors: [&Tensor<B, 1>; 4],
    step: AdamWStep,
) -> Option<(Tensor<B, 1>, Tensor<B, 1>, Tensor<B, 1>)> {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    return super::cube::elementwise::adamw(tensors, step);
    #[cfg(not(any(feature = "wgpu", feature = "cuda")))]
    {
        let _ = (tensors, step);
        None
    }
}

/// The same update as tensor operations (module docs).
pub fn unfused<B: Backend>(
    theta: Tensor<B, 1>,
    g: Tensor<B, 1>,
    m: Tensor<B, 1>,
    v: Tensor<B, 1>,
    s: AdamWStep,
) -> (Tensor<B, 1>, Tensor<B, 1>, Tensor<B, 1>) {
    let g = g.cast(FloatDType::F32).mul_scalar(s.scale);
    let m = m.mul_scalar(s.beta1) + g.clone().mul_scalar(1.0 - s.beta1);
    let v = v.mul_scalar(s.beta2) + g.powi_scalar(2).mul_scalar(1.0 - s.beta2);
    let m_hat = m.clone().div_scalar(1.0 - s.beta1.powi(s.t));
    let v_hat = v.clone().div_scalar(1.0 - s.beta2.powi(s.t));
    let theta = theta.mul_scalar(1.0 - s.lr * s.decay) - (m_hat / (v_hat.sqrt().add_scalar(s.eps))).mul_scalar(s.lr);
    (theta, m, v)
}

/// Elements per rayon task.
const CHUNK: usize = 1 << 14;

/// `t` as a contiguous f32 Flex tensor (a copy only when it is not one).
fn contiguous(t: Tensor<Flex, 1>) -> FlexTensor {
    let t = t.cast(FloatDType::F32).into_primitive().tensor();
    if t.is_contiguous() { t } else { t.to_contiguous() }
}

/// The tensor's own elements, writable (copied first when shared: copy on write).
fn elements_mut(t: &mut FlexTensor) -> &mut [f32] {
    let (start, end) = t.layout().contiguous_offsets().unwrap_or((0, t.layout().num_elements()));
    &mut t.storage_mut::<f32>()[start..end]
}

fn update_on_flex(
    [theta, g, m, v]: [Tensor<Flex, 1>; 4],
    s: AdamWStep,
) -> (Tensor<Flex, 1>, Tensor<Flex, 1>, Tensor<Flex, 1>) {
    let (mut theta, g, mut m, mut v) = (contiguous(theta), contiguous(g), contiguous(m), contiguous(v));
    // The scalars as the tensor operations convert them: to f32 first.
    let scale = s.scale as f32;
    let (beta1, one_minus_beta1) = (s.beta1 as f32, (1.0 - s.beta1) as f32);
    let (beta2, one_minus_beta2) = (s.beta2 as f32, (1.0 - s.beta2) as f32);
    let (bias1, bias2) = ((1.0 - s.beta1.powi(s.t)) as f32, (1.0 - s.beta2.powi(s.t)) as f32);
    let (keep, lr, eps) = ((1.0 - s.lr * s.decay) as f32, s.lr as f32, s.eps as f32);
    {
        let g = g.as_slice::<f32>().unwrap_or(&[]);
        let (theta, m, v) = (elements_mut(&mut theta), elements_mut(&mut m), elements_mut(&mut v));
        theta
            .par_chunks_mut(CHUNK)
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK))
            .for_each(|(((theta, m), v), g)| {
                for i in 0..g.len() {
                    let g = g[i] * scale;
                    m[i] = m[i] * beta1 + g * one_minus_beta1;
                    v[i] = v[i] * beta2 + g * g * one_minus_beta2;
                    let (m_hat, v_hat) = (m[i] / bias1, v[i] / bias2);
                    theta[i] = theta[i] * keep - m_hat / (v_hat.sqrt() + eps) * lr;
                }
            });
    }
    let tensor = |t| Tensor::from_primitive(TensorPrimitive::Float(t));
    (tensor(theta), tensor(m), tensor(v))
}
