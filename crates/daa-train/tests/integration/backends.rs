//! burn's GPU backends (wgpu; CUDA where a GPU exists) against the CPU
//! backend, through the library alone (no `io` feature): the forward
//! log-probabilities of a Command R model, then one `Trainer::step` (its
//! record and the weights it leaves), in full training and with LoRA
//! adapters on every linear layer (the adapters it leaves). A backend this build does not compile
//! is reported and skipped; without a device a compiled backend is skipped
//! unless `DAA_REQUIRE_GPU` names it. The workspace's test build has the
//! wgpu backend (daa-cli's dev-dependency turns it on); CI requires it, on
//! lavapipe.

use burn::tensor::backend::AutodiffBackend;
use daa_core::preference::{PreferenceLoss, PreferenceLossParams};
use daa_train::backend::{BackendTask, ComputeBackend, with_compute_backend};
use daa_train::batch::{Sequence, SequencePair};
use daa_train::model::tiny_configs::cohere_config;
use daa_train::model::{CausalLm, LoraConfig, ModelConfig, RandomWeights};
use daa_train::objective::CompletionLogits;
use daa_train::optim::{AdamWConfig, LrSchedule};
use daa_train::score::{PairScore, pair_batch};
use daa_train::{ReferencePolicy, StepPair, Trainer, TrainerOptions};

type Error = Box<dyn std::error::Error + Send + Sync>;
const VOCAB: usize = 67;
/// Agreement of f32 computations in different summation orders.
const TOLERANCE: f32 = 1e-3;

/// What one backend computed.
struct Observed {
    token_logps: Vec<f32>,
    loss: f64,
    grad_norm: f64,
    weights_after_step: Vec<f32>,
}

fn sequence(text: &str, completion_start: usize) -> Sequence {
    Sequence { ids: text.bytes().map(|b| u32::from(b) % VOCAB as u32).collect(), completion_start }
}

/// The forward pass and one step, of the full model or (`lora`) of
/// adapters on every linear layer, `A` and `B` drawn `N(0, 0.1²)`, in
/// `precision` (bf16: weights and products in bf16, f32 masters).
struct Probe {
    lora: bool,
    precision: daa_train::Precision,
}

/// bf16 against bf16 (or f32) in another summation order: a few roundings
/// of 2⁻⁸ on values of order 1 (checked here on the CPU against f32 too).
const BF16_TOLERANCE: f32 = 5e-2;

impl BackendTask for Probe {
    type Output = Observed;
    type Error = Error;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Observed, Error> {
        let config = ModelConfig::from_json(&cohere_config(VOCAB, 32, 2).to_string())?;
        self.precision.check_supported::<B>(&device)?;
        let mut model: CausalLm<B> =
            CausalLm::from_weights(&config, &mut RandomWeights { seed: 7, std: 0.3 }, &device)?;
        if self.lora {
            let lora =
                LoraConfig { rank: 4, alpha: 8.0, target_modules: vec!["all-linear".into()], ..LoraConfig::default() };
            model = model.with_saved_lora(&lora, &mut RandomWeights { seed: 9, std: 0.1 })?;
        }
        let pairs = [
            SequencePair { chosen: sequence("Q: 7+8? A: 15", 10), rejected: sequence("Q: 7+8? A: 16!", 10) },
            SequencePair { chosen: sequence("Q: 2+2? A: 4", 10), rejected: sequence("Q: 2+2? A: 22", 10) },
        ];
        let batch = pair_batch(&pairs.iter().collect::<Vec<_>>(), 0, VOCAB)?;
        let token_logps = CompletionLogits::of(&model.clone().cast(self.precision.dtype()), &batch, &device)?
            .token_logps()
            .into_data()
            .convert::<f32>()
            .into_vec()?;

        let options = TrainerOptions {
            loss: PreferenceLossParams { loss: PreferenceLoss::Dpo { beta: 0.5, label_smoothing: 0.0 }, nll: None },
            // A large ε keeps AdamW's first step smooth in the gradient, so
            // rounding differences cannot flip the sign of a tiny component.
            optimizer: AdamWConfig { eps: 1e-3, ..AdamWConfig::default() },
            schedule: LrSchedule { peak: 1e-2, warmup: 1, total: 10, final_fraction: 0.1 },
            micro_batch_size: 2,
            pad_id: 0,
            memory: daa_train::backward::MemoryOptions::default(),
            precision: self.precision,
        };
        let score = |chosen, rejected, pair: &SequencePair| PairScore {
            chosen,
            rejected,
            chosen_tokens: pair.chosen.ids.len() - pair.chosen.completion_start,
            rejected_tokens: pair.rejected.ids.len() - pair.rejected.completion_start,
        };
        let reference = [score(-20.0, -21.0, &pairs[0]), score(-15.0, -14.0, &pairs[1])];
        let step: Vec<StepPair> =
            pairs.iter().zip(&reference).map(|(p, r)| StepPair { sequences: p, reference: Some(*r) }).collect();
        let mut trainer = Trainer::new(model, options, ReferencePolicy::Given)?;
        let record = trainer.step(&step)?;
        let mut weights_after_step = Vec::new();
        let mut failed = None;
        // Every weight, or with LoRA the adapters (the rest is frozen).
        trainer.model().visit_trainable(&mut |name, p| match p.to_file_f32(name) {
            Ok(values) => weights_after_step.extend(values),
            Err(e) => failed = Some(e),
        });
        if let Some(e) = failed {
            return Err(e.into());
        }
        Ok(Observed { token_logps, loss: record.loss, grad_norm: record.grad_norm, weights_after_step })
    }
}

fn assert_close(backend: ComputeBackend, what: &str, cpu: &[f32], other: &[f32], tolerance: f32) {
    assert_eq!(cpu.len(), other.len(), "{backend} {what}: lengths");
    for (i, (a, b)) in cpu.iter().zip(other).enumerate() {
        assert!((a - b).abs() <= tolerance * (1.0 + a.abs()), "{backend} {what} {i}: cpu {a} vs {b}");
    }
}

fn assert_agree(backend: ComputeBackend, cpu: &Observed, other: &Observed, tolerance: f32) {
    assert_close(backend, "log-prob", &cpu.token_logps, &other.token_logps, tolerance);
    assert_close(backend, "loss", &[cpu.loss as f32], &[other.loss as f32], tolerance);
    assert_close(backend, "gradient norm", &[cpu.grad_norm as f32], &[other.grad_norm as f32], tolerance);
    assert_close(backend, "weight after the step", &cpu.weights_after_step, &other.weights_after_step, tolerance);
}

#[test]
fn gpu_backends_agree_with_the_cpu_backend_on_a_forward_pass_and_a_trainer_step() {
    probe_every_backend(false, daa_train::Precision::F32);
}

#[test]
fn gpu_backends_agree_with_the_cpu_backend_on_a_lora_step() {
    probe_every_backend(true, daa_train::Precision::F32);
}

/// bf16 on the GPU against bf16 on the CPU (wgpu adapters without bf16,
/// lavapipe among them, are reported and skipped; CUDA has it).
#[test]
fn gpu_backends_agree_with_the_cpu_backend_on_a_bf16_step() {
    let f32_cpu =
        with_compute_backend(ComputeBackend::Cpu, 0, Probe { lora: false, precision: daa_train::Precision::F32 });
    let bf16_cpu =
        with_compute_backend(ComputeBackend::Cpu, 0, Probe { lora: false, precision: daa_train::Precision::Bf16 });
    // The tolerance means something: bf16 is within it of f32, and not equal.
    let (f32_cpu, bf16_cpu) = (f32_cpu.unwrap(), bf16_cpu.unwrap());
    assert_agree(ComputeBackend::Cpu, &f32_cpu, &bf16_cpu, BF16_TOLERANCE);
    assert_ne!(f32_cpu.token_logps, bf16_cpu.token_logps, "the bf16 probe computed in f32");
    probe_every_backend(false, daa_train::Precision::Bf16);
}

fn probe_every_backend(lora: bool, precision: daa_train::Precision) {
    let cpu = with_compute_backend(ComputeBackend::Cpu, 0, Probe { lora, precision }).unwrap();
    let tolerance = if precision == daa_train::Precision::F32 { TOLERANCE } else { BF16_TOLERANCE };
    assert!(cpu.loss.is_finite() && cpu.grad_norm > 0.0, "loss {} grad norm {}", cpu.loss, cpu.grad_norm);
    for backend in [ComputeBackend::Wgpu, ComputeBackend::Cuda] {
        if !backend.is_compiled() {
            // A build choice, not a missing device (CUDA is type-checked in CI).
            println!("skipped: {backend}: this build has no `{backend}` feature");
            continue;
        }
        match with_compute_backend(backend, 0, Probe { lora, precision }) {
            Err(e) => {
                let message = e.to_string();
                #[cfg(feature = "cuda")]
                if backend == ComputeBackend::Cuda && !daa_core::cuda::driver_present() {
                    // What `daa train --backend cuda` prints on a machine without NVIDIA's driver.
                    assert!(
                        message.contains("CUDA driver not found") && message.contains("model.backend = \"cpu\""),
                        "{message}"
                    );
                }
                if message.contains("cannot compute in") {
                    println!("skipped: {backend} {precision}: {message}"); // the adapter lacks the dtype
                    continue;
                }
                daa_tests::gpu::skip(backend.as_str(), &message);
            }
            Ok(other) => {
                assert_agree(backend, &cpu, &other, tolerance);
                println!(
                    "{backend}{} {precision}: agrees with cpu within {tolerance} on {} log-probs, the loss, the gradient \
                     norm and {} weights after one step",
                    if lora { " (LoRA)" } else { "" },
                    other.token_logps.len(),
                    other.weights_after_step.len()
                );
            }
        }
    }
}
