//! Mixed-precision training on burn's CPU backend (Flex runs bf16): the
//! model trains in bf16 while the optimizer keeps f32 masters, moments and
//! gradient sums; a bf16 step follows the f32 step within bf16's rounding;
//! updates smaller than a bf16 step are kept in the masters, not rounded
//! away; the saved model is the masters; a backend without bf16 is refused.

use burn::backend::{Autodiff, Flex, NdArray};
use burn::tensor::{DType, FloatDType};
use daa_core::preference::{NllNormalisation, NllTerm, PreferenceLoss, PreferenceLossParams};
use daa_train::backward::MemoryOptions;
use daa_train::batch::{Sequence, SequencePair};
use daa_train::model::tiny_configs::llama_config;
use daa_train::model::{CausalLm, ModelConfig, ParamKind, RandomWeights};
use daa_train::optim::{AdamWConfig, LrSchedule};
use daa_train::score::{PairScore, score_pairs};
use daa_train::{Precision, ReferencePolicy, StepPair, Trainer, TrainerOptions};

type AD = Autodiff<Flex>;
const VOCAB: usize = 67;

fn config() -> ModelConfig {
    ModelConfig::from_json(&llama_config(VOCAB, 32, 2).to_string()).unwrap()
}

fn model<B: burn::tensor::backend::Backend>() -> CausalLm<B> {
    CausalLm::from_weights(&config(), &mut RandomWeights { seed: 5, std: 0.1 }, &Default::default()).unwrap()
}

fn sequence(p: &[u32], c: &[u32]) -> Sequence {
    Sequence { ids: p.iter().chain(c).copied().collect(), completion_start: p.len() }
}

fn pairs() -> Vec<SequencePair> {
    (0..6u32)
        .map(|i| SequencePair {
            chosen: sequence(&[1, 2 + i, 3], &[10 + i, 20, 30 + i % 3, 7]),
            rejected: sequence(&[1, 2 + i, 3], &[40 - i, 50 + i % 5]),
        })
        .collect()
}

fn options(precision: Precision, peak: f64, memory: MemoryOptions) -> TrainerOptions {
    TrainerOptions {
        loss: PreferenceLossParams {
            loss: PreferenceLoss::Dpo { beta: 0.5, label_smoothing: 0.0 },
            nll: Some(NllTerm { weight: 0.1, normalisation: NllNormalisation::Mean }),
        },
        optimizer: AdamWConfig::default(),
        schedule: LrSchedule { peak, warmup: 0, total: 100, final_fraction: 1.0 },
        micro_batch_size: 4,
        pad_id: 0,
        memory,
        precision,
    }
}

fn reference(pairs: &[SequencePair]) -> Vec<PairScore> {
    score_pairs(&model::<Flex>(), &pairs.iter().collect::<Vec<_>>(), 4, 0, &mut |_| {}).unwrap()
}

fn step_pairs<'a>(pairs: &'a [SequencePair], reference: &[PairScore]) -> Vec<StepPair<'a>> {
    pairs.iter().zip(reference).map(|(p, r)| StepPair { sequences: p, reference: Some(*r) }).collect()
}

/// Every parameter's dtype, in visiting order.
fn dtypes<B: burn::tensor::backend::Backend>(model: &CausalLm<B>) -> Vec<DType> {
    let mut out = Vec::new();
    model.visit_weights(&mut |_: &str, p: ParamKind<'_, B>| out.push(p.flat().dtype()));
    out
}

/// `model.norm.weight` as f32 values.
fn final_norm<B: burn::tensor::backend::Backend>(model: &CausalLm<B>) -> Vec<f32> {
    model.norm.weight.val().cast(FloatDType::F32).into_data().to_vec::<f32>().unwrap()
}

#[test]
fn bf16_steps_follow_f32_steps_with_f32_state() {
    let pairs = pairs();
    let reference = reference(&pairs);
    for memory in [
        MemoryOptions::default(),
        MemoryOptions { fused_head: false, ..MemoryOptions::default() },
        MemoryOptions { head_chunk_rows: 5, activation_checkpointing: true, ..MemoryOptions::default() },
    ] {
        let mut f32_run =
            Trainer::new(model::<AD>(), options(Precision::F32, 1e-2, memory), ReferencePolicy::Given).unwrap();
        let mut bf16_run =
            Trainer::new(model::<AD>(), options(Precision::Bf16, 1e-2, memory), ReferencePolicy::Given).unwrap();
        assert!(dtypes(f32_run.model()).iter().all(|d| *d == DType::F32));
        assert!(dtypes(bf16_run.model()).iter().all(|d| *d == DType::BF16), "{:?}", dtypes(bf16_run.model()));
        let params = dtypes(bf16_run.model()).len();
        assert_eq!(bf16_run.optimizer().masters.len(), params, "one master per parameter");
        assert!(f32_run.optimizer().masters.is_empty(), "no masters when training in f32");
        for step in 0..3 {
            let a = f32_run.step(&step_pairs(&pairs, &reference)).unwrap();
            let b = bf16_run.step(&step_pairs(&pairs, &reference)).unwrap();
            // bf16 keeps 8 significant bits (relative rounding 2^-9 ≈ 0.002 per value).
            let loss_gap = (a.loss - b.loss).abs() / a.loss.abs();
            let norm_gap = (a.grad_norm - b.grad_norm).abs() / a.grad_norm;
            assert!(a.loss.is_finite() && b.loss.is_finite());
            assert!(loss_gap < 2e-2, "{memory:?} step {step}: loss f32 {} bf16 {}", a.loss, b.loss);
            assert!(norm_gap < 5e-2, "{memory:?} step {step}: grad norm f32 {} bf16 {}", a.grad_norm, b.grad_norm);
        }
        // The state stays f32: moments and masters.
        let optimizer = bf16_run.optimizer();
        assert_eq!(optimizer.moments.len(), params);
        for (id, moments) in &optimizer.moments {
            assert_eq!(moments.m.dtype(), DType::F32);
            assert_eq!(moments.v.dtype(), DType::F32);
            assert_eq!(optimizer.masters[id].dtype(), DType::F32);
        }
        // After the steps the model is still bf16 and equals its masters rounded.
        assert!(dtypes(bf16_run.model()).iter().all(|d| *d == DType::BF16));
        let masters = bf16_run.master_model();
        assert!(dtypes(&masters).iter().all(|d| *d == DType::F32));
        let rounded: Vec<f32> = final_norm(&masters).iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect();
        assert_eq!(final_norm(&bf16_run.valid_model()), rounded);
    }
}

#[test]
fn updates_below_a_bf16_step_are_kept_in_the_masters() {
    // The final norm's weights are 1.0 (RandomWeights): bf16's spacing at 1.0
    // is 2⁻⁷ ≈ 0.0078, AdamW's first step moves each by about the rate, 1e-4.
    let pairs = pairs();
    let reference = reference(&pairs);
    let mut trainer =
        Trainer::new(model::<AD>(), options(Precision::Bf16, 1e-4, MemoryOptions::default()), ReferencePolicy::Given)
            .unwrap();
    let start = final_norm(trainer.model());
    assert!(start.iter().all(|&w| w == 1.0), "{start:?}");
    for _ in 0..5 {
        trainer.step(&step_pairs(&pairs, &reference)).unwrap();
    }
    // The bf16 weights cannot show a change of 5e-4 ...
    assert_eq!(final_norm(trainer.model()), start);
    // ... the masters do: every weight moved, by about 5 steps × 1e-4.
    let masters = final_norm(&trainer.master_model());
    for (i, &w) in masters.iter().enumerate() {
        let moved = (w - 1.0).abs();
        assert!(moved > 0.0 && moved < 1e-3, "norm weight {i}: master {w}");
    }
    assert!(masters.iter().any(|&w| (w - 1.0).abs() > 2e-4), "{masters:?}");
    // Enough further steps cross a bf16 step: the model follows its masters.
    let mut trainer = trainer;
    for _ in 0..80 {
        trainer.step(&step_pairs(&pairs, &reference)).unwrap();
    }
    let masters = final_norm(&trainer.master_model());
    let model = final_norm(trainer.model());
    assert!(model.iter().any(|&w| w != 1.0), "80 more steps moved no bf16 weight: {model:?}");
    for (m, w) in masters.iter().zip(&model) {
        assert_eq!(half::bf16::from_f32(*m).to_f32(), *w);
    }
}

#[test]
fn a_backend_without_bf16_is_refused_with_the_setting_named() {
    let error = Trainer::new(
        model::<Autodiff<NdArray<f32>>>(),
        options(Precision::Bf16, 1e-2, MemoryOptions::default()),
        ReferencePolicy::Given,
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("train.precision = \"bf16\"") && error.contains("\"f32\""), "{error}");
    // The same backend trains in f32.
    Trainer::new(
        model::<Autodiff<NdArray<f32>>>(),
        options(Precision::F32, 1e-2, MemoryOptions::default()),
        ReferencePolicy::Given,
    )
    .unwrap();
}

#[test]
fn a_frozen_reference_is_cast_and_scores_like_the_f32_reference() {
    let pairs = pairs();
    let f32_scores = reference(&pairs);
    let mut trainer = Trainer::new(
        model::<AD>(),
        options(Precision::Bf16, 1e-2, MemoryOptions::default()),
        ReferencePolicy::Frozen(Box::new(model::<Flex>())),
    )
    .unwrap();
    let held: Vec<&SequencePair> = pairs.iter().collect();
    let bf16_scores = trainer.frozen_reference_scores(&held, 4).unwrap().unwrap();
    for (a, b) in f32_scores.iter().zip(&bf16_scores) {
        // Sums of ~4 log-probabilities of ~−4 each: bf16 logits round by ~2⁻⁹ relative.
        assert!((a.chosen - b.chosen).abs() < 0.1 && (a.rejected - b.rejected).abs() < 0.1, "{a:?} vs {b:?}");
    }
    let live: Vec<StepPair<'_>> = pairs.iter().map(|p| StepPair { sequences: p, reference: None }).collect();
    assert!(trainer.step(&live).unwrap().loss.is_finite());
}

#[test]
fn one_micro_batch_keeps_bf16_gradients_and_accumulation_sums_in_f32() {
    use burn::module::ParamId;
    use burn::tensor::{Tensor, TensorData};
    use daa_train::optim::GradAccumulator;
    let device = Default::default();
    // 257 is not a bf16 number (spacing 2 at 256): 256 + 1 + 1 + … stalls in bf16.
    let part = |v: f32| Tensor::<Flex, 1>::from_data(TensorData::new(vec![v; 3], [3]), &device).cast(FloatDType::BF16);
    let id = ParamId::new();
    let mut one = GradAccumulator::<Flex>::default();
    one.add_param(id, part(1.0));
    let (_, g) = one.gradients_mut().next().unwrap();
    assert_eq!(g.dtype(), DType::BF16, "one backward pass: its bf16 gradient, no f32 copy");
    let mut many = GradAccumulator::<Flex>::default();
    many.add_param(id, part(256.0));
    for _ in 0..256 {
        many.add_param(id, part(1.0));
    }
    let (_, g) = many.gradients_mut().next().unwrap();
    assert_eq!(g.dtype(), DType::F32);
    assert_eq!(g.clone().into_data().to_vec::<f32>().unwrap(), vec![512.0; 3], "256 + 256 × 1 summed in f32");
    // In bf16, 256 + 1 rounds back to 256 (spacing 2 there).
    let bf16_sum = (0..256).fold(part(256.0), |acc, _| acc + part(1.0));
    assert_eq!(bf16_sum.cast(FloatDType::F32).into_data().to_vec::<f32>().unwrap(), vec![256.0; 3]);
    assert!((many.global_norm().unwrap() - 512.0 * 3f64.sqrt()).abs() < 1e-3);
}
