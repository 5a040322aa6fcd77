//! SwiGLU, RoPE and AdamW kernels ([`super::elementwise`]): one unit per
//! output element; every tensor read through its strides (views and
//! CUDA's pitched rows need no copy).

use cubecl::prelude::*;

/// `σ(a)` in f32.
#[cube]
fn sigmoid(a: f32) -> f32 {
    1.0f32 / (1.0f32 + f32::exp(-a))
}

/// `h = silu(a) ⊙ u` over `[rows, m]`: `silu(a)` in f32, rounded to `F`
/// before the product (the composition's order).
#[cube(launch)]
pub(super) fn swiglu_forward_kernel<F: Float>(
    a: &Tensor<F>,
    u: &Tensor<F>,
    h: &mut Tensor<F>,
    #[define(F)] _dtype: StorageType,
) {
    let width = h.shape(1);
    if ABSOLUTE_POS >= h.shape(0) * width {
        terminate!();
    }
    let row = ABSOLUTE_POS / width;
    let col = ABSOLUTE_POS % width;
    let gate = f32::cast_from(a[row * a.stride(0) + col * a.stride(1)]);
    let up = u[row * u.stride(0) + col * u.stride(1)];
    h[row * h.stride(0) + col * h.stride(1)] = F::cast_from(gate * sigmoid(gate)) * up;
}

/// `du = dh ⊙ a σ(a)`, `da = dh ⊙ u ⊙ σ(a) (1 + a (1 − σ(a)))` over
/// `[rows, m]`, in f32, rounded to `F`.
#[cube(launch)]
pub(super) fn swiglu_backward_kernel<F: Float>(
    a: &Tensor<F>,
    u: &Tensor<F>,
    dh: &Tensor<F>,
    da: &mut Tensor<F>,
    du: &mut Tensor<F>,
    #[define(F)] _dtype: StorageType,
) {
    let width = da.shape(1);
    if ABSOLUTE_POS >= da.shape(0) * width {
        terminate!();
    }
    let row = ABSOLUTE_POS / width;
    let col = ABSOLUTE_POS % width;
    let gate = f32::cast_from(a[row * a.stride(0) + col * a.stride(1)]);
    let up = f32::cast_from(u[row * u.stride(0) + col * u.stride(1)]);
    let grad = f32::cast_from(dh[row * dh.stride(0) + col * dh.stride(1)]);
    let sig = sigmoid(gate);
    du[row * du.stride(0) + col * du.stride(1)] = F::cast_from(grad * gate * sig);
    da[row * da.stride(0) + col * da.stride(1)] = F::cast_from(grad * up * sig * (1.0f32 + gate * (1.0f32 - sig)));
}

/// RoPE over `x` `[b, heads, t, h]` into `y` (same shape): forward
/// `y = x ⊙ cos + R(x) ⊙ sin`, backward (`x` = `dy`)
/// `dx = dy ⊙ cos − R(dy ⊙ sin)`, `R(z)[c] = ∓z[partner(c)]`; the tables
/// `[1 or b, 1, t, h]`. The operations of the composition, in `F`.
#[cube(launch)]
pub(super) fn rope_kernel<F: Float>(
    x: &Tensor<F>,
    cos: &Tensor<F>,
    sin: &Tensor<F>,
    y: &mut Tensor<F>,
    #[comptime] interleaved: bool,
    #[comptime] forward: bool,
    #[define(F)] _dtype: StorageType,
) {
    if ABSOLUTE_POS >= y.len() {
        terminate!();
    }
    let heads = y.shape(1);
    let t = y.shape(2);
    let h = y.shape(3);
    let c = ABSOLUTE_POS % h;
    let position = (ABSOLUTE_POS / h) % t;
    let head = (ABSOLUTE_POS / (h * t)) % heads;
    let batch = ABSOLUTE_POS / (h * t * heads);
    // R(z)[c] = −z[c + 1] (even c), z[c − 1] (odd c) interleaved;
    // −z[c + h/2] (first half), z[c − h/2] (second half) otherwise.
    let mut partner = (c + h / 2) % h;
    let mut negated = c < h / 2;
    if interleaved {
        partner = c ^ 1;
        negated = (c & 1) == 0;
    }
    let mut table_row = batch;
    if cos.shape(0) == 1 {
        table_row = 0;
    }
    let x_at = batch * x.stride(0) + head * x.stride(1) + position * x.stride(2);
    let table_at = table_row * cos.stride(0) + position * cos.stride(2);
    let own = x[x_at + c * x.stride(3)] * cos[table_at + c * cos.stride(3)];
    // The backward rotates dy ⊙ sin: the partner's sine.
    let mut sine = c;
    if !forward {
        sine = partner;
    }
    let rotated = x[x_at + partner * x.stride(3)] * sin[table_at + sine * sin.stride(3)];
    // Forward adds R(x) ⊙ sin, backward subtracts R(dy ⊙ sin).
    let mut subtract = negated;
    if !forward {
        subtract = !negated;
    }
    if subtract {
        y[ABSOLUTE_POS] = own - rotated;
    } else {
        y[ABSOLUTE_POS] = own + rotated;
    }
}

/// One AdamW update (`super::super::adamw`'s formula) of `θ`, `m`, `v`
/// (f32) for the gradient `g` (any float dtype), into new tensors; the
/// constants as f32, each operation in the CPU kernel's order.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn adamw_kernel<G: Float>(
    theta: &Tensor<f32>,
    g: &Tensor<G>,
    m: &Tensor<f32>,
    v: &Tensor<f32>,
    theta_out: &mut Tensor<f32>,
    m_out: &mut Tensor<f32>,
    v_out: &mut Tensor<f32>,
    scale: f32,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    bias1: f32,
    bias2: f32,
    keep: f32,
    lr: f32,
    eps: f32,
    #[define(G)] _dtype: StorageType,
) {
    if ABSOLUTE_POS >= theta_out.len() {
        terminate!();
    }
    let i = ABSOLUTE_POS;
    let grad = f32::cast_from(g[i * g.stride(0)]) * scale;
    let m_new = m[i * m.stride(0)] * beta1 + grad * one_minus_beta1;
    let v_new = v[i * v.stride(0)] * beta2 + grad * grad * one_minus_beta2;
    let m_hat = m_new / bias1;
    let v_hat = v_new / bias2;
    theta_out[i] = theta[i * theta.stride(0)] * keep - m_hat / (f32::sqrt(v_hat) + eps) * lr;
    m_out[i] = m_new;
    v_out[i] = v_new;
}
