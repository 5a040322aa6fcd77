//! burn's GPU backends (wgpu; CUDA where a GPU exists) against the CPU
//! backend: the forward log-probabilities and the gradient of one objective.
//! Without a device a backend is skipped, unless `DAA_REQUIRE_GPU` names it
//! (CI requires wgpu, on lavapipe, in its `--features wgpu,cuda` step).

use std::path::{Path, PathBuf};

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use daa_core::preference::{PreferenceLoss, PreferenceLossParams};
use daa_train::backend::{BackendTask, ComputeBackend, with_backend};
use daa_train::batch::{Sequence, TokenBatch};
use daa_train::checkpoint::load_model;
use daa_train::model::CausalLm;
use daa_train::objective::{CompletionLogits, pair_objective};
use daa_train::tiny::{TINY_VOCAB, cohere_config};

use super::checkpoint;

struct Probe(PathBuf);

/// (per-token log-probabilities, gradient of the final norm's weight).
impl BackendTask for Probe {
    type Output = (Vec<f32>, Vec<f32>);
    type Error = anyhow::Error;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Self::Output> {
        let model: CausalLm<B> = load_model(&self.0, &device)?;
        let enc = |s: &str| s.bytes().map(u32::from).collect::<Vec<u32>>();
        let seqs = [
            Sequence { ids: enc("Q: 7+8? A: 15"), completion_start: 10 },
            Sequence { ids: enc("Q: 7+8? A: 16!"), completion_start: 10 },
        ];
        let batch = TokenBatch::new(&seqs.iter().collect::<Vec<_>>(), 0, TINY_VOCAB)?;
        let scored = CompletionLogits::of(&model, &batch, &device)?;
        let per_token: Vec<f32> = scored.token_logps().into_data().convert::<f32>().into_vec()?;
        let params = PreferenceLossParams { loss: PreferenceLoss::Dpo { beta: 0.5, label_smoothing: 0.0 }, nll: None };
        let objective = pair_objective(scored.sequence_logps(), &[(-20.0, -21.0)], &[(3.0, 4.0)], &params, 1.0)?;
        let grads = objective.surrogate.backward();
        let grad = model.norm.weight.val().grad(&grads).expect("gradient").into_data().convert::<f32>().into_vec()?;
        Ok((per_token, grad))
    }
}

fn probe(backend: ComputeBackend, dir: &Path) -> Result<(Vec<f32>, Vec<f32>)> {
    with_backend(backend, 0, Probe(dir.to_path_buf()))
}

#[test]
fn gpu_backends_agree_with_the_cpu_backend() {
    let dir = tempfile::tempdir().unwrap();
    checkpoint(dir.path(), &cohere_config(TINY_VOCAB, 32, 2), 0.3);
    let (cpu_logps, cpu_grad) = probe(ComputeBackend::Cpu, dir.path()).unwrap();
    for backend in [ComputeBackend::Wgpu, ComputeBackend::Cuda] {
        if !backend.is_compiled() {
            // A build choice, not a missing device: CI builds the trainer with
            // both GPU features in a step of its own, where DAA_REQUIRE_GPU applies.
            println!("skipped: {backend}: this build has no `{backend}` feature");
            continue;
        }
        match probe(backend, dir.path()) {
            Err(e) => daa_tests::gpu::skip(backend.as_str(), &format!("{e:#}")),
            Ok((logps, grad)) => {
                for (i, (a, b)) in cpu_logps.iter().zip(&logps).enumerate() {
                    assert!((a - b).abs() < 1e-3 * (1.0 + a.abs()), "{backend} log-prob {i}: cpu {a} vs {b}");
                }
                for (i, (a, b)) in cpu_grad.iter().zip(&grad).enumerate() {
                    assert!((a - b).abs() < 1e-3 * (1.0 + a.abs()), "{backend} gradient {i}: cpu {a} vs {b}");
                }
                println!("{backend}: agrees with cpu on {} log-probs and {} gradient entries", logps.len(), grad.len());
            }
        }
    }
}
