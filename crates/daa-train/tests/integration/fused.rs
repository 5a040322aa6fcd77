//! The fused operations (`daa_train::fused`) against the unfused burn
//! compositions they replace, on the CPU (Flex) and on wgpu (lavapipe in
//! CI): values and the gradients of every input, f32 and bf16, odd sizes
//! (1, 63, 64, 65 queries; head widths and vocabularies that are not powers
//! of two), grouped heads, causal masks with left padding and sliding
//! windows, tiles of queries that split the sequence unevenly, a key/value
//! cache (more keys than queries), huge scores (attention: both against the
//! unfused composition in f64); plus one finite-difference
//! check of the fused attention's gradient, and the forward without
//! autodiff (inference) against the node's.

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Bool, FloatDType, Tensor, TensorData};
use daa_train::backend::{BackendTask, ComputeBackend, CpuBackend, with_compute_backend};
use daa_train::fused::attention::{self, AttentionArgs};
use daa_train::fused::{self, linear, norm, rope, swiglu};
use daa_train::model::NormKind;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// f32 in another order of summation (the unfused softmax sums every key,
/// −∞ ones included; tiles sum their own).
const F32_TOLERANCE: f32 = 2e-4;
/// bf16 against bf16 in another order: a few roundings of 2⁻⁸.
const BF16_TOLERANCE: f32 = 6e-2;

/// Deterministic values in `[−scale, scale]`.
fn values(n: usize, seed: f32, scale: f32) -> Vec<f32> {
    (0..n).map(|i| ((i as f32 * 0.7311 + seed).sin() * 43.758).fract() * scale).collect()
}

fn tensor<B: Backend, const D: usize>(
    shape: [usize; D],
    seed: f32,
    scale: f32,
    dtype: FloatDType,
    device: &B::Device,
) -> Tensor<B, D> {
    let n = shape.iter().product();
    Tensor::<B, D>::from_data(TensorData::new(values(n, seed, scale), shape), device).cast(dtype)
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.cast(FloatDType::F32).into_data().to_vec::<f32>().expect("f32 data")
}

/// `max |a − b| / max(1, max |b|)`, with the position of the largest difference.
fn relative_difference(a: &[f32], b: &[f32]) -> (f32, usize) {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    let mut worst = (0f32, 0);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(x.is_finite() && y.is_finite(), "non-finite value at {i}: {x} vs {y}");
        let d = (x - y).abs() / scale;
        if d > worst.0 {
            worst = (d, i);
        }
    }
    worst
}

fn assert_close(what: &str, fused: &[f32], unfused: &[f32], tolerance: f32) {
    let (d, i) = relative_difference(fused, unfused);
    assert!(
        d <= tolerance,
        "{what}: fused and unfused differ by {d:e} (relative) at {i}: {} vs {}; tolerance {tolerance:e}",
        fused[i],
        unfused[i]
    );
}

/// `true` where query `q` (column `past + q` of `keys`) must not see key
/// `k`, `[rows, 1, t, keys]`, as the model builds it: the future, keys
/// `window` or more behind, left padding (a padding query sees itself).
fn mask(rows: usize, t: usize, keys: usize, pads: &[usize], window: Option<usize>) -> Vec<bool> {
    let past = keys - t;
    let mut hidden = Vec::with_capacity(rows * t * keys);
    for r in 0..rows {
        let pad = pads.get(r).copied().unwrap_or(0);
        for q in 0..t {
            let column = past + q;
            for k in 0..keys {
                let future = k > column;
                let far = window.is_some_and(|w| column - k.min(column) >= w && k <= column);
                let padding = k < pad && k != column;
                hidden.push(future || far || padding);
            }
        }
    }
    hidden
}

/// One attention case.
#[derive(Debug, Clone, Copy)]
struct AttentionCase {
    b: usize,
    heads: usize,
    kv: usize,
    t: usize,
    keys: usize,
    h: usize,
    tile: usize,
    padded: bool,
    window: Option<usize>,
    scale: f32,
    /// `q`, `k`, `v` as the model's head-split views: `[b, t, heads, h]`
    /// tensors with their axes 1 and 2 swapped (strided, not copied).
    split: bool,
}

/// A `[b, heads, rows, h]` leaf, or with `split` a `[b, rows, heads, h]`
/// leaf, and the `[b, heads, rows, h]` view of it attention takes.
fn heads_input<B: AutodiffBackend>(
    [b, heads, rows, h]: [usize; 4],
    split: bool,
    (seed, scale): (f32, f32),
    dtype: FloatDType,
    device: &B::Device,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    if split {
        let leaf = tensor::<B, 4>([b, rows, heads, h], seed, scale, dtype, device).require_grad();
        (leaf.clone(), leaf.swap_dims(1, 2))
    } else {
        let leaf = tensor::<B, 4>([b, heads, rows, h], seed, scale, dtype, device).require_grad();
        (leaf.clone(), leaf)
    }
}

/// The output and `(dq, dk, dv)` of `Σ out ⊙ R` (`R` fixed), fused or not.
fn attention_run<B: AutodiffBackend>(
    c: AttentionCase,
    dtype: FloatDType,
    fused_op: bool,
    device: &B::Device,
) -> [Vec<f32>; 4] {
    let (q_leaf, q) = heads_input::<B>([c.b, c.heads, c.t, c.h], c.split, (0.3, c.scale), dtype, device);
    let (k_leaf, k) = heads_input::<B>([c.b, c.kv, c.keys, c.h], c.split, (1.7, c.scale), dtype, device);
    let (v_leaf, v) = heads_input::<B>([c.b, c.kv, c.keys, c.h], c.split, (2.9, 1.0), dtype, device);
    let pads: Vec<usize> = if c.padded { (0..c.b).map(|r| (r * 3) % c.keys.max(1)).collect() } else { vec![] };
    let rows = if c.padded { c.b } else { 1 };
    let hidden = (c.padded || c.window.is_some() || c.t > 1).then(|| {
        Tensor::<B, 4, Bool>::from_data(
            TensorData::new(mask(rows, c.t, c.keys, &pads, c.window), [rows, 1, c.t, c.keys]),
            device,
        )
    });
    let args = AttentionArgs {
        q: q.clone(),
        k: k.clone(),
        v: v.clone(),
        hidden,
        scale: 1.0 / (c.h as f64).sqrt(),
        tile_rows: c.tile,
    };
    let out = if fused_op { attention::attention_with(args) } else { attention::unfused(args) };
    let weights = tensor::<B, 4>([c.b, c.heads, c.t, c.h], 4.1, 1.0, dtype, device);
    let grads = (out.clone().cast(FloatDType::F32) * weights.cast(FloatDType::F32)).sum().backward();
    let grad = |t: &Tensor<B, 4>| host(t.grad(&grads).expect("a gradient"));
    // With `split`, the heads merged back as the model does (a view when
    // the output comes in `[b, t, heads, h]` order).
    let out = if c.split {
        out.swap_dims(1, 2).reshape([c.b, c.t, c.heads * c.h]).reshape([c.b, c.t, c.heads, c.h])
    } else {
        out
    };
    [host(out), grad(&q_leaf), grad(&k_leaf), grad(&v_leaf)]
}

/// Fused and unfused on `B` in `dtype`, each against the unfused composition
/// in f64 on the CPU: the fused operation's error may not exceed the
/// tolerance plus twice the unfused one's (a saturated softmax's gradient is
/// rounding noise in any order of summation: there the unfused error sets
/// the bar).
fn check_attention<B: AutodiffBackend>(name: &str, c: AttentionCase, dtype: FloatDType, device: &B::Device) {
    let tolerance = if dtype == FloatDType::F32 { F32_TOLERANCE } else { BF16_TOLERANCE };
    let exact = attention_run::<CpuBackend>(c, FloatDType::F64, false, &Default::default());
    let fused_run = attention_run::<B>(c, dtype, true, device);
    let unfused_run = attention_run::<B>(c, dtype, false, device);
    for (k, what) in ["output", "dq", "dk", "dv"].iter().enumerate() {
        let (fused_error, at) = relative_difference(&fused_run[k], &exact[k]);
        let (unfused_error, _) = relative_difference(&unfused_run[k], &exact[k]);
        assert!(
            fused_error <= tolerance + 2.0 * unfused_error,
            "{name} {c:?} {dtype:?}: {what}: the fused operation is {fused_error:e} from f64 (at {at}: {} vs {}), the \
             unfused {unfused_error:e}; tolerance {tolerance:e}",
            fused_run[k][at],
            exact[k][at]
        );
    }
}

/// Every case on backend `B`.
struct FusedChecks;

impl BackendTask for FusedChecks {
    type Output = ();
    type Error = Error;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<(), Error> {
        assert!(fused::has_fused_nodes::<B>(), "{} builds no fused nodes", B::name(&device));
        let base = AttentionCase {
            b: 2,
            heads: 4,
            kv: 2,
            t: 5,
            keys: 5,
            h: 8,
            tile: 64,
            padded: false,
            window: None,
            scale: 1.0,
            split: false,
        };
        let cases = [
            ("causal, grouped heads", base),
            ("one query", AttentionCase { t: 1, keys: 1, ..base }),
            ("63 queries in tiles of 16", AttentionCase { t: 63, keys: 63, tile: 16, ..base }),
            ("64 queries in tiles of 16", AttentionCase { t: 64, keys: 64, tile: 16, ..base }),
            ("65 queries in tiles of 64", AttentionCase { t: 65, keys: 65, tile: 64, ..base }),
            ("left padding, tiles of 3", AttentionCase { t: 11, keys: 11, tile: 3, padded: true, ..base }),
            ("sliding window 4, tiles of 5", AttentionCase { t: 17, keys: 17, tile: 5, window: Some(4), ..base }),
            ("cache: 3 queries after 9 keys", AttentionCase { t: 3, keys: 12, tile: 2, padded: true, ..base }),
            ("one new token after a cache", AttentionCase { t: 1, keys: 9, ..base }),
            ("3 query heads per key head, width 6", AttentionCase { heads: 3, kv: 1, h: 6, t: 9, keys: 9, ..base }),
            ("no grouping, one row", AttentionCase { b: 1, heads: 2, kv: 2, t: 7, keys: 7, tile: 4, ..base }),
            ("huge scores", AttentionCase { t: 13, keys: 13, tile: 4, scale: 30.0, ..base }),
            ("head-split views, 65 queries", AttentionCase { t: 65, keys: 65, tile: 16, split: true, ..base }),
            (
                "head-split views, padding, a cache",
                AttentionCase { t: 9, keys: 12, tile: 4, padded: true, split: true, ..base },
            ),
        ];
        for (name, c) in cases {
            check_attention::<B>(name, c, FloatDType::F32, &device);
        }
        if B::supports_dtype(&device, burn::tensor::DType::BF16) {
            for (name, c) in [cases[0], cases[2], cases[5], cases[7]] {
                check_attention::<B>(name, c, FloatDType::BF16, &device);
            }
        } else {
            println!("skipped: {}: no bf16 on this device", B::name(&device));
        }
        for dtype in [FloatDType::F32, FloatDType::BF16] {
            if dtype == FloatDType::BF16 && !B::supports_dtype(&device, burn::tensor::DType::BF16) {
                continue;
            }
            for kind in [NormKind::Rms, NormKind::LayerNormNoBias] {
                // Rows of 1 to 4 097; widths under, at and over a cube's 256 units.
                for shape in [[2, 3, 5], [1, 1, 1], [3, 2, 67], [1, 65, 300], [2, 32, 256], [1, 4097, 3]] {
                    check_norm::<B>(kind, shape, dtype, &device);
                }
            }
            for shape in [[2, 3, 5], [1, 1, 1], [3, 4, 67]] {
                check_swiglu::<B>(shape, dtype, &device);
            }
            for (interleaved, split) in [(false, false), (true, false), (false, true), (true, true)] {
                check_rope::<B>(interleaved, split, dtype, &device);
            }
            // Rows 1 to 4 097 (a batch of 65 × 63 among them), widths 1, 3, 67,
            // 300 on the CPU; two of them on a GPU (burn's products there, each
            // new shape tuned and compiled: minutes on lavapipe).
            let shapes = [([2, 63, 67], 3), ([1, 64, 300], 65), ([1, 1, 1], 1), ([65, 63, 3], 67), ([1, 4097, 5], 300)];
            let gpu = fused::has_cube_kernels::<B::InnerBackend>();
            for (shape, out) in shapes.into_iter().take(if gpu { 2 } else { shapes.len() }) {
                for (bias, frozen) in [(false, false), (true, false), (false, true)] {
                    check_linear::<B>(shape, out, bias, frozen, dtype, &device);
                }
            }
        }
        Ok(())
    }
}

fn check_norm<B: AutodiffBackend>(kind: NormKind, shape: [usize; 3], dtype: FloatDType, device: &B::Device) {
    let run = |fused_op: bool| {
        let x = tensor::<B, 3>(shape, 0.5, 3.0, dtype, device).add_scalar(0.25).require_grad();
        let w = tensor::<B, 1>([shape[2]], 1.1, 1.0, dtype, device).add_scalar(1.0).require_grad();
        let out = if fused_op {
            norm::norm(x.clone(), w.clone(), kind, 1e-5)
        } else {
            norm::unfused(norm::NormArgs { x: x.clone(), weight: w.clone(), kind, eps: 1e-5 })
        };
        let r = tensor::<B, 3>(shape, 2.3, 1.0, FloatDType::F32, device);
        let grads = (out.clone().cast(FloatDType::F32) * r).sum().backward();
        [host(out), host(x.grad(&grads).expect("dx")), host(w.grad(&grads).expect("dw"))]
    };
    let tolerance = if dtype == FloatDType::F32 { F32_TOLERANCE } else { BF16_TOLERANCE };
    let (a, b) = (run(true), run(false));
    for (what, (x, y)) in ["output", "dx", "dw"].iter().zip(a.iter().zip(&b)) {
        assert_close(&format!("{kind:?} {shape:?} {dtype:?}: {what}"), x, y, tolerance);
    }
}

fn check_swiglu<B: AutodiffBackend>(shape: [usize; 3], dtype: FloatDType, device: &B::Device) {
    let run = |fused_op: bool| {
        let a = tensor::<B, 3>(shape, 0.9, 6.0, dtype, device).require_grad();
        let u = tensor::<B, 3>(shape, 3.3, 2.0, dtype, device).require_grad();
        let out = if fused_op {
            swiglu::swiglu(a.clone(), u.clone())
        } else {
            swiglu::unfused(swiglu::SwigluArgs { gate: a.clone(), up: u.clone() })
        };
        let r = tensor::<B, 3>(shape, 5.1, 1.0, FloatDType::F32, device);
        let grads = (out.clone().cast(FloatDType::F32) * r).sum().backward();
        [host(out), host(a.grad(&grads).expect("da")), host(u.grad(&grads).expect("du"))]
    };
    let tolerance = if dtype == FloatDType::F32 { F32_TOLERANCE } else { BF16_TOLERANCE };
    let (a, b) = (run(true), run(false));
    for (what, (x, y)) in ["output", "da", "du"].iter().zip(a.iter().zip(&b)) {
        assert_close(&format!("SwiGLU {shape:?} {dtype:?}: {what}"), x, y, tolerance);
    }
}

/// The fused linear layer against burn's `linear` for `x` `[shape]`, `W`
/// `[shape[2], out]`, with a bias or without, `W` trained or frozen.
fn check_linear<B: AutodiffBackend>(
    shape: [usize; 3],
    out: usize,
    bias: bool,
    frozen: bool,
    dtype: FloatDType,
    device: &B::Device,
) {
    let run = |fused_op: bool| {
        let x = tensor::<B, 3>(shape, 0.4, 2.0, dtype, device).require_grad();
        let w = tensor::<B, 2>([shape[2], out], 1.7, 0.5, dtype, device);
        let w = if frozen { w } else { w.require_grad() };
        let b = bias.then(|| tensor::<B, 1>([out], 2.9, 1.0, dtype, device).require_grad());
        let y = if fused_op {
            linear::linear(x.clone(), w.clone(), b.clone())
        } else {
            burn::tensor::module::linear(x.clone(), w.clone(), b.clone())
        };
        let r = tensor::<B, 3>([shape[0], shape[1], out], 3.7, 1.0, FloatDType::F32, device);
        let grads = (y.clone().cast(FloatDType::F32) * r).sum().backward();
        let mut got = vec![host(y), host(x.grad(&grads).expect("dx"))];
        match w.grad(&grads) {
            Some(dw) => got.push(host(dw)),
            None => assert!(frozen, "a trained weight got no gradient"),
        }
        got.extend(b.map(|b| host(b.grad(&grads).expect("db"))));
        got
    };
    let tolerance = if dtype == FloatDType::F32 { F32_TOLERANCE } else { BF16_TOLERANCE };
    let (a, c) = (run(true), run(false));
    assert_eq!(a.len(), c.len(), "linear {shape:?}×{out}: the same gradients on both sides");
    for (i, (x, y)) in a.iter().zip(&c).enumerate() {
        assert_close(&format!("linear {shape:?}×{out} bias={bias} frozen={frozen} {dtype:?}: #{i}"), x, y, tolerance);
    }
}

fn check_rope<B: AutodiffBackend>(interleaved: bool, split: bool, dtype: FloatDType, device: &B::Device) {
    let (b, heads, t, h) = (2, 3, 5, 6);
    let run = |fused_op: bool| {
        let (leaf, x) = heads_input::<B>([b, heads, t, h], split, (0.2, 2.0), dtype, device);
        // Per-row tables (left padding gives each row its positions).
        let angles = values(b * t * h, 7.7, 3.0);
        let table = |f: fn(f32) -> f32| {
            let v: Vec<f32> = angles.iter().map(|&a| f(a)).collect();
            Tensor::<B, 4>::from_data(TensorData::new(v, [b, 1, t, h]), device).cast(dtype)
        };
        let (cos, sin) = (table(f32::cos), table(f32::sin));
        let out = if fused_op {
            rope::rope(x.clone(), cos, sin, interleaved)
        } else {
            rope::unfused(rope::RopeArgs { x: x.clone(), cos, sin, interleaved })
        };
        let r = tensor::<B, 4>([b, heads, t, h], 6.1, 1.0, FloatDType::F32, device);
        let grads = (out.clone().cast(FloatDType::F32) * r).sum().backward();
        [host(out), host(leaf.grad(&grads).expect("dx"))]
    };
    let tolerance = if dtype == FloatDType::F32 { F32_TOLERANCE } else { BF16_TOLERANCE };
    let (a, c) = (run(true), run(false));
    for (what, (x, y)) in ["output", "dx"].iter().zip(a.iter().zip(&c)) {
        assert_close(&format!("RoPE interleaved={interleaved} split={split} {dtype:?}: {what}"), x, y, tolerance);
    }
}

#[test]
fn fused_operations_agree_with_the_unfused_compositions_on_the_cpu() {
    assert!(!fused::has_cube_kernels::<burn::backend::Flex>(), "Flex has no CubeCL kernels");
    with_compute_backend(ComputeBackend::Cpu, 0, FusedChecks).unwrap();
}

#[test]
fn fused_operations_agree_with_the_unfused_compositions_on_wgpu() {
    if !ComputeBackend::Wgpu.is_compiled() {
        println!("skipped: this build has no `wgpu` feature");
        return;
    }
    #[cfg(feature = "wgpu")]
    assert!(fused::has_cube_kernels::<burn::backend::Wgpu>(), "the fused operations run CubeCL kernels on wgpu");
    if let Err(e) = with_compute_backend(ComputeBackend::Wgpu, 0, FusedChecks) {
        daa_tests::gpu::skip("wgpu", &e.to_string());
    }
}

/// The same checks on CUDA (the GPU check's phase 3; skipped without a GPU).
#[test]
fn fused_operations_agree_with_the_unfused_compositions_on_cuda() {
    if !ComputeBackend::Cuda.is_compiled() {
        println!("skipped: this build has no `cuda` feature");
        return;
    }
    #[cfg(feature = "cuda")]
    assert!(fused::has_cube_kernels::<burn::backend::Cuda>(), "the fused operations run CubeCL kernels on CUDA");
    if let Err(e) = with_compute_backend(ComputeBackend::Cuda, 0, FusedChecks) {
        daa_tests::gpu::skip("cuda", &e.to_string());
    }
}

/// The fused attention's `dq` against central differences of `Σ out ⊙ R`,
/// and its forward without autodiff (what scoring and generation run)
/// against the autodiff node's.
#[test]
fn fused_attention_gradient_matches_finite_differences_and_inference_matches_training() {
    type B = CpuBackend;
    type Inner = <B as AutodiffBackend>::InnerBackend;
    let device = Default::default();
    let c = AttentionCase {
        b: 1,
        heads: 2,
        kv: 1,
        t: 6,
        keys: 6,
        h: 4,
        tile: 4,
        padded: false,
        window: None,
        scale: 1.0,
        split: false,
    };
    let [out, dq, _, _] = attention_run::<B>(c, FloatDType::F32, true, &device);
    let hidden = || {
        Some(Tensor::<Inner, 4, Bool>::from_data(
            TensorData::new(mask(1, c.t, c.keys, &[], None), [1, 1, c.t, c.keys]),
            &device,
        ))
    };
    let objective = |q: Vec<f32>| -> (Vec<f32>, f64) {
        let args = AttentionArgs {
            q: Tensor::<Inner, 4>::from_data(TensorData::new(q, [c.b, c.heads, c.t, c.h]), &device),
            k: tensor::<Inner, 4>([c.b, c.kv, c.keys, c.h], 1.7, c.scale, FloatDType::F32, &device),
            v: tensor::<Inner, 4>([c.b, c.kv, c.keys, c.h], 2.9, 1.0, FloatDType::F32, &device),
            hidden: hidden(),
            scale: 1.0 / (c.h as f64).sqrt(),
            tile_rows: c.tile,
        };
        let out = host(attention::attention_with(args));
        let r = values(out.len(), 4.1, 1.0);
        let total = out.iter().zip(&r).map(|(o, r)| f64::from(*o) * f64::from(*r)).sum();
        (out, total)
    };
    let q = values(c.b * c.heads * c.t * c.h, 0.3, c.scale);
    let (inference, _) = objective(q.clone());
    assert_close("the forward without autodiff", &inference, &out, 1e-6);
    let eps = 1e-2f32;
    for i in 0..q.len() {
        let (mut plus, mut minus) = (q.clone(), q.clone());
        plus[i] += eps;
        minus[i] -= eps;
        let numeric = (objective(plus).1 - objective(minus).1) / (2.0 * f64::from(eps));
        assert!(
            (numeric - f64::from(dq[i])).abs() <= 2e-3 * numeric.abs().max(1.0),
            "dq[{i}]: autodiff {} vs central difference {numeric}",
            dq[i]
        );
    }
}

/// AdamW's one-pass update on the CPU gives the tensor operations' results
/// bit for bit: f32 and bf16 gradients, with and without decay and
/// clipping, a length that is not a multiple of the pass's chunks, a
/// master shared with another tensor (copied, not overwritten).
#[test]
fn fused_adamw_update_equals_the_tensor_operations_bit_for_bit() {
    check_adamw::<burn::backend::Flex>(&Default::default(), 0);
}

/// On wgpu the CubeCL kernel against burn's fused tensor operations: the
/// same f32 operations, but the composition's `powi(2)` and divisions by
/// constants may compile differently (a few ulp).
#[test]
fn fused_adamw_update_agrees_with_the_tensor_operations_on_wgpu() {
    if !ComputeBackend::Wgpu.is_compiled() {
        println!("skipped: this build has no `wgpu` feature");
        return;
    }
    if let Err(e) = with_compute_backend(ComputeBackend::Wgpu, 0, AdamWChecks) {
        daa_tests::gpu::skip("wgpu", &e.to_string());
    }
}

#[test]
fn fused_adamw_update_agrees_with_the_tensor_operations_on_cuda() {
    if !ComputeBackend::Cuda.is_compiled() {
        println!("skipped: this build has no `cuda` feature");
        return;
    }
    if let Err(e) = with_compute_backend(ComputeBackend::Cuda, 0, AdamWChecks) {
        daa_tests::gpu::skip("cuda", &e.to_string());
    }
}

struct AdamWChecks;

impl BackendTask for AdamWChecks {
    type Output = ();
    type Error = Error;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<(), Error> {
        check_adamw::<B::InnerBackend>(&device, 4);
        Ok(())
    }
}

/// The fused update against [`adamw::unfused`] on `Inner`: each value within
/// `ulps` units in the last place (0: bit for bit).
fn check_adamw<Inner: Backend>(device: &Inner::Device, ulps: u32) {
    use daa_train::fused::adamw::{AdamWStep, unfused, update};
    use daa_train::optim::AdamWConfig;
    let n = (1 << 14) * 3 + 17;
    for (dtype, decay, scale, t) in
        [(FloatDType::F32, 0.1, 1.0, 1), (FloatDType::BF16, 0.0, 0.37, 7), (FloatDType::F32, 0.1, 0.5, 1000)]
    {
        if dtype == FloatDType::BF16 && !Inner::supports_dtype(device, burn::tensor::DType::BF16) {
            println!("skipped: bf16 gradients: no bf16 on this device");
            continue;
        }
        let step = AdamWStep::new(&AdamWConfig::default(), 3e-4, decay, scale, t);
        let theta = tensor::<Inner, 1>([n], 0.1, 1.0, FloatDType::F32, device);
        let g = tensor::<Inner, 1>([n], 0.2, 2.0, dtype, device);
        let m = tensor::<Inner, 1>([n], 0.3, 0.1, FloatDType::F32, device);
        let v = tensor::<Inner, 1>([n], 0.4, 0.1, FloatDType::F32, device).abs();
        let kept = theta.clone();
        let (a_theta, a_m, a_v) = update(theta.clone(), g.clone(), m.clone(), v.clone(), step);
        let (b_theta, b_m, b_v) = unfused(theta, g, m, v, step);
        for (what, a, b) in [("θ", a_theta, b_theta), ("m", a_m, b_m), ("v", a_v, b_v)] {
            let (a, b) = (host(a), host(b));
            let apart = |x: f32, y: f32| (x.to_bits() as i64 - y.to_bits() as i64).unsigned_abs();
            let differing = a.iter().zip(&b).filter(|&(&x, &y)| apart(x, y) > u64::from(ulps)).count();
            assert_eq!(
                differing, 0,
                "{what} ({dtype:?}, t = {t}): {differing} of {n} values differ by over {ulps} ulp"
            );
        }
        assert_eq!(host(kept), values(n, 0.1, 1.0), "the update wrote into a tensor it shared");
    }
}
