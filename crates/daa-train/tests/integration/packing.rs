//! Padding-free packed batches (`BatchLayout::Packed`): how sequences are
//! placed in rows, each sequence's hidden states in a packed row against
//! the same sequence alone in a padded row (Llama with grouped heads,
//! Mistral's sliding window, Qwen2's biases, Command R's parallel block), and
//! the trainer's DPO and NLL steps packed against padded (loss, gradient
//! norm, weights after the step), with a frozen reference model and with
//! activation checkpointing. On Flex, the backend daa trains on on the CPU
//! (fused attention with a block-diagonal mask).

use burn::tensor::Tensor;
use daa_core::preference::{NllNormalisation, NllTerm, PreferenceLoss, PreferenceLossParams};
use daa_train::backend::CpuBackend;
use daa_train::backward::MemoryOptions;
use daa_train::batch::{BatchLayout, Placement, Sequence, SequencePair, TokenBatch};
use daa_train::model::tiny_configs::{cohere_config, llama_config};
use daa_train::model::{CausalLm, KvCache, ModelConfig, Positions, RandomWeights};
use daa_train::objective::scored_hidden;
use daa_train::optim::{AdamWConfig, LrSchedule};
use daa_train::score::{PairScore, score_pairs};
use daa_train::{Precision, ReferencePolicy, StepPair, Trainer, TrainerOptions};
use serde_json::{Value, json};

type AD = CpuBackend;
const VOCAB: usize = 61;

/// Sums in another order (attention over more keys, −∞ ones included;
/// matrix products of other shapes): f32 roundings, relative to the largest value.
const REORDERED: f32 = 2e-5;
/// Weights after one AdamW step at lr 1e-2: `m̂/√v̂` of a near-zero
/// gradient moves by up to the learning rate when the gradient's rounding
/// differs (as for three ranks against one, `sharding.rs`).
const AFTER_STEP: f32 = 5e-5;

fn model(config: &Value, seed: u64) -> CausalLm<AD> {
    let config = ModelConfig::from_json(&config.to_string()).unwrap();
    CausalLm::from_weights(&config, &mut RandomWeights { seed, std: 0.1 }, &Default::default()).unwrap()
}

fn architectures() -> Vec<(&'static str, Value)> {
    let mut mistral = llama_config(VOCAB, 32, 2);
    mistral["architectures"] = json!(["MistralForCausalLM"]);
    mistral["model_type"] = json!("mistral");
    mistral["sliding_window"] = json!(3);
    let mut qwen = llama_config(VOCAB, 32, 2);
    qwen["architectures"] = json!(["Qwen2ForCausalLM"]);
    qwen["model_type"] = json!("qwen2");
    vec![
        ("llama", llama_config(VOCAB, 32, 2)),
        ("mistral", mistral),
        ("qwen2", qwen),
        ("command-r", cohere_config(VOCAB, 32, 2)),
    ]
}

/// `len` tokens, the last `completion` of them scored.
fn sequence(seed: u32, len: usize, completion: usize) -> Sequence {
    let ids = (0..len as u32).map(|i| 1 + (seed * 7 + i * 13 + i * i) % (VOCAB as u32 - 1)).collect();
    Sequence { ids, completion_start: len - completion }
}

fn max_relative(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).map(|(x, y)| (x - y).abs() / scale).fold(0.0, f32::max)
}

fn host(t: Tensor<AD, 2>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

#[test]
fn packing_fills_rows_as_long_as_the_longest_first_fit_in_decreasing_length() {
    let sequences: Vec<Sequence> = [6, 3, 2, 4, 2].iter().enumerate().map(|(i, &n)| sequence(i as u32, n, 1)).collect();
    let refs: Vec<&Sequence> = sequences.iter().collect();
    let packed = TokenBatch::with_layout(&refs, 0, VOCAB, BatchLayout::Packed).unwrap();
    // Decreasing: 6 (row 0, full), 4 (row 1), 3 (row 2), 2 → row 1 after the 4, 2 → row 2 after the 3.
    let want =
        [(0, 0, 6), (2, 0, 3), (1, 4, 2), (1, 0, 4), (2, 3, 2)].map(|(row, start, len)| Placement { row, start, len });
    assert_eq!(packed.placements, want);
    assert_eq!((packed.rows, packed.len, packed.slots()), (3, 6, 18));
    assert_eq!(packed.positions.packed_starts(), Some(&[vec![0], vec![0, 4], vec![0, 3]][..]));
    // Row 1: the 4-token sequence then the first 2-token one, no padding.
    assert_eq!(&packed.ids[6..12], &[&sequences[3].ids[..], &sequences[2].ids[..]].concat()[..]);
    let padded = TokenBatch::new(&refs, 0, VOCAB).unwrap();
    assert_eq!(padded.slots(), 30);
    // The same positions predict the same tokens, sequence by sequence.
    let (p, q) = (packed.scored_positions(), padded.scored_positions());
    assert_eq!((p.targets.clone(), p.row_of.clone(), p.row_ends.clone()), (q.targets, q.row_of, q.row_ends));
    assert_eq!(p.rows, 5);
    // Sequence 2 (row 1, columns 4..6) predicts its last token from column 4.
    assert_eq!(p.flat[p.row_ends[1]], 6 + 4);
    for i in 0..5 {
        assert_eq!(packed.scored_tokens(i), padded.scored_tokens(i));
    }
    // One sequence per row when none fits beside another: the padded layout.
    let two = [sequence(0, 4, 2), sequence(1, 3, 1)];
    let alone = TokenBatch::with_layout(&two.iter().collect::<Vec<_>>(), 0, VOCAB, BatchLayout::Packed).unwrap();
    assert_eq!((alone.rows, alone.positions.packed_starts()), (2, None));
}

#[test]
fn a_packed_row_gives_each_sequence_its_own_hidden_states() {
    // Lengths that leave several sequences per row and one row partly empty.
    let sequences: Vec<Sequence> =
        [9, 3, 5, 2, 6, 4, 2].iter().enumerate().map(|(i, &n)| sequence(i as u32, n, n.min(3) - 1)).collect();
    let refs: Vec<&Sequence> = sequences.iter().collect();
    let packed = TokenBatch::with_layout(&refs, 0, VOCAB, BatchLayout::Packed).unwrap();
    let padded = TokenBatch::new(&refs, 0, VOCAB).unwrap();
    assert!(packed.rows < padded.rows && packed.positions.packed_starts().is_some());
    for (name, config) in architectures() {
        let model = model(&config, 3);
        let device = Default::default();
        let (want, _) = scored_hidden(&model, &padded, &device).unwrap();
        let (got, positions) = scored_hidden(&model, &packed, &device).unwrap();
        assert_eq!(positions.count(), want.dims()[0]);
        let d = max_relative(&host(got), &host(want));
        eprintln!("{name}: packed vs padded hidden states, largest relative difference {d:e}");
        assert!(d <= REORDERED, "{name}: packed hidden states differ from padded ones by {d:e}");
    }
}

#[test]
fn packed_rows_are_refused_where_they_cannot_be_read() {
    let model = model(&llama_config(VOCAB, 32, 1), 3);
    let device = Default::default();
    let tokens = || Tensor::<AD, 2, burn::tensor::Int>::from_ints([[1, 2, 3, 4], [5, 6, 7, 8]], &device);
    let packed = Positions::packed(vec![vec![0, 2], vec![0]]);
    let mut cache = KvCache::new(model.config().num_layers);
    let e = model.hidden(tokens(), &packed, Some(&mut cache)).unwrap_err().to_string();
    assert!(e.contains("packed rows") && e.contains("cache"), "{e}");
    for (starts, want) in [
        (vec![vec![0, 2]], "for 1 rows, the batch has 2"),
        (vec![vec![0, 2], vec![1, 3]], "row 1's packed sequences start at columns [1, 3]"),
        (vec![vec![0, 3, 2], vec![0]], "row 0's packed sequences start at columns [0, 3, 2]"),
        (vec![vec![0, 4], vec![0]], "below 4"),
    ] {
        let e = model.hidden(tokens(), &Positions::packed(starts), None).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    }
}

fn pairs() -> Vec<SequencePair> {
    // Uneven lengths, as in real preference data: prompts of 2–9 tokens,
    // completions of 1–7.
    (0..6u32)
        .map(|i| {
            let prompt = 2 + (i as usize * 5) % 8;
            let (w, l) = (1 + (i as usize * 3) % 7, 1 + (i as usize * 4 + 2) % 6);
            let chosen = sequence(i, prompt + w, w);
            let mut rejected = sequence(i + 50, prompt + l, l);
            rejected.ids[..prompt].copy_from_slice(&chosen.ids[..prompt]);
            SequencePair { chosen, rejected }
        })
        .collect()
}

fn options(memory: MemoryOptions) -> TrainerOptions {
    TrainerOptions {
        loss: PreferenceLossParams {
            loss: PreferenceLoss::Dpo { beta: 0.5, label_smoothing: 0.0 },
            nll: Some(NllTerm { weight: 0.1, normalisation: NllNormalisation::Mean }),
        },
        optimizer: AdamWConfig::default(),
        schedule: LrSchedule { peak: 1e-2, warmup: 1, total: 20, final_fraction: 0.1 },
        micro_batch_size: 4,
        pad_id: 0,
        memory,
        precision: Precision::F32,
    }
}

fn weights(model: &CausalLm<AD>) -> Vec<f32> {
    let mut out = Vec::new();
    model.visit_weights(&mut |name, p| out.extend(p.to_file_f32(name).unwrap()));
    out
}

/// One DPO step and one NLL step, laid out as `layout` says: the records'
/// figures and the weights after each.
fn steps(config: &Value, memory: MemoryOptions, frozen: bool, layout: BatchLayout) -> (Vec<f64>, Vec<f32>, Vec<f32>) {
    let pairs = pairs();
    let refs: Vec<&SequencePair> = pairs.iter().collect();
    let valid = burn::module::AutodiffModule::valid(&model(config, 5));
    let reference: Vec<PairScore> = score_pairs(&valid, &refs, 3, 0, &mut |_| {}).unwrap();
    let policy = match frozen {
        true => ReferencePolicy::Frozen(Box::new(valid)),
        false => ReferencePolicy::Given,
    };
    let mut trainer = Trainer::new(model(config, 5), options(memory), policy).unwrap().with_batch_layout(layout);
    let step: Vec<StepPair<'_>> = pairs
        .iter()
        .zip(&reference)
        .map(|(p, r)| StepPair { sequences: p, reference: (!frozen).then_some(*r) })
        .collect();
    let dpo = trainer.step(&step).unwrap();
    let after_dpo = weights(trainer.model());
    let sequences: Vec<&Sequence> = pairs.iter().flat_map(|p| [&p.chosen, &p.rejected]).collect();
    let nll = trainer.nll_step(&sequences).unwrap();
    let figures = vec![dpo.loss, dpo.grad_norm, dpo.margin, dpo.chosen_logps, nll.loss, nll.grad_norm];
    (figures, after_dpo, weights(trainer.model()))
}

#[test]
fn a_packed_step_is_the_padded_step() {
    let checkpointed = MemoryOptions { activation_checkpointing: true, head_chunk_rows: 5, ..MemoryOptions::default() };
    for (name, config) in [("llama", llama_config(VOCAB, 32, 2)), ("command-r", cohere_config(VOCAB, 32, 2))] {
        for (memory, frozen) in [(MemoryOptions::default(), false), (checkpointed, true)] {
            let what = format!("{name}, checkpointing {}, frozen reference {frozen}", memory.activation_checkpointing);
            let (want, want_dpo, want_nll) = steps(&config, memory, frozen, BatchLayout::Padded);
            let (got, got_dpo, got_nll) = steps(&config, memory, frozen, BatchLayout::Packed);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let d = ((g - w).abs() / w.abs().max(1.0)) as f32;
                assert!(d <= REORDERED, "{what}: figure {i} packed {g} vs padded {w}");
            }
            for (stage, g, w) in [("DPO", &got_dpo, &want_dpo), ("NLL", &got_nll, &want_nll)] {
                let d = max_relative(g, w);
                eprintln!("{what}: weights after the {stage} step, largest relative difference {d:e}");
                assert!(d <= AFTER_STEP, "{what}: weights after the {stage} step differ by {d:e}");
            }
            assert!(max_relative(&want_dpo, &weights(&model(&config, 5))) > 1e-3, "{what}: the step moved the weights");
        }
    }
}
