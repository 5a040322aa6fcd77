//! One demo run, a small piece of work per call so a browser worker can
//! interleave it with messages: SFT of the reference policy, the labelled
//! pairs, the reference's scores, then preference training with held-out
//! evaluation (teacher-forced indicators and the policy's own samples judged
//! by the gold reward), turning points and the adaptive regulariser. Plain
//! Rust on burn's CPU backend: the wasm bindings (`bindings.rs`) and
//! the native tests drive the same code.

use burn::backend::{Autodiff, NdArray};
use daa_core::sampling::SamplingParams;
use daa_core::{NllNormalisation, TokenStatsParams};
use daa_train::batch::SequencePair;
use daa_train::eval::{ChosenLogits, HeldOutSums, PassBatching, StatsSums, held_out_pass};
use daa_train::generate::{FinishReason, GenerationConfig, GenerationRequest, generate_in_batches, request_seed};
use daa_train::judge::GoldJudge;
use daa_train::model::CausalLm;
use daa_train::monitor::IndicatorMonitor;
use daa_train::optim::{AdamWConfig, LrSchedule};
use daa_train::records::{EvalRecord, EventRecord, MetricsRecord, TrainRecord};
use daa_train::sample_eval::{EvalPrompt, SampleEvalSettings, SampleEvaluator};
use daa_train::schedule::{BatchSchedule, Cadence};
use daa_train::score::{PairScore, score_pairs};
use daa_train::testbed::byte_chat::{self, END};
use daa_train::testbed::stages::{LENGTH_LIMITS, LabelledPair, PairSampler, SftRun, pair_ranges};
use daa_train::testbed::{Constraints, gold_reward};
use daa_train::{ModelError, ReferencePolicy, Trainer, TrainerOptions};
use serde::Serialize;

use crate::config::DemoConfig;

/// The training backend (burn's CPU backend with autodiff).
pub type Train = Autodiff<NdArray<f32>>;
/// The same without autodiff (sampling, scoring).
pub type Infer = NdArray<f32>;

/// Sequences per forward pass when sampling, scoring and evaluating.
const FORWARD_BATCH: usize = 64;

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Fine-tuning the reference policy.
    Sft,
    /// Sampling and labelling the pairs.
    Pairs,
    /// Preference training.
    Train,
    /// Every step done.
    Done,
}

/// What one `step()` did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Progress {
    /// The phase after this call.
    pub phase: Phase,
    /// Units of the current phase done (SFT steps, prompts sampled, optimizer steps).
    pub done: u64,
    /// Units of the current phase in all.
    pub total: u64,
    /// A sentence for people.
    pub message: String,
    /// The SFT step's mean NLL per token, during SFT.
    pub sft_loss: Option<f64>,
    /// The preference step's record, during training.
    pub train: Option<TrainRecord>,
    /// Whether the next call should be `evaluate()` (step 0, every `eval_every`, the end).
    pub eval_due: bool,
}

/// One evaluation: the record `metrics.jsonl` would hold, the monitor's
/// events, and the coefficients from now on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalPoint {
    /// Teacher-forced and sampled figures.
    pub record: EvalRecord,
    /// Turning points confirmed by this evaluation.
    pub events: Vec<EventRecord>,
    /// λ from now on, when adapted.
    pub nll_weight: Option<f64>,
    /// Whether this evaluation is the smoothed indicators' best so far.
    pub at_peak: bool,
}

/// A prompt with a sample of the reference and one of the current policy,
/// drawn with the same random numbers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SideBySide {
    /// The prompt text.
    pub prompt: String,
    /// The reference policy's reply.
    pub reference: SampleText,
    /// The current policy's reply.
    pub policy: SampleText,
}

/// A sampled reply and its gold reward.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SampleText {
    /// The text (special tokens left out).
    pub text: String,
    /// `r(x, y)`.
    pub reward: f64,
    /// Whether the model ended it (else it hit the length limit).
    pub ended: bool,
}

/// The pieces that exist once the pairs are made.
#[derive(Debug)]
struct Training {
    reference: CausalLm<Infer>,
    trainer: Trainer<Train>,
    train: Vec<SequencePair>,
    train_scores: Vec<PairScore>,
    eval: Vec<SequencePair>,
    eval_scores: Vec<PairScore>,
    evaluator: SampleEvaluator<Infer>,
    schedule: BatchSchedule,
    cadence: Cadence,
    monitor: IndicatorMonitor,
    eval_due: bool,
}

/// An evaluation whose teacher-forced likelihoods are computed; the top-k
/// statistics of `chosen` are still to be summed (on the CPU by
/// [`Session::evaluate`], or on WebGPU by the bindings).
#[derive(Debug)]
pub struct PendingEval {
    sums: HeldOutSums,
    /// The chosen completions' logits, one entry per forward batch.
    pub chosen: Vec<ChosenLogits>,
}

/// A demo run (module documentation).
#[derive(Debug)]
pub struct Session {
    config: DemoConfig,
    sft: SftRun<Train>,
    samplers: Vec<PairSampler>,
    pairs: [Vec<LabelledPair>; 2],
    training: Option<Training>,
    records: Vec<MetricsRecord>,
    clock: fn() -> f64,
    started: Option<f64>,
}

fn batch_error(message: String) -> ModelError {
    ModelError::Batch(message)
}

impl Session {
    /// A run at its first SFT step. `clock` returns seconds (any origin):
    /// `performance.now()/1000` in a browser, an `Instant` natively.
    pub fn new(config: DemoConfig, clock: fn() -> f64) -> Result<Self, ModelError> {
        config.check().map_err(ModelError::Config)?;
        let sft = SftRun::new(&config.testbed, &Default::default())?;
        Ok(Self {
            config,
            sft,
            samplers: vec![],
            pairs: [vec![], vec![]],
            training: None,
            records: vec![],
            clock,
            started: None,
        })
    }

    /// The settings.
    pub fn config(&self) -> &DemoConfig {
        &self.config
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        match &self.training {
            Some(t) if t.trainer.completed_steps() >= self.config.steps && !t.eval_due => Phase::Done,
            Some(_) => Phase::Train,
            None if self.sft.finished() => Phase::Pairs,
            None => Phase::Sft,
        }
    }

    /// Whether `evaluate()` is due before the next step.
    pub fn eval_due(&self) -> bool {
        self.training.as_ref().is_some_and(|t| t.eval_due)
    }

    /// Every train, eval and event record so far, in order.
    pub fn records(&self) -> &[MetricsRecord] {
        &self.records
    }

    /// The records as `metrics.jsonl` text (what `daa train` writes).
    pub fn metrics_jsonl(&self) -> String {
        self.records.iter().filter_map(|r| serde_json::to_string(r).ok()).map(|l| l + "\n").collect()
    }

    /// The labelled training pairs (empty until they are made).
    pub fn training_pairs(&self) -> &[LabelledPair] {
        &self.pairs[0]
    }

    /// The labelled held-out pairs (empty until they are made).
    pub fn held_out_pairs(&self) -> &[LabelledPair] {
        &self.pairs[1]
    }

    /// The reference policy, once fine-tuned.
    pub fn reference(&self) -> Option<&CausalLm<Infer>> {
        self.training.as_ref().map(|t| &t.reference)
    }

    /// The usable training pairs' ids, in the order batches index them
    /// (empty until training starts).
    pub fn training_sequences(&self) -> &[SequencePair] {
        self.training.as_ref().map_or(&[], |t| t.train.as_slice())
    }

    /// The reference's scores of [`Session::training_sequences`].
    pub fn training_scores(&self) -> &[PairScore] {
        self.training.as_ref().map_or(&[], |t| t.train_scores.as_slice())
    }

    /// Does the next piece of work: one SFT step, one chunk of pairs, or one
    /// preference step. An error when an evaluation is due (call
    /// [`Session::evaluate`] first) or the run is done.
    pub fn step(&mut self) -> Result<Progress, ModelError> {
        match self.phase() {
            Phase::Sft => self.sft_step(),
            Phase::Pairs => self.pairs_step(),
            Phase::Train if self.eval_due() => Err(batch_error("an evaluation is due: call evaluate() first".into())),
            Phase::Train => self.train_step(),
            Phase::Done => Err(batch_error(format!("the run is done ({} steps)", self.config.steps))),
        }
    }

    fn sft_step(&mut self) -> Result<Progress, ModelError> {
        let record = self.sft.step()?;
        let (done, total) = (self.sft.completed(), self.sft.total());
        Ok(Progress {
            phase: self.phase(),
            done,
            total,
            message: format!("fine-tuning the reference policy: step {done}/{total}, NLL {:.3} per token", record.loss),
            sft_loss: Some(record.loss),
            train: None,
            eval_due: false,
        })
    }

    fn pairs_step(&mut self) -> Result<Progress, ModelError> {
        let spec = &self.config.testbed;
        if self.samplers.is_empty() {
            let (train, eval) = pair_ranges(spec);
            self.samplers = vec![PairSampler::new(spec, train, 1), PairSampler::new(spec, eval, 2)];
        }
        let reference = self.sft.valid_model();
        let total = (spec.pairs + spec.eval_pairs) as u64;
        if let Some(k) = self.samplers.iter().position(|s| s.remaining() > 0) {
            let chunk = self.samplers[k].sample(&reference, self.config.pair_chunk, FORWARD_BATCH)?;
            self.pairs[k].extend(chunk);
        }
        let left: usize = self.samplers.iter().map(PairSampler::remaining).sum();
        let done = total - left as u64;
        if left > 0 {
            return Ok(Progress {
                phase: Phase::Pairs,
                done,
                total,
                message: format!("sampling pairs from the reference and labelling them: {done}/{total} prompts"),
                sft_loss: None,
                train: None,
                eval_due: false,
            });
        }
        self.start_training(reference)?;
        let t = self.training.as_ref().ok_or_else(|| batch_error("training did not start".into()))?;
        Ok(Progress {
            phase: Phase::Train,
            done,
            total,
            message: format!(
                "{} training and {} held-out pairs ({} prompts with two identical samples dropped)",
                t.train.len(),
                t.eval.len(),
                self.samplers.iter().map(PairSampler::identical).sum::<usize>()
            ),
            sft_loss: None,
            train: None,
            eval_due: true,
        })
    }

    fn start_training(&mut self, reference: CausalLm<Infer>) -> Result<(), ModelError> {
        fn usable(pairs: &[LabelledPair]) -> Vec<(SequencePair, &LabelledPair)> {
            pairs.iter().filter_map(|p| Some((p.sequences(&LENGTH_LIMITS)?, p))).collect()
        }
        let train: Vec<SequencePair> = usable(&self.pairs[0]).into_iter().map(|(s, _)| s).collect();
        let eval_both = usable(&self.pairs[1]);
        if train.is_empty() || eval_both.is_empty() {
            return Err(batch_error(
                "the reference's samples gave no usable training or held-out pairs; raise `testbed.pair_temperature`"
                    .into(),
            ));
        }
        let prompts: Vec<EvalPrompt> = eval_both
            .iter()
            .take(self.config.sample_prompts)
            .map(|(s, p)| EvalPrompt {
                ids: s.chosen.ids[..s.chosen.completion_start].to_vec(),
                text: p.prompt.to_text(),
            })
            .collect();
        let eval: Vec<SequencePair> = eval_both.into_iter().map(|(s, _)| s).collect();
        let train_refs: Vec<&SequencePair> = train.iter().collect();
        let eval_refs: Vec<&SequencePair> = eval.iter().collect();
        let train_scores = score_pairs(&reference, &train_refs, FORWARD_BATCH, END, &mut |_| {})?;
        let eval_scores = score_pairs(&reference, &eval_refs, FORWARD_BATCH, END, &mut |_| {})?;
        let settings = SampleEvalSettings {
            generation: self.sample_generation(true),
            seed: self.config.seed,
            batch_size: FORWARD_BATCH,
            pad_id: END,
        };
        let evaluator = SampleEvaluator::new(reference.clone(), prompts, settings, &mut GoldJudge, &decode)?;
        let options = TrainerOptions {
            loss: self.config.loss_params(),
            optimizer: AdamWConfig { weight_decay: 0.0, ..AdamWConfig::default() },
            schedule: LrSchedule {
                peak: self.config.lr,
                warmup: self.config.warmup_steps,
                total: self.config.steps,
                final_fraction: 0.1,
            },
            micro_batch_size: self.config.batch_size,
            pad_id: END,
            memory: daa_train::backward::MemoryOptions::default(),
            precision: daa_train::Precision::F32,
        };
        let trainer = Trainer::new(self.sft.model().clone(), options, ReferencePolicy::Given)?;
        let schedule = BatchSchedule::new(train.len(), self.config.batch_size, self.config.seed)?;
        let cadence = Cadence::new(self.config.eval_every, 0, 0, self.config.steps)?;
        let loss = self.config.loss_params();
        let monitor =
            IndicatorMonitor::new(self.config.turning(), self.config.adaptive(), loss, NllNormalisation::Mean, false)?;
        self.training = Some(Training {
            reference,
            trainer,
            train,
            train_scores,
            eval,
            eval_scores,
            evaluator,
            schedule,
            cadence,
            monitor,
            eval_due: true,
        });
        self.started = Some((self.clock)());
        Ok(())
    }

    fn sample_generation(&self, stats: bool) -> GenerationConfig {
        GenerationConfig {
            sampling: SamplingParams::PAPER,
            max_new_tokens: self.config.testbed.max_new_tokens,
            stop_tokens: vec![END],
            topk_stats: stats.then_some(self.stats_params()),
        }
    }

    /// `k` and the entropy's base (bits) of the top-k statistics.
    pub fn stats_params(&self) -> TokenStatsParams {
        TokenStatsParams { k: self.config.top_k, entropy_base: 2.0 }
    }

    fn train_step(&mut self) -> Result<Progress, ModelError> {
        let steps = self.config.steps;
        let elapsed = (self.clock)() - self.started.unwrap_or(0.0);
        let t = self.training.as_mut().ok_or_else(|| batch_error("training has not started".into()))?;
        let pairs = t.schedule.step_pairs(t.trainer.completed_steps(), &t.train, Some(&t.train_scores))?;
        let coefficients = t.monitor.coefficients();
        let record = t.trainer.step(&pairs)?;
        let train = t.schedule.train_record(record, elapsed, coefficients);
        let done = train.step.step;
        t.eval_due = t.cadence.eval_due(done);
        let eval_due = t.eval_due;
        self.records.push(MetricsRecord::Train(train));
        Ok(Progress {
            phase: self.phase(),
            done,
            total: steps,
            message: format!("step {done}/{steps}: loss {:.4}", train.step.loss),
            sft_loss: None,
            train: Some(train),
            eval_due,
        })
    }

    /// Scores the held-out pairs with the current policy; the statistics of
    /// the chosen completions are left to the caller.
    pub fn begin_evaluation(&self) -> Result<PendingEval, ModelError> {
        let t = self.training.as_ref().ok_or_else(|| batch_error("nothing to evaluate before training".into()))?;
        let policy = t.trainer.valid_model();
        let pairs: Vec<&SequencePair> = t.eval.iter().collect();
        let mut chosen = Vec::new();
        let sums = held_out_pass(
            &policy,
            &pairs,
            &t.eval_scores,
            &t.trainer.options().loss,
            PassBatching { pairs_per_pass: FORWARD_BATCH, pad_id: END, head_chunk_rows: 0 },
            &mut |c| {
                chosen.push(c);
                Ok(())
            },
        )?;
        Ok(PendingEval { sums, chosen })
    }

    /// The top-k statistics of a pending evaluation on daa-core's CPU backend.
    pub fn cpu_stats(&self, pending: &PendingEval) -> Result<StatsSums, ModelError> {
        let cpu = daa_core::Cpu::new();
        let mut sums = StatsSums::default();
        for c in &pending.chosen {
            sums.add_on_cpu(&cpu, &c.logits, &c.targets, &self.stats_params())?;
        }
        Ok(sums)
    }

    /// Completes an evaluation with its statistics: samples and judges the
    /// policy, reads the turning points, lets the regulariser decide λ.
    pub fn finish_evaluation(&mut self, pending: PendingEval, stats: &StatsSums) -> Result<EvalPoint, ModelError> {
        let t = self.training.as_mut().ok_or_else(|| batch_error("nothing to evaluate before training".into()))?;
        if !t.eval_due {
            return Err(batch_error("no evaluation is due".into()));
        }
        let step = t.trainer.completed_steps();
        let report = pending.sums.report(stats);
        let policy = t.trainer.valid_model();
        let samples = t.evaluator.evaluate(&policy, &mut GoldJudge, &decode)?.report;
        let record = EvalRecord { step, report, samples: Some(samples) };
        let decision = t.monitor.observe(step, &report, Some(&samples))?;
        if let Some(loss) = decision.loss {
            t.trainer.set_loss(loss)?;
        }
        let events: Vec<EventRecord> = decision.events.into_iter().map(|event| EventRecord { step, event }).collect();
        t.eval_due = false;
        self.records.push(MetricsRecord::Eval(record));
        self.records.extend(events.iter().copied().map(MetricsRecord::Event));
        Ok(EvalPoint { record, events, nll_weight: t.monitor.coefficients().nll_weight, at_peak: decision.keep_best })
    }

    /// A whole evaluation with the statistics on the CPU.
    pub fn evaluate(&mut self) -> Result<EvalPoint, ModelError> {
        let pending = self.begin_evaluation()?;
        let stats = self.cpu_stats(&pending)?;
        self.finish_evaluation(pending, &stats)
    }

    /// The first `n` held-out prompts with a sample of the reference and of
    /// the current policy each (the same seed for both, so they differ only
    /// where the policy has moved).
    pub fn side_by_side(&self, n: usize) -> Result<Vec<SideBySide>, ModelError> {
        let t = self.training.as_ref().ok_or_else(|| batch_error("no samples before training".into()))?;
        let prompts: Vec<(&LabelledPair, Vec<u32>)> = self.pairs[1]
            .iter()
            .filter(|p| p.sequences(&LENGTH_LIMITS).is_some())
            .take(n)
            .map(|p| (p, byte_chat::prompt_ids(&p.prompt.to_text())))
            .collect();
        let requests: Vec<GenerationRequest> = prompts
            .iter()
            .enumerate()
            .map(|(i, (_, ids))| GenerationRequest { prompt: ids, seed: request_seed(self.config.seed ^ 0x51DE, i, 0) })
            .collect();
        let config = self.sample_generation(false);
        let device = Default::default();
        let policy = t.trainer.valid_model();
        let draw = |model: &CausalLm<Infer>| {
            generate_in_batches(model, &requests, FORWARD_BATCH, &config, &device, &mut |_| {})
        };
        let (reference, current) = (draw(&t.reference)?, draw(&policy)?);
        let text = |prompt: &Constraints, g: &daa_train::generate::Generated| {
            let text = byte_chat::decode(&g.tokens);
            let ended = g.finish == FinishReason::Stop;
            SampleText { reward: gold_reward(prompt, &text, ended), text, ended }
        };
        Ok(prompts
            .iter()
            .zip(reference.iter().zip(&current))
            .map(|((p, _), (r, c))| SideBySide {
                prompt: p.prompt.to_text(),
                reference: text(&p.prompt, r),
                policy: text(&p.prompt, c),
            })
            .collect())
    }
}

fn decode(ids: &[u32]) -> Result<String, ModelError> {
    Ok(byte_chat::decode(ids))
}
