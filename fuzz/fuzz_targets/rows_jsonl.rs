//! libFuzzer entry for `daa_fuzz::targets::rows_jsonl`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = daa_fuzz::targets::rows_jsonl(data);
});
