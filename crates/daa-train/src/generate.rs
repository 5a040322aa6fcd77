//! Text generation: batched sampling with the key/value cache.
//!
//! Prompts of different lengths are left-padded into one batch
//! ([`Positions::left_padded`]), so every row's next token sits in the last
//! column. The first call runs every prompt column through the model and
//! fills the [`KvCache`]; each later call feeds one column (the tokens just
//! sampled) and costs one position's work. The head is applied to the last
//! column only. Tokens are drawn by daa-core's [`sample_next`] (temperature,
//! nucleus; temperature 0 is greedy) from a SplitMix64 stream of each
//! request's own seed, so a request's sample does not depend on what else is
//! in its batch. A row stops at one of the stop tokens (kept in its output)
//! or after `max_new_tokens`; the batch stops when every row has.
//!
//! Optionally, the over-optimisation indicators are measured on the model's
//! own samples: top-k entropy and top-k mass (daa-core's `token_stats`) of
//! the next-token distribution at every generated position.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use daa_core::sampling::{SamplingParams, sample_next};
use daa_core::{Backend as _, Cpu, HostTensor, TokenStatsParams, TokenStatsRow};

use crate::error::{ModelError, read_vec};
use crate::model::{CausalLm, KvCache, Positions};
use crate::rng::{splitmix64, uniform_open};

/// How to sample.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Temperature and nucleus.
    pub sampling: SamplingParams,
    /// Tokens generated at most per row.
    pub max_new_tokens: usize,
    /// Tokens that end a row (EOS, end of turn).
    pub stop_tokens: Vec<u32>,
    /// Measure top-k entropy and mass at every generated position.
    pub topk_stats: Option<TokenStatsParams>,
}

/// One prompt to continue and the seed of its random stream.
#[derive(Debug, Clone, Copy)]
pub struct GenerationRequest<'a> {
    /// Prompt token ids (at least one).
    pub prompt: &'a [u32],
    /// Seed of this request's draws.
    pub seed: u64,
}

/// Why a row stopped (`"stop"`, `"length"` in files).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// It sampled a stop token.
    Stop,
    /// It reached `max_new_tokens`.
    Length,
}

/// Means of the indicators over a sample's generated positions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleStats {
    /// Sum of top-k entropy over generated positions.
    pub topk_entropy_sum: f64,
    /// Sum of top-k mass over generated positions.
    pub topk_mass_sum: f64,
    /// Generated positions measured.
    pub positions: usize,
}

/// One generated continuation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// Generated token ids (a final stop token included).
    pub tokens: Vec<u32>,
    /// `log π(token)` of each generated token under the model (untempered).
    pub logprobs: Vec<f64>,
    /// Why the row stopped.
    pub finish: FinishReason,
    /// Indicators on the generated positions, when asked for.
    pub stats: Option<SampleStats>,
}

impl Generated {
    /// `log π(y|x)`: the sum of the generated tokens' log-probabilities.
    pub fn logprob(&self) -> f64 {
        self.logprobs.iter().sum()
    }
}

/// Continues every request in one batch (see the module documentation).
pub fn generate<B: Backend>(
    model: &CausalLm<B>,
    requests: &[GenerationRequest<'_>],
    config: &GenerationConfig,
    device: &B::Device,
) -> Result<Vec<Generated>, ModelError> {
    config.sampling.validate()?;
    let vocab = model.config().vocab_size;
    for (r, request) in requests.iter().enumerate() {
        if request.prompt.is_empty() {
            return Err(ModelError::Batch(format!("request {r}: the prompt has no tokens")));
        }
        if let Some(&t) = request.prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(ModelError::Batch(format!(
                "request {r}: prompt token {t} is outside the vocabulary 0..{vocab}"
            )));
        }
    }
    let rows = requests.len();
    let mut out: Vec<Generated> = requests
        .iter()
        .map(|_| Generated {
            tokens: Vec::new(),
            logprobs: Vec::new(),
            finish: FinishReason::Length,
            stats: config.topk_stats.map(|_| SampleStats { topk_entropy_sum: 0.0, topk_mass_sum: 0.0, positions: 0 }),
        })
        .collect();
    if rows == 0 || config.max_new_tokens == 0 {
        return Ok(out);
    }
    let longest = requests.iter().map(|r| r.prompt.len()).max().unwrap_or(0);
    let pads: Vec<usize> = requests.iter().map(|r| longest - r.prompt.len()).collect();
    let mut columns: Vec<i64> = Vec::with_capacity(rows * longest);
    for (request, &pad) in requests.iter().zip(&pads) {
        columns.extend(std::iter::repeat_n(0, pad));
        columns.extend(request.prompt.iter().map(|&t| i64::from(t)));
    }
    let positions = Positions::left_padded(pads);
    let mut cache = KvCache::new(model.config().num_layers);
    let mut streams: Vec<u64> = requests.iter().map(|r| r.seed).collect();
    let mut active: Vec<bool> = vec![true; rows];
    let mut input = Tensor::<B, 2, Int>::from_data(TensorData::new(columns, [rows, longest]), device);
    let cpu = Cpu::new();
    for _ in 0..config.max_new_tokens {
        let hidden = model.hidden(input, &positions, Some(&mut cache))?;
        let [_, seq, d] = hidden.dims();
        let logits = model.head(hidden.narrow(1, seq - 1, 1).reshape([rows, d]));
        let logits: Vec<f32> = read_vec(logits, "next-token logits")?;
        if let Some(params) = &config.topk_stats {
            add_stats(&cpu, &logits, vocab, &active, params, &mut out)?;
        }
        let mut next = Vec::with_capacity(rows);
        for r in 0..rows {
            let row = &logits[r * vocab..(r + 1) * vocab];
            if !active[r] {
                next.push(0);
                continue;
            }
            let uniform = uniform_open(&mut streams[r]);
            let sampled = sample_next(row, &config.sampling, uniform, r)?;
            out[r].tokens.push(sampled.token);
            out[r].logprobs.push(sampled.logprob);
            if config.stop_tokens.contains(&sampled.token) {
                out[r].finish = FinishReason::Stop;
                active[r] = false;
            }
            next.push(i64::from(sampled.token));
        }
        if !active.iter().any(|&a| a) {
            break;
        }
        input = Tensor::from_data(TensorData::new(next, [rows, 1]), device);
    }
    Ok(out)
}

/// [`generate`] over `requests`, `batch_size` at a time, in order;
/// `progress(done)` after each batch. Batches of similar prompt lengths pad
/// less: callers may order the requests (the output follows their order,
/// and seeds keep each sample independent of its batch).
pub fn generate_in_batches<B: Backend>(
    model: &CausalLm<B>,
    requests: &[GenerationRequest<'_>],
    batch_size: usize,
    config: &GenerationConfig,
    device: &B::Device,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<Generated>, ModelError> {
    let mut out = Vec::with_capacity(requests.len());
    for chunk in requests.chunks(batch_size.max(1)) {
        out.extend(generate(model, chunk, config, device)?);
        progress(out.len());
    }
    Ok(out)
}

/// Adds the indicators of the active rows' next-token distributions.
fn add_stats(
    cpu: &Cpu,
    logits: &[f32],
    vocab: usize,
    active: &[bool],
    params: &TokenStatsParams,
    out: &mut [Generated],
) -> Result<(), ModelError> {
    let live: Vec<usize> = (0..active.len()).filter(|&r| active[r]).collect();
    let rows: Vec<f32> = live.iter().flat_map(|&r| logits[r * vocab..(r + 1) * vocab].iter().copied()).collect();
    let logits = HostTensor::from_f32(rows, &[live.len(), vocab])?;
    let targets = HostTensor::from_i64(vec![0; live.len()], &[live.len()])?;
    let stats = cpu.token_stats(&cpu.upload(&logits)?, &cpu.upload(&targets)?, None, params)?;
    for (&r, row) in live.iter().zip(TokenStatsRow::rows_of(&cpu.download(&stats)?)?) {
        if let Some(s) = out[r].stats.as_mut() {
            s.topk_entropy_sum += f64::from(row.topk_entropy);
            s.topk_mass_sum += f64::from(row.topk_mass);
            s.positions += 1;
        }
    }
    Ok(())
}

/// A request's seed for sample `sample` of prompt `prompt` under a run seed:
/// distinct streams for every (prompt, sample), the same whatever the batch.
pub fn request_seed(run_seed: u64, prompt: usize, sample: usize) -> u64 {
    let mut state = run_seed ^ (prompt as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    state = splitmix64(&mut state) ^ (sample as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    splitmix64(&mut state)
}
