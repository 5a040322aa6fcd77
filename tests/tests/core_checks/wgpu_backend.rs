//! wgpu-only behaviour: tensors larger than one storage binding are split
//! into row chunks (any V up to 262,144, any row count), errors still name
//! the file's row, and the adapter is reported.

use daa_core::{Backend, HostTensor, Specification, TokenStatsParams, Wgpu, WgpuOptions};
use daa_tests::fixtures::{lm_logits, targets};
use daa_tests::tolerance::{TOKEN_STATS_GPU, assert_close};

fn small_binding_backend() -> Option<Wgpu> {
    // 64 KiB bindings: [37, 4097] f32 logits (600 KiB) need ten chunks.
    match Wgpu::with_options(WgpuOptions { max_binding_bytes: Some(64 << 10) }) {
        Ok(b) => Some(b),
        Err(e) => {
            daa_tests::gpu::skip("wgpu", &e.to_string());
            None
        }
    }
}

#[test]
fn logits_over_the_binding_limit_are_chunked_by_rows() {
    let Some(gpu) = small_binding_backend() else { return };
    let (rows, vocab) = (37, 4097);
    let x = lm_logits(rows, vocab, 2.0, 5);
    let t = HostTensor::from_i64(targets(rows, vocab, 5), &[rows]).unwrap();
    let params = TokenStatsParams { k: 50, entropy_base: 2.0 };
    let f32_logits = HostTensor::from_f32(x.clone(), &[rows, vocab]).unwrap();
    // Odd vocabulary in bf16: chunks must start on whole u32 words.
    let bf16_logits =
        HostTensor::from_bf16(x.iter().map(|&v| half::bf16::from_f32(v)).collect::<Vec<_>>(), &[rows, vocab]).unwrap();
    for logits in [f32_logits, bf16_logits] {
        let device = gpu.upload(&logits).unwrap();
        assert!(device_chunks(&device) > 1, "the test must exercise chunking");
        let want = Specification.token_stats(&logits, &t, None, &params).unwrap().to_f64_vec("want").unwrap();
        let got = gpu.download(&gpu.token_stats(&device, &gpu.upload(&t).unwrap(), None, &params).unwrap()).unwrap();
        assert_close(&got.to_f64_vec("got").unwrap(), &want, TOKEN_STATS_GPU, &format!("chunked {}", logits.dtype()));
        // The round trip keeps the data.
        assert_eq!(gpu.download(&device).unwrap().to_f64_vec("x").unwrap(), logits.to_f64_vec("x").unwrap());
    }
    // A NaN in a late chunk is reported with the tensor's row number.
    let mut bad = x.clone();
    bad[33 * vocab + 4000] = f32::NAN;
    let bad = gpu.upload(&HostTensor::from_f32(bad, &[rows, vocab]).unwrap()).unwrap();
    let err = gpu.download(&gpu.token_stats(&bad, &gpu.upload(&t).unwrap(), None, &params).unwrap()).unwrap_err();
    assert!(err.to_string().contains("row 33, column 4000"), "{err}");
}

#[test]
fn many_rows_of_a_tiny_vocabulary_split_their_outputs_too() {
    let Some(gpu) = small_binding_backend() else { return };
    // 3000 rows × 24 output bytes exceed a 64 KiB binding although the logits fit one.
    let (rows, vocab) = (3000, 3);
    let logits = HostTensor::from_f32(lm_logits(rows, vocab, 1.0, 8), &[rows, vocab]).unwrap();
    let t = HostTensor::from_i64(targets(rows, vocab, 8), &[rows]).unwrap();
    let params = TokenStatsParams { k: 2, entropy_base: 2.0 };
    let want = Specification.token_stats(&logits, &t, None, &params).unwrap().to_f64_vec("want").unwrap();
    let device = gpu.upload(&logits).unwrap();
    assert!(device_chunks(&device) > 1);
    let got = gpu.download(&gpu.token_stats(&device, &gpu.upload(&t).unwrap(), None, &params).unwrap()).unwrap();
    assert_close(&got.to_f64_vec("got").unwrap(), &want, TOKEN_STATS_GPU, "tiny vocabulary, many rows");
}

fn device_chunks(t: &daa_core::WgpuTensor) -> usize {
    t.chunk_count()
}

#[test]
fn a_row_larger_than_a_binding_is_a_clear_error() {
    let Some(gpu) = small_binding_backend() else { return };
    let huge_row = HostTensor::from_f32(vec![0.0; 20_000], &[1, 20_000]).unwrap();
    let err = gpu.upload(&huge_row).unwrap_err().to_string();
    assert!(err.contains("exceeds the adapter's largest storage binding"), "{err}");
}

#[test]
fn adapter_is_described() {
    let Some(gpu) = daa_tests::gpu::wgpu_backend() else { return };
    let a = gpu.adapter();
    assert!(!a.name.is_empty() && a.max_binding_bytes >= 4, "{a:?}");
    println!("wgpu adapter: {} ({}, {})", a.name, a.backend, a.device_type);
}
