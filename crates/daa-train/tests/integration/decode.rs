//! Incremental decoding with the key/value cache gives the same next-token
//! log-probabilities as a full forward pass over each row alone, for Llama,
//! Mistral (sliding window) and Command R models, with left-padded rows of
//! different lengths in one batch; and generation on top of it (greedy
//! through the cache = greedy without it, stop tokens, seeds).

use burn::backend::NdArray;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use daa_core::TokenStatsParams;
use daa_core::sampling::SamplingParams;
use daa_train::generate::{FinishReason, GenerationConfig, GenerationRequest, generate, request_seed};
use daa_train::model::tiny_configs::{cohere_config, llama_config};
use daa_train::model::{CausalLm, KvCache, ModelConfig, Positions, RandomWeights};
use serde_json::{Value, json};

type B = NdArray<f32>;
const VOCAB: usize = 50;
/// Each row's prompt lengths differ; the rows are left-padded to the longest.
const PROMPTS: [usize; 3] = [7, 3, 5];
/// |a − b| ≤ TOLERANCE·(1 + |b|) between log-probabilities of the same row
/// computed in batches of different shapes: burn's ndarray matmul rounds
/// differently with the batch's shape (a row alone vs the same row
/// right-padded in a batch of three differ by up to 1.6e-4 here, no padding
/// logic involved), as in the trainer's comparison with the f64 reference.
const TOLERANCE: f32 = 3e-4;
/// Tokens decoded after the prompt: one at a time, then two at once.
const DECODED: usize = 5;

fn model(config: &Value) -> CausalLm<B> {
    let config = ModelConfig::from_json(&config.to_string()).unwrap();
    CausalLm::from_weights(&config, &mut RandomWeights { seed: 3, std: 0.2 }, &Default::default()).unwrap()
}

/// Row `r`'s tokens: prompt then the tokens decoding will feed.
fn row(r: usize) -> Vec<i64> {
    (0..PROMPTS[r] + DECODED).map(|i| ((i * 7 + r * 13 + 1) % (VOCAB - 1) + 1) as i64).collect()
}

/// Next-token log-probabilities `[len, V]` of one row run alone from position 0.
fn alone(model: &CausalLm<B>, ids: &[i64]) -> Vec<f32> {
    let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(ids.to_vec(), [1, ids.len()]), &Default::default());
    log_softmax(model.forward(tokens).unwrap(), 2).into_data().into_vec().unwrap()
}

/// Log-probabilities `[rows, V]` at the last column of `hidden`.
fn last_column(model: &CausalLm<B>, hidden: Tensor<B, 3>) -> Vec<f32> {
    let [rows, seq, d] = hidden.dims();
    let last = hidden.narrow(1, seq - 1, 1).reshape([rows, d]);
    log_softmax(model.head(last), 1).into_data().into_vec().unwrap()
}

fn batch(columns: Vec<Vec<i64>>) -> Tensor<B, 2, Int> {
    let (rows, seq) = (columns.len(), columns[0].len());
    Tensor::from_data(TensorData::new(columns.concat(), [rows, seq]), &Default::default())
}

fn assert_rows_match(name: &str, got: &[f32], want: &[Vec<f32>], positions: &[usize], what: &str) {
    for (r, (&p, want)) in positions.iter().zip(want).enumerate() {
        let want = &want[p * VOCAB..(p + 1) * VOCAB];
        let have = &got[r * VOCAB..(r + 1) * VOCAB];
        for (t, (a, b)) in have.iter().zip(want).enumerate() {
            assert!(
                (a - b).abs() < TOLERANCE * (1.0 + b.abs()),
                "{name} {what}: row {r} position {p} token {t}: {a} vs {b}"
            );
        }
    }
}

fn check(name: &str, config: Value) {
    let model = model(&config);
    let rows: Vec<Vec<i64>> = (0..PROMPTS.len()).map(row).collect();
    let want: Vec<Vec<f32>> = rows.iter().map(|ids| alone(&model, ids)).collect();
    let longest = *PROMPTS.iter().max().unwrap();
    let pads: Vec<usize> = PROMPTS.iter().map(|&p| longest - p).collect();
    let positions = Positions::left_padded(pads.clone());
    let mut cache = KvCache::new(model.config().num_layers);

    // The prompts, left-padded (padding ids are arbitrary: they are never attended to).
    let prompt: Vec<Vec<i64>> =
        rows.iter().enumerate().map(|(r, ids)| [vec![9; pads[r]], ids[..PROMPTS[r]].to_vec()].concat()).collect();
    let hidden = model.hidden(batch(prompt), &positions, Some(&mut cache)).unwrap();
    let at: Vec<usize> = PROMPTS.iter().map(|&p| p - 1).collect();
    assert_rows_match(name, &last_column(&model, hidden), &want, &at, "prompt");
    assert_eq!(cache.len(), longest);

    // One token at a time.
    for s in 0..DECODED - 2 {
        let next: Vec<Vec<i64>> = rows.iter().enumerate().map(|(r, ids)| vec![ids[PROMPTS[r] + s]]).collect();
        let hidden = model.hidden(batch(next), &positions, Some(&mut cache)).unwrap();
        let at: Vec<usize> = PROMPTS.iter().map(|&p| p + s).collect();
        assert_rows_match(name, &last_column(&model, hidden), &want, &at, "one token");
    }
    // Two tokens at once on top of the cache.
    let s = DECODED - 2;
    let next: Vec<Vec<i64>> =
        rows.iter().enumerate().map(|(r, ids)| ids[PROMPTS[r] + s..PROMPTS[r] + s + 2].to_vec()).collect();
    let hidden = model.hidden(batch(next), &positions, Some(&mut cache)).unwrap();
    let at: Vec<usize> = PROMPTS.iter().map(|&p| p + s + 1).collect();
    assert_rows_match(name, &last_column(&model, hidden), &want, &at, "two tokens");
    assert_eq!(cache.len(), longest + DECODED);

    // A cache of other rows is refused.
    let e = model.hidden(batch(vec![vec![1]]), &Positions::from_zero(), Some(&mut cache)).unwrap_err().to_string();
    assert!(e.contains("cache holds 3 rows"), "{e}");
}

#[test]
fn cached_decoding_matches_a_full_forward_pass_with_left_padding() {
    check("llama", llama_config(VOCAB, 32, 2));
    let mut mistral = llama_config(VOCAB, 32, 2);
    mistral["architectures"] = json!(["MistralForCausalLM"]);
    mistral["model_type"] = json!("mistral");
    mistral["sliding_window"] = json!(4);
    check("mistral", mistral);
    check("command-r", cohere_config(VOCAB, 32, 2));
}

#[test]
fn left_padding_leaves_every_real_position_unchanged() {
    // Without a cache: a left-padded batch gives each row's own log-probabilities at every real position.
    let model = model(&llama_config(VOCAB, 32, 2));
    let rows: Vec<Vec<i64>> = (0..PROMPTS.len()).map(row).collect();
    let longest = rows.iter().map(Vec::len).max().unwrap();
    let pads: Vec<usize> = rows.iter().map(|r| longest - r.len()).collect();
    let padded: Vec<Vec<i64>> = rows.iter().zip(&pads).map(|(r, &p)| [vec![0; p], r.clone()].concat()).collect();
    let hidden = model.hidden(batch(padded), &Positions::left_padded(pads.clone()), None).unwrap();
    let got: Vec<f32> = log_softmax(model.head(hidden), 2).into_data().into_vec().unwrap();
    for (r, ids) in rows.iter().enumerate() {
        let want = alone(&model, ids);
        for p in 0..ids.len() {
            let at = (r * longest + pads[r] + p) * VOCAB;
            for t in 0..VOCAB {
                let (a, b) = (got[at + t], want[p * VOCAB + t]);
                assert!((a - b).abs() < TOLERANCE * (1.0 + b.abs()), "row {r} position {p} token {t}: {a} vs {b}");
            }
        }
    }
    // A row made only of padding is refused.
    let e = model
        .hidden(batch(vec![vec![1, 2], vec![0, 0]]), &Positions::left_padded(vec![0, 2]), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("row 1 has 2 columns of left padding"), "{e}");
}

/// Greedy decoding without a cache: each step runs the whole row from
/// position 0 and takes the arg-max of the last position (lowest id on ties).
fn greedy_without_cache(model: &CausalLm<B>, prompt: &[u32], steps: usize) -> (Vec<u32>, Vec<f32>) {
    let mut ids: Vec<i64> = prompt.iter().map(|&t| i64::from(t)).collect();
    let (mut tokens, mut logprobs) = (Vec::new(), Vec::new());
    for _ in 0..steps {
        let all = alone(model, &ids);
        let last = &all[(ids.len() - 1) * VOCAB..ids.len() * VOCAB];
        let (best, lp) =
            last.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
        tokens.push(best as u32);
        logprobs.push(lp);
        ids.push(best as i64);
    }
    (tokens, logprobs)
}

fn prompts() -> Vec<Vec<u32>> {
    (0..PROMPTS.len()).map(|r| row(r)[..PROMPTS[r]].iter().map(|&t| t as u32).collect()).collect()
}

#[test]
fn cached_sampling_at_temperature_zero_is_greedy_decoding_without_the_cache() {
    let model = model(&llama_config(VOCAB, 32, 2));
    let prompts = prompts();
    let requests: Vec<GenerationRequest> =
        prompts.iter().enumerate().map(|(r, p)| GenerationRequest { prompt: p, seed: r as u64 }).collect();
    let steps = 8;
    let want: Vec<(Vec<u32>, Vec<f32>)> = prompts.iter().map(|p| greedy_without_cache(&model, p, steps)).collect();
    for temperature in [0.0, 1e-6] {
        let config = GenerationConfig {
            sampling: SamplingParams { temperature, top_p: 1.0 },
            max_new_tokens: steps,
            stop_tokens: vec![],
            topk_stats: Some(TokenStatsParams { k: 10, entropy_base: 2.0 }),
        };
        let got = generate(&model, &requests, &config, &Default::default()).unwrap();
        for (r, (g, (tokens, logprobs))) in got.iter().zip(&want).enumerate() {
            assert_eq!(&g.tokens, tokens, "temperature {temperature}, row {r}");
            assert_eq!(g.finish, FinishReason::Length);
            for (a, b) in g.logprobs.iter().zip(logprobs) {
                assert!((*a as f32 - b).abs() < TOLERANCE * (1.0 + b.abs()), "row {r}: {a} vs {b}");
            }
            let stats = g.stats.unwrap();
            assert_eq!(stats.positions, steps);
            let mass = stats.topk_mass_sum / steps as f64;
            assert!(mass > 0.0 && mass <= 1.0 + 1e-6, "row {r}: mean top-k mass {mass}");
        }
    }

    // A stop token ends its row (kept in the output); the others go on.
    let stop = want[0].0[2];
    let config = GenerationConfig {
        sampling: SamplingParams::GREEDY,
        max_new_tokens: steps,
        stop_tokens: vec![stop],
        topk_stats: None,
    };
    let got = generate(&model, &requests, &config, &Default::default()).unwrap();
    let first_stop = want[0].0.iter().position(|&t| t == stop).unwrap();
    assert_eq!(got[0].tokens, want[0].0[..=first_stop].to_vec());
    assert_eq!(got[0].finish, FinishReason::Stop);
    for (g, (tokens, _)) in got.iter().zip(&want) {
        match tokens.iter().position(|&t| t == stop) {
            Some(i) => assert_eq!(g.tokens, tokens[..=i].to_vec()),
            None => assert_eq!((&g.tokens, g.finish), (tokens, FinishReason::Length)),
        }
    }
}

#[test]
fn a_requests_sample_does_not_depend_on_its_batch() {
    let model = model(&cohere_config(VOCAB, 32, 2));
    let prompts = prompts();
    let config = GenerationConfig {
        sampling: SamplingParams { temperature: 1.0, top_p: 0.9 },
        max_new_tokens: 6,
        stop_tokens: vec![],
        topk_stats: None,
    };
    let requests: Vec<GenerationRequest> =
        prompts.iter().enumerate().map(|(r, p)| GenerationRequest { prompt: p, seed: request_seed(7, r, 0) }).collect();
    let together = generate(&model, &requests, &config, &Default::default()).unwrap();
    for (r, request) in requests.iter().enumerate() {
        let alone = generate(&model, std::slice::from_ref(request), &config, &Default::default()).unwrap();
        assert_eq!(alone[0].tokens, together[r].tokens, "row {r}");
    }
    // Other seeds draw other samples (six tokens over 50 at temperature 1).
    let other: Vec<GenerationRequest> =
        prompts.iter().enumerate().map(|(r, p)| GenerationRequest { prompt: p, seed: request_seed(7, r, 1) }).collect();
    let again = generate(&model, &other, &config, &Default::default()).unwrap();
    assert!(again.iter().zip(&together).any(|(a, b)| a.tokens != b.tokens));
    // Bad requests are named.
    let bad = [GenerationRequest { prompt: &[1, 99], seed: 0 }];
    let e = generate(&model, &bad, &config, &Default::default()).unwrap_err().to_string();
    assert!(e.contains("request 0") && e.contains("99"), "{e}");
}
