//! The JavaScript API (wasm-bindgen): a [`Demo`] wraps a [`Session`]; every
//! result is a plain object typed in the `.d.ts` that wasm-bindgen writes
//! (the interfaces below). The page runs it in a Web Worker.
//!
//! ```js
//! const demo = new Demo(JSON.stringify({ loss: "ipo", tau: 0.1 }));
//! await demo.useWebGpu();                 // top-k statistics on WebGPU, when there is one
//! demo.setStatsPolicy("auto");             // keep whichever of WebGPU and the CPU is faster
//! while (demo.phase() !== "done") {
//!   const progress = demo.step();          // one SFT step, chunk of pairs or DPO step
//!   if (progress.eval_due) { const point = await demo.evaluate(); }
//! }
//! const samples = demo.sample(4);          // reference vs policy for 4 prompts
//! const { metrics_jsonl } = demo.snapshot();
//! ```

use std::cell::RefCell;
use std::rc::Rc;

use daa_core::{Backend as _, HostTensor, TokenStatsRow};
use daa_train::eval::StatsSums;
use serde::Serialize;
use wasm_bindgen::prelude::*;

use crate::config::DemoConfig;
use crate::session::{PendingEval, Session};

#[wasm_bindgen(typescript_custom_section)]
const TYPES: &'static str = r#"
/** Where a run is. */
export type Phase = "sft" | "pairs" | "train" | "done";
/** One optimizer step's record (the fields of a `metrics.jsonl` train line). */
export interface TrainRecord {
  type?: "train"; step: number; learning_rate: number; loss: number; grad_norm: number;
  "rewards/chosen": number; "rewards/rejected": number; "rewards/margins": number; "rewards/accuracies": number;
  "logps/chosen": number; "logps/rejected": number;
  "logps/chosen_per_token": number; "logps/rejected_per_token": number;
  "logits/chosen"?: number; "logits/rejected"?: number;
  pairs: number; tokens: number; epoch: number; elapsed_s: number;
  "train/nll_weight"?: number; "train/beta"?: number;
  "train/topk_entropy"?: number; "train/topk_mass"?: number; "train/entropy"?: number;
}
/** What one `step()` did. */
export interface Progress {
  phase: Phase; done: number; total: number; message: string;
  sft_loss?: number; train?: TrainRecord; eval_due: boolean;
}
/** One evaluation (the fields of a `metrics.jsonl` eval line). */
export interface EvalRecord {
  step: number;
  "eval_loss": number; "eval_rewards/accuracies": number; "eval_rewards/margins": number;
  "eval/chosen_token_loglik": number; "eval/rejected_token_loglik": number;
  "eval/topk_entropy": number; "eval/topk_mass": number; "eval/entropy": number;
  "eval/win_prob": number; "eval/win_rate": number; "eval/gold_reward": number; "eval/kl": number;
  "eval/ead": number; "eval/sample_topk_entropy": number; "eval/sample_topk_mass": number; "eval/length": number;
  [name: string]: number;
}
/** A confirmed turning point. */
export interface TurningEvent {
  step: number; event: "eval/turning_point"; indicator: "topk_entropy" | "topk_mass";
  peak_step: number; peak_value: number; value: number;
}
/** The answer of `evaluate()`. */
export interface EvalPoint {
  record: EvalRecord; events: TurningEvent[]; nll_weight?: number; at_peak: boolean;
  /** Where the top-k statistics ran, and (first WebGPU evaluation) their largest difference from the CPU's. */
  stats_backend: "webgpu" | "cpu"; stats_check?: number; stats_ms: number;
  /** First WebGPU evaluation: the timings of both backends and which one later evaluations use. */
  stats_choice?: string;
}
/** A reply and its gold reward. */
export interface SampleText { text: string; reward: number; ended: boolean; }
/** One prompt, sampled by the reference and by the current policy. */
export interface SideBySide { prompt: string; reference: SampleText; policy: SampleText; }
/** The run so far. */
export interface Snapshot { phase: Phase; settings: object; metrics_jsonl: string; backend: string; }
"#;

fn js_error(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

fn to_js<T: Serialize>(value: &T) -> Result<JsValue, JsError> {
    value.serialize(&serde_wasm_bindgen::Serializer::json_compatible()).map_err(js_error)
}

/// Seconds from the page's time origin (`performance.now()`; there is no
/// `Instant` in a browser).
fn clock() -> f64 {
    js_sys::Reflect::get(&js_sys::global(), &JsValue::from_str("performance"))
        .ok()
        .and_then(|p| {
            let now = js_sys::Reflect::get(&p, &JsValue::from_str("now")).ok()?;
            js_sys::Function::from(now).call0(&p).ok()?.as_f64()
        })
        .map_or_else(js_sys::Date::now, |ms| ms)
        / 1000.0
}

/// The settings a run takes when none are given, as a JSON string.
#[wasm_bindgen(js_name = defaultSettings)]
pub fn default_settings() -> String {
    serde_json::to_string_pretty(&DemoConfig::default()).unwrap_or_default()
}

/// A demo run (module documentation).
#[wasm_bindgen]
#[derive(Debug)]
pub struct Demo {
    session: Rc<RefCell<Session>>,
    gpu: Rc<RefCell<Option<daa_core::Wgpu>>>,
    gpu_checked: Rc<RefCell<bool>>,
    keep_gpu: Rc<RefCell<bool>>,
}

#[derive(Serialize)]
struct EvalAnswer {
    #[serde(flatten)]
    point: Option<crate::session::EvalPoint>,
    stats_backend: &'static str,
    stats_check: Option<f64>,
    stats_choice: Option<String>,
    stats_ms: f64,
}

impl Default for EvalAnswer {
    fn default() -> Self {
        Self { point: None, stats_backend: "cpu", stats_check: None, stats_choice: None, stats_ms: 0.0 }
    }
}

#[derive(Serialize)]
struct SnapshotAnswer<'a> {
    phase: crate::session::Phase,
    settings: &'a DemoConfig,
    metrics_jsonl: String,
    backend: String,
}

#[wasm_bindgen]
impl Demo {
    /// A run with `settings` (a JSON object of settings; missing ones take
    /// their defaults, unknown ones are an error naming them).
    #[wasm_bindgen(constructor)]
    pub fn new(settings: &str) -> Result<Demo, JsError> {
        console_error_panic_hook::set_once();
        let config =
            DemoConfig::from_json(if settings.trim().is_empty() { "{}" } else { settings }).map_err(js_error)?;
        let session = Session::new(config, clock).map_err(js_error)?;
        Ok(Demo {
            session: Rc::new(RefCell::new(session)),
            gpu: Rc::new(RefCell::new(None)),
            gpu_checked: Rc::new(RefCell::new(false)),
            keep_gpu: Rc::new(RefCell::new(false)),
        })
    }

    /// Opens WebGPU for the top-k statistics; resolves to the adapter's
    /// name, or rejects (the statistics stay on the CPU) with the reason.
    #[wasm_bindgen(js_name = useWebGpu, unchecked_return_type = "Promise<string>")]
    pub fn use_webgpu(&self) -> js_sys::Promise {
        let gpu = self.gpu.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let wgpu = daa_core::Wgpu::new_async(daa_core::WgpuOptions::default())
                .await
                .map_err(|e| JsValue::from(js_error(format!("WebGPU is not usable here: {e}"))))?;
            let name = adapter_name(&wgpu);
            *gpu.borrow_mut() = Some(wgpu);
            Ok(JsValue::from_str(&name))
        })
    }

    /// `"auto"` (the default): at the first evaluation the statistics run on
    /// WebGPU and on the CPU, are compared, timed, and the faster backend is
    /// kept; `"webgpu"`: keep WebGPU whatever the timings.
    #[wasm_bindgen(js_name = setStatsPolicy)]
    pub fn set_stats_policy(&self, policy: &str) -> Result<(), JsError> {
        *self.keep_gpu.borrow_mut() = match policy {
            "auto" => false,
            "webgpu" => true,
            other => return Err(js_error(format!("stats policy `{other}`: expected \"auto\" or \"webgpu\""))),
        };
        Ok(())
    }

    /// Where the model trains and where the top-k statistics run.
    pub fn backend(&self) -> String {
        let stats = match self.gpu.borrow().as_ref() {
            Some(g) => format!("top-k statistics on WebGPU ({})", adapter_name(g)),
            None => "top-k statistics on the CPU".to_string(),
        };
        format!("model on burn's CPU backend (wasm, one thread); {stats}")
    }

    /// The current phase.
    #[wasm_bindgen(unchecked_return_type = "Phase")]
    pub fn phase(&self) -> JsValue {
        to_js(&self.session.borrow().phase()).unwrap_or(JsValue::NULL)
    }

    /// Whether `evaluate()` is due before the next `step()`.
    #[wasm_bindgen(js_name = evalDue)]
    pub fn eval_due(&self) -> bool {
        self.session.borrow().eval_due()
    }

    /// One piece of work (an SFT step, a chunk of pairs, or an optimizer step).
    #[wasm_bindgen(unchecked_return_type = "Progress")]
    pub fn step(&self) -> Result<JsValue, JsError> {
        let progress = self.session.borrow_mut().step().map_err(js_error)?;
        to_js(&progress)
    }

    /// The due evaluation; the top-k statistics on WebGPU after `useWebGpu()`
    /// (the first time also on the CPU: compared, timed, and the faster one
    /// kept under the `"auto"` policy).
    #[wasm_bindgen(unchecked_return_type = "Promise<EvalPoint>")]
    pub fn evaluate(&self) -> js_sys::Promise {
        let (session, gpu, checked, keep) =
            (self.session.clone(), self.gpu.clone(), self.gpu_checked.clone(), *self.keep_gpu.borrow());
        wasm_bindgen_futures::future_to_promise(async move {
            let fail = |e: daa_train::ModelError| JsValue::from(js_error(e));
            let fail_gpu = |e: String| JsValue::from(js_error(e));
            let pending = session.borrow().begin_evaluation().map_err(fail)?;
            let params = session.borrow().stats_params();
            let started = clock();
            let wgpu = gpu.borrow().clone();
            let mut answer = EvalAnswer::default();
            let stats = match wgpu {
                Some(wgpu) if !*checked.borrow() => {
                    *checked.borrow_mut() = true;
                    let (stats, rows) = gpu_stats(&wgpu, &pending, &params).await.map_err(fail_gpu)?;
                    let first_ms = (clock() - started) * 1000.0;
                    let (difference, cpu_ms) = largest_difference(&pending, &rows, &params).map_err(fail_gpu)?;
                    answer.stats_check = Some(difference);
                    let t = clock();
                    gpu_stats(&wgpu, &pending, &params).await.map_err(fail_gpu)?;
                    let warm_ms = (clock() - t) * 1000.0;
                    let faster = if warm_ms <= cpu_ms { "WebGPU" } else { "the CPU" };
                    let kept = if keep || warm_ms <= cpu_ms { "WebGPU" } else { "the CPU" };
                    answer.stats_choice = Some(format!(
                        "top-k statistics of one evaluation: WebGPU {warm_ms:.1} ms (first call {first_ms:.1} ms), \
                         CPU {cpu_ms:.1} ms; {faster} is faster here, later evaluations use {kept}"
                    ));
                    if kept == "the CPU" {
                        *gpu.borrow_mut() = None;
                    }
                    answer.stats_backend = "webgpu";
                    stats
                }
                Some(wgpu) => {
                    answer.stats_backend = "webgpu";
                    gpu_stats(&wgpu, &pending, &params).await.map_err(fail_gpu)?.0
                }
                None => session.borrow().cpu_stats(&pending).map_err(fail)?,
            };
            answer.stats_ms = (clock() - started) * 1000.0;
            answer.point = Some(session.borrow_mut().finish_evaluation(pending, &stats).map_err(fail)?);
            to_js(&answer).map_err(JsValue::from)
        })
    }

    /// `n` held-out prompts sampled by the reference and the current policy.
    #[wasm_bindgen(unchecked_return_type = "SideBySide[]")]
    pub fn sample(&self, n: usize) -> Result<JsValue, JsError> {
        let rows = self.session.borrow().side_by_side(n).map_err(js_error)?;
        to_js(&rows)
    }

    /// The run so far: phase, settings, and every record as `metrics.jsonl` text.
    #[wasm_bindgen(unchecked_return_type = "Snapshot")]
    pub fn snapshot(&self) -> Result<JsValue, JsError> {
        let session = self.session.borrow();
        to_js(&SnapshotAnswer {
            phase: session.phase(),
            settings: session.config(),
            metrics_jsonl: session.metrics_jsonl(),
            backend: self.backend(),
        })
    }
}

/// The adapter's name, or what the browser says about it when it hides the name.
fn adapter_name(wgpu: &daa_core::Wgpu) -> String {
    let a = wgpu.adapter();
    if a.name.trim().is_empty() { format!("{}, {}", a.backend, a.device_type) } else { a.name.clone() }
}

/// The statistics of every chunk of `pending` on WebGPU: their sums and
/// each chunk's rows.
async fn gpu_stats(
    wgpu: &daa_core::Wgpu,
    pending: &PendingEval,
    params: &daa_core::TokenStatsParams,
) -> Result<(StatsSums, Vec<HostTensor>), String> {
    let mut sums = StatsSums::default();
    let mut rows = Vec::with_capacity(pending.chosen.len());
    for chunk in &pending.chosen {
        let logits = wgpu.upload(&chunk.logits).map_err(|e| e.to_string())?;
        let targets = wgpu.upload(&chunk.targets).map_err(|e| e.to_string())?;
        let out = wgpu.token_stats(&logits, &targets, None, params).map_err(|e| e.to_string())?;
        let host = wgpu.download_async(&out).await.map_err(|e| e.to_string())?;
        sums.add_rows(&host).map_err(|e| e.to_string())?;
        rows.push(host);
    }
    Ok((sums, rows))
}

/// Largest absolute difference, over every row and statistic (top-k
/// entropy, top-k mass, entropy, target log-probability), between WebGPU's
/// rows and daa-core's CPU backend on the same logits; and the CPU's time
/// for them (ms).
fn largest_difference(
    pending: &PendingEval,
    gpu_rows: &[HostTensor],
    params: &daa_core::TokenStatsParams,
) -> Result<(f64, f64), String> {
    let cpu = daa_core::Cpu::new();
    let mut largest = 0.0f64;
    let mut cpu_ms = 0.0;
    for (chunk, gpu) in pending.chosen.iter().zip(gpu_rows) {
        let err = |e: daa_core::DaaError| e.to_string();
        let started = clock();
        let out = cpu
            .token_stats(
                &cpu.upload(&chunk.logits).map_err(err)?,
                &cpu.upload(&chunk.targets).map_err(err)?,
                None,
                params,
            )
            .map_err(err)?;
        let cpu_rows = TokenStatsRow::rows_of(&cpu.download(&out).map_err(err)?).map_err(err)?;
        cpu_ms += (clock() - started) * 1000.0;
        let gpu_rows = TokenStatsRow::rows_of(gpu).map_err(err)?;
        for (a, b) in cpu_rows.iter().zip(&gpu_rows) {
            for (x, y) in [
                (a.topk_entropy, b.topk_entropy),
                (a.topk_mass, b.topk_mass),
                (a.entropy, b.entropy),
                (a.target_logprob, b.target_logprob),
            ] {
                largest = largest.max((f64::from(x) - f64::from(y)).abs());
            }
        }
    }
    Ok((largest, cpu_ms))
}
