//! Deterministic synthetic inputs: a tiny PRNG (SplitMix64, Steele, Lea and
//! Flood 2014) and logits shaped like a language model's, so tests,
//! benchmarks and `daa bench` need no `rand`, no model and no download, and
//! give the same numbers everywhere.

use crate::tensor::HostTensor;

/// SplitMix64: small, fast, good enough for test data.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Approximately normal (Irwin–Hall sum of four uniforms), mean 0, sd 1.
    pub fn normal(&mut self) -> f64 {
        let s: f64 = (0..4).map(|_| self.uniform()).sum();
        (s - 2.0) * (3.0f64).sqrt()
    }

    /// Uniform integer in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize % n.max(1)
    }
}

/// How many distinct rows [`lm_logits`] draws; further rows repeat them with
/// a shifted offset, so gigabyte benchmark inputs are made at memory speed.
const DISTINCT_ROWS: usize = 64;

/// `[rows, vocab]` logits shaped like a language model's: normal with
/// standard deviation `scale`, plus a few strong tokens per row. Rows past
/// the first 64 repeat earlier ones plus a per-row constant (which changes
/// no statistic but the values in memory).
pub fn lm_logits(rows: usize, vocab: usize, scale: f64, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    let mut out = Vec::with_capacity(rows * vocab);
    for row in 0..rows {
        let start = out.len();
        if row < DISTINCT_ROWS {
            out.extend((0..vocab).map(|_| (rng.normal() * scale) as f32));
            for _ in 0..3 {
                let j = rng.below(vocab);
                out[start + j] += (4.0 * scale) as f32;
            }
        } else {
            let source = (row % DISTINCT_ROWS) * vocab;
            let shift = (row / DISTINCT_ROWS) as f32 * 0.5;
            out.extend_from_within(source..source + vocab);
            out[start..].iter_mut().for_each(|x| *x += shift);
        }
    }
    out
}

/// Random targets in `0..vocab`.
pub fn targets(rows: usize, vocab: usize, seed: u64) -> Vec<i64> {
    let mut rng = SplitMix64::new(seed ^ 0xA5A5);
    (0..rows).map(|_| rng.below(vocab) as i64).collect()
}

/// `[rows, vocab]` f32 logits ([`lm_logits`], scale 2) and their `[rows]`
/// targets as host tensors: the inputs of the kernel benchmarks (`daa
/// bench`, criterion) and of tests.
pub fn token_stats_inputs(rows: usize, vocab: usize, seed: u64) -> (HostTensor, HostTensor) {
    let logits = HostTensor::from_f32(lm_logits(rows, vocab, 2.0, seed), &[rows, vocab]).expect("shape");
    let targets = HostTensor::from_i64(targets(rows, vocab, seed), &[rows]).expect("shape");
    (logits, targets)
}
