//! The trainer end to end on tiny random checkpoints written in the real
//! Hugging Face layout (safetensors, config.json, tokenizer.json).

mod checkpoints;
mod judge;
mod model;
mod naive;
mod train;

use std::path::Path;

use serde_json::Value;

/// Writes a tiny checkpoint with weights `N(0, std²)` into `dir`.
pub fn checkpoint(dir: &Path, config: &Value, std: f32) {
    daa_train::tiny::write_checkpoint(dir, config, 7, std).expect("write checkpoint");
}

/// Writes JSON Lines.
pub fn write_jsonl(path: &Path, rows: &[Value]) {
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(path, text).unwrap();
}
