//! Peak resident memory of one DPO training step on the CPU, with and
//! without the fused head and activation checkpointing: the measurement of
//! issue 12 (vocabulary 128256 like Llama 3, 4 pairs of 512 tokens).
//!
//! ```text
//! cargo run --release -p daa-train --example step_memory -- fused [checkpointing] [bf16] [--vocab V --hidden D --layers L]
//! cargo run --release -p daa-train --example step_memory -- unfused
//! cargo run --release -p daa-train --features wgpu --example step_memory -- wgpu [--pairs P --seq T --prompt N]
//! ```
//!
//! On burn's CPU backend of `daa train` (Flex), or with `wgpu` on burn's
//! wgpu backend (lavapipe keeps its buffers in host memory, so the process's
//! peak counts them); `bf16` trains in bf16 with f32 masters
//! (`train.precision = "bf16"`). `DAA_FUSED_OPS=0` in the environment runs
//! the unfused attention, norms, RoPE and SwiGLU (`daa_train::fused`).
//!
//! Run each configuration in its own process (the peak, `VmHWM`, only grows).

use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::AutodiffBackend;
use daa_core::preference::{PreferenceLoss, PreferenceLossParams};
use daa_train::backward::MemoryOptions;
use daa_train::batch::{Sequence, SequencePair};
use daa_train::model::tiny_configs::llama_config;
use daa_train::model::{CausalLm, ModelConfig, RandomWeights};
use daa_train::optim::{AdamWConfig, LrSchedule};
use daa_train::score::PairScore;
use daa_train::{ReferencePolicy, StepPair, Trainer, TrainerOptions};

fn status_mib(field: &str) -> f64 {
    daa_train::run::process::memory_mib(field).unwrap_or(f64::NAN)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "wgpu") {
        #[cfg(feature = "wgpu")]
        {
            daa_train::backend::configure_gpu_caches();
            return step::<Autodiff<burn::backend::Wgpu>>(&args, "wgpu");
        }
        #[cfg(not(feature = "wgpu"))]
        {
            eprintln!("error: `wgpu` needs the example built with `--features wgpu`");
            std::process::exit(2);
        }
    }
    step::<Autodiff<Flex>>(&args, "cpu");
}

fn step<Train: AutodiffBackend>(args: &[String], backend: &str) {
    let value = |flag: &str, default: usize| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (vocab, hidden, layers) = (value("--vocab", 128_256), value("--hidden", 64), value("--layers", 2));
    let (pairs_n, seq, prompt) = (value("--pairs", 4), value("--seq", 512), value("--prompt", 128));
    let memory = MemoryOptions {
        fused_head: !args.iter().any(|a| a == "unfused"),
        head_chunk_rows: 0,
        activation_checkpointing: args.iter().any(|a| a == "checkpointing"),
    };
    let precision =
        if args.iter().any(|a| a == "bf16") { daa_train::Precision::Bf16 } else { daa_train::Precision::F32 };
    let config = ModelConfig::from_json(&llama_config(vocab, hidden, layers).to_string()).unwrap();
    let model: CausalLm<Train> =
        CausalLm::from_weights(&config, &mut RandomWeights { seed: 1, std: 0.02 }, &Default::default()).unwrap();
    let token = |i: usize| ((i * 7919) % (vocab - 300) + 300) as u32;
    let pairs: Vec<SequencePair> = (0..pairs_n)
        .map(|p| {
            let ids = |side: usize| (0..seq).map(|t| token(p * 100_003 + side * 50_021 + t)).collect::<Vec<_>>();
            SequencePair {
                chosen: Sequence { ids: ids(0), completion_start: prompt },
                rejected: Sequence { ids: ids(1), completion_start: prompt },
            }
        })
        .collect();
    let reference = PairScore {
        chosen: (seq - prompt) as f64 * -11.0,
        rejected: (seq - prompt) as f64 * -11.0,
        chosen_tokens: seq - prompt,
        rejected_tokens: seq - prompt,
    };
    let step: Vec<StepPair<'_>> = pairs.iter().map(|p| StepPair { sequences: p, reference: Some(reference) }).collect();
    let options = TrainerOptions {
        loss: PreferenceLossParams { loss: PreferenceLoss::Dpo { beta: 0.1, label_smoothing: 0.0 }, nll: None },
        optimizer: AdamWConfig::default(),
        schedule: LrSchedule { peak: 1e-4, warmup: 1, total: 10, final_fraction: 0.1 },
        micro_batch_size: pairs_n,
        pad_id: 0,
        memory,
        precision,
    };
    let mut trainer = Trainer::new(model, options, ReferencePolicy::Given).unwrap();
    let before = status_mib("VmRSS");
    let start = Instant::now();
    let record = trainer.step(&step).unwrap();
    let seconds = start.elapsed().as_secs_f64();
    let scored = 2 * pairs_n * (seq - prompt);
    println!(
        "V {vocab}, d {hidden}, {layers} layers, {pairs_n} pairs × {seq} tokens ({scored} scored positions), \
         {precision}, {}, fused_head {}, checkpointing {}, fused ops {}: loss {:.5}, grad norm {:.5}; {seconds:.2} s; \
         resident before the step {before:.0} MiB, peak {:.0} MiB (step added {:.0} MiB; \
         one [positions × V] f32 copy = {:.0} MiB; one layer's [rows × heads × t × t] f32 scores = {:.0} MiB)",
        backend,
        memory.fused_head,
        memory.activation_checkpointing,
        daa_train::fused::enabled(),
        record.loss,
        record.grad_norm,
        status_mib("VmHWM"),
        status_mib("VmHWM") - before,
        (scored * vocab * 4) as f64 / (1 << 20) as f64,
        (2 * pairs_n * config.num_heads * seq * seq * 4) as f64 / (1 << 20) as f64,
    );
}
