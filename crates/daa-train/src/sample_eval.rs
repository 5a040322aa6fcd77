//! Evaluation on the policy's own samples: what the paper measures and the
//! teacher-forced evaluation ([`crate::eval`]) cannot see.
//!
//! For held-out prompts `x_1 … x_n`, one sample `y_i ~ π(·|x_i)` each (the
//! evaluation's temperature and nucleus; the same seed per prompt at every
//! evaluation, so curves move with the policy, not with the draws) and the
//! reference policy's sample `c_i` for the same prompt (drawn once, before
//! training), a judge's rewards `r(x, y)`:
//!
//! - `eval/win_prob` `= (1/n) Σ σ(r(x_i, y_i) − r(x_i, c_i))`, `eval/win_rate`
//!   the fraction strictly better (daa-core's [`daa_core::win_probability`]);
//! - `eval/gold_reward`: the mean judge reward of the samples (the gold
//!   reward in the testbed, a reward model's score otherwise);
//! - `eval/kl`, `eval/kl_se`: `KL(π‖π_ref)` per sequence and its standard
//!   error, on a second draw from the policy itself (temperature 1, no
//!   nucleus; the same prompts, another seed stream): the mean over samples
//!   of the per-token divergences summed over each sample's completion,
//!   `Σ_t Σ_v p_t(v) log(p_t(v)/q_t(v))` ([`crate::policy_kl`],
//!   [`daa_core::kl`]): never negative, low variance. This draw costs one
//!   more generation and a teacher-forced pass of both models per evaluation;
//! - `eval/kl_sequence`, `eval/kl_sequence_se`: the sequence estimator
//!   `(1/n) Σ [log π(y_j|x_j) − log π_ref(y_j|x_j)]` on the same draw
//!   (unbiased too, noisier, negative sample by sample);
//! - `eval/tempered_log_ratio`: the same mean log-ratio over the
//!   evaluation's own samples (its temperature and nucleus): not the
//!   policy's KL (the samples come from a sharpened, truncated `π`), and it
//!   can be negative;
//! - `eval/ead_1 … eval/ead_5` and their mean `eval/ead`: expectation-adjusted
//!   distinct n-grams of the samples' tokens across prompts, over the model's
//!   vocabulary (`Vⁿ` for n-grams; [`daa_core::diversity`]);
//! - `eval/sample_topk_entropy`, `eval/sample_topk_mass`: the indicators at
//!   every generated position, averaged over positions;
//! - `eval/length`: mean generated tokens, the stop token left out.

use std::ops::Range;

use burn::tensor::backend::Backend;
use daa_core::diversity::ead_up_to;
use daa_core::kl::{kl_from_token_sums, mean_log_ratio, mean_with_standard_error};
use daa_core::sampling::SamplingParams;
use daa_core::win_probability::win_stats;
use serde::{Deserialize, Serialize};

use crate::batch::{Sequence, TokenBatch};
use crate::error::{ModelError, read_vec};
use crate::eval::Figure;
use crate::generate::{
    FinishReason, Generated, GenerationConfig, GenerationRequest, generate_in_batches, request_seed,
};
use crate::judge::{Judge, Judged};
use crate::model::CausalLm;
use crate::objective::sequence_logps;
use crate::policy_kl::{SampleKl, sample_kl};

/// XORed into the evaluation's seed for the KL draw: its own random stream.
const KL_STREAM: u64 = 0x4B4C_0000_5EED_D1CE;

/// The figures of one sample evaluation; the serde names are the metric
/// names of `metrics.jsonl`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SampleReport {
    /// `P_win` against the reference policy's samples.
    #[serde(rename = "eval/win_prob")]
    pub win_prob: f64,
    /// Fraction of prompts where the sample is strictly better.
    #[serde(rename = "eval/win_rate")]
    pub win_rate: f64,
    /// Mean judge reward of the samples.
    #[serde(rename = "eval/gold_reward")]
    pub gold_reward: f64,
    /// `KL(π‖π_ref)` per sequence (nats): per-token divergences on the
    /// policy's own samples at temperature 1 (module documentation).
    #[serde(rename = "eval/kl")]
    pub kl: f64,
    /// Standard error of [`Self::kl`] over the samples.
    #[serde(rename = "eval/kl_se", default, skip_serializing_if = "Option::is_none")]
    pub kl_se: Option<f64>,
    /// The sequence estimator of the same KL on the same samples.
    #[serde(rename = "eval/kl_sequence", default, skip_serializing_if = "Option::is_none")]
    pub kl_sequence: Option<f64>,
    /// Standard error of [`Self::kl_sequence`].
    #[serde(rename = "eval/kl_sequence_se", default, skip_serializing_if = "Option::is_none")]
    pub kl_sequence_se: Option<f64>,
    /// Mean `log π(y) − log π_ref(y)` over the evaluation's tempered samples
    /// (not a KL; module documentation).
    #[serde(rename = "eval/tempered_log_ratio", default, skip_serializing_if = "Option::is_none")]
    pub tempered_log_ratio: Option<f64>,
    /// EAD of unigrams.
    #[serde(rename = "eval/ead_1")]
    pub ead_1: f64,
    /// EAD of bigrams.
    #[serde(rename = "eval/ead_2")]
    pub ead_2: f64,
    /// EAD of trigrams.
    #[serde(rename = "eval/ead_3")]
    pub ead_3: f64,
    /// EAD of 4-grams.
    #[serde(rename = "eval/ead_4")]
    pub ead_4: f64,
    /// EAD of 5-grams.
    #[serde(rename = "eval/ead_5")]
    pub ead_5: f64,
    /// Mean of `ead_1 … ead_5`.
    #[serde(rename = "eval/ead")]
    pub ead: f64,
    /// Mean top-k entropy at generated positions.
    #[serde(rename = "eval/sample_topk_entropy")]
    pub sample_topk_entropy: f64,
    /// Mean top-k mass at generated positions.
    #[serde(rename = "eval/sample_topk_mass")]
    pub sample_topk_mass: f64,
    /// Mean generated length in tokens (the stop token left out).
    #[serde(rename = "eval/length")]
    pub length: f64,
}

/// A figure of [`SampleReport`] that charts and summaries show.
pub type SampleFigure = Figure<SampleReport>;

impl SampleReport {
    /// The figures people watch, in the order charts and tables show them.
    pub const FIGURES: [SampleFigure; 9] = [
        SampleFigure::new("win probability", |r| r.win_prob).with_peak(),
        SampleFigure::new("gold reward", |r| r.gold_reward).with_peak(),
        SampleFigure::new("KL(π‖π_ref) per sample", |r| r.kl).with_standard_error(|r| r.kl_se),
        SampleFigure::new("EAD (n = 1…5)", |r| r.ead).with_peak(),
        SampleFigure::new("sample top-k entropy", |r| r.sample_topk_entropy).with_peak(),
        SampleFigure::new("sample top-k mass", |r| r.sample_topk_mass).with_peak(),
        SampleFigure::new("sample length", |r| r.length),
        SampleFigure::new("win rate", |r| r.win_rate).with_peak(),
        SampleFigure::new("tempered log-ratio (not a KL)", |r| r.tempered_log_ratio.unwrap_or(f64::NAN)),
    ];
}

/// A held-out prompt: its token ids and the text the judge reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalPrompt {
    /// Prompt token ids (chat template applied).
    pub ids: Vec<u32>,
    /// The prompt's text for the judge (a conversation's last user message).
    pub text: String,
}

/// Turns generated ids into text (the tokenizer's decode, special tokens left out).
pub type Decode<'a> = dyn Fn(&[u32]) -> Result<String, ModelError> + 'a;

/// Samples, their texts and their judge rewards.
#[derive(Debug)]
struct JudgedSamples {
    samples: Vec<Generated>,
    texts: Vec<String>,
    rewards: Vec<f64>,
}

/// One held-out prompt's samples at one evaluation: a line of a run's
/// `samples.jsonl` (with the step).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluatedSample {
    /// The prompt's position among the evaluation's held-out prompts.
    pub index: usize,
    /// The prompt's text as the judge reads it.
    pub prompt: String,
    /// The policy's sample (the evaluation's temperature and nucleus).
    pub completion: String,
    /// The reference policy's sample for the same prompt (drawn once,
    /// before training: the same at every evaluation).
    pub reference_completion: String,
    /// The judge's reward of `completion` (the gold reward in the testbed).
    pub reward: f64,
    /// The judge's reward of `reference_completion`.
    pub reference_reward: f64,
    /// `log π(y|x) − log π_ref(y|x)` of `completion` (nats): this sample's
    /// term of `eval/tempered_log_ratio`.
    #[serde(deserialize_with = "null_as_nan")]
    pub log_ratio: f64,
    /// `Σ_t KL(π_t ‖ π_ref,t)` over this prompt's temperature-1 draw (nats):
    /// its term of `eval/kl` (module documentation).
    #[serde(deserialize_with = "null_as_nan")]
    pub kl: f64,
    /// Generated tokens of `completion`, the stop token left out.
    pub length: usize,
    /// Generated tokens of `reference_completion`, the stop token left out.
    pub reference_length: usize,
    /// Why `completion` ended.
    pub finish: FinishReason,
    /// Why `reference_completion` ended.
    pub reference_finish: FinishReason,
}

/// JSON writes a non-finite number as `null`; it reads back as NaN.
fn null_as_nan<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN))
}

/// One prompt's part of a sample evaluation, as a rank computes it for its
/// slice of the prompts and sends it to the others (values as f64 bits:
/// exact through JSON, NaN and infinities included).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptSample {
    /// The prompt's index among the evaluation's prompts.
    pub index: usize,
    /// The sample's tokens, stop tokens left out.
    pub body: Vec<u32>,
    /// The sample's text.
    pub text: String,
    /// Why the sample ended.
    pub finish: FinishReason,
    /// The judge's reward (f64 bits).
    pub reward: u64,
    /// `log π(y|x)` of the sample (f64 bits).
    pub policy_logp: u64,
    /// `log π_ref(y|x)` of the sample (f64 bits).
    pub reference_logp: u64,
    /// `Σ_t KL_t` of the prompt's temperature-1 draw (f64 bits).
    pub token_kl: u64,
    /// `log π − log π_ref` of that draw (f64 bits).
    pub kl_log_ratio: u64,
    /// Sums of top-k entropy and mass (f64 bits) over the sample's positions, and their count.
    pub stats: Option<(u64, u64, usize)>,
}

/// What one sample evaluation found: the figures and every prompt's samples.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleResults {
    /// The figures (`metrics.jsonl`).
    pub report: SampleReport,
    /// One entry per held-out prompt, in prompt order.
    pub samples: Vec<EvaluatedSample>,
}

/// How the evaluation samples.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleEvalSettings {
    /// Temperature, nucleus, length, stop tokens; `topk_stats` must be set.
    pub generation: GenerationConfig,
    /// Seed of the draws (the same at every evaluation).
    pub seed: u64,
    /// Prompts sampled together.
    pub batch_size: usize,
    /// Padding id for scoring.
    pub pad_id: u32,
}

/// Sample evaluation against a reference policy (module documentation).
#[derive(Debug)]
pub struct SampleEvaluator<B: Backend> {
    reference: CausalLm<B>,
    prompts: Vec<EvalPrompt>,
    settings: SampleEvalSettings,
    competitor: JudgedSamples,
}

impl<B: Backend> SampleEvaluator<B> {
    /// Draws the reference policy's samples for `prompts` and judges them.
    pub fn new(
        reference: CausalLm<B>,
        prompts: Vec<EvalPrompt>,
        mut settings: SampleEvalSettings,
        judge: &mut dyn Judge,
        decode: &Decode<'_>,
    ) -> Result<Self, ModelError> {
        if prompts.is_empty() {
            return Err(ModelError::Batch("sample evaluation needs at least one held-out prompt".into()));
        }
        if settings.generation.topk_stats.is_none() {
            return Err(ModelError::Batch("sample evaluation needs `topk_stats` in its generation settings".into()));
        }
        settings.batch_size = settings.batch_size.max(1);
        let seed = settings.seed;
        let none = JudgedSamples { samples: vec![], texts: vec![], rewards: vec![] };
        let mut evaluator = Self { reference, prompts, settings, competitor: none };
        // The competitor's draws use another stream than the policy's.
        let all = 0..evaluator.prompts.len();
        evaluator.competitor =
            evaluator.sample_and_judge(&evaluator.reference, seed ^ 0xC0FF_EE00_D15E_A5E5, all, judge, decode)?;
        Ok(evaluator)
    }

    /// The reference samples' mean reward (what `eval/gold_reward` starts near).
    pub fn competitor_mean_reward(&self) -> f64 {
        self.competitor.rewards.iter().sum::<f64>() / self.competitor.rewards.len() as f64
    }

    fn sample_and_judge(
        &self,
        model: &CausalLm<B>,
        seed: u64,
        prompts: Range<usize>,
        judge: &mut dyn Judge,
        decode: &Decode<'_>,
    ) -> Result<JudgedSamples, ModelError> {
        let samples = self.draw(model, seed, prompts.clone(), &self.settings.generation)?;
        let texts = samples.iter().map(|g| decode(&g.tokens)).collect::<Result<Vec<_>, _>>()?;
        let items: Vec<Judged> = self.prompts[prompts]
            .iter()
            .zip(&samples)
            .zip(&texts)
            .map(|((p, g), text)| Judged { prompt: &p.text, completion: text, ended: g.finish == FinishReason::Stop })
            .collect();
        let rewards = judge.rewards(&items)?;
        Ok(JudgedSamples { samples, texts, rewards })
    }

    /// One sample of `model` per prompt of `prompts` with `generation`,
    /// from `seed`'s stream (each prompt's draw seeded by its index among
    /// all the prompts: the same whichever rank draws it).
    fn draw(
        &self,
        model: &CausalLm<B>,
        seed: u64,
        prompts: Range<usize>,
        generation: &GenerationConfig,
    ) -> Result<Vec<Generated>, ModelError> {
        let device = model.embed.weight.device();
        let requests: Vec<GenerationRequest> = prompts
            .map(|i| GenerationRequest { prompt: &self.prompts[i].ids, seed: request_seed(seed, i, 0) })
            .collect();
        generate_in_batches(model, &requests, self.settings.batch_size, generation, &device, &mut |_| {})
    }

    /// Each prompt of `prompts` followed by its sample.
    fn sequences(&self, prompts: Range<usize>, samples: &[Generated]) -> Vec<Sequence> {
        self.prompts[prompts]
            .iter()
            .zip(samples)
            .map(|(p, g)| Sequence {
                ids: p.ids.iter().chain(&g.tokens).copied().collect(),
                completion_start: p.ids.len(),
            })
            .collect()
    }

    /// The per-sample KL sums of `samples` (one per prompt) under `policy`
    /// against the reference.
    fn sample_kl(
        &self,
        policy: &CausalLm<B>,
        prompts: Range<usize>,
        samples: &[Generated],
    ) -> Result<Vec<SampleKl>, ModelError> {
        let (batch, pad) = (self.settings.batch_size, self.settings.pad_id);
        sample_kl(policy, &self.reference, &self.sequences(prompts, samples), batch, pad, 0)
    }

    /// `log π_ref(y|x)` of each sample (one per prompt of `prompts`).
    fn reference_logps(&self, prompts: Range<usize>, samples: &[Generated]) -> Result<Vec<f64>, ModelError> {
        let device = self.reference.embed.weight.device();
        let vocab = self.reference.config().vocab_size;
        let sequences = self.sequences(prompts, samples);
        let mut out = Vec::with_capacity(sequences.len());
        for chunk in sequences.chunks(self.settings.batch_size) {
            let refs: Vec<&Sequence> = chunk.iter().collect();
            let batch = TokenBatch::new(&refs, self.settings.pad_id, vocab)?;
            let logps: Vec<f64> =
                read_vec(sequence_logps(&self.reference, &batch, &device)?, "reference log-probabilities")?;
            out.extend(logps);
        }
        Ok(out)
    }

    /// The KL draw's settings: the evaluation's length and stop tokens, from
    /// the policy itself (temperature 1, no nucleus), no statistics.
    fn kl_generation(&self) -> GenerationConfig {
        GenerationConfig {
            sampling: SamplingParams { temperature: 1.0, top_p: 1.0 },
            topk_stats: None,
            ..self.settings.generation.clone()
        }
    }

    /// The generated tokens of `sample` without stop tokens.
    fn body(&self, sample: &Generated) -> Vec<u32> {
        let stops = &self.settings.generation.stop_tokens;
        sample.tokens.iter().copied().filter(|t| !stops.contains(t)).collect()
    }

    /// How many held-out prompts the evaluation samples.
    pub fn prompt_count(&self) -> usize {
        self.prompts.len()
    }

    /// Samples `policy` on the held-out prompts and computes every figure,
    /// keeping each prompt's samples.
    pub fn evaluate(
        &self,
        policy: &CausalLm<B>,
        judge: &mut dyn Judge,
        decode: &Decode<'_>,
    ) -> Result<SampleResults, ModelError> {
        let part = self.evaluate_prompts(policy, judge, decode, 0..self.prompts.len())?;
        self.results_of(part)
    }

    /// The per-prompt part of [`Self::evaluate`] for the prompts `prompts`
    /// (a rank's slice): their samples, judge rewards, log-probabilities
    /// and KL draw. [`Self::results_of`] makes the figures from every
    /// prompt's part; each prompt's draws are seeded by its index, so the
    /// parts do not depend on how the prompts were divided (up to the
    /// numerics of other generation batches).
    pub fn evaluate_prompts(
        &self,
        policy: &CausalLm<B>,
        judge: &mut dyn Judge,
        decode: &Decode<'_>,
        prompts: Range<usize>,
    ) -> Result<Vec<PromptSample>, ModelError> {
        if prompts.is_empty() {
            return Ok(Vec::new());
        }
        let JudgedSamples { samples, texts, rewards } =
            self.sample_and_judge(policy, self.settings.seed, prompts.clone(), judge, decode)?;
        // The evaluation's own samples: their log-ratio, from the generation's
        // (untempered) log-probabilities and one reference pass.
        let reference_logps = self.reference_logps(prompts.clone(), &samples)?;
        let own = self.draw(policy, self.settings.seed ^ KL_STREAM, prompts.clone(), &self.kl_generation())?;
        let own = self.sample_kl(policy, prompts.clone(), &own)?;
        Ok(prompts
            .zip(samples)
            .zip(texts)
            .zip(rewards)
            .zip(reference_logps)
            .zip(own)
            .map(|(((((index, sample), text), reward), reference_logp), kl)| PromptSample {
                index,
                body: self.body(&sample),
                text,
                finish: sample.finish,
                reward: reward.to_bits(),
                policy_logp: sample.logprob().to_bits(),
                reference_logp: reference_logp.to_bits(),
                token_kl: kl.token_kl.to_bits(),
                kl_log_ratio: kl.log_ratio.to_bits(),
                stats: sample.stats.map(|s| (s.topk_entropy_sum.to_bits(), s.topk_mass_sum.to_bits(), s.positions)),
            })
            .collect())
    }

    /// Every figure from every prompt's part ([`Self::evaluate_prompts`],
    /// in any order, each prompt once).
    pub fn results_of(&self, mut parts: Vec<PromptSample>) -> Result<SampleResults, ModelError> {
        parts.sort_by_key(|p| p.index);
        if parts.len() != self.prompts.len() || parts.iter().enumerate().any(|(i, p)| p.index != i) {
            return Err(ModelError::Batch(format!(
                "a sample evaluation needs each of its {} prompts once; {} parts came",
                self.prompts.len(),
                parts.len()
            )));
        }
        let f = f64::from_bits;
        let rewards: Vec<f64> = parts.iter().map(|p| f(p.reward)).collect();
        let win = win_stats(&rewards, &self.competitor.rewards)?;
        let policy_logps: Vec<f64> = parts.iter().map(|p| f(p.policy_logp)).collect();
        let reference_logps: Vec<f64> = parts.iter().map(|p| f(p.reference_logp)).collect();
        let tempered = mean_log_ratio(&policy_logps, &reference_logps)?;
        let kl = kl_from_token_sums(&parts.iter().map(|p| f(p.token_kl)).collect::<Vec<_>>())?;
        let kl_sequence = mean_with_standard_error(
            &parts.iter().map(|p| f(p.kl_log_ratio)).collect::<Vec<_>>(),
            "sequence log-ratio",
        )?;
        let bodies: Vec<Vec<u32>> = parts.iter().map(|p| p.body.clone()).collect();
        let vocab = self.reference.config().vocab_size;
        let (per_n, ead) = ead_up_to(&bodies, 5, vocab)?;
        let (mut entropy, mut mass, mut positions) = (0.0, 0.0, 0usize);
        for (e, m, n) in parts.iter().filter_map(|p| p.stats) {
            entropy += f(e);
            mass += f(m);
            positions += n;
        }
        let n = parts.len() as f64;
        let per_position = |sum: f64| if positions == 0 { 0.0 } else { sum / positions as f64 };
        let competitor = &self.competitor;
        let kept = parts
            .iter()
            .map(|p| {
                let i = p.index;
                EvaluatedSample {
                    index: i,
                    prompt: self.prompts[i].text.clone(),
                    completion: p.text.clone(),
                    reference_completion: competitor.texts[i].clone(),
                    reward: rewards[i],
                    reference_reward: competitor.rewards[i],
                    log_ratio: policy_logps[i] - reference_logps[i],
                    kl: f(p.token_kl),
                    length: p.body.len(),
                    reference_length: self.body(&competitor.samples[i]).len(),
                    finish: p.finish,
                    reference_finish: competitor.samples[i].finish,
                }
            })
            .collect();
        let report = SampleReport {
            win_prob: win.win_prob,
            win_rate: win.win_rate,
            gold_reward: rewards.iter().sum::<f64>() / n,
            kl: kl.mean,
            kl_se: kl.standard_error,
            kl_sequence: Some(kl_sequence.mean),
            kl_sequence_se: kl_sequence.standard_error,
            tempered_log_ratio: Some(tempered.mean),
            ead_1: per_n[0].ead,
            ead_2: per_n[1].ead,
            ead_3: per_n[2].ead,
            ead_4: per_n[3].ead,
            ead_5: per_n[4].ead,
            ead,
            sample_topk_entropy: per_position(entropy),
            sample_topk_mass: per_position(mass),
            length: bodies.iter().map(Vec::len).sum::<usize>() as f64 / n,
        };
        Ok(SampleResults { report, samples: kept })
    }
}
