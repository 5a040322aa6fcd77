//! A straightforward f64 forward pass written from the Hugging Face model
//! definitions (LlamaForCausalLM, CohereForCausalLM), reading the
//! safetensors file directly: the reference the burn model must match.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

pub struct Weights(HashMap<String, (Vec<usize>, Vec<f64>)>);

impl Weights {
    pub fn read(dir: &Path) -> Self {
        let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut map = HashMap::new();
        for (name, view) in file.tensors() {
            assert_eq!(view.dtype(), safetensors::Dtype::F32);
            let values: Vec<f64> =
                view.data().chunks_exact(4).map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))).collect();
            map.insert(name, (view.shape().to_vec(), values));
        }
        Self(map)
    }

    /// The weights with the PEFT LoRA adapter of `dir` merged as PEFT
    /// defines it: for every `base_model.model.{m}.lora_A.weight` `A` `[r, in]`
    /// and its `lora_B.weight` `B` `[out, r]`, `{m}.weight += s · B A`, with
    /// `s = lora_alpha / r` (`/ √r` with `use_rslora`), read from
    /// `adapter_config.json` and `adapter_model.safetensors` directly.
    pub fn with_peft_adapter(mut self, dir: &Path) -> Self {
        let config: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap()).unwrap();
        let r = config["r"].as_f64().unwrap();
        let alpha = config["lora_alpha"].as_f64().unwrap();
        let s = if config["use_rslora"].as_bool().unwrap_or(false) { alpha / r.sqrt() } else { alpha / r };
        let bytes = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let read = |name: &str| -> (Vec<usize>, Vec<f64>) {
            let view = file.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(view.dtype(), safetensors::Dtype::F32);
            let values =
                view.data().chunks_exact(4).map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))).collect();
            (view.shape().to_vec(), values)
        };
        let mut adapted = 0;
        for name in file.names() {
            let Some(module) = name.strip_suffix(".lora_A.weight") else { continue };
            let (a_shape, a) = read(name);
            let (b_shape, b) = read(&format!("{module}.lora_B.weight"));
            let (rank, d_in, d_out) = (a_shape[0], a_shape[1], b_shape[0]);
            assert_eq!(b_shape[1], rank, "{module}: lora_B's columns");
            let target = format!("{}.weight", module.strip_prefix("base_model.model.").expect("PEFT's prefix"));
            let (shape, w) = self.0.get_mut(&target).unwrap_or_else(|| panic!("the base has no {target}"));
            assert_eq!(shape, &[d_out, d_in], "{target}");
            for o in 0..d_out {
                for i in 0..d_in {
                    w[o * d_in + i] += s * (0..rank).map(|k| b[o * rank + k] * a[k * d_in + i]).sum::<f64>();
                }
            }
            adapted += 1;
        }
        assert!(adapted > 0, "{}: no lora_A tensors", dir.display());
        self
    }

    fn get(&self, name: &str) -> &[f64] {
        &self.0.get(name).unwrap_or_else(|| panic!("no {name}")).1
    }

    fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// `W x (+ b)` for `W` stored `[out, in]`.
    fn linear(&self, prefix: &str, x: &[f64]) -> Vec<f64> {
        let w = self.get(&format!("{prefix}.weight"));
        let out = w.len() / x.len();
        let mut y: Vec<f64> = (0..out).map(|o| (0..x.len()).map(|i| w[o * x.len() + i] * x[i]).sum()).collect();
        if self.has(&format!("{prefix}.bias")) {
            for (v, b) in y.iter_mut().zip(self.get(&format!("{prefix}.bias"))) {
                *v += b;
            }
        }
        y
    }
}

fn norm(x: &[f64], w: &[f64], eps: f64, layer_norm: bool) -> Vec<f64> {
    let n = x.len() as f64;
    let mean = if layer_norm { x.iter().sum::<f64>() / n } else { 0.0 };
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    x.iter().zip(w).map(|(v, w)| (v - mean) / (var + eps).sqrt() * w).collect()
}

fn inv_freq(cfg: &Value, hd: usize) -> Vec<f64> {
    let theta = cfg["rope_theta"].as_f64().unwrap_or(10000.0);
    (0..hd / 2)
        .map(|j| {
            let f = 1.0 / theta.powf((2 * j) as f64 / hd as f64);
            let s = &cfg["rope_scaling"];
            if s.is_null() {
                return f;
            }
            // transformers' _compute_llama3_parameters
            let (factor, lo, hi, old) = (
                s["factor"].as_f64().unwrap(),
                s["low_freq_factor"].as_f64().unwrap(),
                s["high_freq_factor"].as_f64().unwrap(),
                s["original_max_position_embeddings"].as_f64().unwrap(),
            );
            let wavelen = 2.0 * std::f64::consts::PI / f;
            if wavelen < old / hi {
                f
            } else if wavelen > old / lo {
                f / factor
            } else {
                let smooth = (old / wavelen - lo) / (hi - lo);
                (1.0 - smooth) * f / factor + smooth * f
            }
        })
        .collect()
}

/// Rotates one head vector at position `p`.
fn rope(x: &mut [f64], p: usize, freqs: &[f64], interleaved: bool) {
    let half = freqs.len();
    let old = x.to_vec();
    for (j, &freq) in freqs.iter().enumerate() {
        let (c, s) = ((p as f64 * freq).cos(), (p as f64 * freq).sin());
        let (a, b) = if interleaved { (2 * j, 2 * j + 1) } else { (j, j + half) };
        x[a] = old[a] * c - old[b] * s;
        x[b] = old[b] * c + old[a] * s;
    }
}

/// Final hidden states (after the last norm) at every position.
fn final_hidden(cfg: &Value, w: &Weights, ids: &[u32]) -> Vec<Vec<f64>> {
    let cohere = cfg["model_type"] == "cohere";
    let d = cfg["hidden_size"].as_u64().unwrap() as usize;
    let heads = cfg["num_attention_heads"].as_u64().unwrap() as usize;
    let kv_heads = cfg["num_key_value_heads"].as_u64().unwrap() as usize;
    let layers = cfg["num_hidden_layers"].as_u64().unwrap() as usize;
    let hd = d / heads;
    let eps = if cohere { cfg["layer_norm_eps"].as_f64().unwrap() } else { cfg["rms_norm_eps"].as_f64().unwrap() };
    let freqs = inv_freq(cfg, hd);
    let embed = w.get("model.embed_tokens.weight");
    let mut xs: Vec<Vec<f64>> = ids.iter().map(|&t| embed[t as usize * d..(t as usize + 1) * d].to_vec()).collect();
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        let normed: Vec<Vec<f64>> =
            xs.iter().map(|x| norm(x, w.get(&format!("{p}.input_layernorm.weight")), eps, cohere)).collect();
        let mut qs = Vec::new();
        let mut ks = Vec::new();
        let mut vs = Vec::new();
        for (pos, n) in normed.iter().enumerate() {
            let mut q = w.linear(&format!("{p}.self_attn.q_proj"), n);
            let mut k = w.linear(&format!("{p}.self_attn.k_proj"), n);
            for h in 0..heads {
                rope(&mut q[h * hd..(h + 1) * hd], pos, &freqs, cohere);
            }
            for h in 0..kv_heads {
                rope(&mut k[h * hd..(h + 1) * hd], pos, &freqs, cohere);
            }
            qs.push(q);
            ks.push(k);
            vs.push(w.linear(&format!("{p}.self_attn.v_proj"), n));
        }
        let mut next = Vec::new();
        for t in 0..ids.len() {
            let mut context = vec![0.0; heads * hd];
            for h in 0..heads {
                let g = h / (heads / kv_heads);
                let q = &qs[t][h * hd..(h + 1) * hd];
                let scores: Vec<f64> = (0..=t)
                    .map(|s| {
                        q.iter().zip(&ks[s][g * hd..(g + 1) * hd]).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                for (s, sc) in scores.iter().enumerate() {
                    let a = (sc - max).exp() / z;
                    for i in 0..hd {
                        context[h * hd + i] += a * vs[s][g * hd + i];
                    }
                }
            }
            let attn = w.linear(&format!("{p}.self_attn.o_proj"), &context);
            let mlp = |x: &[f64]| {
                let gate = w.linear(&format!("{p}.mlp.gate_proj"), x);
                let up = w.linear(&format!("{p}.mlp.up_proj"), x);
                let act: Vec<f64> = gate.iter().zip(&up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
                w.linear(&format!("{p}.mlp.down_proj"), &act)
            };
            let x = &xs[t];
            if cohere {
                let m = mlp(&normed[t]);
                next.push((0..d).map(|i| x[i] + attn[i] + m[i]).collect::<Vec<_>>());
            } else {
                let h1: Vec<f64> = (0..d).map(|i| x[i] + attn[i]).collect();
                let n2 = norm(&h1, w.get(&format!("{p}.post_attention_layernorm.weight")), eps, false);
                let m = mlp(&n2);
                next.push((0..d).map(|i| h1[i] + m[i]).collect());
            }
        }
        xs = next;
    }
    xs.iter().map(|x| norm(x, w.get("model.norm.weight"), eps, cohere)).collect()
}

/// `log p(ids[t+1] | ids[..=t])` for every `t`.
pub fn token_logprobs(cfg: &Value, w: &Weights, ids: &[u32]) -> Vec<f64> {
    let cohere = cfg["model_type"] == "cohere";
    let d = cfg["hidden_size"].as_u64().unwrap() as usize;
    let vocab = cfg["vocab_size"].as_u64().unwrap() as usize;
    let hidden = final_hidden(cfg, w, ids);
    let head = if w.has("lm_head.weight") { "lm_head.weight" } else { "model.embed_tokens.weight" };
    let head = w.get(head);
    let scale = if cohere { cfg["logit_scale"].as_f64().unwrap() } else { 1.0 };
    (0..ids.len() - 1)
        .map(|t| {
            let n = &hidden[t];
            let logits: Vec<f64> =
                (0..vocab).map(|v| scale * (0..d).map(|i| head[v * d + i] * n[i]).sum::<f64>()).collect();
            let max = logits.iter().cloned().fold(f64::MIN, f64::max);
            let lse = max + logits.iter().map(|z| (z - max).exp()).sum::<f64>().ln();
            logits[ids[t + 1] as usize] - lse
        })
        .collect()
}

/// A one-label `LlamaForSequenceClassification` reward: `score.weight` times
/// the final hidden state of the last token.
pub fn sequence_reward(cfg: &Value, w: &Weights, ids: &[u32]) -> f64 {
    let hidden = final_hidden(cfg, w, ids);
    let last = hidden.last().unwrap();
    w.get("score.weight").iter().zip(last).map(|(a, b)| a * b).sum()
}
