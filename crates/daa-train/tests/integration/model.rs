//! Loading, the forward pass against the naive reference, the objective's
//! gradient, one optimizer step, and the bad-checkpoint errors.

use std::path::Path;

use burn::backend::{Autodiff, NdArray};
use burn::module::Module;
use burn::tensor::Tensor;
use daa_core::preference::{NllNormalisation, NllTerm, PreferenceLoss, PreferenceLossParams, pair_loss};
use daa_train::batch::{Sequence, TokenBatch};
use daa_train::checkpoint::{SafetensorsWeights, load_model};
use daa_train::model::{CausalLm, WeightSource, config::ModelConfig};
use daa_train::objective::{CompletionLogits, pair_objective, sequence_logps};
use daa_train::optim::{AdamW, AdamWConfig, GradAccumulator};
use daa_train::tiny_run::{TINY_VOCAB, cohere_config, llama_config};
use serde_json::{Value, json};

use super::checkpoint;
use super::naive::{Weights, token_logprobs};

type B = NdArray<f32>;
type AD = Autodiff<NdArray<f32>>;
const DEVICE: burn::backend::ndarray::NdArrayDevice = burn::backend::ndarray::NdArrayDevice::Cpu;

/// Llama with GQA; Qwen2-style (q/k/v bias, tied head, Llama 3 RoPE scaling); Cohere.
fn variants() -> Vec<(&'static str, Value)> {
    let mut qwen = llama_config(TINY_VOCAB, 32, 2);
    qwen["architectures"] = json!(["Qwen2ForCausalLM"]);
    qwen["model_type"] = json!("qwen2");
    qwen["tie_word_embeddings"] = json!(true);
    qwen["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 16});
    vec![("llama", llama_config(TINY_VOCAB, 32, 2)), ("qwen2", qwen), ("cohere", cohere_config(TINY_VOCAB, 32, 2))]
}

fn sequences() -> Vec<Sequence> {
    let a: Vec<u32> = "<x>Hello, daa! 12+30=42".bytes().map(u32::from).chain([257]).collect();
    let b: Vec<u32> = [256].into_iter().chain("short".bytes().map(u32::from)).collect();
    vec![Sequence { ids: a, completion_start: 1 }, Sequence { ids: b, completion_start: 1 }]
}

#[test]
fn forward_log_probabilities_match_the_naive_reference_for_each_architecture() {
    for (name, config) in variants() {
        let dir = tempfile::tempdir().unwrap();
        checkpoint(dir.path(), &config, 0.3);
        let model: CausalLm<B> = load_model(dir.path(), &DEVICE).unwrap();
        let weights = Weights::read(dir.path());
        let seqs = sequences();
        let batch = TokenBatch::new(&seqs.iter().collect::<Vec<_>>(), 0, TINY_VOCAB).unwrap();
        // Every token but the first is a completion token: every position is scored.
        let scored = CompletionLogits::of(&model, &batch, &DEVICE).unwrap();
        let got: Vec<f32> = scored.token_logps().into_data().into_vec().unwrap();
        assert_eq!(got.len(), seqs.iter().map(|s| s.ids.len() - 1).sum::<usize>(), "{name}: padding is not scored");
        let all: Vec<f32> = model.forward(batch.input::<B>(&DEVICE)).unwrap().into_data().into_vec().unwrap();
        let mut spread = (f64::MAX, f64::MIN);
        let mut offset = 0;
        for (r, seq) in seqs.iter().enumerate() {
            // The shorter row is right-padded: its real positions must not see the padding.
            let want = token_logprobs(&config, &weights, &seq.ids);
            for (t, want) in want.iter().enumerate() {
                let have = f64::from(got[offset + t]);
                assert!(
                    (have - want).abs() < 2e-4 * (1.0 + want.abs()),
                    "{name} row {r} position {t}: {have} vs {want}"
                );
                spread = (spread.0.min(*want), spread.1.max(*want));
                // `forward` (the head at every position) agrees at the same place.
                let row = &all[(r * batch.len + t) * TINY_VOCAB..(r * batch.len + t + 1) * TINY_VOCAB];
                let max = row.iter().fold(f32::MIN, |m, &x| m.max(x));
                let lse = f64::from(max) + row.iter().map(|&x| f64::from(x - max).exp()).sum::<f64>().ln();
                let from_forward = f64::from(row[seq.ids[t + 1] as usize]) - lse;
                assert!((from_forward - have).abs() < 1e-4 * (1.0 + have.abs()), "{name}: forward vs head at scored");
            }
            offset += want.len();
        }
        // A model near uniform would make the comparison weak.
        assert!(spread.1 - spread.0 > 1.0, "{name}: log-probabilities spread {spread:?}");
    }
}

fn load_error(dir: &Path) -> String {
    format!("{:#}", load_model::<B>(dir, &DEVICE).unwrap_err())
}

#[test]
fn sharded_checkpoints_load_and_bad_checkpoints_are_named() {
    let dir = tempfile::tempdir().unwrap();
    checkpoint(dir.path(), &llama_config(TINY_VOCAB, 32, 2), 0.3);
    let single: CausalLm<B> = load_model(dir.path(), &DEVICE).unwrap();
    let ids = Tensor::<B, 2, burn::tensor::Int>::from_data([[256i64, 72, 105, 33]], &DEVICE);
    let reference: Vec<f32> = single.forward(ids.clone()).unwrap().into_data().into_vec().unwrap();

    // Split into two shards with an index, as transformers writes them.
    let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = file.names().into_iter().map(str::to_string).collect();
    names.sort();
    let shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];
    let mut weight_map = serde_json::Map::new();
    for (s, part) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> =
            part.iter().map(|n| (n.clone(), file.tensor(n).unwrap())).collect();
        safetensors::serialize_to_file(views, None, &dir.path().join(shards[s])).unwrap();
        for n in part {
            weight_map.insert(n.clone(), json!(shards[s]));
        }
    }
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let index = json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    let sharded: CausalLm<B> = load_model(dir.path(), &DEVICE).unwrap();
    let again: Vec<f32> = sharded.forward(ids).unwrap().into_data().into_vec().unwrap();
    assert_eq!(reference, again);

    // Missing shard.
    std::fs::rename(dir.path().join(shards[1]), dir.path().join("elsewhere")).unwrap();
    let e = load_error(dir.path());
    assert!(e.contains("shard `model-00002-of-00002.safetensors` is missing"), "{e}");
    std::fs::rename(dir.path().join("elsewhere"), dir.path().join(shards[1])).unwrap();

    // An entry lost from the index: named, with the shard that holds the tensor.
    let index_path = dir.path().join("model.safetensors.index.json");
    let mut damaged = index.clone();
    damaged["weight_map"].as_object_mut().unwrap().remove(&names[0]);
    std::fs::write(&index_path, damaged.to_string()).unwrap();
    let e = load_error(dir.path());
    let expected = format!("model.safetensors.index.json: no entry for tensor `{}`, which ", names[0]);
    assert!(e.contains(&expected) && e.contains("model-00001-of-00002.safetensors holds"), "{e}");
    // An entry pointing outside the checkpoint folder is refused.
    damaged["weight_map"][&names[0]] = json!("../model-00001-of-00002.safetensors");
    std::fs::write(&index_path, damaged.to_string()).unwrap();
    let e = load_error(dir.path());
    assert!(e.contains("must be the name of a file in the checkpoint folder, found \"../model-00001"), "{e}");
    std::fs::write(&index_path, index.to_string()).unwrap();

    // Shape mismatch: config.json says a wider MLP than the weights hold.
    let mut config = llama_config(TINY_VOCAB, 32, 2);
    config["intermediate_size"] = json!(96);
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let e = load_error(dir.path());
    assert!(e.contains("tensor `model.layers.0.mlp.gate_proj.weight` in `model-0000"), "{e}");
    assert!(e.contains("expected shape [96, 32] (from config.json), found [85, 32]"), "{e}");

    // Unknown architecture.
    config["architectures"] = json!(["GPT2LMHeadModel"]);
    config["model_type"] = json!("gpt2");
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let e = load_error(dir.path());
    assert!(e.contains("config.json: unknown architecture GPT2LMHeadModel (model_type `gpt2`)"), "{e}");
    assert!(e.contains("CohereForCausalLM"), "{e}");

    // A missing field is named.
    let mut config = llama_config(TINY_VOCAB, 32, 2);
    config.as_object_mut().unwrap().remove("num_hidden_layers");
    assert!(
        ModelConfig::from_json(&config.to_string())
            .unwrap_err()
            .to_string()
            .contains("missing field `num_hidden_layers`")
    );

    // No weights at all.
    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join("config.json"), llama_config(TINY_VOCAB, 32, 2).to_string()).unwrap();
    assert!(load_error(empty.path()).contains("no model.safetensors or model.safetensors.index.json"));
}

/// The checkpoint's weights with one element moved by `delta`.
struct Nudged {
    inner: SafetensorsWeights,
    name: &'static str,
    index: usize,
    delta: f32,
}

impl WeightSource for Nudged {
    fn read(&mut self, name: &str, shape: &[usize]) -> Result<daa_core::HostTensor, daa_train::ModelError> {
        let stored = self.inner.read(name, shape)?;
        if name != self.name {
            return Ok(stored);
        }
        let mut v = stored.to_f32_vec(self.name)?;
        v[self.index] += self.delta;
        Ok(daa_core::HostTensor::from_f32(v, shape)?)
    }
}

fn pairs() -> (Vec<Sequence>, Vec<(f64, f64)>) {
    let enc = |s: &str| s.bytes().map(u32::from).collect::<Vec<u32>>();
    let mk = |p: &str, c: &str| {
        let mut ids = enc(p);
        let start = ids.len();
        ids.extend(enc(c));
        Sequence { ids, completion_start: start }
    };
    let chosen = vec![mk("Q: 2+2? A:", " 4"), mk("Q: 3+5? A:", " 8"), mk("Say hi:", " hi there")];
    let rejected = vec![mk("Q: 2+2? A:", " 5"), mk("Q: 3+5? A:", " 9 or so"), mk("Say hi:", " no")];
    let counts =
        chosen.iter().zip(&rejected).map(|(c, r)| (c.completion_len() as f64, r.completion_len() as f64)).collect();
    (chosen.into_iter().chain(rejected).collect(), counts)
}

/// Mean pair loss (f64 spec) of a model on the fixed pairs.
fn mean_loss<Bk: burn::tensor::backend::Backend>(
    model: &CausalLm<Bk>,
    reference: &[(f64, f64)],
    params: &PreferenceLossParams,
) -> f64 {
    let (seqs, counts) = pairs();
    let batch = TokenBatch::new(&seqs.iter().collect::<Vec<_>>(), 0, TINY_VOCAB).unwrap();
    let device = model.devices()[0].clone();
    let obj = pair_objective(sequence_logps(model, &batch, &device).unwrap(), reference, &counts, params, 1.0).unwrap();
    obj.losses.iter().map(|l| l.loss).sum::<f64>() / counts.len() as f64
}

fn dpo_with_nll() -> PreferenceLossParams {
    PreferenceLossParams {
        loss: PreferenceLoss::Dpo { beta: 0.5, label_smoothing: 0.0 },
        nll: Some(NllTerm { weight: 0.1, normalisation: NllNormalisation::Mean }),
    }
}

#[test]
fn the_surrogate_gradient_is_the_gradient_of_the_mean_loss() {
    let dir = tempfile::tempdir().unwrap();
    checkpoint(dir.path(), &llama_config(TINY_VOCAB, 32, 2), 0.3);
    let (seqs, counts) = pairs();
    // A reference different from the policy so the DPO term has a slope.
    let reference: Vec<(f64, f64)> = counts.iter().map(|&(c, r)| (-5.0 * c, -6.0 * r)).collect();
    for params in [dpo_with_nll(), PreferenceLossParams { loss: PreferenceLoss::Ipo { tau: 0.1 }, nll: None }] {
        let model: CausalLm<AD> = load_model(dir.path(), &DEVICE).unwrap();
        let batch = TokenBatch::new(&seqs.iter().collect::<Vec<_>>(), 0, TINY_VOCAB).unwrap();
        let policy = sequence_logps(&model, &batch, &DEVICE).unwrap();
        let obj = pair_objective(policy, &reference, &counts, &params, counts.len() as f64).unwrap();
        let grads = obj.surrogate.backward();
        let norm_grad: Vec<f32> = model.norm.weight.val().grad(&grads).unwrap().into_data().into_vec().unwrap();
        let head = model.lm_head.as_ref().unwrap().val().grad(&grads).unwrap();
        let head_grad: Vec<f32> = head.into_data().into_vec().unwrap();
        for (name, index, analytic) in
            [("model.norm.weight", 3usize, norm_grad[3]), ("lm_head.weight", 52 * 32 + 5, head_grad[52 * 32 + 5])]
        {
            // The step is large because the loss is computed in f32 (the
            // weights are loaded as f32 data, which burn keeps even on
            // NdArray<f64>), rounded in a thread-dependent order: measured
            // over three runs, the difference quotient scattered ±4 % around
            // the (deterministic) analytic value with h = 0.01, ±2 % with
            // 0.03, within 1.5 % with 0.1 (and the norm weight's, whose
            // curvature is visible, moved 0.007 %).
            let h = 1e-1f32;
            let at = |delta: f32| {
                let inner = SafetensorsWeights::open(dir.path()).unwrap();
                let config = daa_train::checkpoint::read_config(dir.path()).unwrap();
                let m =
                    CausalLm::<NdArray<f64>>::from_weights(&config, &mut Nudged { inner, name, index, delta }, &DEVICE)
                        .unwrap();
                mean_loss(&m, &reference, &params)
            };
            let numeric = (at(h) - at(-h)) / (2.0 * f64::from(h));
            let analytic = f64::from(analytic);
            assert!(
                (numeric - analytic).abs() < 0.02 * analytic.abs().max(1e-2),
                "{:?} {name}[{index}]: analytic {analytic} vs central difference {numeric}",
                params.loss
            );
        }
    }
}

#[test]
fn one_adamw_step_lowers_the_loss_on_a_fixed_batch() {
    let dir = tempfile::tempdir().unwrap();
    checkpoint(dir.path(), &cohere_config(TINY_VOCAB, 32, 2), 0.3);
    let (seqs, counts) = pairs();
    let params = dpo_with_nll();
    let initial: CausalLm<B> = load_model(dir.path(), &DEVICE).unwrap();
    // Reference = the initial model: DPO starts at ln 2 (+ the NLL term).
    let batch = TokenBatch::new(&seqs.iter().collect::<Vec<_>>(), 0, TINY_VOCAB).unwrap();
    let scores: Vec<f64> =
        sequence_logps(&initial, &batch, &DEVICE).unwrap().into_data().convert::<f64>().into_vec().unwrap();
    let reference: Vec<(f64, f64)> = (0..counts.len()).map(|i| (scores[i], scores[counts.len() + i])).collect();
    let before = mean_loss(&initial, &reference, &params);
    let spec = pair_loss(
        &daa_core::PairLogps {
            policy_chosen: scores[0],
            policy_rejected: scores[3],
            reference_chosen: scores[0],
            reference_rejected: scores[3],
            chosen_tokens: counts[0].0,
            rejected_tokens: counts[0].1,
        },
        &params,
    );
    assert!((spec.loss - (2f64.ln() - 0.1 * scores[0] / counts[0].0)).abs() < 1e-12);

    let model: CausalLm<AD> = load_model(dir.path(), &DEVICE).unwrap();
    let obj =
        pair_objective(sequence_logps(&model, &batch, &DEVICE).unwrap(), &reference, &counts, &params, 3.0).unwrap();
    let mut grads = GradAccumulator::<B>::default();
    grads.add::<AD, _>(&model, obj.surrogate.backward());
    let mut decays = std::collections::HashMap::new();
    model.visit_weights(&mut |_: &str, p| {
        decays.insert(p.id(), p.decays());
    });
    let mut adam = AdamW::<B>::new(AdamWConfig::default());
    let norm = grads.global_norm().unwrap();
    let (model, report) = adam.update::<AD, _>(model, grads, 1e-2, norm, &decays);
    assert!(report.grad_norm > 0.0 && report.grad_norm.is_finite());
    assert_eq!(adam.steps, 1);
    let after = mean_loss(&model, &reference, &params);
    assert!(after < before - 1e-3, "loss {before} → {after}");
}
