//! daa-train's integration tests, in one binary (one link of burn): the
//! library alone (`backends`, `decode`, `fused`, `memory`, `packing`, `plan`,
//! `precision`, `step`: what the browser builds), and, with the `io` feature, the
//! trainer end to end on tiny random checkpoints written in the real
//! Hugging Face layout (`checkpoints`, `judge`, `model`, `train`; `naive` is
//! their plain-Rust model).

mod backends;
mod decode;
mod distributed;
#[cfg(feature = "mpi")]
mod distributed_mpi;
mod fused;
mod kl;
mod lora;
mod memory;
mod packing;
mod plan;
mod precision;
mod sharding;
mod step;
mod zero3;

#[cfg(feature = "io")]
mod checkpoints;
#[cfg(feature = "io")]
mod judge;
#[cfg(feature = "io")]
mod model;
#[cfg(feature = "io")]
mod naive;
#[cfg(feature = "io")]
mod peft;
#[cfg(feature = "io")]
mod sources;
#[cfg(feature = "io")]
mod train;

#[cfg(feature = "io")]
use std::path::Path;

#[cfg(feature = "io")]
use serde_json::Value;

#[cfg(feature = "io")]
/// Writes a tiny checkpoint with weights `N(0, std²)` into `dir`.
pub fn checkpoint(dir: &Path, config: &Value, std: f32) {
    daa_train::tiny_run::write_checkpoint(dir, config, 7, std).expect("write checkpoint");
}

#[cfg(feature = "io")]
/// Writes JSON Lines.
pub fn write_jsonl(path: &Path, rows: &[Value]) {
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(path, text).unwrap();
}
