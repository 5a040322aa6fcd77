//! Fuzz targets for every parser that reads a user's files.
//!
//! Each target takes arbitrary bytes, lays them out as the files the parser
//! reads (several files are cut from one input at [`split::SEPARATOR`]
//! lines), runs the parser and whatever a run would do with its result, and
//! panics only on a defect: a panic inside daa or a library, an error that
//! does not name the file, or a result that breaks the parser's promise (a
//! validated pair whose loss is not finite, say). Errors for bad input are
//! the expected outcome.
//!
//! Engines: libFuzzer through `cargo fuzz` (the `fuzz/` folder, nightly
//! toolchain) and [`engine`], a randomised mutation run on the stable
//! toolchain that CI uses; `cargo xtask fuzz` picks one. The seed corpus
//! ([`seeds`]) is made from the real formats and committed under
//! `fuzz/corpus/<target>/`; inputs that once failed are kept under
//! `fuzz/regressions/<target>/` and replayed by `cargo test`.

pub mod engine;
pub mod scratch;
pub mod seeds;
pub mod split;
pub mod targets;

/// One fuzz target.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// Its name (`cargo xtask fuzz NAME`, `fuzz/fuzz_targets/NAME.rs`).
    pub name: &'static str,
    /// What it reads.
    pub about: &'static str,
    /// Runs one input; panics on a defect.
    pub run: fn(&[u8]) -> targets::Verdict,
}

/// Every target, in the order `cargo xtask fuzz` runs them.
pub const TARGETS: [Target; 9] = [
    Target {
        name: "safetensors",
        about: "a .safetensors file through daa-core's memory-mapped reader",
        run: targets::safetensors,
    },
    Target {
        name: "checkpoint",
        about: "config.json + model.safetensors.index.json + shards, loaded as a model",
        run: targets::checkpoint,
    },
    Target {
        name: "tokenizer",
        about: "tokenizer.json + tokenizer_config.json + generation_config.json, then encode/decode/render",
        run: targets::tokenizer,
    },
    Target { name: "rows_jsonl", about: "preference rows as JSON Lines, read and encoded", run: targets::rows_jsonl },
    Target { name: "rows_parquet", about: "preference rows as Parquet, read and encoded", run: targets::rows_parquet },
    Target {
        name: "train_config",
        about: "the TOML training configuration with --set overrides, validated",
        run: targets::train_config,
    },
    Target {
        name: "chat_template",
        about: "a Jinja chat template rendering a conversation (both fuzzed), with fuel and output limits",
        run: targets::chat_template,
    },
    Target { name: "loss_lines", about: "daa loss's JSON Lines, parsed and computed", run: targets::loss_lines },
    Target {
        name: "metrics",
        about: "metrics.jsonl as daa train and the experiment report read it",
        run: targets::metrics,
    },
];

/// The target named `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().copied().find(|t| t.name == name)
}
