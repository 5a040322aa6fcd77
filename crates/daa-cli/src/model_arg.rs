//! `--model` of every command: a local checkpoint folder (or file), or a
//! Hugging Face Hub id read from the local cache (`daa_train::hub`).

use std::path::PathBuf;

/// clap's parser of `--model`: the path when it exists, else the cached
/// snapshot of the Hub model it names, else an error saying what is missing.
pub fn model_path(spec: &str) -> Result<PathBuf, String> {
    let local = PathBuf::from(spec);
    if local.exists() {
        return Ok(local);
    }
    daa_train::hub::resolve_model(spec, "--model").map_err(|e| format!("{e:#}"))
}
