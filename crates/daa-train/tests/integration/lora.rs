//! LoRA ([`daa_train::model::lora`]): a fresh adapter changes nothing; the
//! adapted forward is the merged model's; the adapters' gradients are the
//! full model's carried through `W' = W + s A B` by the chain rule (every
//! memory setting); a LoRA-DPO step moves the adapters only, against the
//! adapter-off reference, in f32 and bf16.

use std::collections::HashMap;

use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Tensor};
use daa_core::HostTensor;
use daa_core::preference::{PreferenceLoss, PreferenceLossParams};
use daa_tests::tolerance::{Tolerance, assert_close};
use daa_train::backward::{MemoryOptions, weighted_backward};
use daa_train::batch::{Sequence, TokenBatch};
use daa_train::model::tiny_configs::{cohere_config, llama_config};
use daa_train::model::{CausalLm, LoraConfig, LoraTarget, ModelConfig, ParamKind, RandomWeights, WeightSource};
use daa_train::optim::{AdamWConfig, GradAccumulator, LrSchedule};
use daa_train::{ModelError, Precision, ReferencePolicy, StepPair, Trainer, TrainerOptions};
use serde_json::{Value, json};

use super::memory::pairs;

/// Flex: deterministic (ndarray's forward differs between two calls by ~1e-4 on these
/// models) and runs bf16.
type Inner = Flex;
type AD = Autodiff<Inner>;

const VOCAB: usize = 61;

/// Llama with GQA, Qwen2-style biases and a tied head, Cohere's parallel block.
fn families() -> Vec<(&'static str, Value)> {
    let mut qwen = llama_config(VOCAB, 32, 2);
    qwen["architectures"] = json!(["Qwen2ForCausalLM"]);
    qwen["model_type"] = json!("qwen2");
    qwen["tie_word_embeddings"] = json!(true);
    vec![("llama", llama_config(VOCAB, 32, 3)), ("qwen2", qwen), ("cohere", cohere_config(VOCAB, 32, 2))]
}

fn lora(targets: &[&str]) -> LoraConfig {
    LoraConfig {
        rank: 3,
        alpha: 6.0,
        dropout: 0.0,
        target_modules: targets.iter().map(|t| t.to_string()).collect(),
        use_rslora: false,
    }
}

fn base<B: Backend>(config: &Value) -> CausalLm<B> {
    let config = ModelConfig::from_json(&config.to_string()).unwrap();
    CausalLm::from_weights(&config, &mut RandomWeights { seed: 5, std: 0.2 }, &Default::default()).unwrap()
}

/// The base model with adapters as if trained: `A`, `B` ~ `N(0, 0.1²)`.
fn adapted<B: Backend>(config: &Value, lora: &LoraConfig) -> CausalLm<B> {
    base::<B>(config).with_saved_lora(lora, &mut RandomWeights { seed: 11, std: 0.1 }).unwrap()
}

/// Weights by name, as a model holds them (file layout).
struct Named(HashMap<String, HostTensor>);

impl WeightSource for Named {
    fn read(&mut self, name: &str, shape: &[usize]) -> Result<HostTensor, ModelError> {
        let t = self.0.get(name).ok_or_else(|| ModelError::MissingTensor { name: name.into() })?;
        assert_eq!(t.shape(), shape, "{name}");
        Ok(t.clone())
    }
}

fn weights_of<B: Backend>(model: &CausalLm<B>) -> Named {
    let mut named = HashMap::new();
    model.visit_weights(&mut |name: &str, p: ParamKind<'_, B>| {
        let values = p.to_file_f32(name).unwrap();
        named.insert(name.to_string(), HostTensor::from_f32(values, &p.file_shape()).unwrap());
    });
    Named(named)
}

fn batch() -> TokenBatch {
    let pairs = pairs();
    let sequences: Vec<&Sequence> = pairs.iter().flat_map(|p| [&p.chosen, &p.rejected]).collect();
    TokenBatch::new(&sequences, 0, VOCAB).unwrap()
}

fn logits<B: Backend>(model: &CausalLm<B>) -> Vec<f64> {
    let tokens = batch().input::<B>(&Default::default());
    model.forward(tokens).unwrap().into_data().convert::<f64>().into_vec().unwrap()
}

fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    t.into_data().convert::<f64>().into_vec().unwrap()
}

const MERGED: Tolerance = Tolerance { name: "adapted vs merged forward (f32 rounding)", abs: 2e-5, rel: 1e-4 };

#[test]
fn a_fresh_adapter_changes_nothing_and_the_adapted_forward_is_the_merged_one() {
    for (family, config) in families() {
        let all = lora(&["all-linear"]);
        let plain = logits(&base::<Inner>(&config));
        // A fresh adapter adds exact zeros.
        let fresh = base::<Inner>(&config).with_lora(&all, 1).unwrap();
        assert!(logits(&fresh) == plain, "{family}: a fresh adapter (B = 0) changes the outputs");
        let model = adapted::<Inner>(&config, &all);
        let with = logits(&model);
        let moved = with.iter().zip(&plain).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(moved > 1e-2, "{family}: the adapters move the logits by only {moved}");
        assert!(logits(&model.without_adapters()) == plain, "{family}: adapters off is not the base model");
        assert_close(&logits(&model.merge_adapters()), &with, MERGED, family);
        // One target only: the others stay plain.
        let q_only = adapted::<Inner>(&config, &lora(&["q_proj"]));
        assert!(q_only.layers[0].attention.q.adapter.is_some() && q_only.layers[0].attention.v.adapter.is_none());
        assert_close(&logits(&q_only.clone().merge_adapters()), &logits(&q_only), MERGED, family);
    }
}

/// Each trained parameter's gradient by name (burn's layout, flattened)
/// after one pass of `Σ_i w_i π_i`; panics on a gradient of anything else.
fn trained_gradients(model: &CausalLm<AD>, memory: MemoryOptions) -> HashMap<String, Vec<f64>> {
    let batch = batch();
    let weights: Vec<f32> = (0..batch.rows).map(|i| if i % 3 == 0 { -0.7 } else { 0.4 + 0.1 * i as f32 }).collect();
    let mut acc = GradAccumulator::<Inner>::default();
    weighted_backward(model, &batch, &memory, &mut |_| Ok(weights.clone()), &mut |_, _| Ok(()), None, &mut acc)
        .unwrap();
    let mut by_id: HashMap<ParamId, Vec<f64>> = acc.gradients_mut().map(|(id, g)| (id, values(g.clone()))).collect();
    let mut named = HashMap::new();
    model.visit_trainable(&mut |name: &str, p: ParamKind<'_, AD>| {
        let g = by_id.remove(&p.id()).unwrap_or_else(|| panic!("{name}: no gradient with {memory:?}"));
        named.insert(name.to_string(), g);
    });
    assert!(by_id.is_empty(), "{} gradients of frozen parameters with {memory:?}", by_id.len());
    named
}

/// `C = X Y` of row-major `[n, k]` and `[k, m]`; `t` transposes an operand.
fn product(x: &[f64], y: &[f64], (n, k, m): (usize, usize, usize), tx: bool, ty: bool) -> Vec<f64> {
    let at = |v: &[f64], r: usize, c: usize, rows: usize, cols: usize, t: bool| {
        if t { v[c * rows + r] } else { v[r * cols + c] }
    };
    let mut out = vec![0.0; n * m];
    for i in 0..n {
        for j in 0..m {
            out[i * m + j] = (0..k).map(|l| at(x, i, l, n, k, tx) * at(y, l, j, k, m, ty)).sum();
        }
    }
    out
}

#[test]
fn adapter_gradients_are_the_full_gradients_through_the_chain_rule() {
    let memories = [
        MemoryOptions { fused_head: false, head_chunk_rows: 0, activation_checkpointing: false },
        MemoryOptions { fused_head: true, head_chunk_rows: 0, activation_checkpointing: false },
        MemoryOptions { fused_head: true, head_chunk_rows: 7, activation_checkpointing: true },
    ];
    for (family, config) in families() {
        let all = lora(&["all-linear"]);
        let model = adapted::<AD>(&config, &all);
        let s = all.scale();
        // The merged model, every weight trainable: its `∂S/∂W` of each adapted layer.
        let merged = model.valid().merge_adapters();
        let c = merged.config().clone();
        let full = CausalLm::<AD>::from_weights(&c, &mut weights_of(&merged), &Default::default()).unwrap();
        for memory in memories {
            let got = trained_gradients(&model, memory);
            let full_grads = trained_gradients(&full, memory);
            assert_eq!(got.len(), 2 * 7 * c.num_layers, "{family}: an A and a B per layer and target");
            for (i, layer) in model.layers.iter().enumerate() {
                for target in LoraTarget::ALL {
                    let adapter = layer.linear(target).adapter.as_ref().unwrap();
                    let (a, b) = (values(adapter.a.val().inner()), values(adapter.b.val().inner()));
                    let [d_in, r] = adapter.a.val().dims();
                    let d_out = b.len() / r;
                    let gw = &full_grads[&format!("model.layers.{i}.{}.weight", target.block_path())];
                    // W' = W + s A B:  ∂S/∂A = s G Bᵀ,  ∂S/∂B = s Aᵀ G  (G = ∂S/∂W', [in, out]).
                    let want_a: Vec<f64> =
                        product(gw, &b, (d_in, d_out, r), false, true).iter().map(|g| s * g).collect();
                    let want_b: Vec<f64> =
                        product(&a, gw, (r, d_in, d_out), true, false).iter().map(|g| s * g).collect();
                    let prefix = format!("base_model.model.model.layers.{i}.{}", target.block_path());
                    let scale = want_a.iter().chain(&want_b).fold(0.0f64, |m, g| m.max(g.abs()));
                    let tol = Tolerance { name: "adapter gradient vs chain rule", abs: 1e-4 * scale, rel: 2e-3 };
                    let what = format!("{family} {prefix} {memory:?}");
                    assert_close(&got[&format!("{prefix}.lora_A.weight")], &want_a, tol, &what);
                    assert_close(&got[&format!("{prefix}.lora_B.weight")], &want_b, tol, &what);
                }
            }
        }
    }
}

fn options(precision: Precision) -> TrainerOptions {
    TrainerOptions {
        loss: PreferenceLossParams { loss: PreferenceLoss::Dpo { beta: 0.1, label_smoothing: 0.0 }, nll: None },
        optimizer: AdamWConfig::default(),
        schedule: LrSchedule { peak: 1e-2, warmup: 1, total: 10, final_fraction: 0.1 },
        micro_batch_size: 2,
        pad_id: 0,
        memory: MemoryOptions::default(),
        precision,
    }
}

#[test]
fn a_lora_dpo_step_moves_the_adapters_only_against_the_adapter_off_reference() {
    let config = llama_config(VOCAB, 32, 2);
    for precision in [Precision::F32, Precision::Bf16] {
        let qv = lora(&["q_proj", "v_proj"]);
        let model = base::<AD>(&config).with_lora(&qv, 3).unwrap();
        let mut trainer = Trainer::new(model, options(precision), ReferencePolicy::AdapterOff).unwrap();
        let frozen_before = weights_of(&trainer.valid_model());
        let pairs = pairs();
        let step: Vec<StepPair<'_>> = pairs.iter().map(|p| StepPair { sequences: p, reference: None }).collect();
        let first = trainer.step(&step).unwrap();
        // The reference is the policy with its adapters off: at the start they are the same
        // model (up to rounding: the reference is scored by another pass, in bf16 in bf16).
        let tolerance = if precision == Precision::F32 { 1e-5 } else { 1e-3 };
        assert!((first.loss - 2f64.ln()).abs() < tolerance, "{precision}: first loss {}", first.loss);
        assert!(first.margin.abs() < tolerance, "{precision}: first margin {}", first.margin);
        let mut last = first;
        for _ in 0..4 {
            last = trainer.step(&step).unwrap();
        }
        assert!(last.loss < first.loss - 1e-3, "{precision}: the loss did not fall ({} → {})", first.loss, last.loss);
        let after = trainer.valid_model();
        // Every base weight as it was (in the training dtype), the adapters f32 and moved.
        let frozen_after = weights_of(&after);
        for (name, before) in &frozen_before.0 {
            let now: Vec<f32> = frozen_after.0[name].as_f32("weight").unwrap().to_vec();
            let was: Vec<f32> = before.as_f32("weight").unwrap().to_vec();
            let moved = now.iter().zip(&was).position(|(a, b)| a != b);
            assert!(moved.is_none(), "{precision}: {name} moved at {moved:?}: {:?}", moved.map(|i| (now[i], was[i])));
        }
        for layer in &after.layers {
            for linear in [&layer.attention.q, &layer.attention.v] {
                let adapter = linear.adapter.as_ref().unwrap();
                assert_eq!(
                    FloatDType::from(adapter.b.val().dtype()),
                    FloatDType::F32,
                    "{precision}: adapters stay f32"
                );
                assert!(values(adapter.b.val()).iter().any(|&x| x != 0.0), "{precision}: B moved from 0");
            }
            assert!(layer.attention.k.adapter.is_none());
        }
        assert_eq!(after.dtype(), precision.dtype(), "the base weights train in {precision}");
    }
    // Dropout draws its masks from the backend's generator, seeded per step: two runs
    // agree step for step, and the masks change the steps.
    let with_dropout = |dropout: f64| {
        let config = LoraConfig { dropout, ..lora(&["q_proj", "v_proj"]) };
        let model = base::<AD>(&llama_config(VOCAB, 32, 2)).with_lora(&config, 3).unwrap();
        let mut trainer =
            Trainer::new(model, options(Precision::F32), ReferencePolicy::AdapterOff).unwrap().with_dropout_seed(7);
        let pairs = pairs();
        let step: Vec<StepPair<'_>> = pairs.iter().map(|p| StepPair { sequences: p, reference: None }).collect();
        (0..3).map(|_| trainer.step(&step).unwrap().loss).collect::<Vec<f64>>()
    };
    let (a, b, none) = (with_dropout(0.3), with_dropout(0.3), with_dropout(0.0));
    assert_eq!(a, b, "dropout masks are reproducible");
    assert!(a[1..] != none[1..], "dropout changes the steps: {a:?} vs {none:?}");
    // Adapters off needs adapters.
    let plain = base::<AD>(&config);
    assert!(Trainer::new(plain, options(Precision::F32), ReferencePolicy::AdapterOff).is_err());
}

#[test]
fn lora_configurations_are_checked_naming_the_field() {
    let message = |c: LoraConfig| c.validate().unwrap_err().to_string();
    assert!(message(LoraConfig { rank: 0, ..LoraConfig::default() }).starts_with("`lora.rank`"));
    assert!(message(LoraConfig { alpha: f64::NAN, ..LoraConfig::default() }).contains("lora.alpha"));
    assert!(message(LoraConfig { dropout: 1.0, ..LoraConfig::default() }).contains("lora.dropout"));
    let unknown = message(lora(&["qkv_proj"]));
    assert!(unknown.starts_with("`lora.target_modules`: `qkv_proj`") && unknown.contains("all-linear"), "{unknown}");
    assert_eq!(lora(&["v_proj", "q_proj", "v_proj"]).targets().unwrap(), [LoraTarget::Q, LoraTarget::V]);
    assert_eq!(lora(&["all-linear"]).targets().unwrap(), LoraTarget::ALL);
    assert_eq!(LoraConfig { rank: 16, alpha: 32.0, use_rslora: true, ..LoraConfig::default() }.scale(), 8.0);
    // A model takes one set of adapters.
    let model = base::<Inner>(&llama_config(VOCAB, 32, 1)).with_lora(&LoraConfig::default(), 1).unwrap();
    assert!(model.with_lora(&LoraConfig::default(), 1).is_err());
}
