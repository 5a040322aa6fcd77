//! Lane-parallel building blocks of the fast CPU kernels, written as plain
//! arithmetic over `[f32; LANES]` chunks so the compiler vectorises them for
//! whatever instruction set the caller was compiled for (AVX-512, AVX2, SSE2,
//! NEON). No intrinsics, no `unsafe`.

/// How `a·b + c` is computed: fused where the caller was compiled with FMA,
/// two roundings elsewhere (a plain `mul_add` there would call libm).
pub(crate) trait MulAdd {
    /// `a·b + c`.
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

/// Fused multiply-add (only for code compiled with the `fma` target feature).
#[derive(Debug)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct Fused;

/// Separate multiply and add.
#[derive(Debug)]
pub(crate) struct Unfused;

impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

impl MulAdd for Unfused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// Lanes per chunk: one AVX-512 register, two AVX2 registers.
pub(crate) const LANES: usize = 16;

/// At and below this, `e^d` is exactly 0: `d·log2 e` rounds to −127, whose
/// exponent field `n + 127` is 0, so the `2^n` factor is +0.0 (true values
/// there are below 2^−126 ≈ 1.2e−38, the smallest normal f32).
const EXP_FLUSH: f32 = -88.0;

/// `e^d` for `−88 ≤ d ≤ 88`, within 2 ulp where the result is a normal f32,
/// and exactly 0 where `d·log2 e` rounds to −127 (no range check: see [`exp_clamped`]).
///
/// Cephes `expf`: `d = n·ln 2 + r` with `n = round(d·log2 e)` and `|r| ≤ ln2/2`,
/// `e^r` by a degree-6 polynomial, `2^n` built in the exponent bits. Rounding
/// uses the `1.5·2^23` trick so the whole body is branch-free.
#[inline(always)]
pub(crate) fn exp_in_range<F: MulAdd>(d: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let t = F::mul_add(d, LOG2E, MAGIC);
    let n = t.to_bits().wrapping_sub(MAGIC.to_bits()) as i32;
    let nf = t - MAGIC;
    let r = F::mul_add(nf, -LN2_LO, F::mul_add(nf, -LN2_HI, d));
    let mut p = 1.987_569_1e-4_f32;
    p = F::mul_add(p, r, 1.398_199_9e-3);
    p = F::mul_add(p, r, 8.333_452e-3);
    p = F::mul_add(p, r, 4.166_579_6e-2);
    p = F::mul_add(p, r, 1.666_666_5e-1);
    p = F::mul_add(p, r, 0.5);
    let e_r = F::mul_add(p, r * r, r + 1.0);
    e_r * f32::from_bits(((n + 127) as u32) << 23)
}

/// `e^d` for `d ≤ 88`, within 2 ulp; exactly 0 for `d ≤ −88` (and −inf).
/// Clamping to [`EXP_FLUSH`] is the whole range check: no blend needed.
#[inline(always)]
pub(crate) fn exp_clamped<F: MulAdd>(d: f32) -> f32 {
    exp_in_range::<F>(if d > EXP_FLUSH { d } else { EXP_FLUSH })
}

/// Copies the tail of a slice into a full chunk padded with −inf.
#[inline(always)]
fn padded<const L: usize>(tail: &[f32]) -> [f32; L] {
    let mut chunk = [f32::NEG_INFINITY; L];
    chunk[..tail.len()].copy_from_slice(tail);
    chunk
}

#[inline(always)]
fn max_step(chunk: &[f32; LANES], max: &mut [f32; LANES], bad: &mut [u32; LANES]) {
    for l in 0..LANES {
        let x = chunk[l];
        max[l] = if x > max[l] { x } else { max[l] };
        bad[l] |= u32::from(!(x < f32::INFINITY));
    }
}

/// Largest value of `block`, and whether it holds a NaN or +inf.
#[inline(always)]
pub(crate) fn block_max(block: &[f32]) -> (f32, bool) {
    let mut max = [f32::NEG_INFINITY; LANES];
    let mut bad = [0u32; LANES];
    let (chunks, tail) = block.as_chunks::<LANES>();
    for chunk in chunks {
        max_step(chunk, &mut max, &mut bad);
    }
    if !tail.is_empty() {
        max_step(&padded::<LANES>(tail), &mut max, &mut bad);
    }
    let m = max.iter().copied().fold(f32::NEG_INFINITY, |a, b| if b > a { b } else { a });
    (m, bad.iter().any(|&b| b != 0))
}

#[inline(always)]
fn exp_sums_step<F: MulAdd, const L: usize>(chunk: &[f32; L], m: f32, z: &mut [f32; L], s: &mut [f32; L]) {
    for l in 0..L {
        // Values 88 or more below the max (and −inf) contribute exactly 0, so
        // a one-hot row has entropy exactly 0.
        let d = chunk[l] - m;
        let d = if d > EXP_FLUSH { d } else { EXP_FLUSH };
        let e = exp_in_range::<F>(d);
        z[l] += e;
        s[l] = F::mul_add(e, d, s[l]);
    }
}

/// Asks the cache to start loading the 64-byte line at `bytes[offset..]`,
/// if there is one (a hint: no effect on results).
#[inline(always)]
pub(crate) fn prefetch_line(bytes: &[u8], offset: usize) {
    #[cfg(target_arch = "x86_64")]
    if offset < bytes.len() {
        // SAFETY: prefetching is a hint that never faults; the address lies inside `bytes`.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(bytes.as_ptr().add(offset).cast());
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (bytes, offset);
}

/// `(Σ e^{x−m}, Σ e^{x−m}·(x−m))` over `block`, for `m ≥ max(block)`;
/// −inf entries contribute 0 to both. `L` lanes per step: as many as fit the
/// caller's vector registers without spilling (8 for AVX2, 16 for AVX-512).
/// While it computes, it prefetches `next` (the following block, still in
/// memory) at the pace it reads, so the memory read of the next block
/// overlaps this block's arithmetic.
#[inline(always)]
pub(crate) fn block_exp_sums<F: MulAdd, const L: usize>(block: &[f32], m: f32, next: &[u8]) -> (f32, f32) {
    let mut z = [0f32; L];
    let mut s = [0f32; L];
    let (chunks, tail) = block.as_chunks::<L>();
    for (i, chunk) in chunks.iter().enumerate() {
        let offset = i * L * size_of::<f32>();
        if offset.is_multiple_of(64) {
            prefetch_line(next, offset);
        }
        exp_sums_step::<F, L>(chunk, m, &mut z, &mut s);
    }
    if !tail.is_empty() {
        exp_sums_step::<F, L>(&padded(tail), m, &mut z, &mut s);
    }
    (z.iter().sum(), s.iter().sum())
}

/// `out_j = −g · e^{(x_j − m) − ln_z}`: the softmax part of the logits
/// gradient, with the row's max `m` and `ln Σ e^{x−m}` kept apart for accuracy.
#[inline(always)]
pub(crate) fn block_neg_scaled_softmax<F: MulAdd>(block: &[f32], m: f32, ln_z: f32, g: f32, out: &mut [f32]) {
    for (x, o) in block.chunks(LANES).zip(out.chunks_mut(LANES)) {
        for (xv, ov) in x.iter().zip(o.iter_mut()) {
            *ov = -g * exp_clamped::<F>((xv - m) - ln_z);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std_within_two_ulp() {
        let mut worst = 0f64;
        let mut d = -87.3f32;
        while d <= 10.0 {
            let got = f64::from(exp_clamped::<Unfused>(d));
            let fused = f64::from(exp_clamped::<Fused>(d));
            worst = worst.max((fused - (f64::from(d)).exp()).abs() / f64::from(d).exp());
            let want = f64::from(d).exp();
            worst = worst.max((got - want).abs() / want);
            d += 0.0137;
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
        assert_eq!(exp_clamped::<Unfused>(-88.0), 0.0);
        assert_eq!(exp_clamped::<Fused>(-100.0), 0.0);
        assert_eq!(exp_clamped::<Unfused>(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_clamped::<Unfused>(0.0), 1.0);
    }

    #[test]
    fn block_helpers_handle_tails_and_minus_infinity() {
        let block: Vec<f32> = (0..37).map(|i| if i % 5 == 0 { f32::NEG_INFINITY } else { i as f32 * 0.1 }).collect();
        let (m, bad) = block_max(&block);
        assert_eq!(m, 36.0 * 0.1_f32);
        assert!(!bad);
        let (z, s) = block_exp_sums::<Unfused, 8>(&block, m, &[]);
        let finite = block.iter().filter(|x| x.is_finite());
        let want_z: f64 = finite.clone().map(|&x| (f64::from(x) - f64::from(m)).exp()).sum();
        let want_s: f64 = finite.map(|&x| (f64::from(x) - f64::from(m)).exp() * (f64::from(x) - f64::from(m))).sum();
        assert!((f64::from(z) - want_z).abs() < 1e-5 * want_z);
        assert!((f64::from(s) - want_s).abs() < 1e-5 * want_s.abs());
        assert!(block_max(&[1.0, f32::NAN]).1);
        assert!(block_max(&[f32::INFINITY]).1);
    }
}
