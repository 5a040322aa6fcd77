//! libFuzzer entry for `daa_fuzz::targets::loss_lines`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = daa_fuzz::targets::loss_lines(data);
});
