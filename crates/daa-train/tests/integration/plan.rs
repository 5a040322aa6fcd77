//! `daa plan`'s numbers against hand computation, on the published
//! `config.json` of Llama-2-7B and Command R (c4ai-command-r-v01, 35B).

use daa_train::model::{LoraTarget, ModelConfig};
use daa_train::plan::{Cluster, MemoryPlan, PlanLora, PlanSetup, Precision, Sharding, parse_bytes};

const GIB: u64 = 1 << 30;

fn config(name: &str) -> ModelConfig {
    let path = manifest_dir().join("tests/data").join(name);
    ModelConfig::from_json(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn setup(gpus: u64) -> PlanSetup {
    PlanSetup {
        shard_group: gpus,
        sharding: Sharding::Parameters,
        gpus,
        gpu_memory: 80 * GIB,
        pairs: 1,
        seq_len: 1024,
        micro_batches: 1,
        precision: Precision::Bf16,
        reference_live: false,
        activation_checkpointing: true,
        fused_head: true,
        lora: None,
    }
}

fn line(plan: &MemoryPlan, component: &str) -> u64 {
    plan.lines.iter().find(|l| l.component == component).unwrap_or_else(|| panic!("no line {component}")).bytes
}

#[test]
fn llama_2_7b_on_one_80_gib_gpu_matches_the_hand_computation() {
    let plan = MemoryPlan::new(&config("llama-2-7b.config.json"), setup(1)).unwrap();
    // 32 × (4·4096² + 3·4096·11008 + 2·4096) + 2·32000·4096 + 4096.
    assert_eq!(plan.parameters, 6_738_415_616);
    assert_eq!(line(&plan, "weights"), 13_476_831_232);
    assert_eq!(line(&plan, "master weights (f32)"), 26_953_662_464);
    assert_eq!(line(&plan, "gradients"), 13_476_831_232);
    assert_eq!(line(&plan, "optimizer state (AdamW, f32)"), 53_907_324_928);
    assert!(plan.lines.iter().all(|l| !l.component.starts_with("gradient sums")), "one micro-batch: no sums");
    // 2048 tokens; per token and block (9·4096 + 3·4096 + 4·11008)·2 + 2·32·1024·2 = 317 440.
    assert_eq!(line(&plan, "activations, no checkpointing"), 32 * 2048 * 317_440 + 2 * 2048 * 4096 * 2);
    assert_eq!(
        line(&plan, "activations, checkpoint per block"),
        32 * 2048 * 4096 * 2 + 2048 * 317_440 + 2 * 2048 * 4096 * 2
    );
    assert_eq!(line(&plan, "logits, unfused"), 2048 * 32_000 * 12);
    // A GPU's chunks: ⌊512 MiB / (4 · 32 000)⌋ = 4 194 positions, at most 1 024.
    assert_eq!(line(&plan, "logits, fused head"), 1024 * 32_000 * 12);
    // 16 bytes per parameter before activations (2 + 4 + 2 + 8): 100.4 GiB, more than 80.
    let states = 16 * 6_738_415_616u64;
    assert_eq!(plan.total, states + 1_220_542_464 + 393_216_000);
    assert!(!plan.fits);
    assert!(plan.table().contains("does not fit"), "{}", plan.table());
    // On an H200 (139 GiB as the device reports it) it fits: 102.8 GiB.
    let h200 =
        MemoryPlan::new(&config("llama-2-7b.config.json"), PlanSetup { gpu_memory: 139 * GIB, ..setup(1) }).unwrap();
    assert!(h200.fits);
    // Accumulating over 4 micro-batches adds the f32 sums: 20 bytes per parameter, 127.9 GiB.
    let accumulating =
        MemoryPlan::new(&config("llama-2-7b.config.json"), PlanSetup { micro_batches: 4, ..setup(1) }).unwrap();
    assert_eq!(line(&accumulating, "gradient sums (f32, accumulation)"), 26_953_662_464);
    assert_eq!(accumulating.total, 20 * 6_738_415_616u64 + 1_220_542_464 + 393_216_000);
}

#[test]
fn command_r_35b_on_eight_80_gib_gpus_matches_the_hand_computation() {
    let plan = MemoryPlan::new(&config("command-r-v01.config.json"), setup(8)).unwrap();
    // Tied embeddings, one LayerNorm per (parallel) block:
    // 40 × (4·8192² + 3·8192·22528 + 8192) + 256000·8192 + 8192.
    assert_eq!(plan.parameters, 34_980_831_232);
    assert_eq!(line(&plan, "weights"), 8_745_207_808);
    assert_eq!(line(&plan, "optimizer state (AdamW, f32)"), 34_980_831_232);
    // Per token and block (9·8192 + 3·8192 + 4·22528)·2 + 2·64·1024·2 = 638 976.
    let checkpointed = 40 * 2048 * 8192 * 2 + 2048 * 638_976 + 2 * 2048 * 8192 * 2;
    assert_eq!(line(&plan, "activations, checkpoint per block"), checkpointed);
    // A GPU's chunks: ⌊512 MiB / (4 · 256 000)⌋ = 524, rounded down to a multiple of 128.
    assert_eq!(line(&plan, "logits, fused head"), 512 * 256_000 * 12);
    // Sharded weights gathered one unit at a time: the tied embedding/head
    // with its gradient, 2 · 256 000 · 8192 > 3 blocks of 822 091 776, bf16.
    let gathered = 2 * 256_000 * 8192 * 2;
    assert_eq!(line(&plan, "gathered units (transient)"), gathered);
    assert_eq!(plan.total, 2 * 34_980_831_232 + checkpointed + 1_572_864_000 + gathered);
    assert!(plan.fits, "{}", plan.table());
    // Without checkpointing and with the unfused head it does not; nor with
    // f32 gradient sums for accumulation (20 bytes per parameter: 81.4 GiB
    // per GPU before activations).
    let plain = MemoryPlan::new(
        &config("command-r-v01.config.json"),
        PlanSetup { activation_checkpointing: false, fused_head: false, ..setup(8) },
    )
    .unwrap();
    assert!(!plain.fits, "{}", plain.table());
    let accumulating =
        MemoryPlan::new(&config("command-r-v01.config.json"), PlanSetup { micro_batches: 2, ..setup(8) }).unwrap();
    assert_eq!(accumulating.total, 20 * 34_980_831_232 / 8 + checkpointed + 1_572_864_000 + gathered);
    assert!(!accumulating.fits, "{}", accumulating.table());
    // A live reference adds its bf16 shard.
    let live =
        MemoryPlan::new(&config("command-r-v01.config.json"), PlanSetup { reference_live: true, ..setup(8) }).unwrap();
    assert_eq!(live.total - plan.total, 8_745_207_808);
}

#[test]
fn f32_has_no_master_copy_and_sizes_parse() {
    let plan = MemoryPlan::new(&config("llama-2-7b.config.json"), PlanSetup { precision: Precision::F32, ..setup(1) })
        .unwrap();
    assert!(plan.lines.iter().all(|l| l.component != "master weights (f32)"));
    assert_eq!(line(&plan, "weights"), 4 * 6_738_415_616);
    assert_eq!(line(&plan, "gradients"), 4 * 6_738_415_616);
    assert_eq!(plan.total, 16 * 6_738_415_616 + line(&plan, "activations, checkpoint per block") + 393_216_000);
    assert_eq!(parse_bytes("80GiB").unwrap(), 80 * GIB);
    assert_eq!(parse_bytes("80 GB").unwrap(), 80_000_000_000);
    assert_eq!(parse_bytes("1.5GiB").unwrap(), 3 * GIB / 2);
    assert!(parse_bytes("80 gigs").unwrap_err().contains("unknown unit"));
    assert!(MemoryPlan::new(&config("llama-2-7b.config.json"), PlanSetup { gpus: 0, ..setup(1) }).is_err());
    assert!(MemoryPlan::new(&config("llama-2-7b.config.json"), PlanSetup { micro_batches: 0, ..setup(1) }).is_err());
}

/// This package's folder: the `CARGO_MANIFEST_DIR` cargo sets when it runs
/// the test (the path compiled in may be another clone's when clones share a
/// target folder), else the one compiled in.
fn manifest_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
}

#[test]
fn lora_on_llama_2_7b_counts_the_adapters_only_and_fits_one_80_gib_gpu() {
    let llama = config("llama-2-7b.config.json");
    // r = 16 on every linear layer: 32 × 16 × (4·(4096 + 4096) + 3·(4096 + 11008)) = 39 976 960,
    // PEFT's "trainable params" for this model and setting.
    let all = PlanLora::new(16, &LoraTarget::ALL);
    assert_eq!(all.parameters(&llama), 39_976_960);
    // PEFT's default targets (q_proj, v_proj): 32 × 16 × 2 × 8192.
    let qv = PlanLora::new(16, &[LoraTarget::Q, LoraTarget::V]);
    assert_eq!(qv.parameters(&llama), 8_388_608);
    let plan = MemoryPlan::new(&llama, PlanSetup { lora: Some(all), reference_live: true, ..setup(1) }).unwrap();
    let a = 39_976_960u64;
    assert_eq!(plan.adapter_parameters, a);
    assert_eq!(line(&plan, "weights (frozen)"), 13_476_831_232);
    assert_eq!(line(&plan, "LoRA adapters (f32)"), 4 * a);
    assert_eq!(line(&plan, "gradients (adapters)"), 4 * a);
    assert_eq!(line(&plan, "optimizer state (AdamW, f32)"), 8 * a);
    for absent in ["master weights (f32)", "reference model", "gradients", "weights"] {
        assert!(plan.lines.iter().all(|l| l.component != absent), "LoRA plan has a `{absent}` line");
    }
    // Per token and block, the full step's 317 440 bytes plus each adapted layer's f32 input and
    // `x A`: 4·(6·4096 + 11008 + 7·16) = 142 784 (the inputs of q, k, v, o, gate, up are 4096
    // wide, down's 11008).
    let per_token_block = 317_440 + 142_784;
    assert_eq!(
        line(&plan, "activations, checkpoint per block"),
        32 * 2048 * 4096 * 2 + 2048 * per_token_block + 2 * 2048 * 4096 * 2
    );
    assert_eq!(
        plan.total,
        13_476_831_232 + 16 * a + line(&plan, "activations, checkpoint per block") + 1024 * 32_000 * 12
    );
    assert!(plan.fits, "{}", plan.table());
    assert!(
        plan.table()
            .contains("LoRA rank 16 on q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj (40.0 M trained)"),
        "{}",
        plan.table()
    );
    assert!(plan.table().contains("reference = adapters off"), "{}", plan.table());
}

const H100_NODE: Cluster =
    Cluster { gpus_per_node: 8, nvlink_gb_s: 450.0, network_gb_s: 50.0, peak_tflops: 989.4, mfu: 0.4 };

#[test]
fn each_sharding_stage_divides_what_it_names_on_eight_gpus() {
    let llama = config("llama-2-7b.config.json");
    let p: u64 = 6_738_415_616;
    // One block: 4·4096² + 3·4096·11008 + 2·4096; the embedding 32 000 · 4096.
    assert_eq!(llama.block_parameter_count() as u64, 202_383_360);
    let stage = |sharding| MemoryPlan::new(&llama, PlanSetup { sharding, ..setup(8) }).unwrap();
    let states = |plan: &MemoryPlan| {
        ["weights", "master weights (f32)", "gradients", "optimizer state (AdamW, f32)", "gathered units (transient)"]
            .map(|c| plan.lines.iter().find(|l| l.component == c).map_or(0, |l| l.bytes))
    };
    assert_eq!(states(&stage(Sharding::None)), [2 * p, 4 * p, 2 * p, 8 * p, 0]);
    assert_eq!(states(&stage(Sharding::Optimizer)), [2 * p, 4 * p / 8, 2 * p, 8 * p / 8, 0]);
    assert_eq!(states(&stage(Sharding::Gradients)), [2 * p, 4 * p / 8, 2 * p / 8, 8 * p / 8, 202_383_360 * 2]);
    // Two gathered blocks and one block's whole gradient (3 · 202 383 360 > 2 · 131 072 000), bf16.
    assert_eq!(states(&stage(Sharding::Parameters)), [2 * p / 8, 4 * p / 8, 2 * p / 8, 8 * p / 8, 3 * 202_383_360 * 2]);
    // One GPU gathers nothing.
    assert_eq!(states(&MemoryPlan::new(&llama, setup(1)).unwrap())[4], 0);
}

#[test]
fn communication_per_stage_and_hsdp_against_hand_computation() {
    let llama = config("llama-2-7b.config.json");
    let (p, ring8) = (6_738_415_616u64, |bytes: u64| bytes * 7 / 8);
    let comm = |setup: PlanSetup| MemoryPlan::new(&llama, setup).unwrap().communication(&llama, &H100_NODE);
    let bytes = |c: &daa_train::plan::CommunicationPlan| c.lines.iter().map(|l| (l.bytes, l.link)).collect::<Vec<_>>();
    let ddp = comm(PlanSetup { sharding: Sharding::None, ..setup(8) });
    assert_eq!(bytes(&ddp), [(2 * ring8(4 * p), "NVLink")]);
    let zero1 = comm(PlanSetup { sharding: Sharding::Optimizer, ..setup(8) });
    assert_eq!(bytes(&zero1), [(ring8(4 * p), "NVLink"), (ring8(2 * p), "NVLink")]);
    // ZeRO-2 with 4 micro-batches: one reduce-scatter per micro-batch.
    let zero2 = comm(PlanSetup { sharding: Sharding::Gradients, micro_batches: 4, ..setup(8) });
    assert_eq!(bytes(&zero2), [(4 * ring8(4 * p), "NVLink"), (ring8(2 * p), "NVLink")]);
    let zero3 = comm(PlanSetup { sharding: Sharding::Parameters, ..setup(8) });
    assert_eq!(bytes(&zero3), [(2 * ring8(2 * p), "NVLink"), (ring8(4 * p), "NVLink")]);
    assert!((zero3.seconds - 4.0 * ring8(2 * p) as f64 / 450e9).abs() < 1e-9);
    // 6P + 12·L·d·T FLOPs per token, 2 · 1024 tokens, at 40 % of 989.4 TFLOP/s.
    let flops = (6.0 * p as f64 + 12.0 * 32.0 * 4096.0 * 1024.0) * 2048.0;
    assert!((zero3.compute_seconds - flops / (989.4e12 * 0.4)).abs() < 1e-9);
    // 2 nodes of 8: flat ZeRO-3 rings cross the network; HSDP keeps them on
    // NVLink and all-reduces each GPU's 1/8 of the gradients across the nodes.
    let flat = comm(PlanSetup { sharding: Sharding::Parameters, ..setup(16) });
    let ring16 = |bytes: u64| bytes * 15 / 16;
    assert_eq!(bytes(&flat), [(2 * ring16(2 * p), "network"), (ring16(4 * p), "network")]);
    let hsdp = comm(PlanSetup { sharding: Sharding::Parameters, shard_group: 8, ..setup(16) });
    assert_eq!(
        bytes(&hsdp),
        [(2 * ring8(2 * p), "NVLink"), (ring8(4 * p), "NVLink"), (2 * (4 * p / 8) / 2, "network")]
    );
    assert!(hsdp.seconds < flat.seconds / 5.0, "HSDP {} s vs flat {} s", hsdp.seconds, flat.seconds);
    // A sharding group must divide the GPUs.
    assert!(MemoryPlan::new(&llama, PlanSetup { shard_group: 3, ..setup(16) }).is_err());
}
