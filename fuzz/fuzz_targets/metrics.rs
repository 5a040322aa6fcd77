//! libFuzzer entry for `daa_fuzz::targets::metrics`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = daa_fuzz::targets::metrics(data);
});
