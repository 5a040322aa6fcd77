//! What a run does with its evaluations besides logging them: samples
//! judged against the reference policy, turning points of the indicators
//! (with the `best-indicator/` checkpoint and early stopping), and the
//! adaptive regulariser. See daa-core's `monitor` for the rules.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::tensor::backend::Backend;
use daa_core::TokenStatsParams;
use daa_core::monitor::{AdaptiveRegulariser, TurningPointDetector};
use daa_core::preference::PreferenceLossParams;
use daa_core::sampling::SamplingParams;

use super::config::TrainConfig;
use super::prepare::Prepared;
use crate::checkpoint::load_model;
use crate::data::{Prompt, read_rows};
use crate::error::ModelError;
use crate::generate::GenerationConfig;
use crate::judge::{GoldJudge, Judge};
use crate::model::CausalLm;
use crate::records::{EvalRecord, MonitorEvent};
use crate::reward_model::RewardModelJudge;
use crate::sample_eval::{EvalPrompt, SampleEvalSettings, SampleEvaluator, SampleReport};

/// What the monitor decided after one evaluation.
#[derive(Debug, Clone, Default)]
pub(crate) struct Decision {
    /// Events to log.
    pub events: Vec<MonitorEvent>,
    /// Keep this evaluation's model as `best-indicator/`.
    pub keep_best: bool,
    /// Stop the run (`monitor.early_stop` and a confirmed turn).
    pub stop: bool,
    /// The objective from the next step on, when the regulariser changed it.
    pub loss: Option<PreferenceLossParams>,
}

/// The run's monitor.
pub(crate) struct RunMonitor<B: Backend> {
    detector: TurningPointDetector,
    adaptive: Option<AdaptiveRegulariser>,
    base_loss: PreferenceLossParams,
    nll_normalisation: daa_core::NllNormalisation,
    early_stop: bool,
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
        let detector = TurningPointDetector::new(config.monitor.turning.detector())?;
        let adaptive = config.adaptive_config()?.map(AdaptiveRegulariser::new).transpose()?;
        let samples = match &config.monitor.samples {
            None => None,
            Some(s) => {
                let mut judge: Box<dyn Judge> = if s.judge == "gold" {
                    Box::new(GoldJudge)
                } else {
                    let dir = Path::new(&s.judge);
                    Box::new(
                        RewardModelJudge::<B>::open(dir, s.batch_size, device)
                            .with_context(|| format!("`monitor.samples.judge` {}", dir.display()))?,
                    )
                };
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
                    .take(s.prompts)
                    .map(|p| {
                        let chosen = &p.pair.chosen;
                        Ok(EvalPrompt {
                            ids: chosen.ids[..chosen.completion_start].to_vec(),
                            text: texts.get(&p.row).cloned().with_context(|| {
                                format!("{}: row {}: no prompt text for the judge", source.display(), p.row)
                            })?,
                        })
                    })
                    .collect::<Result<_>>()?;
                if prompts.is_empty() {
                    bail!("`monitor.samples` needs held-out pairs, and the held-out set is empty");
                }
                let settings = SampleEvalSettings {
                    generation: GenerationConfig {
                        sampling: SamplingParams { temperature: s.temperature, top_p: s.top_p },
                        max_new_tokens: s.max_new_tokens,
                        stop_tokens: prepared.encoder.stop_ids.clone(),
                        topk_stats: Some(TokenStatsParams {
                            k: config.monitor.top_k,
                            entropy_base: config.monitor.entropy_base,
                        }),
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
                Some((evaluator, judge))
            }
        };
        Ok(Self {
            detector,
            adaptive,
            base_loss,
            nll_normalisation: config.loss.nll_normalisation,
            early_stop: config.monitor.early_stop,
            samples,
        })
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
    pub fn coefficients(&self) -> (Option<f64>, Option<f64>) {
        match &self.adaptive {
            None => (None, None),
            Some(a) => (a.nll_weight(), a.beta()),
        }
    }

    /// Reads an evaluation: turning points, the regulariser's decision.
    pub fn after_eval(&mut self, record: &EvalRecord) -> Result<Decision> {
        let (step, r) = (record.step, &record.report);
        let observation = self.detector.observe(step, r.topk_entropy, r.topk_mass)?;
        let mut decision = Decision { keep_best: observation.at_peak, ..Decision::default() };
        decision.events.extend(observation.turning_points.iter().map(MonitorEvent::turning_point));
        if let Some(adaptive) = self.adaptive.as_mut() {
            let d = adaptive.observe(step, r.topk_entropy, r.topk_mass)?;
            decision.loss = Some(d.apply(&self.base_loss, self.nll_normalisation));
        }
        decision.stop = self.early_stop && self.detector.first_turn().is_some();
        Ok(decision)
    }
}

fn decode(prepared: &Prepared, ids: &[u32]) -> Result<String, ModelError> {
    prepared.encoder.decode(ids).map_err(|e| ModelError::Batch(format!("{e:#}")))
}
