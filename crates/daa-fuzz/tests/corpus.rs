//! The committed seed corpus and every regression input, replayed through
//! their targets (what `cargo test` runs; CI also runs each target's
//! randomised engine briefly with `cargo xtask fuzz --engine random`).

use std::path::{Path, PathBuf};

use daa_fuzz::engine::execute;
use daa_fuzz::targets::Verdict;
use daa_fuzz::{TARGETS, target};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn inputs(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_none_or(|e| e != "txt" && e != "md"))
        .collect();
    files.sort();
    files.into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect()
}

#[test]
fn every_target_has_a_libfuzzer_entry_an_xtask_name_and_seeds() {
    let xtask = std::fs::read_to_string(fuzz_dir().join("../xtask/src/fuzz.rs")).unwrap();
    for t in TARGETS {
        assert!(
            fuzz_dir().join("fuzz_targets").join(format!("{}.rs", t.name)).is_file(),
            "{}: no fuzz_targets entry",
            t.name
        );
        assert!(xtask.contains(&format!("\"{}\",", t.name)), "{}: not in xtask's list", t.name);
        assert!(!inputs(&fuzz_dir().join("corpus").join(t.name)).is_empty(), "{}: no seeds", t.name);
    }
}

#[test]
fn the_committed_seeds_are_what_the_generator_writes() {
    let generated = daa_fuzz::seeds::seeds().unwrap();
    for (target, name, bytes) in &generated {
        let path = fuzz_dir().join("corpus").join(target).join(name);
        let committed = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run `daa-fuzz seeds fuzz/corpus`)", path.display()));
        assert!(committed == *bytes, "{}: differs from what daa-fuzz seeds writes", path.display());
    }
}

#[test]
fn seeds_and_regressions_replay_without_a_failure() {
    let mut replayed = 0;
    for t in TARGETS {
        for folder in ["corpus", "regressions"] {
            for (path, bytes) in inputs(&fuzz_dir().join(folder).join(t.name)) {
                if let Err(message) = execute(t, &bytes) {
                    panic!("{}: {message}", path.display());
                }
                replayed += 1;
            }
        }
    }
    assert!(replayed >= 30, "only {replayed} inputs");
}

/// The targets reach past the first error: the well-formed seeds are read
/// to the end, the hostile ones refused.
#[test]
fn well_formed_seeds_are_accepted_and_hostile_ones_refused() {
    let expect = [
        ("safetensors", "llama-f32", Verdict::Accepted),
        ("safetensors", "mixed-dtypes", Verdict::Accepted),
        ("checkpoint", "llama-single", Verdict::Accepted),
        ("checkpoint", "llama-sharded", Verdict::Accepted),
        ("checkpoint", "cohere-single", Verdict::Accepted),
        ("tokenizer", "tiny-all-files", Verdict::Accepted),
        ("tokenizer", "template-list", Verdict::Accepted),
        ("rows_jsonl", "ultrafeedback-layout", Verdict::Accepted),
        ("rows_jsonl", "other-layouts", Verdict::Rejected),
        ("rows_parquet", "ultrafeedback-layout", Verdict::Accepted),
        ("train_config", "tiny", Verdict::Accepted),
        ("train_config", "llama-dpo", Verdict::Accepted),
        ("chat_template", "llama3-style", Verdict::Accepted),
        ("chat_template", "recursive", Verdict::Rejected),
        ("chat_template", "long-loop", Verdict::Rejected),
        ("loss_lines", "ipo", Verdict::Accepted),
        ("metrics", "sample-run", Verdict::Accepted),
        ("metrics", "sample-run-one-bad-line", Verdict::Rejected),
    ];
    for (name, seed, verdict) in expect {
        let bytes = std::fs::read(fuzz_dir().join("corpus").join(name).join(seed)).unwrap();
        assert_eq!(execute(target(name).unwrap(), &bytes), Ok(verdict), "{name}/{seed}");
    }
}

/// The limits a chat template meets, with the messages users see.
#[test]
fn a_template_that_never_ends_is_stopped_with_a_clear_error() {
    use daa_train::data::{ChatTemplate, Message};
    let conversation = [Message { role: "user".into(), content: "hi".into() }];
    let error = |source: &str| {
        let template = ChatTemplate::new(source, "<s>", "</s>").unwrap();
        format!("{:#}", template.render(&conversation, true).unwrap_err())
    };
    let looping = error("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}");
    assert!(looping.contains("ran more than 2000000 instructions for one conversation"), "{looping}");
    let recursive = error("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
    assert!(recursive.starts_with("rendering the chat template"), "{recursive}");
    let huge = error("{% for i in range(5000) %}{{ 'x' * 10000 }}{% endfor %}");
    assert!(huge.contains("its output passed 16777216 bytes"), "{huge}");
}

/// Found by fuzzing: tokenizers 0.22.2 panics on a `decoder` whose JSON is
/// cut short; daa reports it as an error naming the file.
#[test]
fn a_tokenizer_file_the_library_panics_on_is_an_error_naming_it() {
    let input = std::fs::read(fuzz_dir().join("regressions/tokenizer/decoder-json-cut-short")).unwrap();
    let [tokenizer, ..] = daa_fuzz::split::parts(&input, 4)[..] else { unreachable!() };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), tokenizer).unwrap();
    let error = format!("{:#}", daa_train::data::TextEncoder::open(dir.path()).unwrap_err());
    let expected = format!(
        "{}: cannot load the tokenizer: the tokenizers library failed on it (Helper: Error(",
        dir.path().join("tokenizer.json").display()
    );
    assert!(error.starts_with(&expected), "{error}");
}

/// The error of reading the Parquet regression input `name` as rows; it
/// names the file and comes within 10 s.
fn parquet_regression_error(name: &str) -> String {
    let input = std::fs::read(fuzz_dir().join("regressions/rows_parquet").join(name)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rows.parquet");
    std::fs::write(&path, input).unwrap();
    let started = std::time::Instant::now();
    let error = format!("{:#}", daa_train::data::read_rows(&path).unwrap_err());
    assert!(error.starts_with(&path.display().to_string()), "{error}");
    assert!(started.elapsed().as_secs() < 10, "{name}: took {:?}", started.elapsed());
    error
}

/// Found by fuzzing: a Parquet file whose first row cannot be decoded, after
/// which parquet 60.1's row iterator returns the same error forever (daa
/// read rows until the iterator ended: a hang). Now the first undecodable
/// row is an error naming the file and the row.
#[test]
fn a_parquet_file_that_makes_the_reader_loop_is_refused_naming_it() {
    let error = parquet_regression_error("page-header-loop");
    assert!(error.contains(": row 1: cannot decode the Parquet row (External: snappy: corrupt input"), "{error}");
}

/// Found by fuzzing (libFuzzer): parquet 60.1 panics on a column chunk whose
/// metadata gives a negative offset; daa checks every chunk's byte range.
#[test]
fn a_parquet_column_outside_the_file_is_refused_naming_it() {
    let error = parquet_regression_error("negative-column-offset");
    let expected = "row group 0, column `score_chosen`: the metadata places its 45 bytes at offset -564, outside the \
                    file's 1717 bytes (the file is damaged)";
    assert!(error.contains(expected), "{error}");
}

/// Found by fuzzing (libFuzzer): a 3 KB Parquet file whose page header makes
/// parquet 60.1 retry a read at the end of the file without end (52 s before
/// the fix); every read now costs at least one byte of the reader's budget.
#[test]
fn a_parquet_page_header_that_retries_reads_at_the_end_is_stopped() {
    let error = parquet_regression_error("thrift-skip-at-end-of-file");
    assert!(error.contains("the Parquet reader read far more than the file holds (the file is damaged)"), "{error}");
}

/// Found by fuzzing (libFuzzer, out of memory): a 3 KB Parquet footer whose
/// schema declares hundreds of millions of children, for which parquet
/// 60.1 reserved 7.2 GiB before reading one; daa now checks the schema's
/// child counts first.
#[test]
fn a_parquet_schema_declaring_impossible_children_is_refused_naming_it() {
    let error = parquet_regression_error("schema-reserves-7-gib");
    assert!(error.contains(": the Parquet schema is damaged: element "), "{error}");
}
