//! What a run does with its evaluations besides logging them: samples
//! judged against the reference policy (with `[monitor.samples]`), and the
//! reaction to the indicators ([`IndicatorMonitor`]: turning points, the
//! `best-indicator/` checkpoint, early stopping, the adaptive regulariser).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::tensor::backend::Backend;
use daa_core::preference::PreferenceLossParams;
use daa_core::sampling::SamplingParams;

use super::config::{SampleSection, TrainConfig};
use super::prepare::Prepared;
use crate::checkpoint::load_model;
use crate::data::{Prompt, read_rows};
use crate::error::ModelError;
use crate::generate::GenerationConfig;
use crate::judge::{GoldJudge, Judge};
use crate::model::CausalLm;
use crate::monitor::{IndicatorMonitor, MonitorDecision};
use crate::records::EvalRecord;
use crate::reward_model::RewardModelJudge;
use crate::sample_eval::{EvalPrompt, SampleEvalSettings, SampleEvaluator, SampleReport};
use crate::schedule::Coefficients;

/// The run's monitor.
pub(crate) struct RunMonitor<B: Backend> {
    indicators: IndicatorMonitor,
    samples: Option<(SampleEvaluator<B>, Box<dyn Judge>)>,
}

impl<B: Backend> RunMonitor<B> {
    /// Builds the detector, the regulariser and, with `[monitor.samples]`,
    /// the judge and the reference policy's samples (from `frozen_reference`
    /// when the run keeps one in memory, else loaded from the checkpoint).
    pub fn new(
        config: &TrainConfig,
        prepared: &Prepared,
        base_loss: PreferenceLossParams,
        frozen_reference: Option<CausalLm<B>>,
        device: &B::Device,
    ) -> Result<Self> {
        let indicators = IndicatorMonitor::new(
            config.monitor.turning.detector(),
            config.adaptive_config()?,
            base_loss,
            config.loss.nll_normalisation,
            config.monitor.early_stop,
        )?;
        let samples = match &config.monitor.samples {
            None => None,
            Some(settings) => Some(sample_evaluation(config, settings, prepared, frozen_reference, device)?),
        };
        Ok(Self { indicators, samples })
    }

    /// The reference samples' mean judge reward, with sample evaluation on.
    pub fn competitor_reward(&self) -> Option<f64> {
        self.samples.as_ref().map(|(e, _)| e.competitor_mean_reward())
    }

    /// The sample figures of `policy`, with sample evaluation on.
    pub fn sample_report(&mut self, policy: &CausalLm<B>, prepared: &Prepared) -> Result<Option<SampleReport>> {
        let Some((evaluator, judge)) = self.samples.as_mut() else {
            return Ok(None);
        };
        let decode = |ids: &[u32]| decode(prepared, ids);
        Ok(Some(evaluator.evaluate(policy, judge.as_mut(), &decode)?))
    }

    /// The NLL weight and β the next steps use, when adapted.
    pub fn coefficients(&self) -> Coefficients {
        self.indicators.coefficients()
    }

    /// Reads an evaluation: turning points, the regulariser's decision.
    pub fn after_eval(&mut self, record: &EvalRecord) -> Result<MonitorDecision> {
        Ok(self.indicators.observe(record.step, &record.report)?)
    }
}

/// The sample evaluation of `[monitor.samples]`: the judge, and the
/// reference policy's samples of the first held-out prompts (from
/// `frozen_reference` when the run keeps one, else loaded).
fn sample_evaluation<B: Backend>(
    config: &TrainConfig,
    s: &SampleSection,
    prepared: &Prepared,
    frozen_reference: Option<CausalLm<B>>,
    device: &B::Device,
) -> Result<(SampleEvaluator<B>, Box<dyn Judge>)> {
    let mut judge: Box<dyn Judge> = if s.judge == "gold" {
        Box::new(GoldJudge)
    } else {
        let dir = Path::new(&s.judge);
        Box::new(
            RewardModelJudge::<B>::open(dir, s.batch_size, device)
                .with_context(|| format!("`monitor.samples.judge` {}", dir.display()))?,
        )
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
    Ok((evaluator, judge))
}

/// The first `count` held-out pairs' prompts: their token ids and the text
/// a judge reads (from the data file's rows).
fn judge_prompts(prepared: &Prepared, count: usize) -> Result<Vec<EvalPrompt>> {
    let source = prepared.eval_path.as_deref().unwrap_or(&prepared.data_path);
    let texts: HashMap<usize, String> = read_rows(source)?
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
                    .with_context(|| format!("{}: row {}: no prompt text for the judge", source.display(), p.row))?,
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
