//! Checkpoints out: the source dtype kept (bf16 round trip bit-exact, f32
//! master weights beside), Hugging Face's sharded layout (index, shard
//! names, ≤ the shard limit) read back identically, and loading a
//! multi-shard checkpoint with host memory bounded by the model plus a few
//! tensors (measured in a child process).

use std::path::Path;
use std::process::Command;

use burn::backend::NdArray;
use daa_train::checkpoint::{
    MASTER_WEIGHTS_DIR, NamedTensor, load_model, model_tensors, safetensors_bytes, save_model,
};
use daa_train::model::tiny_configs::{cohere_config, llama_config};
use daa_train::model::{CausalLm, ModelConfig, RandomWeights};
use daa_train::shards::{SaveDtype, SaveOptions, write_weights};
use half::bf16;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

type Cpu = NdArray<f32>;

fn random_model(config: &Value, seed: u64) -> CausalLm<Cpu> {
    let config = ModelConfig::from_json(&config.to_string()).unwrap();
    CausalLm::from_weights(&config, &mut RandomWeights { seed, std: 0.5 }, &Default::default()).unwrap()
}

/// Every tensor of the safetensors files of `dir` (shards included), parsed
/// by the `safetensors` crate: name → (dtype, shape, bytes).
fn stored(dir: &Path) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        let tensors = SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for (name, view) in tensors.tensors() {
            out.push((name, view.dtype(), view.shape().to_vec(), view.data().to_vec()));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn a_bf16_checkpoint_saves_back_bit_exactly_with_f32_master_weights() {
    let temp = tempfile::tempdir().unwrap();
    let source = temp.path().join("source");
    std::fs::create_dir_all(&source).unwrap();
    // A bf16 checkpoint written by the `safetensors` crate, not by daa.
    let mut config = cohere_config(67, 32, 2);
    config["torch_dtype"] = "bfloat16".into();
    let model = random_model(&config, 3);
    let tensors: Vec<NamedTensor> = model_tensors(&model)
        .unwrap()
        .into_iter()
        .map(|t| {
            let values: &[f32] = bytemuck::cast_slice(&t.bytes);
            let bytes = values.iter().flat_map(|&x| bf16::from_f32(x).to_le_bytes()).collect();
            NamedTensor { dtype: Dtype::BF16, bytes, ..t }
        })
        .collect();
    std::fs::write(source.join("model.safetensors"), safetensors_bytes(&tensors, &[]).unwrap()).unwrap();
    std::fs::write(source.join("config.json"), config.to_string()).unwrap();

    let loaded: CausalLm<Cpu> = load_model(&source, &Default::default()).unwrap();
    let out = temp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    save_model(&loaded, &out, &source).unwrap();

    let want = stored(&source);
    let got = stored(&out);
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!((&g.0, g.1, &g.2), (&w.0, w.1, &w.2), "name, dtype, shape");
        assert!(g.3 == w.3, "{}: the bf16 bytes changed in a load → save round trip", g.0);
    }
    let saved_config: Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(saved_config["torch_dtype"], "bfloat16");

    // The f32 master weights: the same values, widened; and what load_model reads.
    let master = stored(&out.join(MASTER_WEIGHTS_DIR));
    for (m, w) in master.iter().zip(&want) {
        assert_eq!((&m.0, m.1), (&w.0, Dtype::F32));
        let widened: Vec<u8> =
            w.3.chunks(2).flat_map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32().to_le_bytes()).collect();
        assert!(m.3 == widened, "{}: master weights differ from the bf16 values", m.0);
    }

    // After an update that bf16 cannot represent, the master keeps it.
    let mut values = model_tensors(&loaded).unwrap();
    let nudged: Vec<f32> = bytemuck::cast_slice::<u8, f32>(&values[0].bytes).iter().map(|x| x + 1e-4).collect();
    values[0].bytes = bytemuck::cast_slice(&nudged).to_vec();
    let nudged_dir = temp.path().join("nudged");
    std::fs::create_dir_all(&nudged_dir).unwrap();
    std::fs::write(nudged_dir.join("model.safetensors"), safetensors_bytes(&values, &[]).unwrap()).unwrap();
    std::fs::write(nudged_dir.join("config.json"), config.to_string()).unwrap();
    let nudged_model: CausalLm<Cpu> = load_model(&nudged_dir, &Default::default()).unwrap();
    let resaved = temp.path().join("resaved");
    std::fs::create_dir_all(&resaved).unwrap();
    save_model(&nudged_model, &resaved, &nudged_dir).unwrap();
    let back: CausalLm<Cpu> = load_model(&resaved, &Default::default()).unwrap();
    let first = |m: &CausalLm<Cpu>| model_tensors(m).unwrap().remove(0).bytes;
    assert!(first(&back) == first(&nudged_model), "load_model must read the f32 master weights");

    // Without the f32 copy (`daa merge`'s default): the bf16 checkpoint alone.
    let plain = temp.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let options = SaveOptions { f32_copy: false, ..SaveOptions::like_source(loaded.config()) };
    daa_train::checkpoint::save_model_as(&loaded, &plain, &source, &options).unwrap();
    assert!(!plain.join(MASTER_WEIGHTS_DIR).exists());
    assert!(stored(&plain).iter().zip(&want).all(|(g, w)| g.3 == w.3), "the same bf16 bytes");
}

#[test]
fn a_sharded_save_loads_back_identically_in_hugging_faces_layout() {
    let temp = tempfile::tempdir().unwrap();
    let model = random_model(&llama_config(97, 32, 3), 5);
    let options = SaveOptions { dtype: SaveDtype::F32, max_shard_bytes: 20_000, f32_copy: true };
    let files = write_weights(&model, temp.path(), &options).unwrap();
    std::fs::write(temp.path().join("config.json"), model.config().to_json("float32")).unwrap();
    let shards = files.len() - 1;
    assert!(shards >= 3, "a 20 kB limit must split this model (files: {files:?})");
    for (i, file) in files[..shards].iter().enumerate() {
        assert_eq!(file, &format!("model-{:05}-of-{shards:05}.safetensors", i + 1));
        let size = std::fs::metadata(temp.path().join(file)).unwrap().len();
        let bytes = std::fs::read(temp.path().join(file)).unwrap();
        let tensors = SafeTensors::deserialize(&bytes).unwrap();
        let data: u64 = tensors.tensors().iter().map(|(_, v)| v.data().len() as u64).sum();
        assert!(data <= options.max_shard_bytes || tensors.len() == 1, "{file}: {data} bytes of data in {size}");
    }
    let index: Value =
        serde_json::from_str(&std::fs::read_to_string(temp.path().join("model.safetensors.index.json")).unwrap())
            .unwrap();
    let weight_map = index["weight_map"].as_object().unwrap();
    let want = model_tensors(&model).unwrap();
    assert_eq!(weight_map.len(), want.len());
    let total: u64 = want.iter().map(|t| t.bytes.len() as u64).sum();
    assert_eq!(index["metadata"]["total_size"], total);
    for (name, dtype, _, _) in stored(temp.path()) {
        assert_eq!(dtype, Dtype::F32);
        assert!(weight_map.contains_key(&name), "{name} is not in the index");
    }

    let back: CausalLm<Cpu> = load_model(temp.path(), &Default::default()).unwrap();
    for (g, w) in model_tensors(&back).unwrap().iter().zip(&want) {
        assert_eq!(g.name, w.name);
        assert!(g.bytes == w.bytes, "{}: differs after a sharded save and load", g.name);
    }
}

/// `VmRSS`/`VmHWM` of this process in bytes.
fn status_bytes(field: &str) -> u64 {
    let mib = daa_train::run::process::memory_mib(field).unwrap_or_else(|| panic!("no {field}"));
    (mib * 1024.0 * 1024.0) as u64
}

const RSS_DIR: &str = "DAA_TEST_LOAD_RSS_DIR";

/// Run by [`loading_a_multi_shard_checkpoint_holds_the_model_not_the_files`]
/// in a fresh process: loads the checkpoint and prints its memory.
#[test]
#[ignore = "the child process of the memory test"]
fn load_checkpoint_in_child_process() {
    let Ok(dir) = std::env::var(RSS_DIR) else { return };
    let before = status_bytes("VmRSS");
    let model: CausalLm<Cpu> = load_model(Path::new(&dir), &Default::default()).unwrap();
    let peak = status_bytes("VmHWM");
    let params: usize = model_tensors(&model).map(|t| t.iter().map(|t| t.bytes.len() / 4).sum()).unwrap_or(0);
    println!("DAA_RSS before={before} peak={peak} params={params}");
}

#[test]
#[cfg(target_os = "linux")]
fn loading_a_multi_shard_checkpoint_holds_the_model_not_the_files() {
    let temp = tempfile::tempdir().unwrap();
    // 109 M parameters: 218 MB of bf16 in 64 MB shards, 436 MB as f32 in memory;
    // the largest tensor (an MLP matrix) is 34 MB as f32.
    let mut config = llama_config(8192, 1024, 8);
    config["torch_dtype"] = "bfloat16".into();
    let model = random_model(&config, 1);
    let largest = model_tensors(&model).unwrap().iter().map(|t| t.bytes.len() as u64).max().unwrap();
    let options = SaveOptions { dtype: SaveDtype::Bf16, max_shard_bytes: 64 << 20, f32_copy: true };
    let files = write_weights(&model, temp.path(), &options).unwrap();
    std::fs::write(temp.path().join("config.json"), model.config().to_json("bfloat16")).unwrap();
    drop(model);
    let file_bytes: u64 = files.iter().map(|f| std::fs::metadata(temp.path().join(f)).unwrap().len()).sum();

    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "checkpoints::load_checkpoint_in_child_process", "--ignored", "--nocapture"])
        .env(RSS_DIR, temp.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let line = text.lines().find(|l| l.starts_with("DAA_RSS")).unwrap_or_else(|| panic!("no figures:\n{text}"));
    let field = |k: &str| -> u64 {
        line.split_whitespace().find_map(|w| w.strip_prefix(&format!("{k}="))).unwrap().parse().unwrap()
    };
    let (before, peak, params) = (field("before"), field("peak"), field("params"));
    let model_bytes = params * 4;
    let grew = peak.saturating_sub(before);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "{} shards, {:.0} MiB on disk; model {:.0} MiB as f32; largest tensor {:.0} MiB; resident memory grew {:.0} MiB",
        files.len() - 1,
        mib(file_bytes),
        mib(model_bytes),
        mib(largest),
        mib(grew)
    );
    // The model itself, a few tensors in conversion, allocator slack — not
    // the model plus the files (which would add 208 MiB here).
    let bound = model_bytes + 3 * largest + (32 << 20);
    assert!(
        grew <= bound,
        "loading grew resident memory by {:.0} MiB; bound {:.0} MiB (model {:.0} + 3 × largest tensor {:.0} + 32)",
        mib(grew),
        mib(bound),
        mib(model_bytes),
        mib(largest)
    );
}
