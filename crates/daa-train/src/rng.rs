//! The one pseudo-random generator of the trainer: SplitMix64 (Steele, Lea
//! and Flood 2014). Deterministic across platforms, so data order, splits and
//! generated weights are the same everywhere for the same seed.

/// Advances `state` and returns the next 64 random bits.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The state after `n` calls of [`splitmix64`] on `state`, without making
/// them (each call adds the same constant).
pub fn splitmix64_skip(state: u64, n: u64) -> u64 {
    state.wrapping_add(0x9E37_79B9_7F4A_7C15u64.wrapping_mul(n))
}

/// A uniform draw in the open interval `(0, 1)`.
pub fn uniform_open(state: &mut u64) -> f64 {
    ((splitmix64(state) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// A permutation of `0..n` determined by `seed` and `stream` (Fisher–Yates).
pub fn permutation(n: usize, seed: u64, stream: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut state = seed ^ stream.wrapping_mul(0xA076_1D64_78BD_642F);
    for i in (1..n).rev() {
        let j = (splitmix64(&mut state) % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

#[cfg(test)]
mod tests {
    #[test]
    fn skipping_n_draws_is_making_them() {
        let mut state = 0x1234_5678;
        for n in 0..1000 {
            assert_eq!(super::splitmix64_skip(0x1234_5678, n), state);
            super::splitmix64(&mut state);
        }
    }
}
