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
    /// Step through a one-rank NCCL communicator on GPU 0 (`DataParallel`).
    nccl: bool,
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
        if self.nccl {
            trainer = trainer.with_reducer(one_rank_nccl()?);
        }
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

/// A one-rank NCCL communicator on GPU 0 as the trainer's reducer.
#[cfg(all(feature = "cuda", unix))]
fn one_rank_nccl<B: burn::tensor::backend::Backend>() -> Result<Box<dyn daa_train::GradientReducer<B>>, Error> {
    use daa_train::distributed::{DataParallel, NcclRank, TcpRank};
    let timeout = std::time::Duration::from_secs(60);
    let host = TcpRank::connect(0, 1, ("127.0.0.1", 0), "daa test", timeout)?;
    Ok(Box::new(DataParallel::new(NcclRank::connect(Box::new(host), 0, timeout)?)))
}

#[cfg(not(all(feature = "cuda", unix)))]
fn one_rank_nccl<B: burn::tensor::backend::Backend>() -> Result<Box<dyn daa_train::GradientReducer<B>>, Error> {
    Err("this build has no NCCL (feature `cuda`)".into())
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
    let f32_cpu = with_compute_backend(
        ComputeBackend::Cpu,
        0,
        Probe { lora: false, precision: daa_train::Precision::F32, nccl: false },
    );
    let bf16_cpu = with_compute_backend(
        ComputeBackend::Cpu,
        0,
        Probe { lora: false, precision: daa_train::Precision::Bf16, nccl: false },
    );
    // The tolerance means something: bf16 is within it of f32, and not equal.
    let (f32_cpu, bf16_cpu) = (f32_cpu.unwrap(), bf16_cpu.unwrap());
    assert_agree(ComputeBackend::Cpu, &f32_cpu, &bf16_cpu, BF16_TOLERANCE);
    assert_ne!(f32_cpu.token_logps, bf16_cpu.token_logps, "the bf16 probe computed in f32");
    probe_every_backend(false, daa_train::Precision::Bf16);
}

fn probe_every_backend(lora: bool, precision: daa_train::Precision) {
    let cpu = with_compute_backend(ComputeBackend::Cpu, 0, Probe { lora, precision, nccl: false }).unwrap();
    let tolerance = if precision == daa_train::Precision::F32 { TOLERANCE } else { BF16_TOLERANCE };
    assert!(cpu.loss.is_finite() && cpu.grad_norm > 0.0, "loss {} grad norm {}", cpu.loss, cpu.grad_norm);
    for backend in [ComputeBackend::Wgpu, ComputeBackend::Cuda] {
        if !backend.is_compiled() {
            // A build choice, not a missing device (CUDA is type-checked in CI).
            println!("skipped: {backend}: this build has no `{backend}` feature");
            continue;
        }
        match with_compute_backend(backend, 0, Probe { lora, precision, nccl: false }) {
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

/// NCCL with one rank on GPU 0 (the GPU check runs it): every collective
/// gives back what the host computes, and a trainer step through the
/// communicator gives the step without it.
#[test]
#[cfg(all(feature = "cuda", unix))]
fn a_one_rank_nccl_communicator_exchanges_and_steps_as_the_step_without_it() {
    use daa_train::distributed::{Collective, NcclRank, TcpRank};
    let timeout = std::time::Duration::from_secs(60);
    let host = TcpRank::connect(0, 1, ("127.0.0.1", 0), "daa test", timeout).unwrap();
    let mut nccl = match NcclRank::connect(Box::new(host), 0, timeout) {
        Ok(nccl) => nccl,
        Err(e) => return daa_tests::gpu::skip("cuda", &format!("NCCL: {e}")),
    };
    let values = vec![1.5f32, -2.0, 3e7, f32::MIN_POSITIVE, 0.1];
    let mut summed = values.clone();
    nccl.all_reduce_sum_f32(&mut summed).unwrap();
    assert_eq!(summed, values, "all_reduce f32 of one rank");
    let mut summed64 = vec![0.1f64, -7.25];
    nccl.all_reduce_sum_f64(&mut summed64).unwrap();
    assert_eq!(summed64, vec![0.1, -7.25], "all_reduce f64 of one rank");
    let mut scattered = vec![0f32; values.len()];
    nccl.reduce_scatter_sum_f32(&values, &mut scattered).unwrap();
    assert_eq!(scattered, values, "reduce_scatter of one rank");
    let mut gathered = vec![0f32; values.len()];
    nccl.all_gather_f32(&values, &mut gathered).unwrap();
    assert_eq!(gathered, values, "all_gather of one rank");
    let mut bytes = b"id".to_vec();
    nccl.broadcast_bytes(0, &mut bytes).unwrap();
    nccl.barrier().unwrap();
    drop(nccl);

    let task = |nccl| Probe { lora: false, precision: daa_train::Precision::F32, nccl };
    let alone = with_compute_backend(ComputeBackend::Cuda, 0, task(false)).unwrap();
    let through = with_compute_backend(ComputeBackend::Cuda, 0, task(true)).unwrap();
    assert_agree(ComputeBackend::Cuda, &alone, &through, 1e-6);
    println!(
        "cuda: one NCCL rank: collectives as the host's; the step through NCCL agrees with the step alone within \
         1e-6 (loss {} vs {}, gradient norm {} vs {})",
        through.loss, alone.loss, through.grad_norm, alone.grad_norm
    );
}
