//! The per-operation benchmark: forward and forward + backward of each
//! operation a training step is made of, fused (`daa_train::fused`) and
//! unfused (the burn compositions they replace), on burn's CPU backend with
//! autodiff, at the long trainer shape's sizes (2 sequences × 2 048 tokens,
//! width 256, 4 query and 2 key/value heads of 64, MLP 680) and attention
//! also at the 5m shape's (16 × 128). `benches/fused_ops.rs` prints them
//! beside PyTorch's own paths (`scripts/torch_ops_baseline.py`).

use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Bool, Tensor, TensorData};
use daa_train::fused::attention::{self, AttentionArgs};
use daa_train::fused::{norm, rope, swiglu};
use daa_train::model::NormKind;
use serde::{Deserialize, Serialize};

type B = Autodiff<Flex>;
type Inner = Flex;

/// One operation's times, seconds (median over the repetitions).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpTime {
    /// Operation and sizes, e.g. `attention 2×4×2048×64`.
    pub op: String,
    /// `daa-fused`, `daa-unfused` or `torch`.
    pub variant: String,
    /// Threads.
    pub threads: usize,
    /// Forward only (with the autodiff graph recorded).
    pub forward_s: f64,
    /// Forward and backward.
    pub step_s: f64,
}

/// The operations, by name, as `(name, sizes)` (what the PyTorch script reads too).
pub const OPS: [(&str, &[usize]); 7] = [
    ("attention", &[2, 4, 2, 2048, 64]),
    ("attention", &[16, 4, 2, 128, 64]),
    ("rms_norm", &[2, 2048, 256]),
    ("rope", &[2, 4, 2048, 64]),
    ("swiglu", &[2, 2048, 680]),
    ("linear", &[4096, 256, 680]),
    ("adamw", &[5_000_000]),
];

/// A label for `(name, sizes)`: `attention 2×4×2×2048×64`.
pub fn label(name: &str, sizes: &[usize]) -> String {
    let sizes: Vec<String> = sizes.iter().map(usize::to_string).collect();
    format!("{name} {}", sizes.join("×"))
}

fn input<const D: usize>(shape: [usize; D], seed: f32) -> Tensor<B, D> {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|i| ((i as f32 * 0.7311 + seed).sin() * 43.758).fract()).collect();
    Tensor::from_data(TensorData::new(values, shape), &Default::default())
}

/// Median seconds of `repeats` runs of `f` after one warm-up.
fn median(repeats: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..repeats.max(1))
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Forward and forward + backward of `op` on `inputs` (made once, before
/// the clock: each run takes fresh leaves of the same values).
fn time_op<const D: usize>(
    inputs: impl Fn() -> Vec<Tensor<B, D>>,
    op: impl Fn(Vec<Tensor<B, D>>) -> Tensor<B, D>,
    repeats: usize,
) -> (f64, f64) {
    let inputs = inputs();
    let leaves = || inputs.iter().map(|t| t.clone().require_grad()).collect::<Vec<_>>();
    let forward = median(repeats, || {
        let out = op(leaves());
        let _ = out.into_data();
    });
    // The output's gradient: a fixed contiguous tensor, as a matrix product
    // would hand it back in a training step (`sum()` alone would hand back a
    // broadcast view).
    let upstream = {
        let shape = op(leaves()).dims();
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|i| ((i as f32 * 0.618).fract() - 0.5) * 0.1).collect();
        Tensor::<B, D>::from_data(TensorData::new(values, shape), &Default::default())
    };
    let step = median(repeats, || {
        let leaves = leaves();
        let grads = (op(leaves.clone()) * upstream.clone()).sum().backward();
        for leaf in &leaves {
            let _ = leaf.grad(&grads).map(|g| g.into_data());
        }
    });
    (forward, step)
}

/// `true` where a query must not see a key (causal), `[1, 1, t, t]`.
fn causal(t: usize) -> Tensor<B, 4, Bool> {
    let hidden: Vec<bool> = (0..t * t).map(|i| i % t > i / t).collect();
    Tensor::from_data(TensorData::new(hidden, [1, 1, t, t]), &Default::default())
}

/// Times every operation of [`OPS`] in both variants with this process's threads.
pub fn measure_all(threads: usize, repeats: usize) -> Vec<OpTime> {
    let mut rows = Vec::new();
    let mut push = |op: String, variant: &str, (forward_s, step_s): (f64, f64)| {
        eprintln!("  {op} {variant}: forward {forward_s:.4} s, forward + backward {step_s:.4} s");
        rows.push(OpTime { op, variant: variant.into(), threads, forward_s, step_s });
    };
    for (name, sizes) in OPS {
        let op = label(name, sizes);
        match name {
            "attention" => {
                let &[b, heads, kv, t, h] = sizes else { continue };
                for fused in [true, false] {
                    let inputs =
                        || vec![input([b, heads, t, h], 0.1), input([b, kv, t, h], 0.2), input([b, kv, t, h], 0.3)];
                    let run = |x: Vec<Tensor<B, 4>>| {
                        let [q, k, v]: [Tensor<B, 4>; 3] = x.try_into().expect("three inputs");
                        let budget = attention::CPU_TILE_BYTES;
                        let args = AttentionArgs {
                            q,
                            k,
                            v,
                            hidden: Some(causal(t)),
                            scale: 1.0 / (h as f64).sqrt(),
                            tile_rows: attention::tile_rows(b, heads, t, t, budget),
                        };
                        if fused { attention::attention_with(args) } else { attention::unfused(args) }
                    };
                    push(op.clone(), if fused { "daa-fused" } else { "daa-unfused" }, time_op(inputs, run, repeats));
                }
            }
            "rms_norm" => {
                let &[b, t, d] = sizes else { continue };
                for fused in [true, false] {
                    let inputs = || vec![input([b, t, d], 0.4)];
                    let weight = input([d], 0.5).add_scalar(1.0).require_grad();
                    let run = |x: Vec<Tensor<B, 3>>| {
                        let x = x.into_iter().next().expect("one input");
                        if fused {
                            norm::norm(x, weight.clone(), NormKind::Rms, 1e-5)
                        } else {
                            norm::unfused(norm::NormArgs { x, weight: weight.clone(), kind: NormKind::Rms, eps: 1e-5 })
                        }
                    };
                    push(op.clone(), if fused { "daa-fused" } else { "daa-unfused" }, time_op(inputs, run, repeats));
                }
            }
            "rope" => {
                let &[b, heads, t, h] = sizes else { continue };
                let (cos, sin) = (input([1, 1, t, h], 0.6).cos(), input([1, 1, t, h], 0.6).sin());
                for fused in [true, false] {
                    let inputs = || vec![input([b, heads, t, h], 0.7)];
                    let run = |x: Vec<Tensor<B, 4>>| {
                        let x = x.into_iter().next().expect("one input");
                        let args = rope::RopeArgs { x, cos: cos.clone(), sin: sin.clone(), interleaved: false };
                        if fused { rope::rope(args.x, args.cos, args.sin, false) } else { rope::unfused(args) }
                    };
                    push(op.clone(), if fused { "daa-fused" } else { "daa-unfused" }, time_op(inputs, run, repeats));
                }
            }
            "swiglu" => {
                let &[b, t, m] = sizes else { continue };
                for fused in [true, false] {
                    let inputs = || vec![input([b, t, m], 0.8), input([b, t, m], 0.9)];
                    let run = |x: Vec<Tensor<B, 3>>| {
                        let [gate, up]: [Tensor<B, 3>; 2] = x.try_into().expect("two inputs");
                        if fused { swiglu::swiglu(gate, up) } else { swiglu::unfused(swiglu::SwigluArgs { gate, up }) }
                    };
                    push(op.clone(), if fused { "daa-fused" } else { "daa-unfused" }, time_op(inputs, run, repeats));
                }
            }
            "linear" => {
                let &[n, d, m] = sizes else { continue };
                for fused in [true, false] {
                    let inputs = || vec![input([n, d], 1.0), input([d, m], 1.1)];
                    let run = |x: Vec<Tensor<B, 2>>| {
                        let [x, w]: [Tensor<B, 2>; 2] = x.try_into().expect("two inputs");
                        if fused {
                            daa_train::fused::linear::linear(x, w, None)
                        } else {
                            burn::tensor::module::linear(x, w, None)
                        }
                    };
                    push(op.clone(), if fused { "daa-fused" } else { "daa-unfused" }, time_op(inputs, run, repeats));
                }
            }
            "adamw" => {
                let &[n] = sizes else { continue };
                for fused in [true, false] {
                    let inner = |seed| input([n], seed).inner();
                    let (theta, g, m, v) = (inner(1.2), inner(1.3), inner(1.4), inner(1.5).abs());
                    let config = daa_train::optim::AdamWConfig::default();
                    let step = daa_train::fused::adamw::AdamWStep::new(&config, 1e-4, 0.1, 0.9, 3);
                    // Each run on fresh copies made before the clock (a trainer's
                    // moments and masters are its own: the update writes in place).
                    let fresh = |t: &Tensor<Inner, 1>| Tensor::<Inner, 1>::from_data(t.to_data(), &Default::default());
                    let mut times: Vec<f64> = (0..=repeats.max(1))
                        .map(|_| {
                            let (theta, g, m, v) = (fresh(&theta), fresh(&g), fresh(&m), fresh(&v));
                            let start = Instant::now();
                            let (t, m, v) = if fused {
                                daa_train::fused::adamw::update(theta, g, m, v, step)
                            } else {
                                daa_train::fused::adamw::unfused(theta, g, m, v, step)
                            };
                            let elapsed = start.elapsed().as_secs_f64();
                            let _ = (t.into_data(), m.into_data(), v.into_data());
                            elapsed
                        })
                        .skip(1)
                        .collect();
                    times.sort_by(f64::total_cmp);
                    let time = times[times.len() / 2];
                    push(op.clone(), if fused { "daa-fused" } else { "daa-unfused" }, (time, time));
                }
            }
            _ => {}
        }
    }
    rows
}
