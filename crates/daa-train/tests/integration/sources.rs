//! Data from a folder of shards with a split (a Hugging Face dataset
//! snapshot's `data/` layout) reads the same rows as one file.

use daa_train::data::{DataSource, EncodeOptions, TextEncoder};
use daa_train::reference_cache::source_fingerprint;
use daa_train::tiny_run::{TINY_VOCAB, arithmetic_rows, llama_config, preference_parquet, write_checkpoint};
use serde_json::Value;

fn write_jsonl(path: &std::path::Path, rows: &[Value]) {
    std::fs::write(path, rows.iter().map(|r| format!("{r}\n")).collect::<String>()).unwrap();
}

#[test]
fn a_folder_of_shards_reads_the_same_rows_as_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    write_checkpoint(&model, &llama_config(TINY_VOCAB, 32, 1), 1, 0.3).unwrap();
    let encoder = TextEncoder::open(&model).unwrap();
    let options = EncodeOptions { max_length: 64, max_prompt_length: 48, strict: false };
    let mut rows = arithmetic_rows(30, 1);
    rows[14]["rejected"] = rows[14]["chosen"].clone(); // skipped, in the second shard
    let one = dir.path().join("one.jsonl");
    write_jsonl(&one, &rows);
    // A snapshot: README at the root, shards under data/, JSON Lines and Parquet mixed.
    let snapshot = dir.path().join("snapshot");
    let data = snapshot.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(snapshot.join("README.md"), "---\nlicense: mit\n---\n").unwrap();
    write_jsonl(&data.join("train-00000-of-00002.jsonl"), &rows[..12]);
    std::fs::write(data.join("train-00001-of-00002.parquet"), preference_parquet(&rows[12..]).unwrap()).unwrap();
    write_jsonl(&data.join("test-00000-of-00001.jsonl"), &rows[..5]);

    let (single, _) = DataSource::file(&one).encode(&encoder, &options).unwrap();
    let source = DataSource::open(&snapshot, Some("train"), "data.path").unwrap();
    assert_eq!(source.files.len(), 2);
    let (sharded, index) = source.encode(&encoder, &options).unwrap();
    assert_eq!((sharded.rows, single.rows), (30, 30));
    assert_eq!(sharded.skipped, single.skipped);
    assert_eq!(sharded.skipped_total(), 1);
    // The same pairs under the same row numbers (across the shards).
    assert_eq!(sharded.pairs, single.pairs);
    assert_eq!(source.read_rows().unwrap().iter().map(|r| r.row).collect::<Vec<_>>(), (1..=30).collect::<Vec<_>>());
    // Messages name the shard and its own row.
    assert!(index.locate(13).ends_with("train-00001-of-00002.parquet: row 1"), "{}", index.locate(13));
    let both = index.describe_rows(&[2, 15]);
    assert!(
        both.contains("rows 2 of ")
            && both.contains("train-00000-of-00002.jsonl; rows 3 of ")
            && both.ends_with(".parquet"),
        "{both}"
    );
    // The cache key follows every shard.
    let key = source_fingerprint(&source).unwrap();
    assert_ne!(key, source_fingerprint(&DataSource::file(&one)).unwrap());
    assert_eq!(key, source_fingerprint(&DataSource::open(&snapshot, Some("train"), "x").unwrap()).unwrap());
    let test = DataSource::open(&data, Some("test"), "data.eval_path").unwrap();
    assert_eq!(test.encode(&encoder, &options).unwrap().0.rows, 5);

    // Splits must be named when there are several, and must exist.
    let e = format!("{:#}", DataSource::open(&snapshot, None, "`data.path` = `snap`").unwrap_err());
    assert!(e.contains("`data.path` = `snap`") && e.contains("holds the splits test, train: set `data.split`"), "{e}");
    let e = format!("{:#}", DataSource::open(&snapshot, Some("validation"), "data.path").unwrap_err());
    assert!(e.contains("has no split `validation`; its splits: test, train"), "{e}");
    let e = format!("{:#}", DataSource::open(&one, Some("train"), "data.path").unwrap_err());
    assert!(e.contains("a split (`train`) picks shards in a folder") && e.contains("one.jsonl is one file"), "{e}");
    // A folder of unnamed parts is one source.
    let parts = dir.path().join("parts");
    std::fs::create_dir_all(&parts).unwrap();
    write_jsonl(&parts.join("part-0.jsonl"), &rows[..10]);
    write_jsonl(&parts.join("part-1.jsonl"), &rows[10..]);
    let (from_parts, _) = DataSource::open(&parts, None, "data.path").unwrap().encode(&encoder, &options).unwrap();
    assert_eq!(from_parts.pairs, single.pairs);
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = format!("{:#}", DataSource::open(&empty, None, "data.path").unwrap_err());
    assert!(e.contains("no .parquet or .jsonl files in"), "{e}");
}
