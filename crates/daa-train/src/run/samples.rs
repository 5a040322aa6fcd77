//! A run's evaluation on the policy's own samples (`[monitor.samples]`):
//! the judge (the gold reward or a reward model), the held-out prompts it
//! reads, and the reference policy's samples drawn once to compare against.

use std::collections::HashMap;

use anyhow::{Context, Result, bail};
use burn::tensor::backend::Backend;
use daa_core::sampling::SamplingParams;

use super::config::{SampleSection, TrainConfig};
use super::prepare::Prepared;
use crate::checkpoint::load_model;
use crate::data::Prompt;
use crate::distributed::{Collective, rank_slice};
use crate::error::ModelError;
use crate::generate::GenerationConfig;
use crate::judge::{GoldJudge, Judge};
use crate::model::CausalLm;
use crate::reward_model::RewardModelJudge;
use crate::sample_eval::{EvalPrompt, PromptSample, SampleEvalSettings, SampleEvaluator, SampleResults};

/// The sample evaluation of a run with `[monitor.samples]`: the judge and
/// the reference policy's samples of the first held-out prompts.
pub(crate) struct SampleEvaluation<B: Backend> {
    evaluator: SampleEvaluator<B>,
    judge: Box<dyn Judge>,
}

impl<B: Backend> SampleEvaluation<B> {
    /// The reference samples' mean judge reward.
    pub fn competitor_reward(&self) -> f64 {
        self.evaluator.competitor_mean_reward()
    }

    /// The sample figures of `policy`, and its samples: with several ranks
    /// each samples and judges its contiguous slice of the prompts, the
    /// parts are exchanged, and every rank computes the same figures
    /// (every rank must call it).
    pub fn report(
        &mut self,
        policy: &CausalLm<B>,
        prepared: &Prepared,
        collective: Option<&mut dyn Collective>,
    ) -> Result<SampleResults> {
        let decode = |ids: &[u32]| decode(prepared, ids);
        let Some(c) = collective.filter(|c| c.world_size() > 1) else {
            return Ok(self.evaluator.evaluate(policy, self.judge.as_mut(), &decode)?);
        };
        let (rank, world) = (c.rank(), c.world_size());
        let mine = rank_slice(self.evaluator.prompt_count(), rank, world);
        let part = self.evaluator.evaluate_prompts(policy, self.judge.as_mut(), &decode, mine);
        // A rank that failed sends an empty message: every rank stops, naming it.
        let mut parts = Vec::with_capacity(self.evaluator.prompt_count());
        let mut failed = Vec::new();
        for from in 0..world {
            let mut bytes = match (&part, from == rank) {
                (Ok(part), true) => serde_json::to_vec(part)?,
                _ => Vec::new(),
            };
            c.broadcast_bytes(from, &mut bytes).context("exchanging the ranks' samples")?;
            match bytes.is_empty() {
                true if !rank_slice(self.evaluator.prompt_count(), from, world).is_empty() => failed.push(from),
                true => {}
                false => parts.extend(
                    serde_json::from_slice::<Vec<PromptSample>>(&bytes)
                        .with_context(|| format!("rank {from}'s samples"))?,
                ),
            }
        }
        // This rank's own error first; else the ranks that failed.
        part.map(drop)?;
        if !failed.is_empty() {
            bail!("the sample evaluation failed on rank(s) {failed:?} (their errors say why)");
        }
        Ok(self.evaluator.results_of(parts)?)
    }
}

/// The sample evaluation of `[monitor.samples]` (`s`): the judge (the gold
/// reward, or the prepared reward model), and the
/// reference policy's samples of the first held-out prompts (from
/// `frozen_reference` when the run keeps one, else loaded).
pub(crate) fn sample_evaluation<B: Backend>(
    config: &TrainConfig,
    s: &SampleSection,
    prepared: &Prepared,
    frozen_reference: Option<CausalLm<B>>,
    device: &B::Device,
) -> Result<SampleEvaluation<B>> {
    let mut judge: Box<dyn Judge> = match &prepared.reward_model {
        None => Box::new(GoldJudge),
        Some(dir) => Box::new(
            RewardModelJudge::<B>::open(dir, s.batch_size, device)
                .with_context(|| format!("`monitor.samples.judge` {}", dir.display()))?,
        ),
    };
    let prompts = judge_prompts(prepared, s.prompts)?;
    let settings = SampleEvalSettings {
        generation: GenerationConfig {
            sampling: SamplingParams { temperature: s.temperature, top_p: s.top_p },
            max_new_tokens: s.max_new_tokens,
            stop_tokens: prepared.encoder.stop_ids.clone(),
            topk_stats: Some(config.monitor.stats_params()),
        },
        seed: s.seed,
        batch_size: s.batch_size,
        pad_id: prepared.encoder.pad_id,
    };
    // The run's frozen reference when it keeps one (tensors shared, not copied).
    let reference: CausalLm<B> = match frozen_reference {
        Some(frozen) => frozen,
        None => load_model(&prepared.model_dir, device)?,
    };
    let decode = |ids: &[u32]| decode(prepared, ids);
    let evaluator = SampleEvaluator::new(reference, prompts, settings, judge.as_mut(), &decode)
        .context("sampling the reference policy for the evaluation")?;
    Ok(SampleEvaluation { evaluator, judge })
}

/// The first `count` held-out pairs' prompts: their token ids and the text
/// a judge reads (from the data file's rows).
fn judge_prompts(prepared: &Prepared, count: usize) -> Result<Vec<EvalPrompt>> {
    let source = prepared.held_out_source();
    let texts: HashMap<usize, String> = source
        .read_rows()?
        .into_iter()
        .filter_map(|r| {
            let prompt = Prompt::parse(r.value.as_ref().ok()?).ok()?;
            Some((r.row, prompt.judge_text()?.to_string()))
        })
        .collect();
    let prompts: Vec<EvalPrompt> = prepared
        .eval
        .iter()
        .take(count)
        .map(|p| {
            let chosen = &p.pair.chosen;
            Ok(EvalPrompt {
                ids: chosen.ids[..chosen.completion_start].to_vec(),
                text: texts
                    .get(&p.row)
                    .cloned()
                    .with_context(|| format!("{}: row {}: no prompt text for the judge", source.describe(), p.row))?,
            })
        })
        .collect::<Result<_>>()?;
    if prompts.is_empty() {
        bail!("`monitor.samples` needs held-out pairs, and the held-out set is empty");
    }
    Ok(prompts)
}

fn decode(prepared: &Prepared, ids: &[u32]) -> Result<String, ModelError> {
    prepared.encoder.decode(ids).map_err(|e| ModelError::Batch(format!("{e:#}")))
}
